"""Stopping criteria for ``generate``, compatible with Transformers' ``StoppingCriteria``.

A criterion is any callable ``(input_ids (B, L), scores) -> (B,) bool tensor or
bool``: True stops that row (every row for a plain bool).  ``scores`` is the
tuple of processed scores so far when ``output_scores=True`` (with
``return_dict_in_generate``), else None, as in Transformers.  ``generate``
combines the criteria given to it with its own length limit and EOS ids.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["StoppingCriteria", "StoppingCriteriaList", "MaxLengthCriteria"]


class StoppingCriteria:
    """Base class: subclasses implement ``__call__(input_ids, scores, **kwargs) -> (B,) bool tensor``."""

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class StoppingCriteriaList(list):
    """A list of criteria; calling it ORs their answers into a (B,) bool tensor."""

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | torch.as_tensor(criterion(input_ids, scores, **kwargs), device=input_ids.device)
        return done

    @property
    def max_length(self) -> Optional[int]:
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None


class MaxLengthCriteria(StoppingCriteria):
    """Stops every row once the sequence holds ``max_length`` tokens."""

    def __init__(self, max_length: int) -> None:
        self.max_length = int(max_length)

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[-1] >= self.max_length, dtype=torch.bool,
                          device=input_ids.device)
