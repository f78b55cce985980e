"""Read parts of a safetensors tensor: the byte ranges of one rank's slice only.

A slice keeps ranges of one dimension ``dim`` of a row-major tensor. Along
dim 0 each range is one contiguous run of bytes; along a later dim it is one
run per index of the dims before it (a strided read). Runs that touch in the
file are merged, and each is read with ``preadv`` straight into the result,
so nothing but the slice is ever in memory.

A strided slice of many short runs (a row-wise split weight: one run per row,
a few KB each) is copied instead from a mapping of the tensor's bytes, in one
strided copy: one ``preadv`` per run costs a system call per row (90 000 of
them for a 1.1B Llama's ``o_proj``/``down_proj`` halves), which is most of a
rank's load time. The copy touches only the slice's bytes (the kernel maps
whole pages either way, as it reads whole pages for ``preadv``), and the
mapping is dropped before the function returns, so only the slice stays in
memory.

Every byte read here is added to :data:`READ_COUNTER` (per process), which is
how tests and benchmarks prove a rank read only its share.
"""

from __future__ import annotations

import math
import os
import threading
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import CheckpointError
from .safetensors import TensorInfo, map_bytes

__all__ = ["MAPPED_RUNS", "READ_COUNTER", "ReadCounter", "read_slice", "slice_runs"]

MAPPED_RUNS = 64
"""Above this many byte runs a slice is copied through a mapping instead of one ``preadv`` per run."""


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


def slice_runs(info: TensorInfo, dim: int, ranges: Sequence[Tuple[int, int]], *,
               check_only: bool = False) -> List[Tuple[int, int]]:
    """The ``(file offset, length)`` runs holding ``ranges`` of ``dim``, in the slice's order.

    Args:
        info: the tensor's header entry (absolute byte offsets).
        dim: the sliced dimension.
        ranges: ``[(start, stop), ...]`` along ``dim``; the slice is their concatenation.
        check_only: only check ``dim`` and ``ranges`` (returns ``[]``).

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
    if check_only:
        return []
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
    strided = math.prod(shape[:dim]) * len(ranges) > MAPPED_RUNS  # at most that many runs, before merging
    runs = slice_runs(info, dim, ranges, check_only=strided)  # a strided slice's runs: only if it is not mapped
    if shape:
        shape[dim] = sum(stop - start for start, stop in ranges)
    out = torch.empty(shape, dtype=info.dtype)
    if out.numel() == 0:
        return out
    if strided and _copy_mapped(fd, info, dim, ranges, out) is not None:
        READ_COUNTER.add(out.nbytes)
        return out
    if strided:
        runs = slice_runs(info, dim, ranges)
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


def _copy_mapped(fd: int, info: TensorInfo, dim: int, ranges: Sequence[Tuple[int, int]],
                 out: torch.Tensor) -> Optional[torch.Tensor]:
    """Copy the slice into ``out`` from a transient mapping of the tensor; ``None`` when it cannot be
    mapped (a short file, a misaligned tensor, no address space): the caller then reads by ``preadv``."""
    if info.start % info.dtype.itemsize or os.fstat(fd).st_size < info.end:
        return None
    try:
        mapping, begin = map_bytes(fd, info.start, info.end)
    except (OSError, ValueError):
        return None
    try:
        full = torch.frombuffer(mapping, dtype=info.dtype, count=info.numel, offset=begin).view(tuple(info.shape))
        done = 0
        for start, stop in ranges:
            out.narrow(dim, done, stop - start).copy_(full.narrow(dim, start, stop - start))
            done += stop - start
        del full
    finally:
        try:
            mapping.close()
        except BufferError:  # a view survived (an error mid-copy): the mapping goes with it
            pass
    return out
