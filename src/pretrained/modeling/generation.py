"""`GenerationMixin.generate`: greedy decoding, sampling and beam search with a key/value cache.

Shape notation: B batch, S prompt length, L length so far (prompt + new tokens),
V vocabulary.

The loop, as in Transformers: run the prompt once (prefill), then one token per
step; each step takes the last position's logits in float32, applies the
logits processors (the repetition penalty and the minimum length, then, when
sampling, temperature, top-k and top-p), picks the arg-max or samples, and
appends.  With EOS ids, a row that produced one is finished: it receives
``pad_token_id`` from then on, and the loop stops when every row is finished
or ``max_new_tokens`` were produced.  Beam search (``num_beams > 1``) keeps
several continuations per row instead, see :meth:`GenerationMixin._beam_search`.

Defaults come from ``model.generation_config`` (a :class:`GenerationConfig`,
read from the checkpoint's ``generation_config.json`` by ``from_pretrained``);
arguments of ``generate`` override it.

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

import copy
import inspect
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..configuration import load_config_dict
from ..logging import get_logger
from .logits_process import _apply_processors, _penalize_repetitions, build_logits_processor, process_logits  # noqa: F401,E501
from .decoding import DecodeSettings, decode
from .generation_checks import (as_generation_config_dict, check_model_kwargs, check_new_options,
                                generation_lengths, recorded_outputs)
from .generation_outputs import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput
from .outputs import ModelOutput

logger = get_logger(__name__)

__all__ = ["GenerationConfig", "GenerationMixin", "process_logits"]

GENERATION_CONFIG_NAME = "generation_config.json"
DEFAULT_MAX_NEW_TOKENS = 20
# Options of Transformers' generate that this one does not implement: refused, never ignored, whether
# passed to generate or set by a generation config.  A value of None (or an empty list) is neutral too.
_UNSUPPORTED = {
    "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
    "assistant_model": None, "logits_processor": None,
    "penalty_alpha": None, "num_beam_groups": 1, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "forced_bos_token_id": None, "forced_eos_token_id": None, "bad_words_ids": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "guidance_scale": None, "stop_strings": None, "max_time": None,
    "diversity_penalty": 0.0, "constraints": None, "force_words_ids": None,
}
# Generation-config options implemented here beyond the named arguments of generate (taken from its keywords).
_OPTIONS = ("no_repeat_ngram_size", "min_p", "return_dict_in_generate", "output_scores", "output_logits",
            "output_attentions", "output_hidden_states")
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# Each pair states one limit two ways; whoever sets either one (argument, generation config) sets the limit.
_LENGTH_PAIRS = (("max_new_tokens", "max_length"), ("min_new_tokens", "min_length"))
# Used when neither the arguments nor a generation config set them (Transformers' defaults).
_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "num_beams": 1, "num_return_sequences": 1,
             "length_penalty": 1.0, "early_stopping": False}


class GenerationConfig:
    """The defaults of :meth:`GenerationMixin.generate`, saved as ``generation_config.json``.

    Every key is an attribute.  The fields ``generate`` reads are
    ``max_new_tokens``, ``max_length``, ``min_new_tokens``, ``min_length``,
    ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
    ``repetition_penalty``, ``num_beams``, ``num_return_sequences``,
    ``length_penalty``, ``early_stopping``, ``bos_token_id``, ``eos_token_id``,
    ``pad_token_id`` and ``decoder_start_token_id``; one that was not set reads
    as None, and ``generate`` then uses its own default.  Any other key
    (``transformers_version``, ``use_cache``, ``num_beam_groups``, ...) is kept as
    an attribute and written back; ``generate`` refuses the options it does
    not implement when they are set to anything but their neutral value.

    ``_from_model_config`` marks a config that only repeats the model config's
    token ids (:meth:`from_model_config`, or a file that says so); setting any
    field clears it, so a modified config is saved without the mark and
    Transformers then keeps its values.

    Example:
        >>> from pretrained import GenerationConfig
        >>> config = GenerationConfig(max_new_tokens=32, repetition_penalty=1.2, eos_token_id=2)
        >>> config.max_new_tokens, config.top_k
        (32, None)
        >>> GenerationConfig.from_dict(config.to_dict()) == config
        True
    """

    max_new_tokens = max_length = min_new_tokens = min_length = None
    do_sample = temperature = top_k = top_p = repetition_penalty = None
    num_beams = num_return_sequences = length_penalty = early_stopping = None
    bos_token_id = eos_token_id = pad_token_id = decoder_start_token_id = None
    no_repeat_ngram_size = min_p = return_dict_in_generate = output_scores = output_logits = None
    output_attentions = output_hidden_states = None
    _FIELDS = _OPTIONS + ("max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature",
               "top_k", "top_p", "repetition_penalty", "num_beams", "num_return_sequences", "length_penalty",
               "early_stopping") + _TOKEN_IDS

    def __init__(self, **kwargs: Any) -> None:
        """Raises ValueError for a key that would hide a method (``to_dict``, ...)."""
        self.__dict__["_from_model_config"] = bool(kwargs.pop("_from_model_config", False))
        for key, value in kwargs.items():
            if key.startswith("_"):          # Transformers' bookkeeping (``_commit_hash``), never written back
                continue
            if hasattr(GenerationConfig, key) and key not in self._FIELDS:
                raise ValueError(f"generation config key {key!r} would hide GenerationConfig.{key}")
            self.__dict__[key] = value

    def __setattr__(self, key: str, value: Any) -> None:
        if not key.startswith("_"):
            self.__dict__["_from_model_config"] = False
        super().__setattr__(key, value)

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any], **kwargs: Any) -> "GenerationConfig":
        """A config holding ``config_dict`` (copied), with ``kwargs`` overriding its values."""
        if not isinstance(config_dict, dict):
            raise ValueError(f"a generation config must be a dict, got {type(config_dict).__name__}")
        return cls(**{**copy.deepcopy(config_dict), **kwargs})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike],
                        config_file_name: str = GENERATION_CONFIG_NAME, **kwargs: Any) -> "GenerationConfig":
        """Read ``generation_config.json`` of a folder or a Hub repo id.

        Args:
            pretrained_model_name_or_path: the folder (a file inside it works too) or repo id.
            config_file_name: the file to read.
            **kwargs: hub options (``cache_dir``, ``revision``, ``token``,
                ``local_files_only``, ``force_download``, ``subfolder``), then
                values that override the file's.

        Raises:
            CheckpointNotFoundError: there is no such file.
            CheckpointError: it is not a JSON object.
            ValueError: a key would hide a method.
        """
        from ..storage.resolve import HUB_KWARGS, resolve_file

        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        path = resolve_file(pretrained_model_name_or_path, config_file_name, **hub)
        return cls.from_dict(load_config_dict(path), **kwargs)

    @classmethod
    def from_model_config(cls, model_config: Any) -> "GenerationConfig":
        """The model config's ``bos``/``eos``/``pad``/``decoder_start`` token ids (those
        it sets), marked ``_from_model_config``."""
        ids = {name: copy.deepcopy(getattr(model_config, name, None)) for name in _TOKEN_IDS}
        return cls(_from_model_config=True, **{name: value for name, value in ids.items() if value is not None})

    def to_dict(self) -> Dict[str, Any]:
        """The keys that were set (a copy), and ``"_from_model_config": True`` when marked."""
        out: Dict[str, Any] = {"_from_model_config": True} if self._from_model_config else {}
        out.update(copy.deepcopy({key: value for key, value in self.__dict__.items() if not key.startswith("_")}))
        return out

    def to_json_string(self) -> str:
        """The ``generation_config.json`` text: sorted keys, two-space indent, trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def _check_sampling(temperature, top_k, top_p) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a strictly positive float, got {temperature!r} "
                         "(for greedy decoding pass do_sample=False)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative int, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 <= top_p <= 1.0):
        raise ValueError(f"top_p must be a float in [0, 1], got {top_p!r}")


def _check_penalties(repetition_penalty, min_new_tokens, min_length) -> None:
    if repetition_penalty is not None and (not isinstance(repetition_penalty, (int, float))
                                           or isinstance(repetition_penalty, bool) or not repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be a strictly positive float, got {repetition_penalty!r}")
    for name, value in (("min_new_tokens", min_new_tokens), ("min_length", min_length)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _check_beams(num_beams, num_return_sequences, length_penalty, early_stopping, do_sample) -> None:
    for name, value in (("num_beams", num_beams), ("num_return_sequences", num_return_sequences)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if do_sample and num_beams > 1:
        raise NotImplementedError(f"generate(): do_sample=True with num_beams={num_beams} (beam sampling) is not "
                                  "supported; beam search is deterministic only (do_sample=False)")
    if num_return_sequences > num_beams and not do_sample:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams}): "
                         "beam search returns some of its beams, greedy decoding one sequence")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty must be a float, got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def _repeat_rows(value: Any, times: int) -> Any:
    """Each row of a tensor (or of each tensor field of a model output) repeated ``times`` times
    in place (row b becomes rows b*times ... b*times + times-1); anything else unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.repeat_interleave(times, dim=0)
    if isinstance(value, ModelOutput):
        return type(value)(**{key: _repeat_rows(field, times) for key, field in value.items()})
    return value


def _is_neutral(value: Any, neutral: Any) -> bool:
    return value is None or value == neutral or (isinstance(value, (list, tuple, dict)) and not value)


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
            hypotheses that ended early padded with ``pad_token_id``.

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
        settings = self._generation_settings(generation_config, model_kwargs, dict(
            max_new_tokens=max_new_tokens, max_length=max_length, min_new_tokens=min_new_tokens,
            min_length=min_length, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, num_beams=num_beams, num_return_sequences=num_return_sequences,
            length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, decoder_start_token_id=decoder_start_token_id))
        do_sample, penalty = settings["do_sample"], settings.get("repetition_penalty")
        _check_penalties(penalty, settings.get("min_new_tokens"), settings.get("min_length"))
        _check_beams(settings["num_beams"], settings["num_return_sequences"], settings["length_penalty"],
                     settings["early_stopping"], do_sample)
        check_new_options(settings, streamer=streamer, stopping_criteria=stopping_criteria)
        if do_sample:
            _check_sampling(settings["temperature"], settings["top_k"], settings.get("top_p"))
        eos = _as_id_list(settings["eos_token_id"])
        pad = settings["pad_token_id"]
        if pad is None and eos:
            pad = eos[0]
        embeds = model_kwargs.pop("inputs_embeds", None)
        input_ids, attention_mask, offset = self._prompt(input_ids, attention_mask, embeds, settings, pad, eos)
        check_model_kwargs(self, model_kwargs, known=("past_key_values", "cache"))
        if getattr(self.config, "is_encoder_decoder", False) and model_kwargs.get("decoder_input_ids") is not None:
            raise NotImplementedError("generate(): decoder_input_ids (a decoder prompt) is not supported; decoding "
                                      "starts from decoder_start_token_id")
        past_key_values = model_kwargs.pop("past_key_values", model_kwargs.pop("cache", None))
        start = settings["decoder_start_token_id"]
        ids, grow_inputs = self._start_generation(input_ids, attention_mask, model_kwargs,
                                                  start if start is not None else settings["bos_token_id"],
                                                  settings=settings)
        final_length, min_length = generation_lengths(settings, ids.shape[1], offset, DEFAULT_MAX_NEW_TOKENS)
        penalty = float(penalty) if penalty is not None and penalty != 1.0 else None
        # Transformers leaves a decoder-only prompt's left padding out of the penalty.
        skip = (attention_mask != 0).int().argmax(dim=1).to(ids.device) if penalty and grow_inputs else None
        eos_ids = torch.tensor(eos, device=ids.device) if eos else None
        processors = dict(penalty=penalty, skip=skip, min_length=min_length, ngram=settings.get("no_repeat_ngram_size"))
        if settings["num_beams"] > 1:
            if past_key_values is not None:
                raise NotImplementedError("generate(): beam search starts from an empty cache; "
                                          "past_key_values cannot be passed")
            return self._beam_search(
                ids, model_kwargs, grow_inputs=grow_inputs, use_cache=use_cache, final_length=final_length,
                num_beams=settings["num_beams"], num_return_sequences=settings["num_return_sequences"],
                length_penalty=settings["length_penalty"], early_stopping=settings["early_stopping"],
                eos_ids=eos_ids, pad=pad, processors=processors)
        copies = settings["num_return_sequences"]
        if copies > 1:                               # several samples per prompt: rows repeated, as Transformers
            ids, embeds = ids.repeat_interleave(copies, dim=0), _repeat_rows(embeds, copies)
            model_kwargs.update({key: _repeat_rows(value, copies) for key, value in model_kwargs.items()})
            processors["skip"] = _repeat_rows(skip, copies)
        sampling = {name: settings.get(name) for name in ("temperature", "top_k", "top_p", "min_p")}
        decode_settings = DecodeSettings(
            do_sample=do_sample, final_length=final_length, eos_ids=eos_ids, pad=pad,
            processor=build_logits_processor(eos_ids=eos_ids, sampling=sampling if do_sample else None, **processors),
            criteria=tuple(stopping_criteria or ()), streamer=streamer, record=recorded_outputs(settings),
            generator=generator, encoder_decoder=not grow_inputs)
        step = self._step_closure(model_kwargs, past_key_values, use_cache or embeds is not None, grow_inputs,
                                  embeds, offset, settings)
        result = decode(ids, step, decode_settings)
        return self._generate_output(result, step, model_kwargs, settings)

    def _beam_search(self, ids: Tensor, model_kwargs: Dict[str, Any], *, grow_inputs: bool, use_cache: bool,
                     final_length: int, num_beams: int, num_return_sequences: int, length_penalty: float,
                     early_stopping: Union[bool, str], eos_ids: Optional[Tensor], pad: Optional[int],
                     processors: Dict[str, Any]) -> Tensor:
        """Deterministic beam search, with Transformers' (vectorised, 5.x) rules.

        Each row of ``ids`` (B, S) becomes K = ``num_beams`` beams; ``model_kwargs``
        (from :meth:`_start_generation`) and the penalty's ``skip`` are repeated per
        beam, an encoder's output included.  Only beam 0 starts live (the others
        score -1e9).  Each step: log-softmax of the last logits, the processors
        (:func:`_apply_processors` on log-probabilities), plus each beam's running
        sum; the best ``max(2, 1 + n_eos) * K`` continuations of the K * V of a row
        are kept.  Those that end (an EOS id, or ``final_length`` reached) score
        ``sum_logprobs / generated_length ** length_penalty`` and join the row's K
        finished hypotheses when among the first K continuations and better than
        the worst one; the best K others run on (the cache is reordered to them).

        A row takes no more hypotheses once it cannot improve: its best running
        beam, scored with the current generated length (with ``final_length``'s
        when ``early_stopping="never"`` and ``length_penalty > 0``), is no better
        than its worst hypothesis; with ``early_stopping=True`` also once it
        holds K hypotheses.  The search ends when no row can improve, every
        continuation ended, or (``early_stopping=True``) every row is full.

        Returns:
            (B * ``num_return_sequences``, S + n): each row's best hypotheses, best
            first, padded after their end with ``pad`` (Transformers 5 pads with
            EOS instead when ``pad`` is 0); n is the longest returned
            hypothesis' generated length.
        """
        batch, prompt_length = ids.shape
        if final_length <= prompt_length:
            return ids.repeat_interleave(num_return_sequences, dim=0)
        device, beams = ids.device, num_beams
        keep = max(2, 1 + (len(eos_ids) if eos_ids is not None else 0)) * beams
        for key, value in model_kwargs.items():
            model_kwargs[key] = _repeat_rows(value, beams)
        processors = {**processors, "skip": _repeat_rows(processors["skip"], beams)}
        fill = pad if pad is not None else 0        # pad is None only without EOS ids: then the fill never shows

        running = torch.full((batch, beams, final_length), fill, dtype=torch.long, device=device)
        running[:, :, :prompt_length] = ids[:, None, :]
        running_scores = torch.zeros(batch, beams, device=device)
        running_scores[:, 1:] = -1e9
        finished, finished_scores = running.clone(), torch.full((batch, beams), -1e9, device=device)
        finished_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)  # generated tokens
        is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
        improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
        first_k = torch.arange(keep, device=device) < beams                                  # (keep,)
        row_offsets = torch.arange(batch, device=device)[:, None] * beams
        past_key_values, length = None, prompt_length

        def take(tensor: Tensor, index: Tensor) -> Tensor:          # tensor (B, N, ...), index (B, M)
            return tensor.take_along_dim(index.view(*index.shape, *([1] * (tensor.dim() - 2))), dim=1)

        while True:
            flat = running[:, :, :length].reshape(batch * beams, length)                      # (B*K, L)
            inputs = self.prepare_inputs_for_generation(flat, past_key_values=past_key_values, use_cache=use_cache,
                                                        **model_kwargs)
            outputs = self(**inputs, return_dict=True)
            if use_cache:
                past_key_values = outputs.past_key_values
            logits = outputs.logits[:, -1, :].to(dtype=torch.float32, device=device, copy=True)     # (B*K, V)
            del outputs
            log_probs = _apply_processors(torch.log_softmax(logits, dim=-1), flat, eos_ids=eos_ids, **processors)
            vocab = log_probs.shape[-1]
            totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)
            top_scores, top_index = torch.topk(totals, keep)                                     # (B, keep)
            parents, tokens = top_index // vocab, top_index % vocab
            candidates = take(running, parents)
            candidates[:, :, length] = tokens
            ended = torch.full_like(tokens, length + 1 >= final_length, dtype=torch.bool)
            if eos_ids is not None:
                ended = ended | torch.isin(tokens, eos_ids)

            # the best K continuations that did not end run on
            live_scores = top_scores + ended.float() * -1e9
            chosen = torch.topk(live_scores, beams)[1]
            running, running_scores = take(candidates, chosen), take(live_scores, chosen)
            parents = take(parents, chosen)

            # ended continuations among the first K compete with the row's hypotheses
            new = ended & first_k
            scores = top_scores / ((length + 1 - prompt_length) ** length_penalty)
            scores += (is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)).float() * -1e9
            scores += (~improvable).float() * -1e9
            scores += (~new).float() * -1e9
            merged_scores = torch.cat([finished_scores, scores], dim=1)
            best = torch.topk(merged_scores, beams)[1]
            finished = take(torch.cat([finished, candidates], dim=1), best)
            finished_scores = take(merged_scores, best)
            finished_lengths = take(torch.cat([finished_lengths, torch.full_like(tokens, length + 1 - prompt_length)],
                                              dim=1), best)
            is_finished = take(torch.cat([is_finished, new], dim=1), best)

            if past_key_values is not None:
                past_key_values.reorder_cache((parents + row_offsets).flatten())
            if grow_inputs:
                self._grow_inputs(model_kwargs)
            length += 1
            if early_stopping == "never" and length_penalty > 0:
                best_length = final_length - prompt_length
            else:
                best_length = length - prompt_length
            best_running = running_scores[:, :1] / (best_length ** length_penalty)
            worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], -1e9)
            improvable = improvable & (best_running > worst).any(dim=-1, keepdim=True)
            if not bool(improvable.any()) or bool(ended.all()) or (early_stopping is True and bool(is_finished.all())):
                break

        finished = finished[:, :num_return_sequences].reshape(batch * num_return_sequences, final_length)
        return finished[:, :prompt_length + int(finished_lengths[:, :num_return_sequences].max())]

    def _generation_settings(self, generation_config: Optional[GenerationConfig], model_kwargs: Dict[str, Any],
                             arguments: Dict[str, Any]) -> Dict[str, Any]:
        """The options of one ``generate`` call, by precedence: ``arguments`` and the
        options of ``_UNSUPPORTED`` in ``model_kwargs`` (popped), that are not None;
        ``generation_config``; ``self.generation_config``; ``_DEFAULTS``, and the model
        config for the token ids.  A source that sets either value of a length pair
        (``max_new_tokens``/``max_length``, ``min_new_tokens``/``min_length``)
        replaces both values of the sources below it.

        Raises:
            TypeError: ``generation_config`` is neither a :class:`GenerationConfig` nor has ``to_dict()``.
            NotImplementedError: an option of ``_UNSUPPORTED`` is not neutral.
        """
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            generation_config = GenerationConfig.from_dict(as_generation_config_dict(generation_config))
        passed = {name: model_kwargs.pop(name) for name in (*_UNSUPPORTED, *_OPTIONS) if name in model_kwargs}
        sources = [config.to_dict() for config in (getattr(self, "generation_config", None), generation_config)
                   if config is not None]
        sources.append({**passed, **arguments})
        settings: Dict[str, Any] = {}
        for source in sources:
            source = {name: value for name, value in source.items() if value is not None}
            for pair in _LENGTH_PAIRS:
                if any(name in source for name in pair):
                    for name in pair:
                        settings.pop(name, None)
            settings.update(source)
        for name, neutral in _UNSUPPORTED.items():
            value = settings.get(name)
            if not _is_neutral(value, neutral):
                origin = "" if name in passed else f" (set by the generation config; pass {name}={neutral!r})"
                raise NotImplementedError(f"generate(): {name}={value!r} is not supported{origin}: greedy decoding, "
                                          "sampling with temperature/top_k/top_p/repetition_penalty and "
                                          "deterministic beam search only")
        for name, default in _DEFAULTS.items():
            settings.setdefault(name, default)
        for name in _TOKEN_IDS:
            if settings.get(name) is None:
                settings[name] = getattr(self.config, name, None)
        return settings

    def _start_generation(self, input_ids: Tensor, attention_mask: Tensor, model_kwargs: Dict[str, Any],
                          decoder_start_token_id: Optional[int],
                          settings: Optional[Dict[str, Any]] = None) -> Tuple[Tensor, bool]:
        """The sequence the loop grows, and ``model_kwargs`` filled in (see the hook contract).

        ``decoder_start_token_id`` starts an encoder-decoder's sequence (None: an error).
        ``settings`` asks the encoder for its attentions / hidden states when they are returned.

        Returns ``(ids, grow)``: ``grow`` is True when the per-token inputs
        (mask, positions) must gain a column per step (decoder-only).
        """
        batch = input_ids.shape[0]
        if getattr(self.config, "is_encoder_decoder", False):
            encoder_outputs = model_kwargs.pop("encoder_outputs", None)
            if encoder_outputs is None:
                flags = {f"output_{name}": True for name in recorded_outputs(settings or {})
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
                settings: Dict[str, Any], pad: Optional[int], eos: Optional[List[int]]) -> Tuple[Tensor, Tensor, int]:
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
            if settings["num_beams"] > 1:
                raise NotImplementedError("generate(): inputs_embeds with beam search is not supported")
            if input_ids is None:
                input_ids = torch.ones((embeds.shape[0], 0), dtype=torch.long, device=embeds.device)
            elif tuple(input_ids.shape) != tuple(embeds.shape[:2]):
                raise ValueError(f"generate(): input_ids {tuple(input_ids.shape)} and inputs_embeds "
                                 f"{tuple(embeds.shape)} must cover the same (batch, seq) positions")
            if attention_mask is None:
                attention_mask = (self._default_attention_mask(input_ids, pad, eos) if input_ids.shape[1]
                                  else torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device))
            return input_ids, attention_mask, embeds.shape[1] - input_ids.shape[1]
        if input_ids is None:
            if settings["bos_token_id"] is None:
                raise ValueError("generate() needs input_ids (or a bos_token_id to start from)")
            input_ids = torch.full((1, 1), settings["bos_token_id"], dtype=torch.long, device=self.device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = self._default_attention_mask(input_ids, pad, eos)
        return input_ids, attention_mask, 0

    def _step_closure(self, model_kwargs: Dict[str, Any], past_key_values: Any, use_cache: bool, grow: bool,
                      embeds: Optional[Tensor], offset: int, settings: Dict[str, Any]):
        """``step(ids) -> model output`` for :func:`decode`: it keeps the cache (``step.state["past"]``),
        feeds ``embeds`` at the first step only (``offset`` placeholder ids stand for positions
        given only as embeddings, so the hook's cache slicing lines up), and grows the per-token inputs."""
        state = {"past": past_key_values, "embeds": embeds}
        flags = {f"output_{name}": True for name in recorded_outputs(settings) if name in ("attentions", "hidden_states")}

        def step(ids: Tensor) -> Any:
            if offset:
                ids = torch.cat([ids.new_zeros((ids.shape[0], offset)), ids], dim=1)
            inputs = self.prepare_inputs_for_generation(ids, past_key_values=state["past"], use_cache=use_cache,
                                                        **model_kwargs)
            if state["embeds"] is not None:
                inputs.pop("input_ids", None)
                inputs["inputs_embeds"], state["embeds"] = state["embeds"], None
            outputs = self(**inputs, **flags, return_dict=True)
            if use_cache:
                state["past"] = outputs.past_key_values
            if grow:
                self._grow_inputs(model_kwargs)
            return outputs

        step.state = state
        return step

    def _generate_output(self, result: Dict[str, Any], step: Any, model_kwargs: Dict[str, Any],
                         settings: Dict[str, Any]) -> Union[Tensor, ModelOutput]:
        """The ids, or (``return_dict_in_generate``) Transformers' output class for them."""
        if not settings.get("return_dict_in_generate"):
            return result["sequences"]
        result = {**result, "past_key_values": step.state["past"]}
        if not getattr(self.config, "is_encoder_decoder", False):
            return GenerateDecoderOnlyOutput(**result)
        encoder_outputs = model_kwargs.get("encoder_outputs")
        if settings.get("output_attentions"):
            result["encoder_attentions"] = getattr(encoder_outputs, "attentions", None)
        if settings.get("output_hidden_states"):
            result["encoder_hidden_states"] = getattr(encoder_outputs, "hidden_states", None)
        return GenerateEncoderDecoderOutput(**result)

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
