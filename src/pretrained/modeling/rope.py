"""Rotary position embeddings (RoPE, Su et al. 2021) and their context-extension variants.

Shape notation: B batch, T tokens, H heads, D head size (rotated dims), F = D / 2 frequencies.

A position ``p`` rotates each pair of dims ``(i, i + F)`` of a query/key by the
angle ``p * inv_freq[i]``.  The variants only change ``inv_freq``:

* ``"default"``: ``inv_freq[i] = theta ** (-2i / D)``;
* ``"linear"`` (position interpolation): ``inv_freq / factor``;
* ``"dynamic"`` (dynamic NTK): ``theta`` grows with the sequence length once
  it passes ``max_position_embeddings`` (re-computed in the forward pass);
* ``"llama3"``: low frequencies divided by ``factor``, high ones kept, a smooth
  blend between (Llama 3.1);
* ``"yarn"`` (YaRN, Peng et al. 2023): the same kind of blend, with a linear
  ramp between the dims that turn ``beta_fast`` and ``beta_slow`` times over
  ``original_max_position_embeddings``; cos/sin are multiplied by
  ``attention_factor`` (by default ``0.1 * ln(factor) + 1``, or the ratio of
  the ``mscale``/``mscale_all_dim`` versions of it when both are given);
* ``"longrope"`` (LongRoPE, Phi-3): each frequency divided by its own
  ``short_factor`` entry, or ``long_factor`` once the sequence is longer than
  ``original_max_position_embeddings`` (switched in the forward pass, as
  Transformers does); cos/sin are multiplied by ``attention_factor`` (by
  default ``sqrt(1 + ln(factor) / ln(original_max_position_embeddings))``).

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
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
             "yarn": ("original_max_position_embeddings",),
             "longrope": ("short_factor", "long_factor", "original_max_position_embeddings")}
_ORIGINAL_LENGTH_TYPES = ("llama3", "yarn", "longrope")


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
    ``"type"`` is read as ``"rope_type"``; llama3, yarn and longrope get
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
    if kind in _ORIGINAL_LENGTH_TYPES and max_position_embeddings is not None:
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
    """The inverse frequencies (F,) float32 and the cos/sin scale (``attention_factor``).

    Args:
        params: a dict from :func:`rope_parameters`.
        head_dim: D (times ``partial_rotary_factor`` when the dict has one).

    Raises:
        ValueError: a ``rope_type`` other than those of :data:`ROPE_TYPES`.
        max_position_embeddings: the trained context length (``"dynamic"`` only).
        seq_len: the current sequence length (``"dynamic"`` and ``"longrope"``
            only; for dynamic a tensor keeps the computation in float32 as
            Transformers' forward does).

    Returns:
        ``(inv_freq, attention_factor)``; the factor is 1.0 except for yarn and longrope.
    """
    kind = params["rope_type"]
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_type {kind!r} is not supported; pretrained implements {list(ROPE_TYPES)}")
    base = params["rope_theta"]
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim   # (F,)
    if kind == "yarn":
        return _yarn(params, base, dim, max_position_embeddings, device)
    if kind == "longrope":
        return _longrope(params, base, exponents, max_position_embeddings, seq_len, device)

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


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(params: Mapping[str, Any], base: float, dim: int, max_position_embeddings: int,
          device: Optional[torch.device]) -> Tuple[Tensor, float]:
    """YaRN: interpolated and extrapolated frequencies blended by a linear ramp over the dims."""
    original = params["original_max_position_embeddings"]
    factor = params.get("factor")
    if factor is None:                       # DeepSeek-V3 style: the ratio of the two lengths
        factor = max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:       # the dim that turns `rotations` times over `original`
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001                                    # no division by zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp.to(device=device, dtype=torch.float)                          # (F,)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    inv_freq = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
    return inv_freq, attention_factor


def _longrope(params: Mapping[str, Any], base: float, exponents: Tensor, max_position_embeddings: int,
              seq_len: Union[int, Tensor, None], device: Optional[torch.device]) -> Tuple[Tensor, float]:
    """LongRoPE: one rescale factor per frequency, short or long by the sequence length."""
    original = params["original_max_position_embeddings"]
    factor = params.get("factor")
    if factor is None:
        factor = max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    key = "long_factor" if seq_len and seq_len > original else "short_factor"
    ext_factors = torch.tensor(params[key], dtype=torch.float32, device=device)
    if ext_factors.shape != exponents.shape:
        raise ValueError(f"rope_parameters[{key!r}] must hold {exponents.numel()} numbers (head_dim / 2), "
                         f"got {ext_factors.numel()}")
    return 1.0 / (ext_factors * base ** exponents), attention_factor


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; one per model, shared by its layers.

    ``inv_freq`` is a non-persistent float32 buffer: it is never saved nor
    loaded, and it is computed in ``__init__`` (also when a checkpoint is
    loaded, since buffers are built normally).  ``"dynamic"`` re-computes it
    when a sequence grows past the longest seen so far and returns to the
    original table for sequences shorter than ``max_position_embeddings``,
    the same state machine as Transformers'.  ``"longrope"`` uses the
    ``long_factor`` table (a plain attribute, built on first use) while the
    positions reach past ``original_max_position_embeddings``, the
    ``short_factor`` one otherwise.

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

    def _longrope_update(self, position_ids: Tensor) -> None:
        original = self.params["original_max_position_embeddings"]
        if getattr(self, "long_inv_freq", None) is None:
            self.long_inv_freq, _ = compute_inv_freq(self.params, self.head_dim,
                                                     max_position_embeddings=self.max_position_embeddings,
                                                     seq_len=original + 1, device=position_ids.device)
        seq_len = int(torch.max(position_ids)) + 1
        chosen = self.long_inv_freq if seq_len > original else self.original_inv_freq
        self.inv_freq = chosen.to(position_ids.device)

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
        elif self.rope_type == "longrope":
            self._longrope_update(position_ids)
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
