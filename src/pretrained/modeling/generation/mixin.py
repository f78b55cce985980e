"""`GenerationMixin`: ``generate`` and the default ``prepare_inputs_for_generation`` hook.

``generate`` reads as its phases: settings (validated once), the prompt, the
start of the sequence (the encoder run for an encoder-decoder), the lengths,
the logits-processor pipeline and the step closure, then the greedy/sampling
loop (:func:`~pretrained.modeling.generation.decoding.decode`) or beam search
(:func:`~pretrained.modeling.generation.beam.beam_search`).  The hook contract a
model follows is in :mod:`pretrained.modeling.generation`.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ...logging import get_logger
from ..outputs import ModelOutput
from .beam import beam_search
from .checks import check_model_kwargs
from .config import GenerationConfig
from .decoding import DecodeSettings, decode, new_records
from .logits_process import build_logits_processor
from .outputs import (GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerateDecoderOnlyOutput,
                      GenerateEncoderDecoderOutput)
from .settings import GenerationSettings, build_settings
from .steps import grow_inputs, make_step, repeat_rows

logger = get_logger("pretrained.modeling.generation")

__all__ = ["GenerationMixin"]


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
        for name, value in kwargs.items():      # anything else the caller gave generate, as Transformers does
            if name not in inputs and name not in self._per_position_inputs and value is not None:
                inputs[name] = value
        return inputs

    def _forward_accepts(self, name: str) -> bool:
        return name in inspect.signature(self.forward).parameters

    @torch.no_grad()
    def generate(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        max_new_tokens: Optional[int] = None,
        do_sample: Optional[bool] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        eos_token_id: Union[int, Sequence[int], None] = None,
        pad_token_id: Optional[int] = None,
        *,
        max_length: Optional[int] = None,
        min_new_tokens: Optional[int] = None,
        min_length: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        num_beams: Optional[int] = None,
        num_return_sequences: Optional[int] = None,
        length_penalty: Optional[float] = None,
        early_stopping: Union[bool, str, None] = None,
        bos_token_id: Optional[int] = None,
        decoder_start_token_id: Optional[int] = None,
        generation_config: Optional[GenerationConfig] = None,
        generator: Optional[torch.Generator] = None,
        use_cache: bool = True,
        streamer: Optional[Any] = None,
        stopping_criteria: Optional[Sequence[Any]] = None,
        **model_kwargs: Any,
    ) -> Union[Tensor, ModelOutput]:
        """Continue ``input_ids`` (decoder-only) or decode from them (encoder-decoder).

        Every generation option left as None takes its value from
        ``generation_config`` (when given), else from ``self.generation_config``
        (the checkpoint's ``generation_config.json``), else the default below.

        Args:
            input_ids: (B, S) prompt (left-padded for a batch of unequal
                lengths) or encoder input.  ``inputs=`` is accepted too.
            attention_mask: (B, S) of 1/0.  Default: ``input_ids != pad_token_id``
                when the pad token occurs and differs from EOS, else all ones.
            max_new_tokens: tokens to add (default 20).  ``max_length`` is the
                same limit as a total length, prompt or decoder start included;
                whichever of the two the arguments set wins over the
                generation config's (``max_new_tokens`` when both are set).
            do_sample: sample from the processed distribution instead of the
                arg-max (default False).
            temperature, top_k, top_p: sampling's logits processors (ignored
                when ``do_sample`` is False), see :func:`process_logits`.  The
                defaults are Transformers' (1.0, 50, 1.0): ``top_k=0`` samples
                from the whole vocabulary.
            eos_token_id: an id or a list; default ``config.eos_token_id``;
                ``generate(..., eos_token_id=[])`` never stops early.
            pad_token_id: fills finished rows; default ``config.pad_token_id``,
                else the first EOS id.
            min_new_tokens / min_length: EOS cannot be picked before that many
                new tokens / that total length (``max_new_tokens``/``max_length``
                counting); ``min_new_tokens`` wins when both are set.
            repetition_penalty: a strictly positive float; above 1 discourages
                every token already in the sequence (the prompt, left padding
                excepted, or the decoder ids), see Transformers' CTRL penalty.
            num_beams: above 1, deterministic beam search (``do_sample`` must be
                False); default 1.  The processors above then act on each beam's
                log-probabilities, as in Transformers.
            num_return_sequences: how many of each row's best hypotheses beam
                search returns, best first (at most ``num_beams``); default 1.
            length_penalty: a finished hypothesis scores ``sum_logprobs /
                generated_length ** length_penalty`` (default 1.0; above 0
                favours longer ones, below 0 shorter ones).
            early_stopping: when beam search stops taking hypotheses: False
                (default) once no running beam can beat the worst one at the
                current length, True also once a row holds ``num_beams``,
                ``"never"`` judging with the longest possible length when
                ``length_penalty > 0``.
            bos_token_id: starts the sequence when there are no ``input_ids``
                (decoder-only); default from the config.
            decoder_start_token_id: encoder-decoder only; default from the
                config, else ``bos_token_id``.
            generation_config: a :class:`GenerationConfig` whose set values
                override ``self.generation_config`` for this call.
            generator: a ``torch.Generator`` for reproducible sampling.
            use_cache: keep keys/values between steps (else recompute all).
            **model_kwargs: passed to ``prepare_inputs_for_generation`` every step.

        Returns:
            (B, S + n) ids, prompt first (decoder-only); (B, 1 + n) decoder ids,
            start token first (encoder-decoder); n <= ``max_new_tokens`` (fewer
            when every row finished).  Beam search returns
            ``num_return_sequences`` rows per input row, one after the other,
            hypotheses that ended early padded with ``pad_token_id``.  With
            ``return_dict_in_generate=True``, Transformers' output class instead
            (``GenerateBeam*Output`` for beam search, with ``beam_indices`` and, given
            ``output_scores``, ``sequences_scores``), see :mod:`.outputs`.

        Raises:
            ValueError: bad sampling, penalty, beam or length arguments
                (``num_return_sequences > num_beams``), no input, no decoder
                start token.
            TypeError: ``generation_config`` is not a :class:`GenerationConfig`.
            NotImplementedError: beam sampling, group/diverse/constrained beam
                search, ``past_key_values`` with beam search, and other options
                this implementation lacks, passed or set by the generation config.
        """
        if input_ids is None:
            input_ids = model_kwargs.pop("inputs", None)
        settings = build_settings(self, generation_config, model_kwargs, dict(
            max_new_tokens=max_new_tokens, max_length=max_length, min_new_tokens=min_new_tokens,
            min_length=min_length, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, num_beams=num_beams, num_return_sequences=num_return_sequences,
            length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, decoder_start_token_id=decoder_start_token_id),
            streamer=streamer, stopping_criteria=stopping_criteria)
        embeds = model_kwargs.pop("inputs_embeds", None)
        input_ids, attention_mask, offset = self._prompt(input_ids, attention_mask, embeds, settings)
        check_model_kwargs(self, model_kwargs, known=("past_key_values", "cache"))
        if getattr(self.config, "is_encoder_decoder", False) and model_kwargs.get("decoder_input_ids") is not None:
            raise NotImplementedError("generate(): decoder_input_ids (a decoder prompt) is not supported; decoding "
                                      "starts from decoder_start_token_id")
        past_key_values = model_kwargs.pop("past_key_values", model_kwargs.pop("cache", None))
        ids, grow = self._start_generation(input_ids, attention_mask, model_kwargs, settings)
        final_length, min_length = settings.lengths(ids.shape[1], offset)
        beams = settings.num_beams
        if beams > 1 and past_key_values is not None:
            raise NotImplementedError("generate(): beam search starts from an empty cache; "
                                      "past_key_values cannot be passed")
        # Transformers leaves a decoder-only prompt's left padding out of the penalty.
        skip = (attention_mask != 0).int().argmax(dim=1).to(ids.device) if settings.penalty and grow else None
        copies = beams if beams > 1 else settings.num_return_sequences
        if copies > 1:                 # rows repeated per beam, or per sample (then the ids too), as Transformers
            model_kwargs.update({key: repeat_rows(value, copies) for key, value in model_kwargs.items()})
            skip = repeat_rows(skip, copies)
            if beams == 1:
                ids, embeds = ids.repeat_interleave(copies, dim=0), repeat_rows(embeds, copies)
        eos_ids = torch.tensor(settings.eos_token_id, device=ids.device) if settings.eos_token_id else None
        run = DecodeSettings(
            do_sample=settings.do_sample, final_length=final_length, eos_ids=eos_ids, pad=settings.pad_token_id,
            processor=build_logits_processor(penalty=settings.penalty, skip=skip, eos_ids=eos_ids, min_length=min_length,
                                             ngram=settings.no_repeat_ngram_size, sampling=settings.sampling),
            criteria=tuple(stopping_criteria or ()), streamer=streamer, record=settings.record, generator=generator,
            encoder_decoder=not grow, num_beams=beams, num_return_sequences=settings.num_return_sequences,
            length_penalty=settings.length_penalty, early_stopping=settings.early_stopping)
        records = new_records()
        step = make_step(self, model_kwargs, use_cache=use_cache or embeds is not None, grow=grow, embeds=embeds,
                         offset=offset, record=settings.record, records=records)
        if beams > 1:
            result, cache = beam_search(ids, step, run, records=records)
        else:
            sequences, cache = decode(ids, step, run, cache=past_key_values, records=records)
            result = {"sequences": sequences}
        return self._generate_output(result, records, cache, model_kwargs, settings)

    def _start_generation(self, input_ids: Tensor, attention_mask: Tensor, model_kwargs: Dict[str, Any],
                          settings: GenerationSettings) -> Tuple[Tensor, bool]:
        """The sequence the loop grows, and ``model_kwargs`` filled in (see the hook contract).

        ``settings.decoder_start_token_id`` (else ``bos_token_id``) starts an encoder-decoder's
        sequence (None: an error); ``settings.record`` asks the encoder for its attentions /
        hidden states when they are returned.

        Returns ``(ids, grow)``: ``grow`` is True when the per-token inputs
        (mask, positions) must gain a column per step (decoder-only).
        """
        batch = input_ids.shape[0]
        decoder_start_token_id = settings.decoder_start_token_id
        if decoder_start_token_id is None:
            decoder_start_token_id = settings.bos_token_id
        if getattr(self.config, "is_encoder_decoder", False):
            encoder_outputs = model_kwargs.pop("encoder_outputs", None)
            if encoder_outputs is None:
                flags = {f"output_{name}": True for name in settings.record
                         if name in ("attentions", "hidden_states")}
                encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask,
                                                     return_dict=True, **flags)
            model_kwargs.update(encoder_outputs=encoder_outputs, attention_mask=attention_mask)
            if decoder_start_token_id is None:
                raise ValueError("generate() needs decoder_start_token_id (or bos_token_id; argument, generation "
                                 "config or config) for an encoder-decoder model")
            ids = torch.full((batch, 1), int(decoder_start_token_id), dtype=torch.long, device=input_ids.device)
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


    def _prompt(self, input_ids: Optional[Tensor], attention_mask: Optional[Tensor], embeds: Optional[Tensor],
                settings: GenerationSettings) -> Tuple[Tensor, Tensor, int]:
        """``(input_ids, attention_mask, offset)`` of a call; ``offset`` is how many prompt positions
        exist only as ``inputs_embeds`` (decoder-only, as Transformers: the ids returned hold the
        ``input_ids`` given, none when only embeddings were, then the new tokens).

        Raises:
            ValueError: no prompt at all, ids not 2-D, embeddings not (B, S, C) or not
                matching ``input_ids``, a forward that takes no ``inputs_embeds``.
            NotImplementedError: ``inputs_embeds`` for an encoder-decoder or with beam search.
        """
        if embeds is not None:
            if getattr(self.config, "is_encoder_decoder", False):
                raise NotImplementedError("generate(): inputs_embeds is supported for decoder-only models only; "
                                          "pass input_ids (or encoder_outputs) to an encoder-decoder")
            if not self._forward_accepts("inputs_embeds"):
                raise ValueError(f"generate(): {type(self).__name__}.forward takes no inputs_embeds")
            if embeds.dim() != 3:
                raise ValueError(f"inputs_embeds must be (batch, seq, hidden), got shape {tuple(embeds.shape)}")
            if settings.num_beams > 1:
                raise NotImplementedError("generate(): inputs_embeds with beam search is not supported")
            if input_ids is None:
                input_ids = torch.ones((embeds.shape[0], 0), dtype=torch.long, device=embeds.device)
            elif tuple(input_ids.shape) != tuple(embeds.shape[:2]):
                raise ValueError(f"generate(): input_ids {tuple(input_ids.shape)} and inputs_embeds "
                                 f"{tuple(embeds.shape)} must cover the same (batch, seq) positions")
            if attention_mask is None:
                attention_mask = (self._default_attention_mask(input_ids, settings.pad_token_id, settings.eos_token_id)
                                  if input_ids.shape[1]
                                  else torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device))
            return input_ids, attention_mask, embeds.shape[1] - input_ids.shape[1]
        if input_ids is None:
            if settings.bos_token_id is None:
                raise ValueError("generate() needs input_ids (or a bos_token_id to start from)")
            input_ids = torch.full((1, 1), settings.bos_token_id, dtype=torch.long, device=self.device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = self._default_attention_mask(input_ids, settings.pad_token_id, settings.eos_token_id)
        return input_ids, attention_mask, 0


    def _generate_output(self, result: Dict[str, Any], records: Dict[str, List[Any]], cache: Any,
                         model_kwargs: Dict[str, Any], settings: GenerationSettings) -> Union[Tensor, ModelOutput]:
        """The ids, or (``return_dict_in_generate``) Transformers' output class for them: the
        per-step ``records``, the final ``cache``, for beam search ``sequences_scores`` (only with
        ``output_scores``, as Transformers) and ``beam_indices``."""
        if not settings.return_dict_in_generate:
            return result["sequences"]
        result = {**result, **{name: tuple(values) for name, values in records.items() if values},
                  "past_key_values": cache}
        beam = "beam_indices" in result
        if beam and not settings.output_scores:
            result["sequences_scores"] = None
        if not getattr(self.config, "is_encoder_decoder", False):
            return (GenerateBeamDecoderOnlyOutput if beam else GenerateDecoderOnlyOutput)(**result)
        encoder_outputs = model_kwargs.get("encoder_outputs")
        if settings.output_attentions:
            result["encoder_attentions"] = getattr(encoder_outputs, "attentions", None)
        if settings.output_hidden_states:
            result["encoder_hidden_states"] = getattr(encoder_outputs, "hidden_states", None)
        return (GenerateBeamEncoderDecoderOutput if beam else GenerateEncoderDecoderOutput)(**result)

    @staticmethod
    def _default_attention_mask(input_ids: Tensor, pad: Optional[int], eos: Optional[List[int]]) -> Tensor:
        """Mask out the pad token where it cannot be mistaken for EOS, as Transformers does."""
        if pad is not None and (not eos or pad not in eos) and bool((input_ids == pad).any()):
            return input_ids.ne(pad).long()
        return torch.ones_like(input_ids, dtype=torch.long)

    @staticmethod
    def _grow_inputs(model_kwargs: Dict[str, Any]) -> None:
        """One more column for the per-token inputs of a decoder-only model."""
        grow_inputs(model_kwargs)
