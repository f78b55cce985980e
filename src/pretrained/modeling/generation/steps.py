"""The one step closure both decoding loops run: ``step(ids, cache) -> (logits, cache)``.

It asks the model's ``prepare_inputs_for_generation`` hook for the forward
inputs of the sequence so far, runs ``forward``, keeps what the call records
(attentions, hidden states), and grows the per-token inputs of a decoder-only
model by one column (see the hook contract in :mod:`pretrained.modeling.generation`).
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional

import torch
from torch import Tensor

from ..outputs import ModelOutput
from .decoding import Step

__all__ = ["make_step", "grow_inputs", "repeat_rows"]


def grow_inputs(model_kwargs: Dict[str, Any]) -> None:
    """One more column for the per-token inputs of a decoder-only model."""
    mask = model_kwargs.get("attention_mask")
    if mask is not None:
        model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    positions = model_kwargs.get("position_ids")
    if positions is not None:
        model_kwargs["position_ids"] = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
    token_types = model_kwargs.get("token_type_ids")
    if token_types is not None:
        model_kwargs["token_type_ids"] = torch.cat([token_types, token_types[:, -1:]], dim=-1)


def _record_outputs(records: Dict[str, List[Any]], outputs: Any, record: FrozenSet[str], encoder_decoder: bool) -> None:
    if "attentions" in record:
        if encoder_decoder:
            records["decoder_attentions"].append(outputs.decoder_attentions)
            records["cross_attentions"].append(outputs.cross_attentions)
        else:
            records["attentions"].append(outputs.attentions)
    if "hidden_states" in record:
        name = "decoder_hidden_states" if encoder_decoder else "hidden_states"
        records[name].append(outputs.decoder_hidden_states if encoder_decoder else outputs.hidden_states)


def make_step(model: Any, model_kwargs: Dict[str, Any], *, use_cache: bool, grow: bool,
              embeds: Optional[Tensor] = None, offset: int = 0, record: FrozenSet[str] = frozenset(),
              records: Optional[Dict[str, List[Any]]] = None) -> Step:
    """The step closure of one ``generate`` call.

    Args:
        model: the generating model.
        model_kwargs: the hook's keyword arguments (see :meth:`GenerationMixin._start_generation`);
            grown in place after each step when ``grow``.
        use_cache: ask the model for its cache (else the cache passed in is handed back).
        grow: a decoder-only model: the mask, positions and token types gain a column per step.
        embeds: (B, S, C) fed instead of ids at the first step only; ``offset`` placeholder ids
            stand for the positions given only as embeddings, so the hook's cache slicing lines up.
        record: outputs to keep; ``attentions``/``hidden_states`` go to ``records``.
    """
    pending = [embeds]
    flags = {f"output_{name}": True for name in record if name in ("attentions", "hidden_states")}
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))

    def step(ids: Tensor, cache: Any):
        device = ids.device
        if offset:
            ids = torch.cat([ids.new_zeros((ids.shape[0], offset)), ids], dim=1)
        inputs = model.prepare_inputs_for_generation(ids, past_key_values=cache, use_cache=use_cache, **model_kwargs)
        if pending[0] is not None:
            inputs.pop("input_ids", None)
            inputs["inputs_embeds"], pending[0] = pending[0], None
        outputs = model(**inputs, **flags, return_dict=True)
        if use_cache:
            cache = outputs.past_key_values
        if records is not None:
            _record_outputs(records, outputs, record, encoder_decoder)
        logits = outputs.logits[:, -1, :].to(dtype=torch.float32, device=device, copy=True)      # (N, V)
        del outputs
        if grow:
            grow_inputs(model_kwargs)
        return logits, cache

    return step


def repeat_rows(value: Any, times: int) -> Any:
    """Each row of a tensor (or of each tensor field of a model output) repeated ``times`` times
    in place (row b becomes rows b*times ... b*times + times-1); anything else unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.repeat_interleave(times, dim=0)
    if isinstance(value, ModelOutput):
        return type(value)(**{key: repeat_rows(field, times) for key, field in value.items()})
    return value
