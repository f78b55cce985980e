"""The safetensors format: strict header parsing, a lazy mmap reader, a streaming writer.

Layout of a file::

    8 bytes   N, little-endian unsigned header length
    N bytes   UTF-8 JSON object (padded with spaces):
              {"__metadata__": {str: str},            optional
               "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
    rest      the data area; offsets are relative to its start, and the tensors
              must cover it completely, in order, without holes or overlaps

The reader does not use the ``safetensors`` package: the header is untrusted
input and is checked field by field before any size it claims is believed.
Tensors are zero-copy views of a copy-on-write (``MAP_PRIVATE``) mapping, so
writing to one never changes the file.

The writer streams one tensor at a time (a :class:`LazyTensor` is produced
only when its turn comes) and produces the same bytes as
``safetensors.torch.save_file`` (tensors ordered by dtype rank, largest first,
then by name; header padded with spaces to a multiple of 8). The one place
the reference is not deterministic is the order of several metadata keys (it
uses a hash map); we write them sorted.

>>> save_safetensors({"w": torch.ones(2, 3)}, path, metadata={"format": "pt"})
>>> with SafetensorsReader(path) as reader:
...     w = reader.get("w")       # a (2, 3) view of the mapped file
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

import torch

from ..errors import CheckpointError, CheckpointNotFoundError

PathLike = Union[str, os.PathLike]

MAX_HEADER_SIZE = 100_000_000
"""Largest header we accept (bytes), as the reference implementation does."""

LFS_PREFIX = b"version https://git-lfs"


def _dtype_table() -> list[tuple[str, torch.dtype]]:
    """(name, dtype) pairs in the reference's dtype rank order, smallest rank first."""
    names = [
        ("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"),
        ("F8_E5M2", "float8_e5m2"), ("F8_E4M3", "float8_e4m3fn"), ("F8_E8M0", "float8_e8m0fnu"),
        ("I16", "int16"), ("U16", "uint16"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I32", "int32"), ("U32", "uint32"), ("F32", "float32"), ("C64", "complex64"),
        ("F64", "float64"), ("I64", "int64"), ("U64", "uint64"),
    ]
    return [(code, getattr(torch, attr)) for code, attr in names if hasattr(torch, attr)]


_TABLE = _dtype_table()
DTYPES: dict[str, torch.dtype] = dict(_TABLE)
"""safetensors dtype code -> torch dtype, for every code this torch supports."""
_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in _TABLE}
_RANK: dict[str, int] = {code: rank for rank, (code, _) in enumerate(_TABLE)}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file.

    Attributes:
        dtype: the torch dtype.
        shape: the shape.
        start: absolute byte offset of the first byte in the file.
        end: absolute byte offset one past the last byte.
    """

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return self.nbytes // self.dtype.itemsize


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of a safetensors file.

    Attributes:
        tensors: name -> :class:`TensorInfo`, in data (file) order.
        metadata: the ``__metadata__`` dict, or ``None`` when absent.
        data_offset: absolute offset of the data area (``8 + N``).
        file_size: size of the file in bytes.
    """

    tensors: dict[str, TensorInfo]
    metadata: Optional[dict[str, str]]
    data_offset: int
    file_size: int


# --------------------------------------------------------------------------- reading


class _HeaderProblem(Exception):
    """Internal: one validation failure, turned into a CheckpointError naming the file."""


def _reject_duplicates(pairs: list) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _HeaderProblem(f"duplicate key {key!r} in the header")
        seen[key] = value
    return seen


def _reject_constant(name: str):
    raise _HeaderProblem(f"non-standard JSON constant {name} in the header")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_metadata(value) -> Optional[dict[str, str]]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _HeaderProblem(f"__metadata__ must be an object of strings, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _HeaderProblem(f"__metadata__[{key!r}] must be a string, got {type(item).__name__}")
    return value


_MAX_EXTENT = 2**63 - 1
"""Largest product of the dimensions (zeros counted as 1) torch can lay out."""


def _numel(name: str, shape, limit: int) -> int:
    """Element count of ``shape``; stops early once it passes ``limit`` (no huge ints)."""
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _HeaderProblem(f"tensor {name!r}: shape must be a list of non-negative ints, got {shape!r}")
    if 0 in shape:  # no data, but torch must still be able to compute the strides
        extent = 1
        for dim in shape:
            extent *= max(dim, 1)
            if extent > _MAX_EXTENT:
                raise _HeaderProblem(f"tensor {name!r}: shape {shape!r} is too large for a tensor")
        return 0
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > limit:
            return limit + 1
    return numel


def _parse_entry(name: str, entry, data_size: int, data_offset: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _HeaderProblem(f"tensor {name!r}: entry must be an object, got {type(entry).__name__}")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise _HeaderProblem(f"tensor {name!r}: missing field {field!r}")
    code = entry["dtype"]
    if not isinstance(code, str) or code not in DTYPES:
        raise _HeaderProblem(f"tensor {name!r}: unknown dtype {code!r} (supported: {sorted(DTYPES)})")
    dtype = DTYPES[code]
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _HeaderProblem(f"tensor {name!r}: data_offsets must be two ints, got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise _HeaderProblem(f"tensor {name!r}: data_offsets {offsets} must satisfy 0 <= begin <= end")
    if end > data_size:
        raise _HeaderProblem(
            f"tensor {name!r}: data_offsets {offsets} run past the end of the file "
            f"(data area is {data_size} bytes)"
        )
    numel = _numel(name, entry["shape"], data_size)
    if numel * dtype.itemsize != end - begin:
        raise _HeaderProblem(
            f"tensor {name!r}: shape {entry['shape']} of {code} needs "
            f"{'more than the file holds' if numel > data_size else numel * dtype.itemsize} bytes "
            f"but data_offsets {offsets} span {end - begin}"
        )
    return TensorInfo(dtype, tuple(entry["shape"]), data_offset + begin, data_offset + end)


def _check_coverage(tensors: dict[str, TensorInfo], data_offset: int, file_size: int) -> dict[str, TensorInfo]:
    """Sort by offset and require the data area to be covered exactly, in order."""
    ordered = sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end))
    expected = data_offset
    for name, info in ordered:
        if info.start < expected:
            raise _HeaderProblem(f"tensor {name!r} overlaps the tensor before it (starts at "
                                 f"data offset {info.start - data_offset}, expected {expected - data_offset})")
        if info.start > expected:
            raise _HeaderProblem(f"hole in the data area before tensor {name!r} (starts at data offset "
                                 f"{info.start - data_offset}, expected {expected - data_offset})")
        expected = info.end
    if expected != file_size:
        raise _HeaderProblem(
            f"the tensors cover {expected - data_offset} bytes but the data area holds "
            f"{file_size - data_offset}; the file is truncated or has trailing bytes"
        )
    return dict(ordered)


def _parse_header(raw: bytes, data_offset: int, file_size: int) -> SafetensorsHeader:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _HeaderProblem(f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _HeaderProblem(f"header is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise _HeaderProblem("header JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise _HeaderProblem(f"header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _HeaderProblem(f"header must be a JSON object, got {type(obj).__name__}")
    metadata = _parse_metadata(obj.pop("__metadata__", None))
    data_size = file_size - data_offset
    tensors = {name: _parse_entry(name, entry, data_size, data_offset) for name, entry in obj.items()}
    tensors = _check_coverage(tensors, data_offset, file_size)
    return SafetensorsHeader(tensors, metadata, data_offset, file_size)


def lfs_pointer_message(path: PathLike) -> str:
    """The hint for a git-lfs pointer file found where weights were expected."""
    return (f"{os.fspath(path)} is a git-lfs pointer, not the weights: the repository was cloned "
            "without git-lfs; run `git lfs install && git lfs pull` in it")


def read_header(path: PathLike, *, fd: Optional[int] = None) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file; no tensor data is read.

    Only the bytes the file really holds are read: a header length larger than
    the file (or than :data:`MAX_HEADER_SIZE`) is refused before anything is
    allocated for it.

    Args:
        path: the file.
        fd: an open descriptor of the file to read instead of opening ``path``
            (``path`` then only names the file in messages); read with ``pread``.

    Returns:
        The :class:`SafetensorsHeader`.

    Raises:
        CheckpointError: naming the file and the problem (truncated file,
            oversized or malformed header, unknown dtype, bad shape or offsets,
            overlaps or holes in the data area, non-string metadata, git-lfs pointer).
        CheckpointNotFoundError: when the file does not exist.
    """
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        except FileNotFoundError as exc:
            raise CheckpointNotFoundError(f"safetensors file {os.fspath(path)} does not exist") from exc
        except OSError as exc:
            raise CheckpointError(f"cannot read safetensors file {os.fspath(path)}: {exc}") from exc
        try:
            return read_header(path, fd=fd)
        finally:
            os.close(fd)
    try:
        return _read_header_fd(path, fd)
    except OSError as exc:  # e.g. a directory where a file was expected
        raise CheckpointError(f"cannot read safetensors file {os.fspath(path)}: {exc}") from exc


def _read_header_fd(path: PathLike, fd: int) -> SafetensorsHeader:
    file_size = os.fstat(fd).st_size
    prefix = os.pread(fd, len(LFS_PREFIX), 0)
    if prefix == LFS_PREFIX:
        raise CheckpointError(lfs_pointer_message(path))
    head = prefix[:8]
    if len(head) < 8:
        raise CheckpointError(f"{os.fspath(path)}: not a safetensors file: only {file_size} bytes, "
                              "shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_SIZE:
        raise CheckpointError(f"{os.fspath(path)}: invalid safetensors file: header length {length} "
                              f"exceeds the {MAX_HEADER_SIZE}-byte limit")
    if 8 + length > file_size:
        raise CheckpointError(f"{os.fspath(path)}: invalid safetensors file: header length {length} "
                              f"is larger than the file ({file_size} bytes); the file is truncated or not safetensors")
    raw = os.pread(fd, length, 8)
    if len(raw) != length:
        raise CheckpointError(f"{os.fspath(path)}: file shrank while its header was being read")
    try:
        return _parse_header(raw, 8 + length, file_size)
    except _HeaderProblem as exc:
        raise CheckpointError(f"{os.fspath(path)}: invalid safetensors file: {exc}") from None


def map_bytes(fd: int, start: int, end: int) -> tuple[mmap.mmap, int]:
    """A private (copy-on-write) mapping of bytes ``start:end`` of ``fd``, and where
    ``start`` falls in it (mappings begin on an allocation-granularity boundary).

    Raises:
        OSError: when the kernel refuses the mapping (address space, commit charge).
    """
    base = start - start % mmap.ALLOCATIONGRANULARITY
    return mmap.mmap(fd, end - base, offset=base, access=mmap.ACCESS_COPY), start - base


class SafetensorsReader:
    """Lazy access to the tensors of one safetensors file through a private mapping.

    ``get`` returns a zero-copy view of a copy-on-write (``MAP_PRIVATE``)
    mapping: writing to it is allowed and never reaches the file. Views stay
    valid after :meth:`close`; the mapping is unmapped when the last view dies.

    Args:
        path: the file.
        header: an already validated header of this file (skips re-reading it).
        fd: an open descriptor of the file to map instead of opening ``path``
            (the reader keeps its own reference; the caller still closes ``fd``).

    Raises:
        CheckpointError: for an invalid file, or one that changed size since its header was read.

    >>> with SafetensorsReader("model.safetensors") as reader:
    ...     names = reader.keys(); first = reader.get(names[0])
    """

    def __init__(self, path: PathLike, *, header: Optional[SafetensorsHeader] = None,
                 fd: Optional[int] = None) -> None:
        self.path = os.fspath(path)
        self._map: Optional[mmap.mmap] = None
        self._fd: Optional[int] = None  # per-tensor mappings only: our own descriptor of the file
        self._closed = False
        if fd is None:
            with open(self.path, "rb") as file:
                self._map_file(file.fileno(), header)
        else:
            self._map_file(fd, header)

    def _map_file(self, fd: int, header: Optional[SafetensorsHeader]) -> None:
        self.header = header if header is not None else read_header(self.path, fd=fd)
        size = os.fstat(fd).st_size
        if size != self.header.file_size:
            raise CheckpointError(f"{self.path}: file changed size while being read "
                                  f"({self.header.file_size} -> {size} bytes)")
        try:
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                raise CheckpointError(f"{self.path}: cannot map the file: {exc}") from exc
            # A private mapping reserves its size against RAM + swap (the kernel's overcommit
            # heuristic refuses one larger than that): map each tensor on its own instead.
            self._fd = os.dup(fd)

    def _map_range(self, name: str, info: TensorInfo) -> tuple[mmap.mmap, int]:
        """A private mapping covering just ``info`` and the tensor's offset in it."""
        try:
            return map_bytes(self._fd, info.start, info.end)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot map tensor {name!r} ({info.nbytes} bytes): {exc}") from exc

    @property
    def metadata(self) -> Optional[dict[str, str]]:
        """The ``__metadata__`` dict of the file, or ``None``."""
        return self.header.metadata

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.header.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.header.tensors

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as a view of the mapping (a copy only when misaligned).

        Raises:
            KeyError: when the file has no such tensor.
            ValueError: after :meth:`close`.
        """
        try:
            info = self.header.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None
        if self._closed:
            raise ValueError(f"reader of {self.path} is closed")
        count = info.numel
        if count == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        buffer, offset = (self._map, info.start) if self._map is not None else self._map_range(name, info)
        tensor = torch.frombuffer(buffer, dtype=info.dtype, count=count, offset=offset)
        if info.start % info.dtype.itemsize:
            tensor = tensor.clone()
        return tensor.view(info.shape)

    def close(self) -> None:
        """Drop the mapping; existing views keep it alive until they are freed."""
        self._map = None
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsReader({self.path!r}, {len(self.header.tensors)} tensors)"


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class LazyTensor:
    """A tensor to save that is produced only when it is written (e.g. a disk-offloaded weight).

    :func:`save_safetensors` (and the checkpoint writer) call ``load()`` right
    before writing the entry and drop the result right after, so tensors given
    lazily are saved with memory bounded by the largest one (``.bin`` shards: by
    the largest shard, since pickle needs a whole shard at once).

    Attributes:
        dtype: the dtype ``load()`` returns.
        shape: the shape ``load()`` returns.
        load: returns the tensor (any device but ``meta``).
    """

    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _materialize(name: str, entry: Union[torch.Tensor, LazyTensor]) -> torch.Tensor:
    """``entry`` itself, or what a lazy entry loads (checked against what it promised)."""
    if not isinstance(entry, LazyTensor):
        return entry
    tensor = entry.load()
    if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
        raise ValueError(f"lazy entry {name!r} promised {entry.dtype} {entry.shape} but produced "
                         f"{tensor.dtype} {tuple(tensor.shape)}")
    return tensor


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype (``torch.float16`` -> ``"F16"``).

    Raises:
        ValueError: for a dtype safetensors cannot store.
    """
    try:
        return _CODES[dtype]
    except KeyError:
        raise ValueError(f"safetensors cannot store dtype {dtype}; supported: "
                         f"{sorted(str(d) for d in _CODES)}") from None


def _check_inputs(tensors: Mapping[str, Union[torch.Tensor, LazyTensor]],
                  metadata: Optional[Mapping[str, str]]) -> None:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> Tensor, got {type(tensors).__name__}")
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved by the safetensors format and cannot name a tensor")
        if isinstance(tensor, LazyTensor):
            dtype_code(tensor.dtype)
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(tensor).__name__}, not a Tensor")
        if tensor.layout != torch.strided:
            raise ValueError(f"{name!r} has layout {tensor.layout}; only dense tensors can be saved")
        if tensor.device.type == "meta":
            raise ValueError(f"{name!r} is on the meta device and has no data to save")
        dtype_code(tensor.dtype)
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping of str -> str, got {type(metadata).__name__}")
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map str -> str, got {key!r}: {value!r}")


def _layout(tensors: Mapping[str, Union[torch.Tensor, LazyTensor]], metadata: Optional[Mapping[str, str]]):
    """Order the tensors like the reference and build the padded header bytes."""
    order = sorted(tensors, key=lambda name: (-_RANK[dtype_code(tensors[name].dtype)], name))
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = {key: metadata[key] for key in sorted(metadata)}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.nbytes if isinstance(tensor, LazyTensor) else tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": dtype_code(tensor.dtype),
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return order, raw


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of ``tensor`` in C order, as a memoryview (copies only when not contiguous or not on CPU)."""
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.to("cpu")
    data = data.resolve_conj().resolve_neg().contiguous()
    return memoryview(data.reshape(-1).view(torch.uint8).numpy())


def save_safetensors(
    tensors: Mapping[str, Union[torch.Tensor, LazyTensor]],
    path: PathLike,
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format, one tensor at a time.

    The output is byte-identical to ``safetensors.torch.save_file(tensors, path,
    metadata)`` (metadata keys are written sorted). Views and strided tensors
    are written as their logical contents; aliasing is not checked here (the
    caller deduplicates). A :class:`LazyTensor` is loaded right before it is
    written and dropped right after.

    Args:
        tensors: name -> dense tensor (any device but meta) or :class:`LazyTensor`.
        path: destination file; overwritten.
        metadata: optional ``__metadata__`` (str -> str).

    Raises:
        TypeError, ValueError: for non-tensor values, non-str names or metadata,
            meta tensors, a dtype safetensors cannot store, or a lazy entry that
            loads another dtype or shape than it promised.
        OSError: when writing fails (the partial file is removed).
    """
    _check_inputs(tensors, metadata)
    order, raw = _layout(tensors, metadata)
    try:
        with open(path, "wb") as file:
            file.write(struct.pack("<Q", len(raw)))
            file.write(raw)
            for name in order:
                tensor = _materialize(name, tensors[name])
                if tensor.numel():
                    file.write(tensor_bytes(tensor))
                del tensor
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


__all__ = [
    "DTYPES",
    "MAX_HEADER_SIZE",
    "TensorInfo",
    "SafetensorsHeader",
    "read_header",
    "SafetensorsReader",
    "dtype_code",
    "map_bytes",
    "LazyTensor",
    "save_safetensors",
]
