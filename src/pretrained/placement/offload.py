"""Disk offload: where an offloaded tensor's bytes live, and reading them back.

Every disk-offloaded tensor is a :class:`DiskTensor`: a byte range of a
safetensors file, its dtype and shape on disk, and the dtype the model wants.

* A safetensors checkpoint whose tensor already has the model's dtype is used
  in place: the range points into the checkpoint shard, nothing is written.
* Otherwise (a dtype conversion, a ``.bin`` checkpoint, a ``state_dict=``
  source, or a tensor that was initialised because the checkpoint lacked it)
  the tensor is converted once and written to ``<offload_folder>/<name>.safetensors``
  (one file per tensor: a reader needs nothing but the file, and a crash
  leaves complete files only). The index of those files stays in memory.

Reads use ``os.preadv`` into freshly allocated memory (``readinto`` where
``preadv`` is missing): no file stays mapped, so pages of the offloaded
weights never linger in the process's resident set, and the memory of a
fetched tensor is returned as soon as the module that used it has run.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch

from ..storage.safetensors import read_header, save_safetensors

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class DiskTensor:
    """One tensor stored in a safetensors file.

    Attributes:
        path: the file.
        start: absolute offset of its first byte.
        end: absolute offset one past its last byte.
        dtype: dtype of the bytes on disk.
        shape: its shape.
        target_dtype: dtype handed to the model (a conversion on read when it differs).
    """

    path: str
    start: int
    end: int
    dtype: torch.dtype
    shape: Tuple[int, ...]
    target_dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self.end - self.start


def disk_tensor_in(path: PathLike, name: str, *, target_dtype: Optional[torch.dtype] = None,
                   header=None) -> DiskTensor:
    """The :class:`DiskTensor` of tensor ``name`` in the safetensors file ``path`` (header only).

    Args:
        path: a safetensors file.
        name: the tensor's key in that file.
        target_dtype: dtype the model wants (default: the stored dtype).
        header: the file's already parsed header, to skip reading it again.

    Raises:
        KeyError: when the file has no such tensor.
        CheckpointError: for an invalid file.
    """
    header = header if header is not None else read_header(path)
    try:
        info = header.tensors[name]
    except KeyError:
        raise KeyError(f"no tensor named {name!r} in {os.fspath(path)}") from None
    return DiskTensor(os.fspath(path), info.start, info.end, info.dtype, tuple(info.shape),
                      target_dtype or info.dtype)


def offload_file_name(name: str) -> str:
    """File name of tensor ``name`` in an offload folder (``"h.0.w"`` -> ``"h.0.w.safetensors"``)."""
    safe = name.replace(os.sep, "_").replace("/", "_") or "_"
    return f"{safe}.safetensors"


def write_offloaded(folder: PathLike, name: str, tensor: torch.Tensor) -> DiskTensor:
    """Write ``tensor`` (already in the model's dtype) to ``folder`` and describe where it went.

    Args:
        folder: the offload folder (created if missing).
        name: the model's name for the tensor.
        tensor: the values, on any device but ``meta``.

    Returns:
        Its :class:`DiskTensor`.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(os.fspath(folder), offload_file_name(name))
    save_safetensors({name: tensor.detach()}, path, metadata={"format": "pt"})
    return disk_tensor_in(path, name, target_dtype=tensor.dtype)


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


class DiskReader:
    """Reads :class:`DiskTensor` values into fresh memory.

    Files that were :meth:`pin`-ned (checkpoint shards: a handful) stay open;
    any other file (one per tensor in an offload folder: possibly thousands,
    more than the descriptor limit) is opened for each read. Thread-safe:
    reads use explicit offsets, never a shared file position.
    """

    def __init__(self) -> None:
        self._fds: Dict[str, int] = {}
        self._lock = threading.Lock()

    def pin(self, path: str) -> None:
        """Open ``path`` now and keep it open: later reads see this file even if the path is
        replaced (a save into the folder the weights are read from swaps the folder)."""
        with self._lock:
            if path not in self._fds:
                self._fds[path] = _open(path)

    def read(self, entry: DiskTensor, device: Union[str, torch.device, None] = None) -> torch.Tensor:
        """The tensor of ``entry`` in its target dtype, on ``device`` (default CPU).

        Raises:
            OSError: when the file is shorter than the entry says (it changed on disk).
        """
        tensor = torch.empty(entry.shape, dtype=entry.dtype)
        if entry.nbytes:
            buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            self._read_exactly(entry.path, entry.start, buffer)
        if entry.target_dtype != entry.dtype:
            tensor = tensor.to(entry.target_dtype)
        if device is not None and torch.device(device).type != "cpu":
            tensor = tensor.to(device)
        return tensor

    def _read_exactly(self, path: str, offset: int, buffer: memoryview) -> None:
        fd = self._fds.get(path)
        own = fd is None
        if own:
            fd = _open(path)
        try:
            done = 0
            while done < len(buffer):
                if hasattr(os, "preadv"):
                    count = os.preadv(fd, [buffer[done:]], offset + done)
                else:  # pragma: no cover - platforms without preadv
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    count = os.readv(fd, [buffer[done:]])
                if not count:
                    raise OSError(f"{path} ended at byte {offset + done}, before the offloaded tensor it should hold")
                done += count
        finally:
            if own:
                os.close(fd)

    def close(self) -> None:
        """Close every file descriptor (later reads reopen them by path)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


__all__ = ["DiskTensor", "DiskReader", "disk_tensor_in", "offload_file_name", "write_offloaded"]
