"""Key/value caches for incremental decoding.

Every attention layer calls ``cache.update(key, value, layer_idx)`` with the
new step's keys and values (``(B, H, S_new, D)``) and attends over what it
returns (``(B, H, S_past + S_new, D)``).  Models accept a cache object or the
legacy tuple-of-tuples format and return a cache object.

Example:
    >>> import torch
    >>> cache = DynamicCache()
    >>> k, v = cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), layer_idx=0)
    >>> cache.get_seq_length(), tuple(k.shape)
    (3, (1, 2, 3, 4))
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

LegacyCache = Tuple[Tuple[Tensor, ...], ...]


class Cache:
    """Interface of a key/value cache."""

    def update(self, key: Tensor, value: Tensor, layer_idx: int) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise NotImplementedError

    def reorder_cache(self, index: Tensor) -> None:
        """Keep/reorder batch rows (beam search, dropping finished rows)."""
        raise NotImplementedError


class DynamicCache(Cache):
    """A cache that grows by concatenation; one (keys, values) pair per layer."""

    def __init__(self) -> None:
        self.key_cache: List[Tensor] = []
        self.value_cache: List[Tensor] = []

    def __len__(self) -> int:
        return len(self.key_cache)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        return iter(zip(self.key_cache, self.value_cache))

    def __getitem__(self, layer_idx: int) -> Tuple[Tensor, Tensor]:
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def update(self, key: Tensor, value: Tensor, layer_idx: int) -> Tuple[Tensor, Tensor]:
        if layer_idx == len(self.key_cache):
            self.key_cache.append(key)
            self.value_cache.append(value)
        elif layer_idx < len(self.key_cache):
            self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key], dim=-2)
            self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value], dim=-2)
        else:
            raise IndexError(f"cache has {len(self.key_cache)} layers; cannot update layer {layer_idx}")
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.key_cache):
            return 0
        return self.key_cache[layer_idx].shape[-2]

    def reorder_cache(self, index: Tensor) -> None:
        for i in range(len(self.key_cache)):
            self.key_cache[i] = self.key_cache[i].index_select(0, index.to(self.key_cache[i].device))
            self.value_cache[i] = self.value_cache[i].index_select(0, index.to(self.value_cache[i].device))

    def to_legacy_cache(self) -> LegacyCache:
        return tuple((k, v) for k, v in self)

    @classmethod
    def from_legacy_cache(cls, past: Optional[Sequence[Sequence[Tensor]]]) -> "DynamicCache":
        cache = cls()
        if past is not None and any(layer is None for layer in past):  # (None,) * n_layers: nothing cached yet
            return cache
        for layer_idx, (key, value, *_) in enumerate(past or ()):
            cache.update(key, value, layer_idx)
        return cache


class EncoderDecoderCache(Cache):
    """Self-attention cache (grows each step) + cross-attention cache (filled once)."""

    def __init__(self, self_attention_cache: Optional[DynamicCache] = None,
                 cross_attention_cache: Optional[DynamicCache] = None) -> None:
        self.self_attention_cache = self_attention_cache if self_attention_cache is not None else DynamicCache()
        self.cross_attention_cache = cross_attention_cache if cross_attention_cache is not None else DynamicCache()

    def __len__(self) -> int:
        return len(self.self_attention_cache)

    def __getitem__(self, layer_idx: int) -> Tuple[Tensor, ...]:
        """Layer ``layer_idx`` as the legacy ``(self_k, self_v[, cross_k, cross_v])``."""
        cross = self.cross_attention_cache[layer_idx] if layer_idx < len(self.cross_attention_cache) else ()
        return (*self.self_attention_cache[layer_idx], *cross)

    def __iter__(self) -> Iterator[Tuple[Tensor, ...]]:
        return (self[i] for i in range(len(self)))

    def update(self, key: Tensor, value: Tensor, layer_idx: int) -> Tuple[Tensor, Tensor]:
        return self.self_attention_cache.update(key, value, layer_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.self_attention_cache.get_seq_length(layer_idx)

    def reorder_cache(self, index: Tensor) -> None:
        self.self_attention_cache.reorder_cache(index)
        self.cross_attention_cache.reorder_cache(index)

    def to_legacy_cache(self) -> LegacyCache:
        layers = []
        for i, (key, value) in enumerate(self.self_attention_cache):
            cross = self.cross_attention_cache[i] if i < len(self.cross_attention_cache) else ()
            layers.append((key, value, *cross))
        return tuple(layers)

    @classmethod
    def from_legacy_cache(cls, past) -> "EncoderDecoderCache":
        cache = cls()
        for layer_idx, layer in enumerate(past or ()):
            cache.self_attention_cache.update(layer[0], layer[1], layer_idx)
            if len(layer) >= 4:
                cache.cross_attention_cache.update(layer[2], layer[3], layer_idx)
        return cache


def as_cache(past, *, encoder_decoder: bool = False) -> Optional[Cache]:
    """A cache object from ``past_key_values`` given either way (``None`` stays ``None``).

    Any object with ``update`` and ``get_seq_length`` (another library's cache)
    is used as it is; tuples of per-layer ``(key, value[, cross_key, cross_value])``
    become a new cache.
    """
    if past is None or isinstance(past, Cache):
        return past
    if hasattr(past, "update") and hasattr(past, "get_seq_length"):
        return past
    return EncoderDecoderCache.from_legacy_cache(past) if encoder_decoder else DynamicCache.from_legacy_cache(past)


def prepare_cache(past, *, use_cache: bool, encoder_decoder: bool = False) -> Tuple[Optional[Cache], int]:
    """The cache one forward works with, and P, the number of tokens it already holds.

    ``past`` is read as :func:`as_cache` reads it; an encoder-decoder model always
    gets an :class:`EncoderDecoderCache` (a self-attention-only cache object is
    wrapped in one).  With ``use_cache`` and nothing given, a new empty cache.

    Example:
        >>> cache, past = prepare_cache(None, use_cache=True)
        >>> type(cache).__name__, past
        ('DynamicCache', 0)
    """
    cache = as_cache(past, encoder_decoder=encoder_decoder)
    if encoder_decoder and cache is not None and not isinstance(cache, EncoderDecoderCache):
        cache = EncoderDecoderCache(cache)
    if cache is None and use_cache:
        cache = EncoderDecoderCache() if encoder_decoder else DynamicCache()
    return cache, cache.get_seq_length() if cache is not None else 0
