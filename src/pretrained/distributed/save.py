"""``save_pretrained`` of a tensor-parallel or FSDP2 model: the ordinary layout, gathered
tensor by tensor on the writing rank.

Every rank calls ``save_pretrained``; the rank passing ``is_main_process=True``
writes. It saves a state dict of lazy entries (:class:`~pretrained.storage.writer.LazyTensor`):
when the writer reaches a split tensor it broadcasts that tensor's number, and
every rank sends its local slice to it (``gather``), so the writer holds one
full tensor at a time and the others only their own slices. The writer ends
the exchange with ``-1`` (done) or ``-2`` (its save failed). The writer's save
is the usual atomic one, so a rank killed mid-save leaves the previous
checkpoint in the folder as it was (the others fail with the process group's
error, after its timeout at the latest).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

import torch

from ..errors import DistributedError, SaveError
from ..storage.writer import LazyTensor

__all__ = ["save_distributed", "gather_to"]

_DONE, _FAILED = -1, -2


def _writer_rank(is_main_process: bool) -> int:
    import torch.distributed as dist

    flags: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(is_main_process))
    writers = [rank for rank, flag in enumerate(flags) if flag]
    if len(writers) != 1:
        raise ValueError(f"save_pretrained of a distributed model needs is_main_process=True on exactly one rank; "
                         f"got it on ranks {writers}")
    return writers[0]


def gather_to(tensor, writer: int, packed=None):
    """The full value of DTensor ``tensor`` on rank ``writer`` (``None`` elsewhere).

    Every rank of the mesh must call it. Shards of uneven size (FSDP2) are padded to
    the largest for the ``gather`` and cut back after. ``packed=(dim, parts)``
    restores fused blocks split one by one (see :mod:`.tensor_parallel`).

    Raises:
        ValueError: a placement other than Shard / Replicate, or a mesh that is not 1-D.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard

    mesh = tensor.device_mesh
    if mesh.ndim != 1:
        raise ValueError("saving a DTensor needs a 1-D mesh")
    placement, local = tensor.placements[0], tensor.to_local()
    rank, world = dist.get_rank(), dist.get_world_size()
    if isinstance(placement, Replicate):
        return local.detach().cpu() if rank == writer else None
    if not isinstance(placement, Shard):
        raise ValueError(f"cannot save a DTensor placed as {placement}; only Shard and Replicate")
    dim, size = placement.dim % tensor.ndim, tensor.shape[placement.dim]
    chunk = -(-size // world)
    padded = local.detach().new_zeros((*local.shape[:dim], chunk, *local.shape[dim + 1:]))
    padded.narrow(dim, 0, local.shape[dim]).copy_(local.detach())
    pieces = [torch.empty_like(padded) for _ in range(world)] if rank == writer else None
    dist.gather(padded, pieces, dst=writer, group=mesh.get_group())
    if rank != writer:
        return None
    lengths = [max(0, min(size, (r + 1) * chunk) - r * chunk) for r in range(world)]
    full = torch.cat([p.narrow(dim, 0, n) for p, n in zip(pieces, lengths)], dim=dim).cpu()
    if packed is not None:
        pdim, parts = packed
        shape = full.shape
        blocks = full.reshape(*shape[:pdim], world, parts, shape[pdim] // (world * parts), *shape[pdim + 1:])
        full = blocks.transpose(pdim, pdim + 1).reshape(shape).contiguous()
    return full


def _lazy_state_dict(model, state: Dict[str, Any], writer: int) -> Dict[str, Any]:
    """Plain tensors as they are, DTensors as lazy entries that run the gather."""
    import torch.distributed as dist

    packed = getattr(model, "_tp_packed", {})
    names = list(state)
    tied = model._tied_weight_patterns() if hasattr(model, "_tied_weight_patterns") else []
    result: Dict[str, Any] = {}
    seen: Dict[int, str] = {}
    for index, name in enumerate(names):
        tensor = state[name]
        if type(tensor).__name__ != "DTensor":
            result[name] = tensor
            continue
        if id(tensor) in seen:  # a tie of two names to one DTensor: store it once, under the undeclared name
            if any(re.search(p, name) for p in tied):
                continue
            result.pop(seen[id(tensor)], None)

        def load(index=index, tensor=tensor, name=name):
            try:
                dist.broadcast(torch.tensor([index], dtype=torch.int64), src=writer)
                return gather_to(tensor, writer, packed.get(name))
            except Exception as err:  # gloo/NCCL: a peer died or timed out
                raise _peer_error(err, "another rank") from err

        seen[id(tensor)] = name
        result[name] = LazyTensor(tensor.dtype, tuple(tensor.shape), load)
    return result


def _serve(model, state: Dict[str, Any], writer: int) -> None:
    """A non-writing rank: send slices until the writer says it is done."""
    import torch.distributed as dist

    packed = getattr(model, "_tp_packed", {})
    names = list(state)
    while True:
        message = torch.tensor([0], dtype=torch.int64)
        try:
            dist.broadcast(message, src=writer)
            index = int(message.item())
            if index >= 0:
                gather_to(state[names[index]], writer, packed.get(names[index]))
        except Exception as err:  # gloo/NCCL: a peer died or timed out
            raise _peer_error(err, f"the writing rank {writer}") from err
        if index == _DONE:
            return
        if index == _FAILED:
            raise SaveError(f"save_pretrained failed on the writing rank {writer}; see its error")


def _peer_error(err: Exception, who: str) -> DistributedError:
    first = str(err).splitlines()[0] if str(err) else ""
    return DistributedError(f"save_pretrained of a distributed model: {who} failed, died or timed out "
                            f"({type(err).__name__}: {first})")


def _plain_class(model):
    """The model's own class under FSDP2's dynamic ``FSDP<Name>`` subclass."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return type(model)
    for cls in type(model).__mro__:
        if not issubclass(cls, FSDPModule):
            return cls
    return type(model)  # pragma: no cover


def save_distributed(model, save_directory, *, is_main_process: bool = True, **kwargs: Any) -> None:
    """Save a model whose parameters are DTensors (tensor parallel or FSDP2) in the HF layout.

    Every rank must call it; the one with ``is_main_process=True`` writes.

    Args:
        model: the distributed model.
        save_directory: the folder.
        is_main_process: this rank writes.
        **kwargs: the other arguments of ``save_pretrained``.

    Raises:
        ValueError: not exactly one rank has ``is_main_process=True``.
        SaveError: (non-writing ranks) the writer's save failed.
    """
    import torch.distributed as dist

    writer = _writer_rank(is_main_process)
    state = model.state_dict()
    if dist.get_rank() != writer:
        return _serve(model, state, writer)
    lazy = _lazy_state_dict(model, state, writer)
    own, plain = type(model), _plain_class(model)
    outcome = _FAILED
    try:
        model.__class__ = plain  # config.json names the architecture, not FSDP's wrapper class
        try:
            model.save_pretrained(save_directory, is_main_process=True, state_dict=lazy, **kwargs)
        finally:
            model.__class__ = own
        outcome = _DONE
    finally:
        dist.broadcast(torch.tensor([outcome], dtype=torch.int64), src=writer)
