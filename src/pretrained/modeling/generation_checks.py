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


_RECORDED = {"output_scores": "scores", "output_logits": "logits", "output_attentions": "attentions",
             "output_hidden_states": "hidden_states"}


def recorded_outputs(settings: Dict[str, Any]) -> FrozenSet[str]:
    """The per-step outputs ``generate`` collects: none unless ``return_dict_in_generate``."""
    if not settings.get("return_dict_in_generate"):
        return frozenset()
    return frozenset(name for flag, name in _RECORDED.items() if settings.get(flag))


def check_new_options(settings: Dict[str, Any], *, streamer: Any, stopping_criteria: Any) -> None:
    """Validate ``min_p``, ``no_repeat_ngram_size`` and what beam search does not take yet.

    Raises:
        ValueError: a bad ``min_p`` / ``no_repeat_ngram_size``, a streamer without ``put``/``end``.
        NotImplementedError: a streamer, stopping criteria or ``return_dict_in_generate`` with beam search.
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
        for name, value in (("streamer", streamer), ("stopping_criteria", stopping_criteria or None),
                            ("return_dict_in_generate", settings.get("return_dict_in_generate") or None)):
            if value is not None:
                raise NotImplementedError(f"generate(): {name} is not supported with beam search (num_beams > 1) "
                                          "yet; greedy decoding and sampling take it")


def generation_lengths(settings: Dict[str, Any], prompt_length: int, offset: int, default_new: int) -> tuple:
    """``(final_length, min_length)`` of the sequence ``generate`` grows, as Transformers 5.25 computes them.

    ``offset``: prompt positions given only as ``inputs_embeds`` (they count in
    ``max_length``/``min_length`` but are not in the returned ids).

    Raises:
        ValueError: ``max_new_tokens <= 0`` or a ``max_length`` the prompt already
            reaches, as Transformers 5.25 (4.37 only warned, then still decoded).
    """
    max_new, max_length = settings.get("max_new_tokens"), settings.get("max_length")
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
        final_length = prompt_length + default_new
    if settings.get("min_new_tokens") is not None:
        min_length = prompt_length + settings["min_new_tokens"]
    else:
        min_length = max((settings.get("min_length") or 0) - offset, 0)
    return final_length, min_length
