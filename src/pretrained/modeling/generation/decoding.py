"""The greedy / sampling loop of ``generate``, as a function over one step closure.

:func:`decode` grows ``ids`` one token a step: ``step(ids, cache)`` runs the
model and returns the last position's logits (float32) and the new cache; the
logits go through the logits-processor pipeline, then the arg-max or a
``torch.multinomial`` draw (Transformers' RNG use).  Rows finish on an EOS id
(they get ``pad`` after it) or a stopping criterion; the loop ends when all
rows finished or ``final_length`` is reached.  A streamer gets the prompt,
each new token column, then ``end()``, as Transformers calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["DecodeSettings", "Step", "decode"]

Step = Callable[[Tensor, Any], Tuple[Tensor, Any]]
"""``step(ids (N, L), cache) -> (logits (N, V) float32, cache)``: one forward of the model."""


@dataclass(frozen=True)
class DecodeSettings:
    """What the decoding loops need, fixed for the call (derived from the call's settings).

    ``processor``: the logits-processor pipeline ``(ids, scores) -> scores``.
    ``record``: the per-step outputs to collect (``scores``, ``logits``,
    ``attentions``, ``hidden_states``), empty unless ``return_dict_in_generate``.
    The beam fields are read by :func:`~pretrained.modeling.generation.beam.beam_search` only.
    """

    do_sample: bool
    final_length: int
    eos_ids: Optional[Tensor]
    pad: Optional[int]
    processor: Callable[[Tensor, Tensor], Tensor]
    criteria: Sequence[Callable] = ()
    streamer: Any = None
    record: FrozenSet[str] = frozenset()
    generator: Optional[torch.Generator] = None
    encoder_decoder: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False


def new_records() -> Dict[str, List[Any]]:
    """Empty per-step lists, by output field name."""
    return {name: [] for name in ("scores", "logits", "attentions", "hidden_states", "decoder_attentions",
                                  "cross_attentions", "decoder_hidden_states")}


def record_step(records: Dict[str, List[Any]], record: FrozenSet[str], logits: Tensor, scores: Tensor) -> None:
    """Keep one step's raw ``logits`` and processed ``scores`` when asked for."""
    if "scores" in record:
        records["scores"].append(scores)
    if "logits" in record:
        records["logits"].append(logits)


def decode(ids: Tensor, step: Step, settings: DecodeSettings, cache: Any = None,
           records: Optional[Dict[str, List[Any]]] = None) -> Tuple[Tensor, Any]:
    """Run the loop.

    Args:
        ids: (B, L0) the sequence to grow (prompt, decoder start, or empty with ``inputs_embeds``).
        step: see :data:`Step`.
        settings: see :class:`DecodeSettings`.
        cache: the cache the first step starts from (None: empty).
        records: where the per-step outputs of ``settings.record`` go (see :func:`new_records`).

    Returns:
        ``(ids (B, L0 + n), cache)``.
    """
    records = new_records() if records is None else records
    unfinished = torch.ones(ids.shape[0], dtype=torch.long, device=ids.device)
    if settings.streamer is not None:
        settings.streamer.put(ids.cpu())
    while ids.shape[1] < settings.final_length:
        logits, cache = step(ids, cache)                                                   # (B, V)
        scores = settings.processor(ids, logits)
        record_step(records, settings.record, logits, scores)
        if settings.do_sample:
            probs = torch.softmax(scores, dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=settings.generator).squeeze(1)
        else:
            next_tokens = torch.argmax(scores, dim=-1)                                            # (B,)
        if settings.eos_ids is not None:
            next_tokens = next_tokens * unfinished + settings.pad * (1 - unfinished)
        ids = torch.cat([ids, next_tokens[:, None]], dim=-1)                                       # (B, L+1)
        if settings.eos_ids is not None:
            unfinished = unfinished & ~torch.isin(next_tokens, settings.eos_ids)
        so_far = tuple(records["scores"]) if "scores" in settings.record else None
        for criterion in settings.criteria:
            done = torch.as_tensor(criterion(ids, so_far), device=ids.device)
            unfinished = unfinished & ~done.expand(ids.shape[0]).to(torch.bool)
        if settings.streamer is not None:
            settings.streamer.put(next_tokens.cpu())
        if not bool(unfinished.any()):
            break
    if settings.streamer is not None:
        settings.streamer.end()
    return ids, cache
