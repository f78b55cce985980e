"""One lazy view over all the weight files of a resolved checkpoint.

For safetensors every header is read (and cross-checked against the index)
up front, which costs a few kilobytes per shard; tensor data is only touched
by :meth:`Checkpoint.get`, which returns zero-copy views of a copy-on-write
mapping. For ``.bin`` checkpoints a whole shard must be unpickled to reach any
of its tensors, so at most one shard is kept in memory at a time.

One version, even while the folder is being saved over: the checkpoint opens
its folder once (:class:`~pretrained.storage.folder.FolderHandle`), re-reads
the index there, and opens every weights file relative to that directory
before returning; the descriptors are kept until :meth:`Checkpoint.close`, and
mappings made from them stay valid after a save deletes the files. If the
folder changed since it was resolved (the index differs, a file is gone), it
is resolved again, up to ``_OPEN_ATTEMPTS`` times. With ``verify=True`` the
files are hashed through those same descriptors (:mod:`~pretrained.storage.integrity`).

>>> with Checkpoint(resolve_checkpoint("path/to/folder")) as ckpt:
...     for name in ckpt.keys():
...         dtype, shape = ckpt.dtype_shape(name)     # headers only
...         tensor = ckpt.get(name)                   # mmap view
"""

from __future__ import annotations

import json
import mmap
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import torch

from ..errors import CheckpointError, CheckpointNotFoundError
from ..logging import get_logger
from . import integrity
from .folder import FolderHandle
from .pickle import load_pickle
from .resolve import ResolvedCheckpoint, parse_index, resolve_checkpoint
from .safetensors import SafetensorsHeader, SafetensorsReader, map_bytes, read_header

CHUNK_BYTES = 16 << 20  # what :meth:`Checkpoint.chunks` maps of a tensor at a time
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # absent on Windows: pieces then stay mapped to the end

logger = get_logger(__name__)

_PARALLEL_HEADERS = 16
"""Read headers with threads from this many shards on: on a local disk a header costs ~0.1 ms
and threads do not help (the GIL), on network file systems they hide the latency."""
_OPEN_ATTEMPTS = 5
"""How many times opening starts again (resolving anew) when a save replaces the folder meanwhile."""


class _FolderChanged(Exception):
    """Internal: the folder no longer holds what was resolved; ``error`` is what to raise if we give up."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _close_all(fds: dict, handles: list) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
    for handle in handles:
        handle.close()
    handles.clear()


class Checkpoint:
    """Tensors of a checkpoint by name, across all of its files.

    Args:
        resolved: the output of :func:`~pretrained.storage.resolve.resolve_checkpoint`.
        verify: check the SHA-256 checksums saved with the checkpoint before
            any tensor is read (see :mod:`pretrained.storage.integrity`); a
            checkpoint without checksums is opened with a warning.

    Attributes:
        resolved: the resolution in use (a fresh one when the folder changed
            between :func:`resolve_checkpoint` and this call).

    Raises:
        CheckpointError: a shard header is invalid, a tensor is in two shards,
            a tensor of a shard is missing from the index, or a tensor of the
            index is missing from its shard (for ``.bin`` shards the last two
            are detected when the shard is loaded); with ``verify=True``, a file
            whose checksum differs (named), or malformed checksums; the folder
            kept changing while it was opened.
        CheckpointNotFoundError: a file vanished and did not come back.
    """

    def __init__(self, resolved: ResolvedCheckpoint, *, verify: bool = False) -> None:
        self._fds: dict[str, int] = {}
        self._handles: list[FolderHandle] = []
        self._finalizer = weakref.finalize(self, _close_all, self._fds, self._handles)
        try:
            self._open_consistent(resolved)
            if verify:
                self._verify()
        except BaseException:
            self._finalizer()
            raise

    # ----------------------------------------------------------------- construction

    def _reset(self, resolved: ResolvedCheckpoint) -> None:
        _close_all(self._fds, self._handles)
        self.resolved = resolved
        self.format = resolved.format
        self.files: list[str] = list(resolved.files)
        self._headers: dict[str, SafetensorsHeader] = {}
        self._readers: dict[str, SafetensorsReader] = {}
        self._bin_file: Optional[str] = None
        self._bin_tensors: dict[str, torch.Tensor] = {}
        self._key_file: Optional[dict[str, str]] = None

    def _open_consistent(self, resolved: ResolvedCheckpoint) -> None:
        for attempt in range(1, _OPEN_ATTEMPTS + 1):
            self._reset(resolved)
            try:
                self._open_files()
                break
            except _FolderChanged as changed:
                if resolved.request is None or attempt == _OPEN_ATTEMPTS:
                    raise changed.error from None
                logger.info("%s changed while it was being opened (%s); resolving it again",
                            resolved.folder, changed)
                resolved = resolve_checkpoint(**resolved.request)
        if self.format == "safetensors":
            self._read_headers()
        elif self.resolved.weight_map is not None:
            self._key_file = self._ordered(self.resolved.weight_map)

    def _relative(self, path: str) -> str:
        """``path`` relative to the checkpoint folder (``/``-separated), or absolute if outside it."""
        relative = os.path.relpath(path, self.resolved.folder)
        if relative.startswith(os.pardir) or os.path.isabs(relative):
            return os.path.abspath(path)
        return relative.replace(os.sep, "/")

    def _open_files(self) -> None:
        """Open the folder, check its index is still the resolved one, open every weights file in it."""
        resolved = self.resolved
        try:
            folder = FolderHandle(resolved.folder)
        except OSError as exc:
            raise _FolderChanged(CheckpointNotFoundError(
                f"checkpoint folder {resolved.folder} cannot be opened any more: {exc}")) from None
        self._handles.append(folder)
        if resolved.index_file is not None:
            try:
                raw = folder.read_bytes(self._relative(resolved.index_file))
            except FileNotFoundError:
                raise _FolderChanged(CheckpointNotFoundError(
                    f"index file {resolved.index_file} disappeared while the checkpoint was being opened")) from None
            if parse_index(raw, resolved.index_file, resolved.format) != resolved.index:
                raise _FolderChanged(CheckpointError(
                    f"{resolved.index_file} kept changing while the checkpoint was being opened "
                    f"({_OPEN_ATTEMPTS} attempts); is a process saving to {resolved.folder} in a loop?"))
        for file in self.files:
            try:
                self._fds[file] = folder.open(self._relative(file))
            except FileNotFoundError:
                raise _FolderChanged(CheckpointNotFoundError(
                    f"weights file {file} disappeared while the checkpoint was being opened")) from None
            except OSError as exc:
                raise CheckpointError(f"cannot open weights file {file}: {exc}") from exc
        # config.json too, from the same folder instance (a later read could find it deleted).
        try:
            self._config_bytes: Optional[bytes] = folder.read_bytes("config.json")
        except FileNotFoundError:
            self._config_bytes = None
            if folder.replaced():
                raise _FolderChanged(CheckpointNotFoundError(
                    f"config.json of {resolved.folder} disappeared while the checkpoint was being opened")) from None
        except OSError:
            self._config_bytes = None

    def _where(self) -> str:
        return self.resolved.index_file or (self.files[0] if self.files else self.resolved.folder)

    def _ordered(self, key_file: dict[str, str]) -> dict[str, str]:
        """``key_file`` re-ordered by file, keeping each file's own order."""
        rank = {file: i for i, file in enumerate(self.files)}
        return dict(sorted(key_file.items(), key=lambda item: rank[item[1]]))

    def _read_headers(self) -> None:
        def read(file: str) -> SafetensorsHeader:
            return read_header(file, fd=self._fds[file])

        if len(self.files) >= _PARALLEL_HEADERS:
            with ThreadPoolExecutor(max_workers=_PARALLEL_HEADERS) as pool:
                headers = list(pool.map(read, self.files))
        else:
            headers = [read(file) for file in self.files]
        self._headers = dict(zip(self.files, headers))
        key_file: dict[str, str] = {}
        for file, header in self._headers.items():
            for name in header.tensors:
                if name in key_file:
                    raise CheckpointError(f"tensor {name!r} is stored twice: in {key_file[name]} and in {file}")
                key_file[name] = file
        if self.resolved.weight_map is not None:
            self._check_against_index(key_file, self.resolved.weight_map)
        self._key_file = key_file

    def _check_against_index(self, key_file: dict[str, str], weight_map: dict[str, str]) -> None:
        index = self.resolved.index_file or "the index"
        for name, file in key_file.items():
            if name not in weight_map:
                raise CheckpointError(f"tensor {name!r} is in shard {file} but not in the weight_map of {index}")
            if weight_map[name] != file:
                raise CheckpointError(
                    f"tensor {name!r} is in shard {file} but {index} maps it to {weight_map[name]}"
                )
        for name, file in weight_map.items():
            if name not in key_file:
                raise CheckpointError(f"tensor {name!r} is listed in {index} for shard {file} but missing from it")

    # ----------------------------------------------------------------- .bin shards

    def _load_bin(self, file: str) -> dict[str, torch.Tensor]:
        """Make ``file`` the one resident ``.bin`` shard."""
        if self._bin_file != file:
            self._bin_file, self._bin_tensors = None, {}
            tensors = load_pickle(file, fd=self._fds.get(file))
            weight_map = self.resolved.weight_map
            if weight_map is not None:
                self._check_bin_shard(file, tensors, weight_map)
            self._bin_file, self._bin_tensors = file, tensors
        return self._bin_tensors

    def _check_bin_shard(self, file: str, tensors: dict, weight_map: dict[str, str]) -> None:
        index = self.resolved.index_file or "the index"
        for name in tensors:
            if name not in weight_map:
                raise CheckpointError(f"tensor {name!r} is in shard {file} but not in the weight_map of {index}")
            if weight_map[name] != file:
                raise CheckpointError(f"tensor {name!r} is in shard {file} but {index} maps it to {weight_map[name]}")
        for name, mapped in weight_map.items():
            if mapped == file and name not in tensors:
                raise CheckpointError(f"tensor {name!r} is listed in {index} for shard {file} but missing from it")

    def _keys_map(self) -> dict[str, str]:
        if self._key_file is None:  # a single .bin file: its keys are only known once loaded
            (file,) = self.files
            self._key_file = dict.fromkeys(self._load_bin(file), file)
        return self._key_file

    # ----------------------------------------------------------------- public

    @property
    def metadata(self) -> Optional[dict]:
        """The index ``metadata`` when sharded, else the single safetensors file's ``__metadata__``."""
        if self.resolved.index is not None:
            return self.resolved.index.get("metadata")
        if self.format == "safetensors" and self.files:
            return self._headers[self.files[0]].metadata
        return None

    def keys(self) -> list[str]:
        """Tensor names, file by file, each file in its own order."""
        return list(self._keys_map())

    def __contains__(self, name: str) -> bool:
        return name in self._keys_map()

    def __len__(self) -> int:
        return len(self._keys_map())

    def file_of(self, name: str) -> str:
        """Path of the file (one of :attr:`files`) that holds ``name``.

        Raises:
            KeyError: for an unknown tensor name.
        """
        try:
            return self._keys_map()[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in the checkpoint at {self._where()}") from None

    def dtype_shape(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of ``name``; from the header for safetensors (no data read).

        Raises:
            KeyError: for an unknown tensor name.
        """
        file = self.file_of(name)
        if self.format == "safetensors":
            info = self._headers[file].tensors[name]
            return info.dtype, info.shape
        tensor = self._load_bin(file)[name]
        return tensor.dtype, tuple(tensor.shape)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` on the CPU (a copy-on-write mmap view for safetensors).

        Raises:
            KeyError: for an unknown tensor name.
            CheckpointError: the file holding it is corrupt or inconsistent with the index.
        """
        file = self.file_of(name)
        if self.format == "safetensors":
            reader = self._readers.get(file)
            if reader is None:
                reader = self._readers[file] = SafetensorsReader(file, header=self._headers[file],
                                                                 fd=self._fds.get(file))
            return reader.get(name)
        tensors = self._load_bin(file)
        if name not in tensors:
            raise CheckpointError(f"tensor {name!r} is missing from {file}")
        return tensors[name]

    def read_config(self) -> Optional[dict]:
        """``config.json`` of the folder instance the weights were opened from (read when
        they were opened, so a save replacing the folder since does not matter);
        ``None`` when it is absent or not a JSON object."""
        try:
            data = json.loads(self._config_bytes) if getattr(self, "_config_bytes", None) else None
        except (ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` in fresh memory, read with ``preadv`` (no mapping kept).

        For tensors about to be converted or moved to another device: a mapped
        source would keep its file pages resident (in RSS) until the mapping goes.
        ``.bin`` checkpoints fall back to :meth:`get`.
        """
        file = self.file_of(name)
        fd = self._fds.get(file)
        if self.format != "safetensors" or fd is None:
            return self.get(name)
        info = self._headers[file].tensors[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        if info.end > info.start:
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            done, length = 0, info.end - info.start
            while done < length:
                count = os.preadv(fd, [view[done:]], info.start + done)
                if not count:
                    raise CheckpointError(f"{file} ended before tensor {name!r} (byte {info.start + done})")
                done += count
        return tensor

    def locate(self, name: str) -> Optional[tuple[int, "TensorInfo", str]]:
        """``(fd, header entry, file)`` of ``name`` for byte-range reads (see
        :mod:`pretrained.storage.slices`); ``None`` for ``.bin`` checkpoints."""
        file = self.file_of(name)
        fd = self._fds.get(file)
        if self.format != "safetensors" or fd is None:
            return None
        return fd, self._headers[file].tensors[name], file

    def chunks(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
        """The tensor ``name`` as consecutive flat pieces of about ``chunk_bytes``.

        For tensors converted or moved as they load: each piece is a view of a
        mapping of the tensor's bytes, so the conversion reads the page cache
        with no staging copy; a piece's pages leave this process's RSS when the
        next piece is asked for, and the mapping goes when the iteration ends.
        So converting a tensor never holds more than one piece of its source.
        A piece must not be kept past the next step. ``.bin`` checkpoints (and
        misaligned tensors) give the whole tensor as one piece.
        """
        file = self.file_of(name)
        fd = self._fds.get(file)
        info = self._headers[file].tensors[name] if self.format == "safetensors" else None
        if info is None or fd is None or info.numel == 0 or info.start % info.dtype.itemsize:
            yield (self.get(name) if info is None else self.read(name)).reshape(-1)
            return
        try:
            mapping, begin = map_bytes(fd, info.start, info.end)
        except OSError:  # no address space or commit charge for it: read it instead
            yield self.read(name).reshape(-1)
            return
        step = max(mmap.PAGESIZE, chunk_bytes - chunk_bytes % mmap.PAGESIZE)
        end = begin + info.nbytes  # the tensor's bytes within the mapping: begin:end
        try:
            while begin < end:
                stop = min(end, (begin // step + 1) * step)  # piece boundaries fall on pages
                piece = torch.frombuffer(mapping, dtype=info.dtype, count=(stop - begin) // info.dtype.itemsize,
                                         offset=begin)
                yield piece
                del piece
                if stop < end and _DONTNEED is not None:
                    low = begin - begin % mmap.PAGESIZE
                    mapping.madvise(_DONTNEED, low, stop - low)
                begin = stop
        finally:
            try:
                mapping.close()
            except BufferError:  # a piece was kept: the mapping goes with the last of them
                pass

    def release(self, file: str) -> None:
        """Drop the mapping or loaded shard of ``file``; tensors already returned stay valid."""
        reader = self._readers.pop(file, None)
        if reader is not None:
            reader.close()
        if self._bin_file == file:
            self._bin_file, self._bin_tensors = None, {}

    def close(self) -> None:
        """Release every file and close the descriptors; tensors already returned stay valid."""
        for file in list(self._readers):
            self.release(file)
        self._bin_file, self._bin_tensors = None, {}
        self._finalizer()

    # ----------------------------------------------------------------- integrity

    def _verify(self) -> None:
        """Compare every file with its saved SHA-256; see :mod:`pretrained.storage.integrity`."""
        where = self._where()
        if self.resolved.index is not None:
            metadata = self.resolved.index.get("metadata") or {}
            sums = metadata.get("checksums")
            if sums is None:
                integrity.misplaced_checksums(metadata, "checksums", where)
                self._warn_unverified(where)
                return
            if not isinstance(sums, dict):
                raise CheckpointError(f"{where}: metadata 'checksums' must be an object of shard file -> sha256")
            for file in self.files:
                shard = self._relative(file)
                if shard not in sums:
                    raise CheckpointError(f"{where} has checksums but none for shard {shard}; cannot verify it")
                expected = integrity.check_digest(sums[shard], f"{where} (checksum of {shard})")
                actual = integrity.fd_sha256(self._fds[file])
                if actual != expected:
                    raise integrity.mismatch(f"shard {shard} of {where}", expected, actual)
            return
        (file,) = self.files
        header = self._headers.get(file)
        expected = (header.metadata or {}).get(integrity.CHECKSUM_KEY) if header is not None else None
        if expected is None:
            integrity.misplaced_checksums(header.metadata if header is not None else None,
                                          integrity.CHECKSUM_KEY, file)
            self._warn_unverified(where)
            return
        integrity.check_digest(expected, f"{file} (__metadata__ {integrity.CHECKSUM_KEY!r})")
        fd = self._fds[file]
        actual = integrity.fd_sha256(
            fd, zero_at=integrity.embedded_digest_offset(fd, header.data_offset, expected, file))
        if actual != expected:
            raise integrity.mismatch(file, expected, actual)

    @staticmethod
    def _warn_unverified(where: str) -> None:
        logger.warning("verify=True but the checkpoint at %s carries no checksums (save it with "
                       "checksums=True to add them); loading it unverified", where)

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.format}, {len(self.files)} file(s) in {self.resolved.folder})"


__all__ = ["Checkpoint"]
