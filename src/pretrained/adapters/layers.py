"""The modules an adapter puts in a model: a LoRA wrapper and a modules-to-save wrapper.

Both keep PEFT's attribute names, so ``model.state_dict()`` of a model with
adapters has the names Transformers' PEFT integration gives it:
``<target>.base_layer.weight``, ``<target>.lora_A.<adapter>.weight``,
``<target>.lora_B.<adapter>.weight``; ``<module>.original_module.*`` and
``<module>.modules_to_save.<adapter>.*``.

Shape notation: ``x`` is ``(..., in_features)``; ``lora_A`` maps ``in -> r``,
``lora_B`` maps ``r -> out``; ``ΔW = scaling · B @ A`` is ``(out, in)``
(transposed to ``(in, out)`` for a ``fan_in_fan_out`` target such as GPT-2's Conv1D).
"""

from __future__ import annotations

import copy
import ctypes
import math
import mmap
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..quantization.modules import QuantizedLinear


def linear_features(module: nn.Module) -> Optional[Tuple[int, int, bool]]:
    """``(in_features, out_features, fan_in_fan_out)`` of a Linear-like module, else ``None``.

    ``nn.Linear`` stores ``(out, in)``; a Conv1D (attributes ``nx``/``nf``, weight
    ``(nx, nf)``, as GPT-2's) stores ``(in, out)``.
    """
    if isinstance(module, (nn.Linear, QuantizedLinear)):  # a quantized base runs its own kernel; LoRA adds to it
        return module.in_features, module.out_features, False
    weight = getattr(module, "weight", None)
    nx, nf = getattr(module, "nx", None), getattr(module, "nf", None)
    if isinstance(nx, int) and isinstance(nf, int) and isinstance(weight, torch.Tensor) \
            and tuple(weight.shape) == (nx, nf):
        return nx, nf, True
    return None


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14


def _prefault_for_write(tensor: torch.Tensor) -> None:
    """Ask the kernel for writable pages of ``tensor`` in one call (best effort, CPU only).

    A weight loaded zero-copy is a copy-on-write view of the mapped checkpoint: writing
    it in place faults every page one by one (~40 ms of a 23 MB weight's ~47 ms merge).
    ``MADV_POPULATE_WRITE`` does the same copies in one system call, about 3x faster;
    where the kernel lacks it (or the memory is ordinary), nothing happens.
    """
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
            _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return
    start, page = tensor.data_ptr(), mmap.PAGESIZE
    first, last = -(-start // page) * page, (start + tensor.numel() * tensor.element_size()) // page * page
    if last > first:
        _LIBC.madvise(first, last - first, _MADV_POPULATE_WRITE)  # an error (EINVAL, ENOMEM) changes nothing


_LIBC = None


def _bare_linear(in_features: int, out_features: int, device: torch.device, dtype: torch.dtype) -> nn.Linear:
    """A bias-free ``nn.Linear`` with an uninitialised weight (no ``reset_parameters``: the caller fills it)."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = in_features, out_features
    linear.weight = nn.Parameter(torch.empty((out_features, in_features), device=device, dtype=dtype))
    linear.register_parameter("bias", None)
    return linear


class LoraLayer(nn.Module):
    """A Linear (or Conv1D) with low-rank adapters: ``y = base(x) + Σ scaling · B(A(dropout(x)))``.

    Args:
        base_layer: the wrapped module (kept as ``base_layer``; it keeps its hooks).
        fan_in_fan_out: the base stores its weight as ``(in, out)``.
    """

    def __init__(self, base_layer: nn.Module, *, fan_in_fan_out: bool) -> None:
        super().__init__()
        features = linear_features(base_layer)
        if features is None:
            raise TypeError(f"LoRA needs an nn.Linear, Conv1D or quantized linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features, self.out_features, _ = features
        self.fan_in_fan_out = fan_in_fan_out
        self.lora_dropout = nn.ModuleDict()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.r: Dict[str, int] = {}
        self.lora_alpha: Dict[str, float] = {}
        self.scaling: Dict[str, float] = {}
        self.active_adapters: List[str] = []
        self.disable_adapters = False
        self.merged_adapters: List[str] = []
        self._is_hf_initialized = True

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return getattr(self.base_layer, "bias", None)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def update_layer(self, name: str, *, r: int, lora_alpha: float, lora_dropout: float, use_rslora: bool,
                     init_lora_weights, device: torch.device, dtype: torch.dtype) -> None:
        """Add adapter ``name`` (PEFT's initialisation for ``init_lora_weights`` True / "gaussian" / False;
        ``None`` leaves the factors uninitialised, for a load that fills them)."""
        self.r[name], self.lora_alpha[name] = r, lora_alpha
        self.scaling[name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.lora_dropout[name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        a, b = _bare_linear(self.in_features, r, device, dtype), _bare_linear(r, self.out_features, device, dtype)
        if init_lora_weights is not None and device.type != "meta":  # None: left empty, a file fills them
            if init_lora_weights is False:  # nn.Linear's own initialisation of both (not a no-op)
                a.reset_parameters(), b.reset_parameters()
            else:
                if init_lora_weights is True:
                    nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
                else:  # "gaussian"
                    nn.init.normal_(a.weight, std=1 / r)
                nn.init.zeros_(b.weight)
        for module in (a, b):
            module._is_hf_initialized = True
        self.lora_A[name], self.lora_B[name] = a, b

    def delete_adapter(self, name: str) -> None:
        for table in (self.lora_A, self.lora_B, self.lora_dropout):
            if name in table:
                del table[name]
        for table in (self.r, self.lora_alpha, self.scaling):
            table.pop(name, None)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def _factors(self, name: str) -> Tuple[torch.Tensor, torch.Tensor, torch.dtype, bool]:
        """``(A, B, dtype, upcast)``: the factors to multiply (float32 for half weights on CPU, as PEFT),
        their own dtype, and whether the product goes back to it."""
        weight_a, weight_b = self.lora_A[name].weight, self.lora_B[name].weight
        dtype = weight_b.dtype
        upcast = weight_b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
        return (weight_a.float(), weight_b.float(), dtype, True) if upcast else (weight_a, weight_b, dtype, False)

    def get_delta_weight(self, name: str) -> torch.Tensor:
        """``scaling · B @ A`` in the base weight's layout (float32 math for half weights on CPU, as PEFT)."""
        weight_a, weight_b, dtype, upcast = self._factors(name)
        delta = weight_b @ weight_a                                          # (out, in)
        if self.fan_in_fan_out:
            delta = delta.T
        delta = delta * self.scaling[name]
        return delta.to(dtype) if upcast else delta

    def merge(self, names: Optional[Sequence[str]] = None) -> None:
        """Fold the adapters ``names`` (default: the active ones not yet merged) into the base weight, in place."""
        weight = self.base_layer.weight
        if isinstance(self.base_layer, QuantizedLinear):
            raise RuntimeError(f"cannot merge a LoRA adapter into quantized weights ({type(self.base_layer).__name__}):"
                               " keep the adapter unmerged, or dequantize() the model first and then merge")
        if weight.device.type == "meta":
            raise RuntimeError("cannot merge a LoRA adapter into a weight that is offloaded (on the meta device); "
                               "load the model without disk/CPU offload to merge")
        for name in names if names is not None else self.active_adapters:
            if name in self.lora_A and name not in self.merged_adapters:
                self._fold(name, subtract=False)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Take every merged adapter back out of the base weight (last merged first)."""
        while self.merged_adapters:
            self._fold(self.merged_adapters.pop(), subtract=True)

    @torch.no_grad()
    def _fold(self, name: str, *, subtract: bool) -> None:
        """Add (or subtract) ``scaling · B @ A`` into the base weight in place.

        The numbers are :meth:`get_delta_weight`'s (PEFT's), computed a band of rows at a
        time: no full-size delta is allocated (a 5632x2048 one is 46 MB of fresh pages per
        layer), and each band stays in cache."""
        weight = self.base_layer.weight  # floating point: merge() refuses quantized bases
        weight_a, weight_b, dtype, upcast = self._factors(name)
        _prefault_for_write(weight)
        left, right = (weight_a.T, weight_b.T) if self.fan_in_fan_out else (weight_b, weight_a)  # weight's rows
        rows = max(1, (1 << 20) // right.shape[1])                                             # ~4 MB bands
        band = torch.empty((min(rows, weight.shape[0]), right.shape[1]), dtype=left.dtype, device=left.device)
        for start in range(0, weight.shape[0], rows):
            stop = min(start + rows, weight.shape[0])
            delta = torch.mm(left[start:stop], right, out=band[: stop - start]).mul_(self.scaling[name])
            delta = (delta.to(dtype) if upcast else delta).to(weight.dtype)
            weight[start:stop].sub_(delta) if subtract else weight[start:stop].add_(delta)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged_adapters:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged_adapters:
            return result
        result_dtype = result.dtype
        in_place = not torch.is_grad_enabled()  # no autograd graph to keep: reuse the fresh tensors
        factors_a = self.lora_A._modules
        for name in self.active_adapters:
            lora_a = factors_a.get(name)
            if lora_a is None:
                continue
            weight_a = lora_a.weight
            h = x if x.dtype == weight_a.dtype and x.device == weight_a.device else x.to(weight_a)
            h = self.lora_B[name](lora_a(self.lora_dropout[name](h)))            # (..., out)
            h = h.mul_(self.scaling[name]) if in_place else h * self.scaling[name]
            h = h if h.device == result.device else h.to(result.device)
            result = result.add_(h) if in_place and h.dtype == result.dtype else result + h
        return result.to(result_dtype)

    def extra_repr(self) -> str:
        return f"adapters={list(self.lora_A)}, active={self.active_adapters}"


class ModulesToSaveWrapper(nn.Module):
    """A module trained and saved whole for an adapter: the active adapter's copy runs instead of the original.

    Args:
        module: the original module (kept as ``original_module``).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapters: List[str] = []
        self.disable_adapters = False
        self._is_hf_initialized = True

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save"):
                raise
            return getattr(self.original_module, name)

    def update(self, name: str) -> None:
        copied = copy.deepcopy(self.original_module)
        for module in copied.modules():
            module._is_hf_initialized = True
        self.modules_to_save[name] = copied

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def current(self) -> nn.Module:
        """The module that runs: the first active adapter's copy, else the original."""
        if not self.disable_adapters:
            for name in self.active_adapters:
                if name in self.modules_to_save:
                    return self.modules_to_save[name]
        return self.original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.current()(*args, **kwargs)


__all__ = ["LoraLayer", "ModulesToSaveWrapper", "linear_features"]
