"""The greedy / sampling loop of ``generate``, as a function over one step closure.

:func:`decode` grows ``ids`` one token a step: ``step(ids)`` runs the model
and returns its output; the last position's logits (float32) go through the
logits-processor pipeline, then the arg-max or a ``torch.multinomial`` draw
(Transformers' RNG use).  Rows finish on an EOS id (they get ``pad`` after it)
or a stopping criterion; the loop ends when all rows finished or
``final_length`` is reached.  A streamer gets the prompt, each new token
column, then ``end()``, as Transformers calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["DecodeSettings", "decode"]


@dataclass(frozen=True)
class DecodeSettings:
    """What one greedy/sampling run needs, fixed for the call.

    ``record``: the per-step outputs to collect (``scores``, ``logits``,
    ``attentions``, ``hidden_states``), empty unless ``return_dict_in_generate``.
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


def _record(records: Dict[str, List[Any]], outputs: Any, settings: DecodeSettings) -> None:
    if "attentions" in settings.record:
        if settings.encoder_decoder:
            records["decoder_attentions"].append(outputs.decoder_attentions)
            records["cross_attentions"].append(outputs.cross_attentions)
        else:
            records["attentions"].append(outputs.attentions)
    if "hidden_states" in settings.record:
        name = "decoder_hidden_states" if settings.encoder_decoder else "hidden_states"
        records[name].append(outputs.decoder_hidden_states if settings.encoder_decoder else outputs.hidden_states)


def decode(ids: Tensor, step: Callable[[Tensor], Any], settings: DecodeSettings) -> Dict[str, Any]:
    """Run the loop.

    Args:
        ids: (B, L0) the sequence to grow (prompt, decoder start, or empty with ``inputs_embeds``).
        step: ``step(ids)`` -> the model output for the next position (it keeps the cache).
        settings: see :class:`DecodeSettings`.

    Returns:
        ``{"sequences": (B, L0 + n), <recorded name>: tuple per step, ...}``.
    """
    records: Dict[str, List[Any]] = {name: [] for name in ("scores", "logits", "attentions", "hidden_states",
                                                            "decoder_attentions", "cross_attentions",
                                                            "decoder_hidden_states")}
    unfinished = torch.ones(ids.shape[0], dtype=torch.long, device=ids.device)
    if settings.streamer is not None:
        settings.streamer.put(ids.cpu())
    while ids.shape[1] < settings.final_length:
        outputs = step(ids)
        logits = outputs.logits[:, -1, :].to(dtype=torch.float32, device=ids.device, copy=True)        # (B, V)
        scores = settings.processor(ids, logits)
        if "scores" in settings.record:
            records["scores"].append(scores)
        if "logits" in settings.record:
            records["logits"].append(logits)
        _record(records, outputs, settings)
        del outputs
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
    out: Dict[str, Any] = {"sequences": ids}
    out.update({name: tuple(values) for name, values in records.items() if values})
    return out
