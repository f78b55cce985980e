"""Checks of what ``generate`` is given: keyword names, generation configs of other libraries.

Transformers' ``generate`` raises on a keyword that neither it nor the model
uses (``_validate_model_kwargs``), so a misspelt option (``max_new_tokns=2``)
never runs with the defaults; these helpers do the same here.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, FrozenSet, Iterable, Set

__all__ = ["check_model_kwargs", "as_generation_config_dict", "check_new_options", "generation_lengths",
           "recorded_outputs"]


def _parameters(function: Any) -> Set[str]:
    try:
        return set(inspect.signature(function).parameters) - {"self"}
    except (TypeError, ValueError):
        return set()


def _takes_var_keyword(function: Any) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False


def _accepted(model: Any) -> Set[str]:
    """The keywords ``model``'s generation hook and forward accept, as Transformers counts them."""
    hook = model.prepare_inputs_for_generation
    names = _parameters(hook)
    if _takes_var_keyword(hook):
        names |= _parameters(model.forward)
    if getattr(model.config, "is_encoder_decoder", False):
        encoder = model.get_encoder() if hasattr(model, "get_encoder") else getattr(model, "encoder", None)
        if encoder is not None:
            names |= _parameters(getattr(encoder, "forward", encoder))
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "decoder", None)
        if decoder is not None:
            names |= {f"decoder_{name}" for name in _parameters(getattr(decoder, "forward", decoder))}
    return names - {"args", "kwargs", "model_kwargs"}


def check_model_kwargs(model: Any, model_kwargs: Dict[str, Any], known: Iterable[str] = ()) -> None:
    """Refuse keywords of ``generate`` that nothing uses.

    Args:
        model: the generating model.
        model_kwargs: what is left of ``generate``'s keywords once its own
            options were taken out; a value of None is ignored, as in Transformers.
        known: further names ``generate`` handles itself.

    Raises:
        ValueError: naming every keyword that neither ``generate`` nor the
            model's ``prepare_inputs_for_generation`` / ``forward`` (for an
            encoder-decoder, also its encoder's, and its decoder's with a
            ``decoder_`` prefix) accepts; a typo in a generation option shows up here.
    """
    accepted = _accepted(model) | set(known)
    unused = [key for key, value in model_kwargs.items() if value is not None and key not in accepted]
    if unused:
        raise ValueError(f"generate(): the following keyword arguments are not used by the model nor by generate: "
                         f"{unused} (a misspelt generation option shows up here too)")


def as_generation_config_dict(config: Any) -> Dict[str, Any]:
    """The set values of another library's generation config (anything with ``to_dict()``, such
    as a ``transformers.GenerationConfig``), as a dict for :class:`GenerationConfig`.

    Unset values (None), bookkeeping keys (``_commit_hash``, ``transformers_version``) are left out.

    Raises:
        TypeError: ``config`` has no ``to_dict()`` returning a dict.
    """
    to_dict = getattr(config, "to_dict", None)
    values = to_dict() if callable(to_dict) else None
    if not isinstance(values, dict):
        raise TypeError(f"generation_config must be a GenerationConfig (or an object whose to_dict() returns a dict, "
                        f"such as a transformers.GenerationConfig), got {type(config).__name__}")
    return {key: value for key, value in values.items()
            if value is not None and not key.startswith("_") and key != "transformers_version"}


def recorded_outputs(settings: Dict[str, Any]) -> FrozenSet[str]:
    """The per-step outputs ``generate`` collects for these options (a dict): see
    :attr:`GenerationSettings.record <pretrained.modeling.generation.settings.GenerationSettings.record>`."""
    from .settings import _RECORDED, GenerationSettings

    names = ("return_dict_in_generate", *_RECORDED)
    return GenerationSettings(**{name: settings.get(name) for name in names}).record


def check_new_options(settings: Dict[str, Any], *, streamer: Any, stopping_criteria: Any) -> None:
    """Validate ``min_p``, ``no_repeat_ngram_size`` and what beam search does not take yet.

    Raises:
        ValueError: a bad ``min_p`` / ``no_repeat_ngram_size``, a streamer without ``put``/``end``.
        NotImplementedError: a streamer or stopping criteria with beam search.
    """
    min_p, ngram = settings.get("min_p"), settings.get("no_repeat_ngram_size")
    if min_p is not None and (isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0 <= min_p <= 1):
        raise ValueError(f"min_p must be a float in [0, 1], got {min_p!r}")
    if ngram is not None and (isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 0):
        raise ValueError(f"no_repeat_ngram_size must be a non-negative int, got {ngram!r}")
    if streamer is not None and not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise ValueError(f"streamer must have put(tensor) and end() (a TextStreamer-like object), got "
                         f"{type(streamer).__name__}")
    if stopping_criteria is not None and any(not callable(c) for c in stopping_criteria):
        raise ValueError("stopping_criteria must be a list of callables (input_ids, scores) -> bool tensor")
    if settings["num_beams"] > 1:
        for name, value in (("streamer", streamer), ("stopping_criteria", stopping_criteria or None)):
            if value is not None:
                raise NotImplementedError(f"generate(): {name} is not supported with beam search (num_beams > 1) "
                                          "yet; greedy decoding and sampling take it")


def generation_lengths(settings: Dict[str, Any], prompt_length: int, offset: int, default_new: int) -> tuple:
    """``(final_length, min_length)`` for these options (a dict), ``default_new`` new tokens when
    neither length is set: see :meth:`GenerationSettings.lengths
    <pretrained.modeling.generation.settings.GenerationSettings.lengths>`."""
    from .settings import GenerationSettings

    values = {name: settings.get(name) for name in ("max_new_tokens", "max_length", "min_new_tokens", "min_length")}
    if values["max_new_tokens"] is None and values["max_length"] is None:
        values["max_new_tokens"] = default_new
    return GenerationSettings(**values).lengths(prompt_length, offset)
