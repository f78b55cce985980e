"""Saving a state dict (and side files) as a Hugging Face checkpoint folder, atomically.

A save is three steps: validate the input (before anything is written), plan
the shards (:func:`~pretrained.storage.shards.plan_shards`), write the files
into an :class:`~pretrained.storage.atomic.AtomicFolder`, the transaction that
assembles the new folder beside the old one and swaps it in at once (see
:mod:`pretrained.storage.atomic`: a reader sees the old checkpoint or the new
one, never a mix, and a process killed at any moment leaves one of the two).

What the new folder drops: the weights files of this variant (single file,
any shard, index) in this format *and in the other one* (``.bin`` for a
safetensors save and back): they are stale or being rewritten, and a loader
preferring the other format would load old weights. Everything else of the
old folder is carried over. Where folders cannot be swapped, the new files
are moved in one by one, extra files and shards first and the single weights
file or index last, then the stale files are deleted, single files and
indexes before shards: a reader may briefly see new shards under an old
index, but the loader's preferred file always points at a complete set.

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

import json
import os
import re
from typing import Callable, Mapping, Optional, Union

import torch

from ..logging import get_logger
from ..progress import progress
from . import integrity, names
from .atomic import TMP_MARK, AtomicFolder, target_path
from .atomic import _exchange  # noqa: F401  (kept importable here: tests probe the file system with it)
from .pickle import save_pickle
from .safetensors import LazyTensor, dtype_code, save_safetensors
from .shards import ShardPlan, plan_shards

logger = get_logger(__name__)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- input checks


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
    if TMP_MARK in parts[0]:
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


# --------------------------------------------------------------------------- writing


def _stale_weights(variant: Optional[str]) -> Callable[[list[str]], list[str]]:
    """``stale(entries)`` for the :class:`AtomicFolder`: the weights files of ``variant`` among
    ``entries``, in both formats, each single file and index before the shards (an index
    never names a deleted shard)."""
    commits = {name(fmt, variant) for fmt in names.FORMATS for name in (names.weights_name, names.index_name)}

    def stale(entries: list[str]) -> list[str]:
        found = [entry for entry in entries if any(names.is_family_file(entry, fmt, variant) for fmt in names.FORMATS)]
        return sorted(found, key=lambda entry: entry not in commits)

    return stale


def _file_sha256(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return integrity.fd_sha256(fd)
    finally:
        os.close(fd)


def _write_weights(out: AtomicFolder, plan: ShardPlan, tensors: dict[str, Union[torch.Tensor, LazyTensor]], *,
                   fmt: str, variant: Optional[str], file_metadata: dict[str, str], save_function: Callable,
                   index_metadata: Optional[Mapping], checksums: bool) -> None:
    """Write every shard and, when sharded, the index into ``out``."""
    embed_checksum = checksums and fmt == "safetensors" and not plan.is_sharded
    if embed_checksum:  # a single file carries its own digest (see storage/integrity.py)
        file_metadata = {**file_metadata, integrity.CHECKSUM_KEY: integrity.PLACEHOLDER}
    for file, shard_names in progress(list(zip(plan.files, plan.shards)), desc="Writing shards", unit="file"):
        path = out.new_file(file)
        shard = {name: tensors[name] for name in shard_names}
        if fmt == "safetensors":
            save_safetensors(shard, path, file_metadata)  # lazy entries: loaded one at a time
        else:  # pickle needs the whole shard at once
            loaded = {n: t.load() if isinstance(t, LazyTensor) else t for n, t in shard.items()}
            save_pickle(loaded, path, save_function)
            del loaded
        del shard
        if embed_checksum:
            integrity.embed_checksum(path)
        out.written(file)
    if plan.is_sharded:
        sums = {file: _file_sha256(os.path.join(out.path, file)) for file in plan.files} if checksums else None
        out.write_bytes(names.index_name(fmt, variant), index_bytes(plan, index_metadata, sums))
    elif checksums and not embed_checksum:
        logger.warning("checksums=True: a single .bin weights file has no place for a checksum (no index, no "
                       "header); save with safe_serialization=True or a smaller max_shard_size to get one")


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
            writes ``pytorch_model*.bin`` with ``save_function``. Either way the
            folder's old weights files of ``variant`` go, in both formats.
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
    target_path(folder)  # a file or the root is refused before the input is looked at
    only_extra = state_dict is None  # side files alone (an adapter): the weights files are left as they are
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
    transaction = AtomicFolder(folder, writes=[n for n in written if n != commit] + [commit],
                               stale=None if only_extra else _stale_weights(variant), durable=durable)
    with transaction as out:
        if not only_extra:
            _write_weights(out, plan, tensors, fmt=fmt, variant=variant, file_metadata=file_metadata,
                           save_function=save_function, index_metadata=index_metadata, checksums=checksums)
        for name, content in extra.items():
            out.write_bytes(name, content)
    logger.info("saved %d weights file(s) to %s", len(plan.files), transaction.target)
    return written


__all__ = ["LazyTensor", "save_checkpoint", "index_bytes"]
