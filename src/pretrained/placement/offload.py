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

A read maps just the tensor's bytes (a private, copy-on-write mapping) and
hands out a view of it, or the converted / moved copy made from it: the page
cache is read in place, with no fresh pages to fault in and zero. The mapping
goes with the last view, so once the module that used a weight has run, its
pages leave the process's resident set. Where a tensor cannot be mapped
(misaligned in its file, no address space) it is read with ``os.preadv``
into fresh memory instead.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch

from ..storage.safetensors import read_header, save_safetensors
from ..storage.slices import map_tensor

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


class OffloadWriter:
    """Writes tensors to an offload folder on background threads while loading goes on.

    At most ``max_pending`` tensors wait in memory for their write (``submit``
    blocks beyond that), so the RAM a load may use stays bounded.

    Args:
        folder: the offload folder.
        workers: writer threads (writing to the page cache is CPU work: this
            overlaps it with the reading and converting of the next tensors).
        max_pending: tensors submitted but not yet written, at most.
    """

    def __init__(self, folder: PathLike, *, workers: int = 2, max_pending: int = 4) -> None:
        self.folder = folder
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pretrained-offload")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._futures: Dict[str, Future] = {}

    def submit(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` as ``name`` (see :func:`write_offloaded`) in the background."""
        self._slots.acquire()
        try:
            self._futures[name] = self._pool.submit(self._write, name, tensor)
        except BaseException:
            self._slots.release()
            raise

    def _write(self, name: str, tensor: torch.Tensor) -> DiskTensor:
        try:
            return write_offloaded(self.folder, name, tensor)
        finally:
            self._slots.release()

    def finish(self) -> Dict[str, DiskTensor]:
        """Wait for every write; the entries by name. Raises the first write's error."""
        futures, self._futures = self._futures, {}
        try:
            return {name: future.result() for name, future in futures.items()}
        finally:
            self._pool.shutdown(wait=True)


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


class DiskReader:
    """Reads :class:`DiskTensor` values (see the module's notes on mapping).

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
        """The tensor of ``entry`` in its target dtype, on ``device`` (default CPU): a view
        of a mapping of its bytes when nothing changes, else a copy made from one.

        Raises:
            OSError: when the file is shorter than the entry says (it changed on disk).
        """
        tensor = self._mapped(entry)
        if tensor is None:
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
            if entry.nbytes:
                buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
                self._read_exactly(entry.path, entry.start, buffer)
        if entry.target_dtype != entry.dtype:
            tensor = tensor.to(entry.target_dtype)
        if device is not None and torch.device(device).type != "cpu":
            tensor = tensor.to(device)
        return tensor

    def _mapped(self, entry: DiskTensor) -> Optional[torch.Tensor]:
        """A view of a private mapping of ``entry``'s bytes, or None where it can't be mapped."""
        if not entry.nbytes or entry.start % entry.dtype.itemsize:
            return None
        fd = self._fds.get(entry.path)
        own = fd is None
        if own:
            fd = _open(entry.path)
        try:
            return map_tensor(fd, entry, where=entry.path)
        finally:
            if own:
                os.close(fd)

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

    def __deepcopy__(self, memo) -> "DiskReader":
        """A reader of its own (``copy.deepcopy`` of an offloaded model): the pinned files
        duplicated (same open files, so the copy sees what this reader sees), a new lock."""
        copied = DiskReader()
        with self._lock:
            copied._fds = {path: os.dup(fd) for path, fd in self._fds.items()}
        memo[id(self)] = copied
        return copied

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


__all__ = ["DiskTensor", "DiskReader", "OffloadWriter", "disk_tensor_in", "offload_file_name", "write_offloaded"]
