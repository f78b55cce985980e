"""Normalisation layers shared by architectures.

Example:
    >>> import torch
    >>> norm = RMSNorm(4)
    >>> norm(torch.tensor([[1.0, -1.0, 1.0, -1.0]])).tolist()
    [[0.9999995231628418, -0.9999995231628418, 0.9999995231628418, -0.9999995231628418]]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RMSNorm", "is_rms_norm"]


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): ``weight * x / sqrt(mean(x²) + eps)``.

    The statistics are taken in float32 and the normalised value is cast back to
    the input's dtype *before* the weight multiplies it (Llama's order, which
    Transformers' ``LlamaRMSNorm`` follows; in half precision it differs in the
    last bit from scaling in float32 first).

    Args:
        hidden_size: C, the normalised (last) dimension.
        eps: added to the mean square.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:                  # (..., C) -> (..., C)
        input_dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * x.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def is_rms_norm(module: nn.Module) -> bool:
    """Whether ``module`` is an RMS norm that a generic initialisation resets to weight 1.

    This library's norms are told by type (:class:`RMSNorm` and its subclasses).
    Model code from outside the library (custom code) cannot be known by type:
    there a class whose name contains ``"RMSNorm"`` counts, Transformers 5's rule.
    """
    if isinstance(module, RMSNorm):
        return True
    cls = type(module)
    return not cls.__module__.startswith("pretrained.") and "RMSNorm" in cls.__name__
