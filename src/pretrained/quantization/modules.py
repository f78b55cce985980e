"""Quantized replacements for ``nn.Linear``; their state dicts are the on-disk layouts.

Every module keeps its quantized weight as a frozen ``weight`` parameter (so
``num_parameters`` and device placement see it) and its scales as buffers.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import formats


def _empty_param(shape, dtype, device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class QuantizedLinear(nn.Module):
    """Base: shapes, bias and the ``F.linear`` fallback on the dequantized weight."""

    quant_method = ""
    values_per_element = 1  # how many weights one stored element of ``weight`` holds

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.bias = _empty_param((out_features,), compute_dtype, device) if bias else None

    def dequantized_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` in the compute dtype with the dequantized weight."""
        weight = self.dequantized_weight(self.compute_dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta", dtype=self.compute_dtype)
        linear.weight = nn.Parameter(weight)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().to(self.compute_dtype).clone())
        return linear

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _flat_call(x: torch.Tensor, fn, module: "QuantizedLinear") -> torch.Tensor:
    """``fn`` (a weight-only kernel over 2-D activations) on ``x`` of any leading shape.

    The CPU kernels have no derivative; when ``x`` needs a gradient (an adapter or
    prompt trained below this layer) :class:`_KernelMatmul` supplies it.
    """
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = _KernelMatmul.apply(flat, fn, module) if flat.requires_grad and torch.is_grad_enabled() else fn(flat)
    return out.reshape(*x.shape[:-1], out.shape[-1])


class _KernelMatmul(torch.autograd.Function):
    """``fn(x)`` forward; the input's gradient through the dequantized (frozen) weight backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn, module: "QuantizedLinear") -> torch.Tensor:
        ctx.module = module
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.module.dequantized_weight(grad.dtype)                  # (out, in)
        return grad @ weight, None, None


class Int8Linear(QuantizedLinear):
    """bitsandbytes' ``Linear8bitLt`` layout: ``weight`` int8 ``[out, in]`` + ``SCB`` float32 ``[out]``.

    On the CPU the matmul is ``torch._weight_int8pack_mm`` (weight-only: the
    activations stay in floating point); elsewhere the dequantized weight.
    """

    quant_method = "bitsandbytes_8bit"

    def __init__(self, in_features, out_features, bias=True, compute_dtype=torch.float32, device=None):
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.weight = _empty_param((out_features, in_features), torch.int8, device)
        self.register_buffer("SCB", torch.empty(out_features, dtype=torch.float32, device=device))

    def dequantized_weight(self, dtype=None):
        return formats.dequantize_int8_rows(self.weight, self.SCB, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return self._fallback(x)
        scales = self._kernel_scales(x.dtype)
        out = _flat_call(x, lambda a: torch._weight_int8pack_mm(a, self.weight, scales), self)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def _kernel_scales(self, dtype: torch.dtype) -> torch.Tensor:
        """``SCB / 127`` in ``dtype``, computed once per SCB value (a decode step would redo it per layer)."""
        scb = self.SCB
        cached = self.__dict__.get("_scales")  # (SCB tensor, its version, dtype, scales)
        if cached is None or cached[0] is not scb or cached[1] != scb._version or cached[2] != dtype:
            cached = self.__dict__["_scales"] = (scb, scb._version, dtype, (scb * (1.0 / 127)).to(dtype))
        return cached[3]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)  # "row", as bitsandbytes


class Linear4bit(QuantizedLinear):
    """bitsandbytes' ``Linear4bit`` layout (nf4 / fp4, optionally double-quantized), run by dequantizing.

    Buffers ``weight_absmax`` etc. are saved as ``weight.absmax`` etc. plus the
    packed ``weight.quant_state.bitsandbytes__<type>`` JSON tensor.
    """

    quant_method = "bitsandbytes_4bit"
    values_per_element = 2
    _STATE_NAMES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")

    def __init__(self, in_features, out_features, bias=True, compute_dtype=torch.float32, device=None, *,
                 quant_type="nf4", double_quant=False, blocksize=64, storage_dtype=torch.uint8):
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        n = in_features * out_features
        self.quant_type, self.blocksize, self.double_quant = quant_type, blocksize, double_quant
        self.storage_dtype = storage_dtype
        self.weight = _empty_param(((n + 1) // 2 // storage_dtype.itemsize, 1), storage_dtype, device)
        blocks = -(-n // blocksize)
        self.register_buffer("weight_absmax", torch.empty(blocks, dtype=torch.uint8 if double_quant
                                                          else torch.float32, device=device))
        self.register_buffer("weight_quant_map", torch.empty(16, dtype=torch.float32, device=device))
        self.nested_offset = 0.0
        self.nested_blocksize = formats.NESTED_BLOCKSIZE
        self.weight_dtype = compute_dtype  # the dtype bitsandbytes records as the original one
        if double_quant:
            nested = -(-blocks // formats.NESTED_BLOCKSIZE)
            self.register_buffer("weight_nested_absmax", torch.empty(nested, dtype=torch.float32, device=device))
            self.register_buffer("weight_nested_quant_map", torch.empty(256, dtype=torch.float32, device=device))

    def dequantized_weight(self, dtype=None):
        nested = None
        if self.double_quant:
            nested = {"nested_absmax": self.weight_nested_absmax, "nested_quant_map": self.weight_nested_quant_map,
                      "nested_offset": self.nested_offset, "nested_blocksize": self.nested_blocksize}
        return formats.dequantize_4bit(self.weight, self.weight_absmax, self.weight_quant_map,
                                       shape=(self.out_features, self.in_features), blocksize=self.blocksize,
                                       dtype=dtype or self.compute_dtype, nested=nested)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fallback(x.to(self.compute_dtype)).to(x.dtype)

    def quant_state(self) -> Dict[str, Any]:
        """The non-tensor items bitsandbytes packs into ``weight.quant_state.bitsandbytes__<type>``."""
        state: Dict[str, Any] = {"quant_type": self.quant_type, "blocksize": self.blocksize,
                                 "dtype": str(self.weight_dtype).replace("torch.", ""),
                                 "shape": [self.out_features, self.in_features]}
        if self.double_quant:
            state.update(nested_blocksize=self.nested_blocksize, nested_dtype="float32",
                         nested_offset=float(self.nested_offset))
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()
        for name in self._STATE_NAMES:
            tensor = self._buffers.get("weight_" + name)
            if tensor is not None:
                destination[f"{prefix}weight.{name}"] = tensor if keep_vars else tensor.detach()
        blob = json.dumps(self.quant_state()).encode("utf-8")
        destination[f"{prefix}weight.quant_state.bitsandbytes__{self.quant_type}"] = torch.tensor(
            list(blob), dtype=torch.uint8)


class Int4Linear(QuantizedLinear):
    """Group-wise int4 (our layout, see :mod:`.formats`), run by ``torch._weight_int4pack_mm_for_cpu``.

    On the CPU the weight is kept in the kernel's tiled layout (converted on
    first use); saving converts it back to the documented layout.
    """

    quant_method = "pretrained_int4"
    values_per_element = 2

    def __init__(self, in_features, out_features, bias=True, compute_dtype=torch.float32, device=None, *,
                 group_size=128):
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.group_size = group_size
        self.weight = _empty_param((out_features, in_features // 2), torch.uint8, device)
        groups = in_features // group_size
        self.register_buffer("weight_scale", torch.empty(out_features, groups, dtype=compute_dtype, device=device))
        self.register_buffer("weight_zero", torch.empty(out_features, groups, dtype=compute_dtype, device=device))
        self._scale_and_zeros: Optional[torch.Tensor] = None

    @property
    def tiled(self) -> bool:
        """Whether ``weight`` holds the CPU kernel's tiled layout (marked on the tensor itself, so a
        placement hook that swaps in a freshly read weight is seen as plain again)."""
        return bool(getattr(self.weight, "_int4_cpu_tiled", False))

    def _plain_weight(self) -> torch.Tensor:
        if not self.tiled:
            return self.weight
        return formats.from_cpu_kernel_layout(self.weight.cpu(), self.out_features, self.in_features).to(
            self.weight.device)

    def dequantized_weight(self, dtype=None):
        return formats.dequantize_int4_groups(self._plain_weight(), self.weight_scale, self.weight_zero,
                                              self.group_size, dtype or self.compute_dtype)

    def _ensure_layout(self, device: torch.device) -> None:
        want_tiled = device.type == "cpu"
        if want_tiled != self.tiled:
            data = formats.to_cpu_kernel_layout(self.weight) if want_tiled else self._plain_weight()
            self.weight = nn.Parameter(data, requires_grad=False)
            self.weight._int4_cpu_tiled = want_tiled
            self._scale_and_zeros = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            if self.tiled and self.weight.device.type != "cpu":
                self._ensure_layout(self.weight.device)
            return self._fallback(x)
        self._ensure_layout(x.device)
        sz = self._scale_and_zeros
        if sz is None or sz.dtype != x.dtype or sz.device != x.device:
            sz = self._scale_and_zeros = formats.int4_scale_and_zeros(self.weight_scale, self.weight_zero, x.dtype)
        out = _flat_call(x, lambda a: torch._weight_int4pack_mm_for_cpu(a, self.weight, self.group_size, sz), self)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.tiled:
            destination[prefix + "weight"] = self._plain_weight()
