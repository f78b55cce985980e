"""Rotary position embeddings (RoPE, Su et al. 2021) and their context-extension variants.

Shape notation: B batch, T tokens, H heads, D head size (rotated dims), F = D / 2 frequencies.

A position ``p`` rotates each pair of dims ``(i, i + F)`` of a query/key by the
angle ``p * inv_freq[i]``.  The variants only change ``inv_freq``:

* ``"default"``: ``inv_freq[i] = theta ** (-2i / D)``;
* ``"linear"`` (position interpolation): ``inv_freq / factor``;
* ``"dynamic"`` (dynamic NTK): ``theta`` grows with the sequence length once
  it passes ``max_position_embeddings`` (re-computed in the forward pass);
* ``"llama3"``: low frequencies divided by ``factor``, high ones kept, a smooth
  blend between (Llama 3.1).

Every formula is written with the same float32 operations, in the same order,
as Transformers' ``modeling_rope_utils``, so the tables are bit-identical.

The parameters come from a config in either spelling (see
:func:`rope_parameters`): 5.x ``rope_parameters = {"rope_type", "rope_theta",
"factor", ...}`` or 4.x ``rope_theta`` + ``rope_scaling = {"type"|"rope_type",
"factor", ...}``.

Example:
    >>> import torch
    >>> rope = RotaryEmbedding({"rope_type": "default", "rope_theta": 10000.0}, head_dim=8,
    ...                        max_position_embeddings=32)
    >>> cos, sin = rope(torch.arange(5)[None], dtype=torch.float32)        # (1, 5, 8) each
    >>> q = torch.randn(1, 2, 5, 8)                                        # (B, H, T, D)
    >>> apply_rotary(q, cos, sin).shape
    torch.Size([1, 2, 5, 8])
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["ROPE_TYPES", "rope_parameters", "compute_inv_freq", "RotaryEmbedding", "apply_rotary", "rotate_half"]

DEFAULT_THETA = 10_000.0
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_parameters(
    rope_parameters: Optional[Mapping[str, Any]] = None,
    *,
    rope_theta: Optional[float] = None,
    rope_scaling: Optional[Mapping[str, Any]] = None,
    max_position_embeddings: Optional[int] = None,
) -> Dict[str, Any]:
    """One standard dict ``{"rope_type", "rope_theta", ...}`` from either spelling.

    As in Transformers 5, ``rope_scaling`` (4.x) wins over ``rope_parameters``
    when both are given; ``rope_theta`` fills in a missing theta; the 4.x key
    ``"type"`` is read as ``"rope_type"``; llama3 gets
    ``original_max_position_embeddings`` from ``max_position_embeddings`` when
    it is missing.  Other keys are kept as they are.

    Raises:
        ValueError: a missing required key of a known type.  Unknown types
            are kept (a config can be read and written); building a
            :class:`RotaryEmbedding` for one raises.
    """
    params = dict(rope_scaling or rope_parameters or {})
    if "rope_type" not in params:
        params["rope_type"] = params.pop("type", "default") if "type" in params else "default"
    else:
        params.pop("type", None)
    params.setdefault("rope_theta", rope_theta if rope_theta is not None else DEFAULT_THETA)
    kind = params["rope_type"]
    if kind == "llama3" and max_position_embeddings is not None:
        params.setdefault("original_max_position_embeddings", max_position_embeddings)
    missing = [k for k in _REQUIRED.get(kind, ()) if params.get(k) is None]
    if missing:
        raise ValueError(f"rope_type {kind!r} needs {missing} in rope_parameters (got {params})")
    return params


def compute_inv_freq(
    params: Mapping[str, Any],
    head_dim: int,
    *,
    max_position_embeddings: int,
    seq_len: Union[int, Tensor, None] = None,
    device: Optional[torch.device] = None,
) -> Tuple[Tensor, float]:
    """The inverse frequencies (F,) float32 and the cos/sin scale (1.0 for these types).

    Args:
        params: a dict from :func:`rope_parameters`.
        head_dim: D (times ``partial_rotary_factor`` when the dict has one).

    Raises:
        ValueError: a ``rope_type`` other than those of :data:`ROPE_TYPES`.
        max_position_embeddings: the trained context length (``"dynamic"`` only).
        seq_len: the current sequence length (``"dynamic"`` only; a tensor keeps
            the computation in float32 as Transformers' forward does).
    """
    kind = params["rope_type"]
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_type {kind!r} is not supported; pretrained implements {list(ROPE_TYPES)}")
    base = params["rope_theta"]
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim   # (F,)

    if kind == "dynamic":
        factor = params["factor"]
        if seq_len is None:
            seq_len = max_position_embeddings
        elif isinstance(seq_len, Tensor):
            seq_len = torch.maximum(seq_len, torch.tensor(max_position_embeddings, dtype=seq_len.dtype,
                                                          device=seq_len.device))
        else:
            seq_len = max(seq_len, max_position_embeddings)
        base = base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** exponents)

    if kind == "linear":
        inv_freq /= params["factor"]
    elif kind == "llama3":
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old_context = params["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq, 1.0


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; one per model, shared by its layers.

    ``inv_freq`` is a non-persistent float32 buffer: it is never saved nor
    loaded, and it is computed in ``__init__`` (also when a checkpoint is
    loaded, since buffers are built normally).  ``"dynamic"`` re-computes it
    when a sequence grows past the longest seen so far and returns to the
    original table for sequences shorter than ``max_position_embeddings``,
    the same state machine as Transformers'.

    Args:
        params: a dict from :func:`rope_parameters`.
        head_dim: D.
        max_position_embeddings: the trained context length.
    """

    def __init__(self, params: Mapping[str, Any], head_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.params = dict(params)
        self.rope_type = self.params["rope_type"]
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.max_seq_len_cached = max_position_embeddings
        inv_freq, self.attention_scaling = compute_inv_freq(self.params, head_dim,
                                                            max_position_embeddings=max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)                 # (F,)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def _dynamic_update(self, position_ids: Tensor) -> None:
        seq_len = torch.max(position_ids) + 1
        if seq_len > self.max_seq_len_cached:                                        # grow
            inv_freq, self.attention_scaling = compute_inv_freq(
                self.params, self.head_dim, max_position_embeddings=self.max_position_embeddings,
                seq_len=seq_len, device=position_ids.device)
            self.inv_freq = inv_freq
            self.max_seq_len_cached = seq_len
        if seq_len < self.max_position_embeddings < self.max_seq_len_cached:         # back to the original
            self.original_inv_freq = self.original_inv_freq.to(position_ids.device)
            self.inv_freq = self.original_inv_freq
            self.max_seq_len_cached = self.max_position_embeddings

    @torch.no_grad()
    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """(B|1, T) int positions -> cos, sin of shape (B|1, T, D) in ``dtype``."""
        if self.rope_type == "dynamic":
            self._dynamic_update(position_ids)
        inv_freq = self.inv_freq.to(device=position_ids.device, dtype=torch.float)
        freqs = position_ids[..., None].float() * inv_freq                          # (B, T, F)
        emb = torch.cat((freqs, freqs), dim=-1)                                      # (B, T, D)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)

    def extra_repr(self) -> str:
        return f"rope_type={self.rope_type!r}, head_dim={self.head_dim}, theta={self.params['rope_theta']}"


def rotate_half(x: Tensor) -> Tensor:
    """(..., D) -> (..., D): ``[x1, x2] -> [-x2, x1]`` with x1, x2 the two halves."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) queries or keys by (B|1, T, D) tables."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                                    # (B, 1, T, D)
    return (x * cos) + (rotate_half(x) * sin)
