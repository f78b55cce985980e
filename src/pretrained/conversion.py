"""Rewrite a checkpoint tensor by tensor: dtype, shard size, format, variant.

:func:`convert_checkpoint` never holds more than a couple of tensors: each
source tensor is mapped on its own (safetensors, :func:`~pretrained.storage.slices.map_tensor`:
the mapping goes with the tensor, so no file stays mapped and page-cache pages
do not pile up in RSS), cast, written and dropped; the result is then read
back and compared with the source, tensor by tensor. Everything is read and
written through :mod:`pretrained.storage`.  The write is atomic like every save (:mod:`pretrained.storage.writer`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Union

import torch

from .errors import CheckpointError
from .logging import get_logger
from .storage.checkpoint import Checkpoint
from .storage.resolve import resolve_checkpoint
from .storage.slices import map_tensor
from .storage.writer import LazyTensor, save_checkpoint
from .utils import dtype_name, parse_dtype, parse_size

logger = get_logger(__name__)
_SIDE_FILE_LIMIT = 64 * 2**20  # side files (config, tokenizer) are copied; anything larger is not one


def _is_weights_file(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".pt", ".pth")) or (".index" in name and name.endswith(".json"))


def _side_files(folder: str, dtype: Optional[torch.dtype]) -> Dict[str, bytes]:
    """Top-level non-weight files of ``folder`` (config, tokenizer, ...); config.json's dtype updated."""
    files: Dict[str, bytes] = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if not os.path.isfile(path) or _is_weights_file(entry) or os.path.getsize(path) > _SIDE_FILE_LIMIT:
            continue
        with open(path, "rb") as f:
            data = f.read()
        if entry == "config.json" and dtype is not None:
            try:
                config = json.loads(data)
            except (ValueError, RecursionError) as err:
                raise CheckpointError(f"config file {path} is not valid JSON: {err}") from None
            if not isinstance(config, dict):
                raise CheckpointError(f"config file {path} must hold a JSON object, not {type(config).__name__}")
            config["torch_dtype"] = config["dtype"] = dtype_name(dtype)
            data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        files[entry] = data
    return files


def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(dtype)
    return tensor


def _check_not_inside(src_folder: str, dst) -> None:
    """Refuse a destination that is the source folder or inside it (it would rewrite the source)."""
    source = os.path.realpath(src_folder)
    target = os.path.realpath(os.fspath(dst))
    if target == source or target.startswith(source.rstrip(os.sep) + os.sep):
        what = "is the source folder" if target == source else "is inside the source folder"
        raise ValueError(f"convert: the destination {os.fspath(dst)!r} {what} {src_folder!r}; "
                         "write to another folder (then move it into place if you want to replace the source)")


def convert_checkpoint(src, dst, *, dtype: Union[str, torch.dtype, None] = None,
                       max_shard_size: Union[int, str] = "5GB", to: str = "safetensors",
                       variant: Optional[str] = None, source_variant: Optional[str] = None,
                       verify: bool = True) -> Dict[str, Any]:
    """Write ``src``'s weights to ``dst`` cast to ``dtype``, re-sharded, in format ``to``.

    Args:
        src: a checkpoint folder or Hub repo id.
        dst: the output folder (side files such as config.json and tokenizer files are copied).
        dtype: cast floating-point tensors (integer tensors are kept).
        max_shard_size: shard limit of the output.
        to: ``"safetensors"`` or ``"bin"``.
        variant / source_variant: variant of the output / input file names.
        verify: read the output back and compare each tensor with the cast source.

    Returns:
        ``{"tensors", "bytes", "files", "format", "largest_tensor_bytes"}``.

    Raises:
        CheckpointNotFoundError / CheckpointError: ``src`` is not a checkpoint, or
            the output does not read back equal.
        ValueError: ``dst`` is ``src`` or a folder inside it (nothing is written).
    """
    if to not in ("safetensors", "bin"):
        raise ValueError(f"to={to!r}: choose 'safetensors' or 'bin'")
    target = parse_dtype(dtype, name="dtype", allow_auto=False) if dtype is not None else None
    limit = parse_size(max_shard_size, name="max_shard_size")
    resolved = resolve_checkpoint(src, variant=source_variant)
    _check_not_inside(resolved.folder, dst)
    with Checkpoint(resolved) as checkpoint:
        def source_tensor(name: str) -> torch.Tensor:
            located = checkpoint.locate(name)  # (fd, header entry, file); None for .bin
            tensor = map_tensor(located[0], located[1], where=located[2]) if located is not None else None
            return tensor if tensor is not None else checkpoint.read(name)

        entries: Dict[str, LazyTensor] = {}
        largest = 0
        for name in checkpoint.keys():
            stored, shape = checkpoint.dtype_shape(name)
            out = target if target is not None and stored.is_floating_point else stored
            entries[name] = LazyTensor(out, tuple(shape), lambda name=name: _cast(source_tensor(name), target))
            largest = max(largest, entries[name].nbytes)
        written = save_checkpoint(dst, entries, max_shard_size=limit, safe_serialization=to == "safetensors",
                                  variant=variant, extra_files=_side_files(resolved.folder, target))
        if verify:
            _verify(dst, entries, source_tensor, target, variant)
    weight_files = [f for f in written if _is_weights_file(f) and not f.endswith(".json")]
    return {"tensors": len(entries), "bytes": sum(e.nbytes for e in entries.values()), "files": weight_files,
            "format": to, "largest_tensor_bytes": largest}


def _verify(dst, entries, source_tensor, target, variant) -> None:
    """Compare every output tensor with the cast source; the output is read in
    small chunks so verifying costs no more memory than writing."""
    with Checkpoint(resolve_checkpoint(dst, variant=variant)) as out:
        if set(out.keys()) != set(entries):
            raise CheckpointError(f"converted checkpoint {dst} does not hold the source's tensors")
        for name in entries:
            expected = _cast(source_tensor(name), target)
            dtype, shape = out.dtype_shape(name)
            same = dtype == expected.dtype and tuple(shape) == tuple(expected.shape)
            located = out.locate(name) if same else None  # (fd, header entry, file) of a safetensors file
            if located is not None:
                same = _bytes_equal(located[0], located[1].start, expected)
            elif same:
                same = torch.equal(out.get(name), expected)
            if not same:
                raise CheckpointError(f"converted tensor {name!r} in {dst} differs from the source")


def _bytes_equal(fd: int, start: int, expected: torch.Tensor, chunk: int = 16 * 2**20) -> bool:
    """Whether the file open as ``fd`` holds ``expected``'s bytes from ``start`` (read in chunks)."""
    data = expected.contiguous().reshape(-1).view(torch.uint8)
    buffer = torch.empty(min(chunk, max(data.numel(), 1)), dtype=torch.uint8)
    for offset in range(0, data.numel(), chunk):
        length = min(chunk, data.numel() - offset)
        view = memoryview(buffer[:length].numpy())
        done = 0
        while done < length:
            count = os.preadv(fd, [view[done:]], start + offset + done)
            if not count:
                return False
            done += count
        if not torch.equal(buffer[:length], data[offset:offset + length]):
            return False
    return True
