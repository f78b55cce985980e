"""Kept for imports of ``pretrained.modeling.stopping_criteria``: it now lives in
:mod:`pretrained.modeling.generation.stopping_criteria`."""

from .generation.stopping_criteria import (  # noqa: F401
    StoppingCriteria, StoppingCriteriaList, MaxLengthCriteria,
)

__all__ = ["StoppingCriteria", "StoppingCriteriaList", "MaxLengthCriteria"]
