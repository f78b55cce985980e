"""Quantization arithmetic, in plain torch: int8 rows, bitsandbytes 4-bit blocks, grouped int4.

Layouts (what the tensors on disk mean):

* int8 (bitsandbytes ``Linear8bitLt``): ``weight`` int8 ``[out, in]`` and ``SCB``
  float32 ``[out]``, the absolute maximum of each row; ``W = weight * SCB / 127``.
* 4-bit (bitsandbytes ``Linear4bit``): the weight flattened row-major, cut into
  blocks of ``blocksize`` values, each scaled by its absmax into [-1, 1] and
  replaced by the index of the nearest of the 16 values of the nf4 / fp4 code;
  two indices a byte, the first in the high nibble; ``weight`` is uint8
  ``[ceil(n / 2), 1]``. With double quantization the float32 absmax values,
  less their mean (``nested_offset``), are quantized again with the signed
  8-bit dynamic map in blocks of 256 (``nested_absmax``, ``nested_quant_map``).
* grouped int4 (ours, see docs/quantization.md): ``weight`` uint8 ``[out, in / 2]``,
  byte ``(n, j)`` holds ``q[n, 2j]`` in its low nibble and ``q[n, 2j+1]`` in its
  high one; ``weight_scale`` / ``weight_zero`` ``[out, in / group_size]``;
  ``W[n, k] = (q[n, k] - 8) * scale[n, k // g] + zero[n, k // g]``.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch

# The 16 code values of bitsandbytes' 4-bit data types (index -> value).
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
FP4_CODE = (
    0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5, 0.1666666716337204, 0.25,
    0.0, -0.0052083334885537624, -0.6666666865348816, -1.0, -0.3333333432674408, -0.5, -0.1666666716337204,
    -0.25,
)
NESTED_BLOCKSIZE = 256


def code_4bit(quant_type: str) -> torch.Tensor:
    """The 16 float32 values of ``"nf4"`` or ``"fp4"``."""
    return torch.tensor(NF4_CODE if quant_type == "nf4" else FP4_CODE, dtype=torch.float32)


@functools.lru_cache(maxsize=1)
def _dynamic_map_tuple() -> Tuple[float, ...]:
    values = []
    # 7 exponent bits of the signed 8-bit dynamic type: fraction bits shrink as the exponent grows
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        scaled = (10 ** (-6 + i)) * means
        values += scaled.tolist() + (-scaled).tolist()
    values += [0.0, 1.0]
    return tuple(sorted(values))


def dynamic_map() -> torch.Tensor:
    """The signed 8-bit dynamic quantization map (256 sorted float32 values)."""
    return torch.tensor(_dynamic_map_tuple(), dtype=torch.float32)


# ----------------------------------------------------------------------------- int8


def row_bands(rows: int, row_bytes: int, budget: int = 4 << 20) -> List[Tuple[int, int]]:
    """``(start, stop)`` bands of rows whose float32 working copies take about ``budget`` bytes.

    Row-wise quantizers run band by band: the same numbers as on the whole matrix, but
    the temporaries stay a few MB instead of several copies of the weight in float32
    (each a fresh allocation that malloc may keep after it is freed).
    """
    step = max(1, budget // max(1, row_bytes))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def quantize_int8_rows(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns ``(int8 weight, SCB float32 row absmax)``."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scb = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start, stop in row_bands(weight.shape[0], weight.shape[1] * 4):
        w = weight[start:stop].float()
        band = scb[start:stop]
        torch.amax(w.abs(), dim=1, out=band)
        q[start:stop] = torch.round(w * (127.0 / band.clamp(min=1e-30)).unsqueeze(1)).clamp_(-127, 127)
    return q, scb


def dequantize_int8_rows(weight: torch.Tensor, scb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight * SCB / 127`` in ``dtype``."""
    return (weight.float() * (scb.float() * (1.0 / 127)).unsqueeze(1)).to(dtype)


# ----------------------------------------------------------------------------- blockwise


def _blocks(flat: torch.Tensor, blocksize: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(absmax per block, values scaled into [-1, 1])``; a short last block has its own absmax."""
    n = flat.numel()
    full = n - n % blocksize
    body = flat[:full].reshape(-1, blocksize)
    absmax = body.abs().amax(dim=1)
    scaled = torch.clamp(body * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1).reshape(-1)
    if full < n:
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_max, -1, 1)])
    return absmax, scaled


def _nearest(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index into ``code`` of the nearest entry of each value (ties to the upper one)."""
    order = torch.argsort(code)
    ordered = code[order]
    bounds = (ordered[:-1] + ordered[1:]) / 2
    return order[torch.bucketize(values, bounds, out_int32=True).long()]


def _apply_blocks(codes: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    n = codes.numel()
    full = n - n % blocksize
    out = torch.empty_like(codes)
    out[:full] = (codes[:full].reshape(-1, blocksize) * absmax[: full // blocksize].unsqueeze(1)).reshape(-1)
    if full < n:
        out[full:] = codes[full:] * absmax[-1]
    return out


def quantize_blockwise(values: torch.Tensor, blocksize: int = NESTED_BLOCKSIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    """8-bit dynamic-map blockwise quantization: ``(uint8 indices, float32 absmax)``."""
    absmax, scaled = _blocks(values.reshape(-1).float(), blocksize)
    return _nearest(scaled, dynamic_map()).to(torch.uint8), absmax


def dequantize_blockwise(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise` (float32)."""
    return _apply_blocks(code.float()[q.reshape(-1).long()], absmax.float(), blocksize)


def quantize_4bit(weight: torch.Tensor, *, quant_type: str, blocksize: int = 64,
                  double_quant: bool = False) -> Dict[str, torch.Tensor]:
    """bitsandbytes' 4-bit layout of ``weight``.

    Returns:
        ``{"weight", "absmax", "quant_map"}`` and, with ``double_quant``,
        ``"nested_absmax"``, ``"nested_quant_map"`` and ``"nested_offset"`` (a 0-d float32).
    """
    absmax, scaled = _blocks(weight.reshape(-1).float(), blocksize)
    code = code_4bit(quant_type)
    q = _nearest(scaled, code).to(torch.uint8)
    if q.numel() % 2:
        q = torch.cat([q, q.new_zeros(1)])
    out = {"weight": ((q[::2] << 4) | q[1::2]).unsqueeze(1), "absmax": absmax, "quant_map": code}
    if double_quant:
        offset = absmax.mean()
        nested_q, nested_absmax = quantize_blockwise(absmax - offset)
        out.update(absmax=nested_q, nested_absmax=nested_absmax, nested_quant_map=dynamic_map(),
                   nested_offset=offset)
    return out


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor, *, shape, blocksize: int,
                    dtype: torch.dtype, nested: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """The ``shape``-d weight in ``dtype`` from bitsandbytes' 4-bit layout.

    ``nested`` (double quantization): ``{"nested_absmax", "nested_quant_map", "nested_offset",
    "nested_blocksize"}``.
    """
    if nested is not None:
        absmax = dequantize_blockwise(absmax, nested["nested_absmax"], nested["nested_quant_map"],
                                      int(nested["nested_blocksize"])) + float(nested["nested_offset"])
    flat = packed.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    n = 1
    for d in shape:
        n *= int(d)
    idx = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n].long()
    values = _apply_blocks(quant_map.float()[idx], absmax.float(), blocksize)
    return values.reshape(tuple(shape)).to(dtype)


# ----------------------------------------------------------------------------- grouped int4


def quantize_int4_groups(weight: torch.Tensor, group_size: int, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Asymmetric group-wise int4 in our layout (module docstring): ``{"weight", "weight_scale", "weight_zero"}``."""
    out_features, in_features = weight.shape
    out = {"weight": torch.empty((out_features, in_features // 2), dtype=torch.uint8, device=weight.device),
           "weight_scale": torch.empty((out_features, in_features // group_size), dtype=dtype, device=weight.device),
           "weight_zero": torch.empty((out_features, in_features // group_size), dtype=dtype, device=weight.device)}
    for start, stop in row_bands(out_features, in_features * 4):
        w = weight[start:stop].float().reshape(stop - start, in_features // group_size, group_size)
        lo, hi = w.amin(dim=2), w.amax(dim=2)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        q = torch.round((w - lo.unsqueeze(2)) / scale.unsqueeze(2)).clamp_(0, 15).to(torch.uint8)
        q = q.reshape(stop - start, in_features)
        out["weight"][start:stop] = q[:, ::2] | (q[:, 1::2] << 4)
        out["weight_scale"][start:stop] = scale.to(dtype)
        out["weight_zero"][start:stop] = (lo + 8 * scale).to(dtype)  # W = (q - 8) * scale + zero
    return out


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[out, in]`` values 0..15 from our ``[out, in / 2]`` bytes."""
    q = torch.stack([packed & 0xF, packed >> 4], dim=2)
    return q.reshape(packed.shape[0], -1).to(torch.int32)


def dequantize_int4_groups(packed, scale, zero, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(q - 8) * scale + zero`` in ``dtype``."""
    q = unpack_int4(packed).float()
    s = scale.float().repeat_interleave(group_size, dim=1)
    z = zero.float().repeat_interleave(group_size, dim=1)
    return ((q - 8) * s + z).to(dtype)


def to_cpu_kernel_layout(packed: torch.Tensor) -> torch.Tensor:
    """Our int4 bytes in the tiled layout of ``torch._weight_int4pack_mm_for_cpu``."""
    return torch._convert_weight_to_int4pack_for_cpu(unpack_int4(packed), 2)


def from_cpu_kernel_layout(tiled: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`to_cpu_kernel_layout`.

    The kernel layout (torch 2.x CPU): rows in blocks of 64; in a full block the
    byte ``k * 32 + d`` holds row ``d`` (low nibble) and row ``d + 32`` (high) of
    column ``k``; a last block of ``r < 64`` rows stores byte ``k * r / 2 + j // 2``
    with even ``j`` low.
    """
    flat = tiled.reshape(-1)
    q = torch.empty(out_features, in_features, dtype=torch.uint8)
    done = 0
    for start in range(0, out_features, 64):
        rows = min(64, out_features - start)
        block = flat[done: done + rows * in_features // 2].reshape(in_features, rows // 2)
        lo, hi = block & 0xF, block >> 4
        if rows == 64:
            q[start:start + 32] = lo.t()
            q[start + 32:start + 64] = hi.t()
        else:
            q[start:start + rows:2] = lo.t()
            q[start + 1:start + rows:2] = hi.t()
        done += rows * in_features // 2
    return q[:, ::2] | (q[:, 1::2] << 4)


def int4_scale_and_zeros(scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[in / g, out, 2]`` as the int4 kernel takes them."""
    return torch.stack([scale.t(), zero.t()], dim=2).to(dtype).contiguous()
