"""The options of one ``generate`` call, merged and validated once, as a frozen object.

:func:`build_settings` reads, by precedence, the arguments of ``generate``
(and the options of :data:`_UNSUPPORTED`/``_OPTIONS`` among its keywords),
the ``generation_config`` argument, ``model.generation_config``, the defaults
of Transformers, and the model config for the token ids; it checks every value
and returns a :class:`GenerationSettings` that the rest of the call only reads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from torch import Tensor

from .checks import as_generation_config_dict, check_new_options
from .config import _OPTIONS, _TOKEN_IDS, GenerationConfig

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "GenerationSettings", "build_settings"]

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
# Each pair states one limit two ways; whoever sets either one (argument, generation config) sets the limit.
_LENGTH_PAIRS = (("max_new_tokens", "max_length"), ("min_new_tokens", "min_length"))
# Used when neither the arguments nor a generation config set them (Transformers' defaults).
_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "num_beams": 1, "num_return_sequences": 1,
             "length_penalty": 1.0, "early_stopping": False}
_RECORDED = {"output_scores": "scores", "output_logits": "logits", "output_attentions": "attentions",
             "output_hidden_states": "hidden_states"}


@dataclass(frozen=True)
class GenerationSettings:
    """Every option ``generate`` reads, fixed for the call.

    ``eos_token_id`` is a list of ids or None (none given, or ``[]``: never stop
    early); ``pad_token_id`` defaults to the first EOS id.  Unset options are None.
    """

    max_new_tokens: Optional[int] = None
    max_length: Optional[int] = None
    min_new_tokens: Optional[int] = None
    min_length: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = 50
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    no_repeat_ngram_size: Optional[int] = None
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[List[int]] = None
    pad_token_id: Optional[int] = None
    decoder_start_token_id: Optional[int] = None
    return_dict_in_generate: Optional[bool] = None
    output_scores: Optional[bool] = None
    output_logits: Optional[bool] = None
    output_attentions: Optional[bool] = None
    output_hidden_states: Optional[bool] = None

    @property
    def record(self) -> FrozenSet[str]:
        """The per-step outputs to collect (``scores``, ``logits``, ``attentions``,
        ``hidden_states``): none unless ``return_dict_in_generate``."""
        if not self.return_dict_in_generate:
            return frozenset()
        return frozenset(name for flag, name in _RECORDED.items() if getattr(self, flag))

    @property
    def penalty(self) -> Optional[float]:
        """The repetition penalty as a float, None when there is none (unset or 1.0)."""
        value = self.repetition_penalty
        return float(value) if value is not None and value != 1.0 else None

    @property
    def sampling(self) -> Optional[Dict[str, Any]]:
        """Sampling's processor options, None for greedy decoding and beam search."""
        if not self.do_sample:
            return None
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p}

    def lengths(self, prompt_length: int, offset: int) -> Tuple[int, int]:
        """``(final_length, min_length)`` of the sequence grown from ``prompt_length`` ids, as
        Transformers 5.25 computes them; ``offset`` prompt positions exist only as embeddings.

        Raises:
            ValueError: ``max_new_tokens <= 0`` or a ``max_length`` the prompt already reaches.
        """
        max_new, max_length = self.max_new_tokens, self.max_length
        if max_new is not None:
            if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new <= 0:
                raise ValueError(f"max_new_tokens must be an int greater than 0, got {max_new!r}")
            final_length = prompt_length + max_new
        elif max_length is not None:
            final_length = int(max_length) - offset
            if final_length <= prompt_length:
                raise ValueError(f"the input is {prompt_length + offset} tokens long but max_length is {max_length}: "
                                 "nothing to generate; increase max_length or set max_new_tokens")
        else:
            final_length = prompt_length + DEFAULT_MAX_NEW_TOKENS
        if self.min_new_tokens is not None:
            return final_length, prompt_length + self.min_new_tokens
        return final_length, max((self.min_length or 0) - offset, 0)


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


def _merge(model: Any, generation_config: Any, model_kwargs: Dict[str, Any],
           arguments: Dict[str, Any]) -> Tuple[Dict[str, Any], set]:
    """The merged options (see :func:`build_settings`) and the names passed as keywords."""
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        generation_config = GenerationConfig.from_dict(as_generation_config_dict(generation_config))
    passed = {name: model_kwargs.pop(name) for name in (*_UNSUPPORTED, *_OPTIONS) if name in model_kwargs}
    sources = [config.to_dict() for config in (getattr(model, "generation_config", None), generation_config)
               if config is not None]
    sources.append({**passed, **arguments})
    merged: Dict[str, Any] = {}
    for source in sources:
        source = {name: value for name, value in source.items() if value is not None}
        for pair in _LENGTH_PAIRS:
            if any(name in source for name in pair):
                for name in pair:
                    merged.pop(name, None)
        merged.update(source)
    return merged, set(passed)


# Why an option is refused, where a plain "not supported" would leave the caller guessing.
_WHY = {"stop_strings": "matching strings needs the tokenizer's vocabulary, and generate takes no tokenizer; "
                        "pass stopping_criteria=[criterion] whose criterion(input_ids, scores) decodes the ids "
                        "and checks the text"}


def _refuse_unsupported(merged: Dict[str, Any], passed: set) -> None:
    for name, neutral in _UNSUPPORTED.items():
        value = merged.get(name)
        if not _is_neutral(value, neutral):
            origin = "" if name in passed else f" (set by the generation config; pass {name}={neutral!r})"
            why = _WHY.get(name, "greedy decoding, sampling with temperature/top_k/top_p/repetition_penalty and "
                                 "deterministic beam search only")
            raise NotImplementedError(f"generate(): {name}={value!r} is not supported{origin}: {why}")


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


def build_settings(model: Any, generation_config: Any, model_kwargs: Dict[str, Any], arguments: Dict[str, Any], *,
                   streamer: Any = None, stopping_criteria: Any = None) -> GenerationSettings:
    """The settings of one ``generate`` call, validated.

    Precedence: ``arguments`` and the generation options among ``model_kwargs``
    (popped from it), that are not None; ``generation_config``;
    ``model.generation_config``; Transformers' defaults, and ``model.config`` for
    the token ids.  A source that sets either value of a length pair
    (``max_new_tokens``/``max_length``, ``min_new_tokens``/``min_length``)
    replaces both values of the sources below it.

    Raises:
        TypeError: ``generation_config`` is neither a :class:`GenerationConfig` nor has ``to_dict()``.
        NotImplementedError: an option of ``_UNSUPPORTED`` is not neutral, beam sampling, or what
            beam search does not take.
        ValueError: a bad value (named).
    """
    merged, passed = _merge(model, generation_config, model_kwargs, arguments)
    _refuse_unsupported(merged, passed)
    for name, default in _DEFAULTS.items():
        merged.setdefault(name, default)
    for name in _TOKEN_IDS:
        if merged.get(name) is None:
            merged[name] = getattr(model.config, name, None)
    _check_penalties(merged.get("repetition_penalty"), merged.get("min_new_tokens"), merged.get("min_length"))
    _check_beams(merged["num_beams"], merged["num_return_sequences"], merged["length_penalty"],
                 merged["early_stopping"], merged["do_sample"])
    check_new_options(merged, streamer=streamer, stopping_criteria=stopping_criteria)
    if merged["do_sample"]:
        _check_sampling(merged["temperature"], merged["top_k"], merged.get("top_p"))
    values = {field.name: merged.get(field.name) for field in fields(GenerationSettings)}
    values["eos_token_id"] = eos = _as_id_list(merged["eos_token_id"])
    if values["pad_token_id"] is None and eos:
        values["pad_token_id"] = eos[0]
    return GenerationSettings(**values)
