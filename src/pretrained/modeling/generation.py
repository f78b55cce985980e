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
from .generation_checks import as_generation_config_dict, check_model_kwargs
from .outputs import ModelOutput

logger = get_logger(__name__)

__all__ = ["GenerationConfig", "GenerationMixin", "process_logits"]

GENERATION_CONFIG_NAME = "generation_config.json"
DEFAULT_MAX_NEW_TOKENS = 20
# Options of Transformers' generate that this one does not implement: refused, never ignored, whether
# passed to generate or set by a generation config.  A value of None (or an empty list) is neutral too.
_UNSUPPORTED = {
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0, "return_dict_in_generate": False, "output_scores": False,
    "assistant_model": None, "streamer": None, "logits_processor": None, "stopping_criteria": None,
    "penalty_alpha": None, "num_beam_groups": 1, "typical_p": 1.0, "min_p": None, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "forced_bos_token_id": None, "forced_eos_token_id": None, "bad_words_ids": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "guidance_scale": None, "stop_strings": None, "max_time": None,
    "diversity_penalty": 0.0, "constraints": None, "force_words_ids": None,
}
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
    _FIELDS = ("max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature",
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
    if do_sample and (num_beams > 1 or num_return_sequences > 1):
        raise NotImplementedError(f"generate(): do_sample=True with num_beams={num_beams}, num_return_sequences="
                                  f"{num_return_sequences} (beam sampling, several samples) is not supported; "
                                  "beam search is deterministic only (do_sample=False)")
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams}): "
                         "beam search returns some of its beams, greedy decoding one sequence")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty must be a float, got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def _apply_processors(scores: Tensor, ids: Tensor, penalty: Optional[float], skip: Optional[Tensor],
                      eos_ids: Optional[Tensor], min_length: int) -> Tensor:
    """The repetition penalty (``penalty`` None: none), then EOS forbidden while ``ids`` is
    shorter than ``min_length``.  ``scores`` (B, V): logits, or log-probabilities in beam search."""
    if penalty is not None:
        scores = _penalize_repetitions(scores, ids, penalty, skip)
    if eos_ids is not None and ids.shape[1] < min_length:
        vocab = torch.arange(scores.shape[-1], device=scores.device)
        scores = scores.masked_fill(torch.isin(vocab, eos_ids), -float("inf"))
    return scores


def _repeat_rows(value: Any, times: int) -> Any:
    """Each row of a tensor (or of each tensor field of a model output) repeated ``times`` times
    in place (row b becomes rows b*times ... b*times + times-1); anything else unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.repeat_interleave(times, dim=0)
    if isinstance(value, ModelOutput):
        return type(value)(**{key: _repeat_rows(field, times) for key, field in value.items()})
    return value


def _penalize_repetitions(scores: Tensor, ids: Tensor, penalty: float, skip: Optional[Tensor] = None) -> Tensor:
    """Transformers' (CTRL's) repetition penalty.

    Args:
        scores: (B, V) float logits.
        ids: (B, L) the sequence so far.
        penalty: a seen token's positive score is divided by it, a negative one multiplied.
        skip: (B,) leading positions of each row that do not count (left padding), or None.

    Returns:
        (B, V) the penalised scores.
    """
    vocab = scores.shape[-1]
    ids = ids.clamp(max=vocab)                                  # ids the head cannot produce: column V, dropped
    if skip is not None:
        positions = torch.arange(ids.shape[1], device=ids.device)
        ids = ids.masked_fill(positions < skip[:, None], vocab)
    seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    seen = seen.scatter(1, ids, True)[:, :vocab]                                 # (B, V)
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


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
        **model_kwargs: Any,
    ) -> Tensor:
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
        if do_sample:
            _check_sampling(settings["temperature"], settings["top_k"], settings.get("top_p"))
        eos = _as_id_list(settings["eos_token_id"])
        pad = settings["pad_token_id"]
        if pad is None and eos:
            pad = eos[0]
        if input_ids is None:
            if settings["bos_token_id"] is None:
                raise ValueError("generate() needs input_ids (or a bos_token_id to start from)")
            input_ids = torch.full((1, 1), settings["bos_token_id"], dtype=torch.long, device=self.device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = self._default_attention_mask(input_ids, pad, eos)

        check_model_kwargs(self, model_kwargs, known=("past_key_values", "cache"))
        if getattr(self.config, "is_encoder_decoder", False) and model_kwargs.get("decoder_input_ids") is not None:
            raise NotImplementedError("generate(): decoder_input_ids (a decoder prompt) is not supported; decoding "
                                      "starts from decoder_start_token_id")
        past_key_values = model_kwargs.pop("past_key_values", model_kwargs.pop("cache", None))
        start = settings["decoder_start_token_id"]
        ids, grow_inputs = self._start_generation(input_ids, attention_mask, model_kwargs,
                                                  start if start is not None else settings["bos_token_id"])

        prompt_length = ids.shape[1]
        if settings.get("max_new_tokens") is not None:
            max_new_tokens = settings["max_new_tokens"]
        elif settings.get("max_length") is not None:
            max_new_tokens = settings["max_length"] - prompt_length
        else:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        final_length = prompt_length + max(int(max_new_tokens), 0)
        if settings.get("min_new_tokens") is not None:
            min_length = prompt_length + settings["min_new_tokens"]
        else:
            min_length = settings.get("min_length") or 0
        penalty = float(penalty) if penalty is not None and penalty != 1.0 else None
        # Transformers leaves a decoder-only prompt's left padding out of the penalty.
        skip = (attention_mask != 0).int().argmax(dim=1).to(ids.device) if penalty and grow_inputs else None
        eos_ids = torch.tensor(eos, device=ids.device) if eos else None
        if settings["num_beams"] > 1:
            if past_key_values is not None:
                raise NotImplementedError("generate(): beam search starts from an empty cache; "
                                          "past_key_values cannot be passed")
            return self._beam_search(
                ids, model_kwargs, grow_inputs=grow_inputs, use_cache=use_cache, final_length=final_length,
                num_beams=settings["num_beams"], num_return_sequences=settings["num_return_sequences"],
                length_penalty=settings["length_penalty"], early_stopping=settings["early_stopping"],
                eos_ids=eos_ids, pad=pad, processors=dict(penalty=penalty, skip=skip, min_length=min_length))
        unfinished = torch.ones(batch, dtype=torch.long, device=ids.device)

        while ids.shape[1] < final_length:
            inputs = self.prepare_inputs_for_generation(ids, past_key_values=past_key_values, use_cache=use_cache,
                                                        **model_kwargs)
            outputs = self(**inputs, return_dict=True)
            if use_cache:
                past_key_values = outputs.past_key_values
            scores = outputs.logits[:, -1, :].to(dtype=torch.float32, device=ids.device, copy=True)   # (B, V)
            del outputs
            scores = _apply_processors(scores, ids, penalty, skip, eos_ids, min_length)
            if do_sample:
                scores = process_logits(scores, temperature=settings["temperature"], top_k=settings["top_k"],
                                        top_p=settings.get("top_p"))
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
        passed = {name: model_kwargs.pop(name) for name in _UNSUPPORTED if name in model_kwargs}
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
                          decoder_start_token_id: Optional[int]) -> Tuple[Tensor, bool]:
        """The sequence the loop grows, and ``model_kwargs`` filled in (see the hook contract).

        ``decoder_start_token_id`` starts an encoder-decoder's sequence (None: an error).

        Returns ``(ids, grow)``: ``grow`` is True when the per-token inputs
        (mask, positions) must gain a column per step (decoder-only).
        """
        batch = input_ids.shape[0]
        if getattr(self.config, "is_encoder_decoder", False):
            encoder_outputs = model_kwargs.pop("encoder_outputs", None)
            if encoder_outputs is None:
                encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask,
                                                     return_dict=True)
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
