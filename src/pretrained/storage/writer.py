"""Atomic save of a state dict (and side files) as a Hugging Face checkpoint folder.

How a save replaces ``folder``:

1. Leftover temporary folders of earlier saves that were killed (their
   process is gone) are removed.
2. The new checkpoint is assembled in a sibling folder
   ``.<name>.pretrained-tmp-<pid>-<random>`` of the same parent: every entry
   of the current folder is hard-linked in (copied where links fail), except
   the weights files of this variant (single file, any shard, index), in this
   format and in the other one (``.bin`` for a safetensors save and back:
   they are stale or being rewritten, and a loader preferring the other
   format would load old weights), and the files this save writes. Weights, index and extra files are written (and,
   with ``durable=True``, fsync'ed, each while the next is written).
3. The two folders are swapped with one ``renameat2(RENAME_EXCHANGE)`` and the
   old one (now at the temporary name) is deleted. A new target is simply
   renamed into place.

A reader therefore sees the old checkpoint or the new one, never a mix, and a
process killed at any moment leaves one of the two. On systems or file
systems without ``RENAME_EXCHANGE`` the new files are moved in one by one,
extra files and shards first and the single weights file or index last, then
stale weights files are deleted (single files and indexes before shards): a reader may briefly see new shards under an
old index, but the loader's preferred file always points at a complete set.

Checksums: with ``checksums=True`` a *sharded* checkpoint gets
``metadata["checksums"] = {shard file: sha256 hex}`` in its index; a single
safetensors file carries its own SHA-256 in its header metadata (``"sha256"``,
see :mod:`pretrained.storage.integrity`); a single ``.bin`` file has no place
for one (a warning is logged). No side file outside the Hugging Face layout.

Aliasing: safetensors cannot store two names for one memory, so overlapping
tensors must be deduplicated (or cloned) by the caller; the writer refuses
them. ``.bin`` files are written as given (pickle keeps the sharing).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import struct
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

import torch

from ..errors import SaveError
from ..logging import get_logger
from ..progress import progress
from . import integrity, names
from .pickle import save_pickle
from .safetensors import _layout as safetensors_layout
from .safetensors import dtype_code, save_safetensors, tensor_bytes
from .shards import ShardPlan, plan_shards

logger = get_logger(__name__)

PathLike = Union[str, os.PathLike]

_TMP_MARK = ".pretrained-tmp-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE_ERRNOS = {errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EPERM, errno.EBUSY,
                       getattr(errno, "EOPNOTSUPP", errno.EINVAL), getattr(errno, "ENOTSUP", errno.EINVAL)}


# --------------------------------------------------------------------------- input checks


@dataclass(frozen=True)
class LazyTensor:
    """A state dict entry produced only when it is written (e.g. a disk-offloaded weight).

    The writer calls ``load()`` right before writing the entry and drops the
    result right after, so a checkpoint of lazy entries is saved with memory
    bounded by its largest tensor (``.bin`` shards: by the largest shard, since
    pickle needs a whole shard at once).

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


def _nbytes(entry: Union[torch.Tensor, LazyTensor]) -> int:
    return entry.nbytes if isinstance(entry, LazyTensor) else entry.numel() * entry.element_size()


def _check_state_dict(state_dict: Mapping[str, torch.Tensor], *, no_aliases: bool) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> Tensor, got {type(state_dict).__name__}")
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, got {name!r}")
        if isinstance(tensor, LazyTensor):
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a Tensor")
        if tensor.device.type == "meta":
            raise ValueError(f"state dict entry {name!r} is on the meta device and has no data to save")
    if no_aliases:
        for tensor in state_dict.values():
            dtype_code(tensor.dtype)
        _check_aliases({n: t for n, t in state_dict.items() if not isinstance(t, LazyTensor)})
    return dict(state_dict)


def _byte_range(tensor: torch.Tensor) -> tuple[int, int]:
    """[start, end) bytes of ``tensor``'s storage that its elements can touch."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    start = tensor.storage_offset() * tensor.element_size()
    return start, start + span * tensor.element_size()


def _check_aliases(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse entries whose memory overlaps (safetensors would need one copy per name)."""
    groups: dict[tuple, list[tuple[int, int, str]]] = {}
    for name, tensor in state_dict.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        groups.setdefault(key, []).append((*_byte_range(tensor), name))
    for ranges in groups.values():
        ranges.sort()
        for (_, end, first), (start, _, second) in zip(ranges, ranges[1:]):
            if start < end:
                raise ValueError(
                    f"state dict entries {first!r} and {second!r} share memory; safetensors cannot store "
                    "aliases: save tied weights once, or .clone() one of them, before saving"
                )


def _check_relative_name(name: str, *, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} name must be a non-empty string, got {name!r}")
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\0" in name or re.match(r"^[A-Za-z]:", name)
            or any(part in ("", ".", "..") for part in parts)):
        raise ValueError(f"{what} name {name!r} must be a relative path inside the folder (no '..', no '\\')")
    if _TMP_MARK in parts[0]:
        raise ValueError(f"{what} name {name!r} is reserved for temporary folders")
    return name


def _check_extra_files(extra_files: Optional[Mapping[str, Union[str, bytes]]], formats: tuple[str, ...],
                       variant: Optional[str]) -> dict[str, bytes]:
    result: dict[str, bytes] = {}
    for name, content in (extra_files or {}).items():
        _check_relative_name(name, what="extra file")
        if any(names.is_family_file(name, fmt, variant) for fmt in formats):
            raise ValueError(f"extra file {name!r} would overwrite the weights this save writes")
        if isinstance(content, str):
            content = content.encode("utf-8")
        elif not isinstance(content, (bytes, bytearray, memoryview)):
            raise TypeError(f"extra file {name!r} must be str or bytes, got {type(content).__name__}")
        result[name] = bytes(content)
    return result


def _file_metadata(metadata: Optional[Mapping[str, str]]) -> dict[str, str]:
    merged = {"format": "pt", **(metadata or {})}
    for key, value in merged.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str -> str, got {key!r}: {value!r}")
    return merged


# --------------------------------------------------------------------------- file helpers


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        _fsync_path(path)
    except OSError:  # some file systems refuse fsync on directories
        pass


def _write_bytes(path: str, data: bytes) -> None:
    if os.path.lexists(path):
        os.unlink(path)  # never write through a hard link into the old folder
    with open(path, "wb") as file:
        file.write(data)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _link_tree(src: str, dst: str, skip: Callable[[str], bool]) -> None:
    """Hard-link every entry of ``src`` (recursively) into ``dst``, except top-level names ``skip`` picks."""
    with os.scandir(src) as entries:
        for entry in entries:
            if skip(entry.name):
                continue
            target = os.path.join(dst, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir():
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def _remove_leftovers(parent: str, base: str) -> None:
    """Delete temporary folders of earlier saves of ``base`` whose process has died."""
    prefix = f".{base}{_TMP_MARK}"
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid_text = entry[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        logger.info("removing %s left by an interrupted save", os.path.join(parent, entry))
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _make_temp_folder(parent: str, base: str) -> str:
    while True:
        path = os.path.join(parent, f".{base}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path, 0o777)  # the umask applies, as for a folder made by os.makedirs
            return path
        except FileExistsError:
            continue


# --------------------------------------------------------------------------- swapping folders


_renameat2 = None


def _exchange(first: str, second: str) -> None:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``.

    Raises:
        OSError: with the errno of the call, or ``ENOSYS`` where it does not exist.
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2 is Linux-only")
    if _renameat2 is None:
        function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
        if function is None:
            raise OSError(errno.ENOSYS, "this C library has no renameat2")
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
        _renameat2 = function
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), second)


def _move_into(src: str, dst: str, sync: "_Syncer") -> None:
    """``os.replace`` that also works when ``dst`` is on another file system (where the
    copy is fsync'ed before it is renamed into place, when the save is durable)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staging = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}{_TMP_MARK}{secrets.token_hex(4)}")
        shutil.copy2(src, staging)
        if sync.durable:
            _fsync_path(staging)
        os.replace(staging, dst)


def _replace_one_by_one(temp: str, target: str, written: list[str], commit: str,
                        fmt: str, variant: Optional[str], sync: _Syncer) -> None:
    """Fallback without RENAME_EXCHANGE: move new files in, the commit file last, then drop stale ones."""
    try:
        for name in [n for n in written if n != commit] + [commit]:
            path = os.path.join(target, *name.split("/"))
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            _move_into(os.path.join(temp, *name.split("/")), path, sync)
        for entry in _stale_entries(os.listdir(target), written, fmt, variant):
            os.unlink(os.path.join(target, entry))
        sync.folder(target)
    except OSError as exc:
        raise SaveError(
            f"saving to {target} failed while replacing files one by one (this file system cannot "
            f"swap folders atomically); the folder may hold a mix of old and new files: {exc}"
        ) from exc
    shutil.rmtree(temp, ignore_errors=True)


def _is_stale(entry: str, fmt: Optional[str], variant: Optional[str]) -> bool:
    """Whether ``entry`` is a weights file or index of this variant, in either format: a save
    in one format replaces the other's files too, or a loader preferring it would load them."""
    return fmt is not None and any(names.is_family_file(entry, each, variant) for each in names.FORMATS)


def _stale_entries(entries: list[str], written: list[str], fmt: Optional[str], variant: Optional[str]) -> list[str]:
    """The stale weights files among ``entries``, each single file and index before the shards
    (an index never names a deleted shard)."""
    commits = {name(each, variant) for each in names.FORMATS for name in (names.weights_name, names.index_name)}
    stale = [entry for entry in entries if entry not in written and _is_stale(entry, fmt, variant)]
    return sorted(stale, key=lambda entry: entry not in commits)


def _cwd_inside(folder: str) -> Optional[str]:
    """The working directory when it is ``folder`` or below it, else ``None``."""
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    return cwd if cwd == folder or cwd.startswith(folder.rstrip(os.sep) + os.sep) else None


def _install(temp: str, target: str, written: list[str], commit: str, fmt: str, variant: Optional[str],
             sync: _Syncer) -> None:
    """Put the assembled folder ``temp`` at ``target``."""
    parent = os.path.dirname(target)
    if not os.path.exists(target):
        os.rename(temp, target)
        sync.folder(parent)
        return
    cwd = _cwd_inside(target)
    try:
        _exchange(temp, target)
    except OSError as exc:
        if exc.errno not in _NO_EXCHANGE_ERRNOS:
            raise
        logger.info("atomic folder exchange unavailable for %s (%s); replacing files one by one", target, exc)
        _replace_one_by_one(temp, target, written, commit, fmt, variant, sync)
        return
    if cwd is not None:  # the process sat in the old folder: follow the path to the new one
        try:
            os.chdir(cwd if os.path.isdir(cwd) else target)
        except OSError:
            logger.warning("the working directory %s was replaced by the save; could not re-enter it", cwd)
    sync.folder(parent)
    shutil.rmtree(temp, ignore_errors=True)
    if os.path.lexists(temp):
        logger.warning("could not remove the previous checkpoint, now at %s; a save after this process ends removes it", temp)


# --------------------------------------------------------------------------- writing


class _Syncer:
    """What makes a save durable across a power loss (``durable=True``): each written
    file is fsync'ed on a background thread while the next one is written, and
    :meth:`wait` returns once all are on disk (raising the first fsync error);
    folders are fsync'ed when asked. Not durable, every call is a no-op: the
    save is still atomic for readers and for a process killed part way."""

    def __init__(self, durable: bool) -> None:
        self.durable = durable
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pretrained-fsync") if durable else None
        self._pending: list[Future] = []

    def file(self, path: str) -> None:
        if self._pool is not None:
            self._pending.append(self._pool.submit(_fsync_path, path))

    def folder(self, path: str) -> None:
        if self.durable:
            _fsync_dir(path)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        errors = [error for error in (future.exception() for future in pending) if error is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the thread (after the fsyncs under way); errors are the caller's to have seen."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _write_weights(temp: str, plan: ShardPlan, tensors: dict[str, torch.Tensor], *, fmt: str,
                   variant: Optional[str], file_metadata: dict[str, str], save_function: Callable,
                   index_metadata: Optional[Mapping], checksums: bool, sync: _Syncer) -> None:
    """Write every shard and, when sharded, the index into ``temp`` (each handed to ``sync``)."""
    embed_checksum = checksums and fmt == "safetensors" and not plan.is_sharded
    if embed_checksum:  # a single file carries its own digest (see storage/integrity.py)
        file_metadata = {**file_metadata, integrity.CHECKSUM_KEY: integrity.PLACEHOLDER}
    for file, shard_names in progress(list(zip(plan.files, plan.shards)), desc="Writing shards", unit="file"):
        path = os.path.join(temp, file)
        shard = {name: tensors[name] for name in shard_names}
        lazy = any(isinstance(t, LazyTensor) for t in shard.values())
        if fmt == "safetensors":
            (_save_safetensors_lazily if lazy else save_safetensors)(shard, path, file_metadata)
        else:
            if lazy:
                shard = {n: t.load() if isinstance(t, LazyTensor) else t for n, t in shard.items()}
            save_pickle(shard, path, save_function)
            del shard
        if embed_checksum:
            integrity.embed_checksum(path)
        sync.file(path)
    if plan.is_sharded:
        sums = {file: _sha256(os.path.join(temp, file)) for file in plan.files} if checksums else None
        index = os.path.join(temp, names.index_name(fmt, variant))
        _write_bytes(index, index_bytes(plan, index_metadata, sums))
        sync.file(index)
    elif checksums and not embed_checksum:
        logger.warning("checksums=True: a single .bin weights file has no place for a checksum (no index, no "
                       "header); save with safe_serialization=True or a smaller max_shard_size to get one")


def _save_safetensors_lazily(shard: Mapping[str, Union[torch.Tensor, LazyTensor]], path: str,
                             metadata: Mapping[str, str]) -> None:
    """:func:`save_safetensors` for a shard holding :class:`LazyTensor` entries: the
    same bytes, with each lazy entry loaded right before it is written and dropped after."""
    stand_ins = {name: torch.empty(t.shape, dtype=t.dtype, device="meta") if isinstance(t, LazyTensor) else t
                 for name, t in shard.items()}
    order, raw = safetensors_layout(stand_ins, metadata)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(raw)))
        file.write(raw)
        for name in order:
            entry = shard[name]
            tensor = entry.load() if isinstance(entry, LazyTensor) else entry
            if isinstance(entry, LazyTensor) and (tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape):
                raise ValueError(f"lazy entry {name!r} promised {entry.dtype} {entry.shape} but produced "
                                 f"{tensor.dtype} {tuple(tensor.shape)}")
            if tensor.numel():
                file.write(tensor_bytes(tensor))
            del tensor


def index_bytes(plan: ShardPlan, index_metadata: Optional[Mapping] = None,
                checksums: Optional[Mapping[str, str]] = None) -> bytes:
    """The index JSON as Transformers writes it (sorted keys, indent 2, trailing newline).

    Args:
        plan: the shard plan.
        index_metadata: extra ``metadata`` entries (e.g. ``{"total_parameters": n}``).
        checksums: shard file -> sha256 hex, stored as ``metadata["checksums"]``.

    Returns:
        UTF-8 bytes of the index file.
    """
    metadata = {"total_size": plan.total_size, **(index_metadata or {})}
    if checksums:
        metadata["checksums"] = dict(checksums)
    index = {"metadata": metadata, "weight_map": plan.weight_map}
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _skip_entry(target: str, written: list[str], fmt: str, variant: Optional[str]) -> Callable[[str], bool]:
    """Which top-level entries of the old folder are not carried over: family files,
    files this save writes, and plain files standing where a new file needs a folder."""
    files = {name for name in written if "/" not in name}
    folders = {name.split("/")[0] for name in written if "/" in name}

    def skip(entry: str) -> bool:
        if entry in files or _is_stale(entry, fmt, variant):
            return True
        return entry in folders and not os.path.isdir(os.path.join(target, entry))

    return skip


def _write_extra_file(temp: str, name: str, content: bytes, sync: _Syncer) -> None:
    path = os.path.join(temp, *name.split("/"))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    real_temp = os.path.realpath(temp)
    if os.path.commonpath([os.path.realpath(folder), real_temp]) != real_temp:
        raise SaveError(f"refusing to write extra file {name!r}: a symlinked folder leads outside the checkpoint")
    _write_bytes(path, content)
    sync.file(path)


def _target_path(folder: PathLike) -> str:
    path = os.path.realpath(os.fspath(folder))
    if os.path.exists(path) and not os.path.isdir(path):
        raise SaveError(f"cannot save a checkpoint to {os.fspath(folder)}: it is a file, not a folder")
    if os.path.dirname(path) == path:
        raise SaveError(f"cannot save a checkpoint to the file system root {path}")
    return path


def save_checkpoint(
    folder: PathLike,
    state_dict: Optional[Mapping[str, torch.Tensor]],
    *,
    max_shard_size: Union[int, str] = 5 * 10**9,
    safe_serialization: bool = True,
    variant: Optional[str] = None,
    save_function: Callable = torch.save,
    metadata: Optional[Mapping[str, str]] = None,
    extra_files: Optional[Mapping[str, Union[str, bytes]]] = None,
    index_metadata: Optional[Mapping] = None,
    checksums: bool = False,
    durable: bool = False,
) -> list[str]:
    """Save ``state_dict`` (and side files) into ``folder``, atomically.

    Args:
        folder: the checkpoint folder; created (with its parents) if missing.
        state_dict: name -> tensor (or :class:`LazyTensor`, loaded only while it is written),
            in storage order; tied weights already deduplicated. ``None``: write only
            ``extra_files`` and keep the folder's weights files (an adapter save).
        max_shard_size: shard limit, bytes or a size string (``"5GB"``, ``"2GiB"``).
        safe_serialization: ``True`` writes ``model*.safetensors``; ``False``
            writes ``pytorch_model*.bin`` with ``save_function``.
        variant: variant tag inserted in every weights name (``"fp16"``).
        save_function: writer of ``.bin`` files, called as ``save_function(dict, path)``.
        metadata: extra safetensors ``__metadata__`` (str -> str), merged over ``{"format": "pt"}``.
        extra_files: file name (relative, may contain ``/``) -> ``str`` or ``bytes``,
            e.g. ``{"config.json": text}``; written in the same atomic swap.
        index_metadata: extra entries of the index's ``metadata`` (e.g. ``total_parameters``).
        checksums: store SHA-256 checksums: per shard in the index, or in the header
            of a single safetensors file (a single ``.bin`` file gets none; warning).
        durable: also survive a power loss or kernel crash: every file and folder is
            fsync'ed before the swap (each file on a background thread while the next
            is written). Without it the save is as atomic for readers and for a killed
            process, and as fast as writing the files, but what the kernel had not yet
            written to disk may be lost with the machine.

    Returns:
        Names of the files written, relative to ``folder``: weights files, the
        index when sharded, then the extra files.

    Raises:
        SaveError: ``folder`` is an existing file, or writing failed (the cause
            is chained; the previous folder contents are untouched).
        TypeError, ValueError: for a malformed state dict (non-tensor values,
            meta tensors, aliasing tensors for safetensors), bad metadata or
            extra file names; raised before anything is written.

    >>> state = {name: t for name, t in model.state_dict().items() if name != "lm_head.weight"}  # tied: once
    >>> save_checkpoint("out", state, max_shard_size="2GB", extra_files={"config.json": config_json})
    ['model.safetensors', 'config.json']
    """
    fmt = "safetensors" if safe_serialization else "bin"
    target = _target_path(folder)
    only_extra = state_dict is None  # side files alone (an adapter): the weights family is left as it is
    tensors = {} if only_extra else _check_state_dict(state_dict, no_aliases=safe_serialization)
    extra = _check_extra_files(extra_files, (fmt,) if only_extra else names.FORMATS, variant)
    file_metadata = _file_metadata(metadata) if safe_serialization else {}
    plan = plan_shards([(name, _nbytes(t)) for name, t in tensors.items()],
                       max_shard_size, fmt=fmt, variant=variant)
    weights = [] if only_extra else list(plan.files) + ([names.index_name(fmt, variant)] if plan.is_sharded else [])
    written = weights + list(extra)
    if not written:
        raise ValueError("save_checkpoint needs a state_dict or extra_files")
    commit = written[-1] if only_extra else weights[-1]  # the single file or index: what loaders look for first
    fmt = None if only_extra else fmt

    parent, base = os.path.split(target)
    temp = None
    sync = _Syncer(durable)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_leftovers(parent, base)
        temp = _make_temp_folder(parent, base)
        if os.path.isdir(target):
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
            _link_tree(target, temp, _skip_entry(target, written, fmt, variant))
        if not only_extra:
            _write_weights(temp, plan, tensors, fmt=fmt, variant=variant, file_metadata=file_metadata,
                           save_function=save_function, index_metadata=index_metadata, checksums=checksums,
                           sync=sync)
        for name, content in extra.items():
            _write_extra_file(temp, name, content, sync)
        sync.wait()  # every file on disk before the folder that names them is swapped in
        sync.folder(temp)
        _install(temp, target, written, commit, fmt, variant, sync)
    except BaseException as exc:  # KeyboardInterrupt too: never leave the temporary folder behind
        sync.close()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, SaveError):
            raise SaveError(f"saving the checkpoint to {target} failed; its previous contents are untouched: "
                            f"{type(exc).__name__}: {exc}") from exc
        raise
    sync.close()
    logger.info("saved %d weights file(s) to %s", len(plan.files), target)
    return written


__all__ = ["LazyTensor", "save_checkpoint", "index_bytes"]
