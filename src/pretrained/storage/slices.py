"""Read parts of a safetensors tensor: the byte ranges of one rank's slice only.

A slice keeps ranges of one dimension ``dim`` of a row-major tensor. Along
dim 0 each range is one contiguous run of bytes; along a later dim it is one
run per index of the dims before it (a strided read). Runs that touch in the
file are merged, and each is read with ``preadv`` straight into the result,
so nothing but the slice is ever in memory.

Every byte read here is added to :data:`READ_COUNTER` (per process), which is
how tests and benchmarks prove a rank read only its share.
"""

from __future__ import annotations

import math
import os
import threading
from typing import List, Sequence, Tuple

import torch

from ..errors import CheckpointError
from .safetensors import TensorInfo

__all__ = ["READ_COUNTER", "ReadCounter", "read_slice", "slice_runs"]


class ReadCounter:
    """Bytes read by :func:`read_slice` in this process (thread-safe).

    Attributes:
        bytes: the total so far.
        calls: the number of ``preadv`` calls.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        self.calls = 0

    def add(self, count: int) -> None:
        with self._lock:
            self.bytes += count
            self.calls += 1

    def reset(self) -> None:
        with self._lock:
            self.bytes = 0
            self.calls = 0


READ_COUNTER = ReadCounter()


def slice_runs(info: TensorInfo, dim: int, ranges: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The ``(file offset, length)`` runs holding ``ranges`` of ``dim``, in the slice's order.

    Args:
        info: the tensor's header entry (absolute byte offsets).
        dim: the sliced dimension.
        ranges: ``[(start, stop), ...]`` along ``dim``; the slice is their concatenation.

    Returns:
        Byte runs whose concatenation is the slice, merged where they touch.

    Raises:
        ValueError: ``dim`` or a range out of bounds.
    """
    shape = tuple(info.shape)
    if not 0 <= dim < max(len(shape), 1):
        raise ValueError(f"dim {dim} is out of range for a tensor of shape {shape}")
    size = shape[dim] if shape else 1
    for start, stop in ranges:
        if not 0 <= start <= stop <= size:
            raise ValueError(f"range [{start}, {stop}) is out of bounds for dim {dim} of shape {shape}")
    item = info.dtype.itemsize
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim + 1:]) * item
    runs: List[Tuple[int, int]] = []
    for index in range(outer):
        base = info.start + index * size * inner
        for start, stop in ranges:
            offset, length = base + start * inner, (stop - start) * inner
            if not length:
                continue
            if runs and runs[-1][0] + runs[-1][1] == offset:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((offset, length))
    return runs


def read_slice(fd: int, info: TensorInfo, dim: int = 0, ranges: Sequence[Tuple[int, int]] = (),
               *, where: str = "the checkpoint") -> torch.Tensor:
    """The slice of a tensor keeping ``ranges`` of ``dim``, read from ``fd`` by byte range.

    Args:
        fd: an open file descriptor of the safetensors file.
        info: the tensor's header entry.
        dim: the sliced dimension (0: contiguous rows; later: strided reads).
        ranges: ``[(start, stop), ...]`` along ``dim``; empty: the whole tensor.
        where: the file's name, for errors.

    Returns:
        A fresh tensor of ``info.dtype`` whose ``dim`` has the ranges' total length.

    Raises:
        CheckpointError: the file ends before the tensor does.
        ValueError: ``dim`` or a range out of bounds.
    """
    shape = list(info.shape)
    if not ranges:
        ranges = [(0, shape[dim] if shape else 1)]
    runs = slice_runs(info, dim, ranges)
    if shape:
        shape[dim] = sum(stop - start for start, stop in ranges)
    out = torch.empty(shape, dtype=info.dtype)
    if out.numel() == 0:
        return out
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    done = 0
    for offset, length in runs:
        got = 0
        while got < length:
            count = os.preadv(fd, [view[done + got:done + length]], offset + got)
            if not count:
                raise CheckpointError(f"{where} ended before the tensor's bytes (byte {offset + got})")
            READ_COUNTER.add(count)
            got += count
        done += length
    return out
