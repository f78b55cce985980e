"""``load_sharded``: fill an FSDP2 (``fully_shard``) model, each rank reading only its rows."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from ..errors import WeightsMismatchError
from ..loading import checkpoint_name_for
from ..storage.slices import read_slice
from ..utils import parse_dtype

__all__ = ["load_sharded"]


def _rows(tensor, world: int, rank: int):
    """``(dim, [(start, stop)])`` of this rank's part of DTensor ``tensor``; ``(None, [])`` when replicated."""
    from torch.distributed.tensor import Replicate, Shard

    if tensor.device_mesh.ndim != 1:
        raise ValueError("load_sharded needs parameters on a 1-D mesh (plain fully_shard)")
    placement = tensor.placements[0]
    if isinstance(placement, Replicate):
        return None, []
    if not isinstance(placement, Shard):
        raise ValueError(f"load_sharded cannot fill a DTensor placed as {placement}; only Shard and Replicate")
    dim, size = placement.dim % tensor.ndim, tensor.shape[placement.dim]
    chunk = -(-size // world)
    start = min(size, rank * chunk)
    return dim, [(start, min(size, start + chunk))]


def _read(checkpoint, key: str, dim: Optional[int], ranges) -> torch.Tensor:
    located = checkpoint.locate(key)
    if located is not None:
        fd, info, file = located
        return read_slice(fd, info, dim or 0, ranges, where=file)
    full = checkpoint.get(key)  # .bin: whole tensor, then the rows
    return full if dim is None else full.narrow(dim, ranges[0][0], ranges[0][1] - ranges[0][0])


def _fill(target: torch.Tensor, key: str, checkpoint, torch_dtype, name: str) -> None:
    is_dtensor = type(target).__name__ == "DTensor"
    local = target.to_local() if is_dtensor else target
    if torch_dtype is not None and local.is_floating_point() and local.dtype != torch_dtype:
        raise ValueError(f"load_sharded(torch_dtype={torch_dtype}): parameter {name} is {local.dtype}; build the "
                         "model in that dtype before fully_shard (FSDP2 keeps its shards' dtype)")
    _, shape = checkpoint.dtype_shape(key)
    if tuple(shape) != tuple(target.shape):
        raise WeightsMismatchError(f"size mismatch for {name}: {tuple(shape)} in the checkpoint, "
                                   f"{tuple(target.shape)} in the model")
    dim, ranges = _rows(target, *_world_rank(target)) if is_dtensor else (None, [])
    if ranges and ranges[0][1] == ranges[0][0]:
        return
    value = _read(checkpoint, key, dim, ranges)
    with torch.no_grad():
        local.copy_(value.to(dtype=local.dtype).reshape(local.shape))


def _world_rank(tensor):
    mesh = tensor.device_mesh
    return int(mesh.size()), int(mesh.get_local_rank())


def load_sharded(model: nn.Module, path: Union[str, os.PathLike], *, torch_dtype=None,
                 strict: bool = True) -> Dict[str, List[str]]:
    """Fill a ``fully_shard``-ed model in place from a Hugging Face checkpoint.

    Each parameter that is a DTensor ``Shard(0)`` (FSDP2) gets only this rank's
    rows, read by byte range (contiguous) from the safetensors files; other
    tensors are read whole. Values are converted to each parameter's dtype.

    Args:
        model: the model after ``fully_shard`` (and ``to_empty`` if it was built on meta).
        path: a local folder or file (or Hub repo id) holding the checkpoint.
        torch_dtype: the dtype the floating parameters must have (a check; ``None``: any).
        strict: raise when a parameter or persistent buffer is missing from the checkpoint.

    Returns:
        ``{"missing_keys": [...], "unexpected_keys": [...]}``.

    Raises:
        WeightsMismatchError: missing tensors (with ``strict``) or a shape differs.
        ValueError: a parameter on meta, of another dtype than ``torch_dtype``, or not Shard/Replicate.
    """
    from ..storage.checkpoint import Checkpoint
    from ..storage.resolve import resolve_checkpoint

    dtype = parse_dtype(torch_dtype, name="torch_dtype") if torch_dtype is not None else None
    state = model.state_dict(keep_vars=True)
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            raise ValueError(f"load_sharded: {name} is on the meta device; call model.to_empty(device=...) first")
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_prefix = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)
    missing: List[str] = []
    with Checkpoint(resolve_checkpoint(path)) as checkpoint:
        keys = set(checkpoint.keys())
        used, filled = set(), set()
        for name, tensor in state.items():
            key = checkpoint_name_for(name, keys, prefix, has_prefix)
            if key is None:
                missing.append(name)
                continue
            used.add(key)
            filled.add(id(tensor))
            _fill(tensor, key, checkpoint, dtype, name)
        unexpected = sorted(keys - used)
    missing = [n for n in missing if id(state[n]) not in filled]  # tied: filled under its other name
    if missing and strict:
        raise WeightsMismatchError(f"load_sharded: the checkpoint at {os.fspath(path)} lacks {sorted(missing)}")
    return {"missing_keys": sorted(missing), "unexpected_keys": unexpected}
