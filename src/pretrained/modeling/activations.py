"""Activation functions by the names that ``config.json`` files use.

``ACT2FN[name]`` returns a fresh ``nn.Module`` each time, so a model may hold
its own instance (``config.hidden_act = "gelu"`` -> ``ACT2FN["gelu"]``).  The
formulas are the ones the original checkpoints were trained with, term for
term, so outputs agree with Transformers to the last bit where the same torch
kernels are used.

Example:
    >>> import torch
    >>> from pretrained.modeling.activations import ACT2FN
    >>> act = ACT2FN["gelu_new"]
    >>> act(torch.zeros(2)).tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["ACT2CLS", "ACT2FN", "get_activation"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class GELUActivation(nn.Module):
    """Exact GELU, ``x * Phi(x)`` (BERT's ``"gelu"``); ``use_gelu_python`` spells out the erf."""

    def __init__(self, use_gelu_python: bool = False) -> None:
        super().__init__()
        self.use_gelu_python = use_gelu_python

    def forward(self, x: Tensor) -> Tensor:
        if self.use_gelu_python:
            return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return nn.functional.gelu(x)


class NewGELUActivation(nn.Module):
    """The tanh approximation as OpenAI GPT/GPT-2 wrote it (``"gelu_new"``)."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))


class GELUTanh(nn.Module):
    """The tanh approximation by torch's fused kernel (``"gelu_pytorch_tanh"``)."""

    def __init__(self, use_gelu_tanh_python: bool = False) -> None:
        super().__init__()
        self.use_gelu_tanh_python = use_gelu_tanh_python

    def forward(self, x: Tensor) -> Tensor:
        if self.use_gelu_tanh_python:
            return x * 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))
        return nn.functional.gelu(x, approximate="tanh")


class FastGELUActivation(nn.Module):
    """``"gelu_fast"``: the tanh approximation with the constant folded in."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class AccurateGELUActivation(nn.Module):
    """``"gelu_accurate"`` (MEGA): the tanh approximation with ``math.sqrt(2 / pi)``."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3))))


class QuickGELUActivation(nn.Module):
    """``"quick_gelu"`` (CLIP): ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ClippedGELUActivation(nn.Module):
    """Exact GELU clipped to ``[min, max]`` (``"gelu_10"``: [-10, 10])."""

    def __init__(self, min: float, max: float) -> None:
        if min > max:
            raise ValueError(f"min should be <= max (got min={min}, max={max})")
        super().__init__()
        self.min, self.max = min, max

    def forward(self, x: Tensor) -> Tensor:
        return torch.clip(nn.functional.gelu(x), self.min, self.max)


class SiLUActivation(nn.Module):
    """``x * sigmoid(x)`` (``"silu"``; ``"swish"`` is the same function)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.silu(x)


class MishActivation(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.mish(x)


class LinearActivation(nn.Module):
    """The identity (``"linear"``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class LaplaceActivation(nn.Module):
    """MEGA's Laplace attention function."""

    def forward(self, x: Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> Tensor:
        x = (x - mu).div(sigma * math.sqrt(2.0))
        return 0.5 * (1.0 + torch.erf(x))


class ReLUSquaredActivation(nn.Module):
    """``relu(x) ** 2`` (``"relu2"``, Primer)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.square(nn.functional.relu(x))


_Entry = Union[type, Tuple[type, Dict[str, Any]]]

ACT2CLS: Dict[str, _Entry] = {
    "gelu": GELUActivation,
    "gelu_10": (ClippedGELUActivation, {"min": -10, "max": 10}),
    "gelu_fast": FastGELUActivation,
    "gelu_new": NewGELUActivation,
    "gelu_python": (GELUActivation, {"use_gelu_python": True}),
    "gelu_pytorch_tanh": GELUTanh,
    "gelu_python_tanh": (GELUTanh, {"use_gelu_tanh_python": True}),
    "gelu_accurate": AccurateGELUActivation,
    "hardswish": nn.Hardswish,
    "laplace": LaplaceActivation,
    "leaky_relu": nn.LeakyReLU,
    "linear": LinearActivation,
    "mish": MishActivation,
    "quick_gelu": QuickGELUActivation,
    "relu": nn.ReLU,
    "relu2": ReLUSquaredActivation,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "silu": SiLUActivation,
    "swish": SiLUActivation,
    "tanh": nn.Tanh,
    "prelu": nn.PReLU,
}


class _Activations(dict):
    """A dict of names to classes whose lookup builds a new module."""

    def __getitem__(self, name: str) -> nn.Module:
        try:
            entry = super().__getitem__(name)
        except KeyError:
            raise KeyError(f"activation function {name!r} not found; known: {sorted(self)}") from None
        cls, kwargs = entry if isinstance(entry, tuple) else (entry, {})
        return cls(**kwargs)


ACT2FN: Dict[str, nn.Module] = _Activations(ACT2CLS)


def get_activation(name: Union[str, Callable]) -> Callable:
    """The activation called ``name`` (a module), or ``name`` itself if it is already callable.

    Raises:
        KeyError: an unknown name, listing the known ones.
    """
    if callable(name):
        return name
    return ACT2FN[name]
