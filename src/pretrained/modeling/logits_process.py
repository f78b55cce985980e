"""Kept for imports of ``pretrained.modeling.logits_process``: it now lives in
:mod:`pretrained.modeling.generation.logits_process`."""

from .generation.logits_process import (  # noqa: F401
    process_logits, min_p_filter, ban_repeated_ngrams, build_logits_processor, _apply_processors,
    _penalize_repetitions,
)

__all__ = ["process_logits", "min_p_filter", "ban_repeated_ngrams", "build_logits_processor"]
