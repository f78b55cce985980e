"""``from_pretrained(..., tp_plan=...)``: each rank reads and holds only its slices.

The phases, called from :meth:`PreTrainedModel.from_pretrained`:

1. :func:`prepare_tensor_parallel` (after the skeleton is built): resolve the
   plan, check it against the model and the world size, divide the attention
   head counts, shrink every split parameter to its local shape on ``meta``,
   and wrap the weights source so ``load_weights`` reads local slices only
   (by byte range: :func:`pretrained.storage.slices.read_slice`).
2. :meth:`TensorParallel.finish` (after loading and tying): make each split
   parameter a ``DTensor`` (``Shard(dim)`` over the mesh, built from the local
   slice, never from a full tensor), and hook the split modules: a column-wise
   one gets a replicated input and hands on its local output columns; a
   row-wise one takes local input columns and all-reduces its output.

Fused q/k/v (``packed_colwise``) keep ``[q_r, k_r, v_r]`` on rank r; the
DTensor then says ``Shard(dim)`` of that packed order, and
``model._tp_packed`` records it so saving restores the file's order.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..loading import TensorSource, checkpoint_name_for
from ..logging import get_logger
from ..storage.slices import read_slice
from .mesh import agree, default_mesh, local_device, mesh_rank_world
from .plan import ParamCut, check_divisible, divide_heads, heads_to_divide, plan_cuts, resolve_plan

logger = get_logger(__name__)

__all__ = ["SlicedSource", "TensorParallel", "maybe_tensor_parallel", "prepare_tensor_parallel"]


class SlicedSource(TensorSource):
    """A weights source seen through one rank's cuts: split tensors come back as local slices.

    Every tensor of a safetensors checkpoint is read by byte range (so
    :data:`~pretrained.storage.slices.READ_COUNTER` counts them all); a source
    without byte ranges (``.bin``, a state dict) is sliced in memory.
    """

    def __init__(self, source, cuts: Dict[str, ParamCut], rank: int, world: int) -> None:
        self.source, self.cuts, self.rank, self.world = source, cuts, rank, world
        self.metadata = getattr(source, "metadata", None)
        self._warned = False

    def keys(self):
        return self.source.keys()

    def _ranges(self, key: str, shape) -> Tuple[Optional[int], list]:
        cut = self.cuts.get(key)
        if cut is None or cut.dim is None:
            return None, []
        return cut.dim, cut.ranges(shape[cut.dim], self.rank, self.world)

    def dtype_shape(self, name):
        dtype, shape = self.source.dtype_shape(name)
        dim, ranges = self._ranges(name, shape)
        if dim is None:
            return dtype, tuple(shape)
        local = list(shape)
        local[dim] = sum(b - a for a, b in ranges)
        return dtype, tuple(local)

    def get(self, name):
        located = self.source.locate(name) if hasattr(self.source, "locate") else None
        _, shape = self.source.dtype_shape(name)
        dim, ranges = self._ranges(name, shape)
        if located is not None:
            fd, info, file = located
            return read_slice(fd, info, dim or 0, ranges, where=file)
        full = self.source.get(name)
        if dim is None:
            return full
        if not self._warned:
            logger.warning("tp_plan: the checkpoint is not safetensors, so each rank reads whole tensors and keeps "
                           "its slices (safetensors checkpoints are read by byte range)")
            self._warned = True
        return torch.cat([full.narrow(dim, a, b - a) for a, b in ranges], dim=dim).clone()


class TensorParallel:
    """The state of one tensor-parallel load between :func:`prepare_tensor_parallel` and :meth:`finish`."""

    def __init__(self, mesh, cuts: Dict[str, Tuple[str, ParamCut]], full_shapes: Dict[str, torch.Size]) -> None:
        self.mesh, self.cuts, self.full_shapes = mesh, cuts, full_shapes
        self.rank, self.world = mesh_rank_world(mesh)
        self.device = local_device(mesh)

    def device_for(self, name: str) -> torch.device:
        return self.device

    def finish(self, model: nn.Module) -> None:
        """Turn split parameters into DTensors and hook their modules (see the module doc)."""
        from torch.distributed.tensor import DTensor, Replicate, Shard

        modules = dict(model.named_modules())
        packed: Dict[str, Tuple[int, int]] = {}
        for name, (module_name, cut) in self.cuts.items():
            module, attr = modules[module_name], name.rsplit(".", 1)[1]
            local = getattr(module, attr)
            shape = self.full_shapes[name]
            placement = Replicate() if cut.dim is None else Shard(cut.dim)  # a row-wise bias: on every rank
            dtensor = DTensor.from_local(local.detach(), self.mesh, [placement], run_check=False,
                                         shape=shape, stride=_contiguous_stride(shape))
            module._parameters[attr] = nn.Parameter(dtensor, requires_grad=local.requires_grad)
            if cut.parts > 1:
                packed[name] = (cut.dim, cut.parts)
        for module_name in dict.fromkeys(m for m, _ in self.cuts.values()):
            style = next(c.style for m, c in self.cuts.values() if m == module_name)
            _hook(modules[module_name], self.mesh, rowwise=style == "rowwise")
        model._tp_packed = packed
        model._tp_mesh = self.mesh
        model.tp_size = self.world
        agree(self.mesh, "tensor-parallel from_pretrained")


def _contiguous_stride(shape) -> Tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(tuple(shape)):
        stride.append(step)
        step *= size
    return tuple(reversed(stride))


def _hook(module: nn.Module, mesh, *, rowwise: bool) -> None:
    """Convert a split module's input to a DTensor and its output back to a local tensor."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    placement = Shard(-1) if rowwise else Replicate()

    def before(_module, args):
        return tuple(DTensor.from_local(a, mesh, [placement], run_check=False) if isinstance(a, torch.Tensor)
                     and not isinstance(a, DTensor) else a for a in args)

    def after(_module, _args, output):
        if rowwise:
            return output.redistribute(mesh, [Replicate()]).to_local()
        if output.placements[0] != Shard(output.ndim - 1):
            output = output.redistribute(mesh, [Shard(output.ndim - 1)])
        return output.to_local()

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def maybe_tensor_parallel(model: nn.Module, source, *, tp_plan=None, device_mesh=None, device_map=None):
    """:func:`prepare_tensor_parallel` when ``tp_plan`` or ``device_mesh`` is given, else ``(None, source)``."""
    if tp_plan is None and device_mesh is None:
        return None, source
    return prepare_tensor_parallel(model, source, tp_plan=tp_plan, device_mesh=device_mesh, device_map=device_map)


def prepare_tensor_parallel(model: nn.Module, source, *, tp_plan, device_mesh=None,
                            device_map=None) -> Tuple[TensorParallel, SlicedSource]:
    """Check the plan, divide the heads, shrink split parameters; wrap ``source`` (phase 1).

    Args:
        model: the skeleton from :func:`~pretrained.loading.build_skeleton`.
        source: the checkpoint (or state dict source) to read from.
        tp_plan: ``"auto"``, a dict of ``{module pattern: style}``, or ``None``
            with ``device_mesh`` (meaning ``"auto"``).
        device_mesh: a 1-D ``DeviceMesh``; default: every rank of the default group.
        device_map: must be ``None`` (placement is the mesh's).

    Returns:
        ``(tensor-parallel state, the wrapped source)``.

    Raises:
        ValueError: ``device_map`` given too; a plan naming a missing module; a
            world size that does not divide the heads or a split dimension.
    """
    if device_map is not None:
        raise ValueError("tp_plan= and device_map= cannot be combined: each rank's slices go to its mesh device")
    mesh = default_mesh(device_mesh)
    rank, world = mesh_rank_world(mesh)
    plan = resolve_plan(model, "auto" if tp_plan is None else tp_plan)
    cuts = plan_cuts(model, plan)
    heads = heads_to_divide(model, cuts)
    divide_heads(model, heads, world)
    check_divisible(model, cuts, world)
    params = dict(model.named_parameters(remove_duplicate=False))
    full_shapes = {name: params[name].shape for name in cuts}
    keys = set(source.keys())
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_prefix = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)
    by_key: Dict[str, ParamCut] = {}
    modules = dict(model.named_modules())
    for name, (module_name, cut) in cuts.items():
        key = checkpoint_name_for(name, keys, prefix, has_prefix)
        if key is not None:
            by_key[key] = cut
        if cut.dim is not None:
            param, shape = params[name], list(params[name].shape)
            shape[cut.dim] //= world
            meta = torch.empty(shape, dtype=param.dtype, device="meta")
            modules[module_name]._parameters[name.rsplit(".", 1)[1]] = nn.Parameter(meta, param.requires_grad)
    return TensorParallel(mesh, cuts, full_shapes), SlicedSource(source, by_key, rank, world)
