"""`GenerationMixin.generate`: greedy decoding and sampling with a key/value cache.

Shape notation: B batch, S prompt length, L length so far (prompt + new tokens),
V vocabulary.

The loop, as in Transformers: run the prompt once (prefill), then one token per
step; each step takes the last position's logits in float32, applies the
logits processors (sampling only: temperature, then top-k, then top-p), picks
the arg-max or samples, and appends.  With EOS ids, a row that produced one is
finished: it receives ``pad_token_id`` from then on, and the loop stops when
every row is finished or ``max_new_tokens`` were produced.

Hook contract — what a model must provide to use :meth:`GenerationMixin.generate`
-------------------------------------------------------------------------------
* ``prepare_inputs_for_generation(input_ids, past_key_values=None,
  use_cache=True, **model_kwargs) -> dict``: the keyword arguments of
  ``forward`` for one step.  ``input_ids`` (B, L) is the whole sequence so far
  (the decoder's, for an encoder-decoder); the hook drops what the cache
  already holds (``past_key_values.get_seq_length()`` tokens) and passes on
  what its ``forward`` needs from ``model_kwargs``, which holds:

  - decoder-only: ``attention_mask`` (B, L) or None (no padding) and, when
    ``forward`` takes ``position_ids``, ``position_ids`` (B, L): from the
    mask's cumulative sum (padding gets 0), as Transformers' ``generate`` does;
    ``generate`` grows both by one column per step;
  - encoder-decoder: ``encoder_outputs`` (the encoder's output, run once) and
    ``attention_mask`` (B, S), the *encoder's* mask, fixed;
  - ``logits_to_keep=1`` when ``forward`` takes ``logits_to_keep``;
  - whatever else the caller passed to ``generate`` (e.g. ``token_type_ids``,
    grown with its last column).

  ``can_generate()`` is true for a class that defines this hook.
* ``forward(**inputs, return_dict=True)`` returns ``.logits`` (B, T, V) and, with
  ``use_cache``, ``.past_key_values``: a cache object (``get_seq_length()``)
  that is handed back to the hook on the next step.
* Encoder-decoder models (``config.is_encoder_decoder``) also provide
  ``get_encoder()``, a module called once as ``encoder(input_ids=...,
  attention_mask=..., return_dict=True)``; decoding starts from
  ``config.decoder_start_token_id`` and ``generate`` returns the decoder ids,
  start token first, as Transformers does.

Example:
    >>> import torch
    >>> from pretrained import LlamaConfig, LlamaForCausalLM
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                                      num_hidden_layers=1, num_attention_heads=4)).eval()
    >>> model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, eos_token_id=None).shape
    torch.Size([1, 7])
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..logging import get_logger

logger = get_logger(__name__)

__all__ = ["GenerationMixin", "process_logits"]

DEFAULT_MAX_NEW_TOKENS = 20
# Options of Transformers' generate that this one does not implement: refused, never ignored.
_UNSUPPORTED = {
    "num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "min_new_tokens": 0, "min_length": 0, "return_dict_in_generate": False, "output_scores": False,
    "assistant_model": None, "streamer": None, "logits_processor": None, "stopping_criteria": None,
    "generation_config": None, "penalty_alpha": None, "num_beam_groups": 1, "typical_p": 1.0,
}


def process_logits(
    scores: Tensor,
    *,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
) -> Tensor:
    """Sampling's logits processors in Transformers' order: temperature, top-k, top-p.

    Args:
        scores: (B, V) float logits.
        temperature: divides the logits (skipped when None or 1.0).
        top_k: keep the k largest (ties with the k-th kept too); None or 0 skips.
        top_p: keep the smallest set of largest-probability tokens whose mass
            reaches ``top_p`` (at least one); None or 1.0 skips.

    Returns:
        (B, V) with removed tokens at ``-inf``.
    """
    if temperature is not None and temperature != 1.0:
        scores = scores / temperature
    if top_k is not None and top_k != 0:
        k = min(top_k, scores.size(-1))
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)                                    # (B, V) in ascending order
        remove[..., -1:] = False                                              # keep at least one
        scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), -float("inf"))
    return scores


def _check_sampling(temperature, top_k, top_p) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a strictly positive float, got {temperature!r} "
                         "(for greedy decoding pass do_sample=False)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative int, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 <= top_p <= 1.0):
        raise ValueError(f"top_p must be a float in [0, 1], got {top_p!r}")


def _as_id_list(value: Union[int, Sequence[int], Tensor, None]) -> Optional[List[int]]:
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.flatten().tolist()
    if isinstance(value, int):
        return [value]
    ids = [int(v) for v in value]
    return ids or None


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy: position t predicts label t+1; labels of -100 are ignored.

    Shapes:
        logits ``(B, T, V)``, labels ``(B, T)`` -> a scalar (computed in float32).
    """
    labels = labels.to(logits.device)
    shift_logits = logits[..., :-1, :].float()                       # (B, T-1, V)
    shift_labels = labels[..., 1:]                                    # (B, T-1)
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=-100)


class GenerationMixin:
    """Adds :meth:`generate` to a model that follows the hook contract of this module."""

    _per_position_inputs: Tuple[str, ...] = ("position_ids",)
    """Inputs of shape ``(B, P+T)`` that a decoder-only model's step sees only for new tokens."""

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,                                               # (B, P+T): the whole sequence so far
        past_key_values: Optional[Any] = None,
        attention_mask: Optional[Tensor] = None,                         # (B, P+T)
        use_cache: bool = True,
        **kwargs: Any,
    ) -> Dict[str, Any]:
        """The forward inputs of one decoder-only generation step: the tokens the cache
        does not hold yet, and the matching slices of ``_per_position_inputs``."""
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        inputs = {"input_ids": input_ids[:, past:], "past_key_values": past_key_values,
                  "attention_mask": attention_mask, "use_cache": use_cache}
        for name in self._per_position_inputs:
            if kwargs.get(name) is not None:
                inputs[name] = kwargs[name][:, past:]
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def _forward_accepts(self, name: str) -> bool:
        return name in inspect.signature(self.forward).parameters

    @torch.no_grad()
    def generate(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        max_new_tokens: Optional[int] = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: Optional[int] = 50,
        top_p: Optional[float] = None,
        eos_token_id: Union[int, Sequence[int], None] = None,
        pad_token_id: Optional[int] = None,
        *,
        max_length: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        use_cache: bool = True,
        decoder_start_token_id: Optional[int] = None,
        **model_kwargs: Any,
    ) -> Tensor:
        """Continue ``input_ids`` (decoder-only) or decode from them (encoder-decoder).

        Args:
            input_ids: (B, S) prompt (left-padded for a batch of unequal
                lengths) or encoder input.  ``inputs=`` is accepted too.
            attention_mask: (B, S) of 1/0.  Default: ``input_ids != pad_token_id``
                when the pad token occurs and differs from EOS, else all ones.
            max_new_tokens: tokens to add (default 20).  ``max_length`` (the
                total length, prompt or decoder start included) is used when
                ``max_new_tokens`` is not given.
            do_sample: sample from the processed distribution instead of the arg-max.
            temperature, top_k, top_p: sampling's logits processors (ignored
                when ``do_sample`` is False), see :func:`process_logits`.  The
                defaults are Transformers' (1.0, 50, 1.0): ``top_k=0`` or None
                samples from the whole vocabulary.
            eos_token_id: an id or a list; default ``config.eos_token_id``;
                ``generate(..., eos_token_id=[])`` never stops early.
            pad_token_id: fills finished rows; default ``config.pad_token_id``,
                else the first EOS id.
            generator: a ``torch.Generator`` for reproducible sampling.
            use_cache: keep keys/values between steps (else recompute all).
            decoder_start_token_id: encoder-decoder only; default from the config.
            **model_kwargs: passed to ``prepare_inputs_for_generation`` every step.

        Returns:
            (B, S + n) ids, prompt first (decoder-only); (B, 1 + n) decoder ids,
            start token first (encoder-decoder); n <= ``max_new_tokens`` (fewer
            when every row finished).

        Raises:
            ValueError: bad sampling arguments, no input, no decoder start token.
            NotImplementedError: beam search and other options this loop lacks.
        """
        if input_ids is None:
            input_ids = model_kwargs.pop("inputs", None)
        for name, neutral in _UNSUPPORTED.items():
            value = model_kwargs.pop(name, neutral)
            if value != neutral:
                raise NotImplementedError(f"generate(): {name}={value!r} is not supported (greedy decoding and "
                                          "sampling with temperature/top_k/top_p only)")
        cfg = self.config
        if do_sample:
            _check_sampling(temperature, top_k, top_p)
        eos = _as_id_list(eos_token_id if eos_token_id is not None else getattr(cfg, "eos_token_id", None))
        pad = pad_token_id if pad_token_id is not None else getattr(cfg, "pad_token_id", None)
        if pad is None and eos:
            pad = eos[0]
        if input_ids is None:
            bos = getattr(cfg, "bos_token_id", None)
            if bos is None:
                raise ValueError("generate() needs input_ids (or a config.bos_token_id to start from)")
            input_ids = torch.full((1, 1), bos, dtype=torch.long, device=self.device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = self._default_attention_mask(input_ids, pad, eos)

        past_key_values = model_kwargs.pop("past_key_values", model_kwargs.pop("cache", None))
        ids, grow_inputs = self._start_generation(input_ids, attention_mask, model_kwargs, decoder_start_token_id)

        if max_new_tokens is None:
            max_new_tokens = max_length - ids.shape[1] if max_length is not None else DEFAULT_MAX_NEW_TOKENS
        final_length = ids.shape[1] + max(int(max_new_tokens), 0)
        eos_ids = torch.tensor(eos, device=ids.device) if eos else None
        unfinished = torch.ones(batch, dtype=torch.long, device=ids.device)

        while ids.shape[1] < final_length:
            inputs = self.prepare_inputs_for_generation(ids, past_key_values=past_key_values, use_cache=use_cache,
                                                        **model_kwargs)
            outputs = self(**inputs, return_dict=True)
            if use_cache:
                past_key_values = outputs.past_key_values
            scores = outputs.logits[:, -1, :].to(dtype=torch.float32, device=ids.device, copy=True)   # (B, V)
            del outputs
            if do_sample:
                scores = process_logits(scores, temperature=temperature, top_k=top_k, top_p=top_p)
                probs = torch.softmax(scores, dim=-1)
                next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                next_tokens = torch.argmax(scores, dim=-1)                                # (B,)
            if eos_ids is not None:
                next_tokens = next_tokens * unfinished + pad * (1 - unfinished)
            ids = torch.cat([ids, next_tokens[:, None]], dim=-1)                           # (B, L+1)
            if grow_inputs:
                self._grow_inputs(model_kwargs)
            if eos_ids is not None:
                unfinished = unfinished & ~torch.isin(next_tokens, eos_ids)
                if not bool(unfinished.any()):
                    break
        return ids

    def _start_generation(self, input_ids: Tensor, attention_mask: Tensor, model_kwargs: Dict[str, Any],
                          decoder_start_token_id: Optional[int]) -> Tuple[Tensor, bool]:
        """The sequence the loop grows, and ``model_kwargs`` filled in (see the hook contract).

        Returns ``(ids, grow)``: ``grow`` is True when the per-token inputs
        (mask, positions) must gain a column per step (decoder-only).
        """
        cfg = self.config
        batch = input_ids.shape[0]
        if getattr(cfg, "is_encoder_decoder", False):
            encoder_outputs = model_kwargs.pop("encoder_outputs", None)
            if encoder_outputs is None:
                encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask,
                                                     return_dict=True)
            model_kwargs.update(encoder_outputs=encoder_outputs, attention_mask=attention_mask)
            start = decoder_start_token_id
            for name in ("decoder_start_token_id", "bos_token_id"):
                start = start if start is not None else getattr(cfg, name, None)
            if start is None:
                raise ValueError("generate() needs decoder_start_token_id (argument or config) for an "
                                 "encoder-decoder model")
            ids = torch.full((batch, 1), int(start), dtype=torch.long, device=input_ids.device)
            grow = False
        else:
            ids = input_ids
            if batch > 1 and not bool(attention_mask[:, -1].all()):
                logger.warning("A decoder-only model is generating from right-padded input_ids; pad on the left "
                               "(tokenizer.padding_side = 'left') for correct results.")
            if self._forward_accepts("position_ids") and model_kwargs.get("position_ids") is None:
                position_ids = attention_mask.long().cumsum(-1) - 1                         # (B, S)
                model_kwargs["position_ids"] = position_ids.masked_fill(attention_mask == 0, 0)
            model_kwargs["attention_mask"] = None if bool(attention_mask.all()) else attention_mask
            grow = True
        if "logits_to_keep" not in model_kwargs and self._forward_accepts("logits_to_keep"):
            model_kwargs["logits_to_keep"] = 1
        return ids, grow

    @staticmethod
    def _default_attention_mask(input_ids: Tensor, pad: Optional[int], eos: Optional[List[int]]) -> Tensor:
        """Mask out the pad token where it cannot be mistaken for EOS, as Transformers does."""
        if pad is not None and (not eos or pad not in eos) and bool((input_ids == pad).any()):
            return input_ids.ne(pad).long()
        return torch.ones_like(input_ids, dtype=torch.long)

    @staticmethod
    def _grow_inputs(model_kwargs: Dict[str, Any]) -> None:
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
