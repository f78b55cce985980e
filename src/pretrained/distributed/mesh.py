"""The process group and device mesh a distributed load runs on."""

from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = ["agree", "default_mesh", "local_device", "mesh_rank_world"]


def default_mesh(device_mesh=None):
    """``device_mesh`` checked (1-D), or a 1-D mesh over every rank of the default group.

    The default group is initialised from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``...) when it is not yet: NCCL when CUDA is
    available, else gloo.

    Raises:
        ValueError: a mesh that is not 1-D, or no process group and no torchrun environment.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if device_mesh is not None:
        if device_mesh.ndim != 1:
            raise ValueError(f"device_mesh must be 1-D for tensor parallelism, got {device_mesh.ndim} dims "
                             "(pass the tensor-parallel sub-mesh, e.g. mesh['tp'])")
        return device_mesh
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ValueError('tp_plan= needs torch.distributed: run under torchrun, call '
                             'torch.distributed.init_process_group() first, or pass device_mesh=')
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, (dist.get_world_size(),))


def mesh_rank_world(mesh) -> tuple[int, int]:
    """This process's coordinate on the 1-D ``mesh`` and the mesh's size."""
    return int(mesh.get_local_rank()), int(mesh.size())


def local_device(mesh) -> torch.device:
    """Where this rank's tensors live: the current CUDA device for a CUDA mesh, else the CPU."""
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type) if mesh.device_type != "cpu" else torch.device("cpu")


def group_of(mesh) -> Optional[object]:
    """The process group behind a 1-D mesh."""
    return mesh.get_group()


def agree(mesh, what: str) -> None:
    """Wait until every rank of ``mesh`` reached this point.

    Raises:
        DistributedError: a rank died, failed or did not arrive within the process group's timeout.
    """
    import torch.distributed as dist

    from ..errors import DistributedError

    flag = torch.ones(1, device=local_device(mesh))
    try:
        dist.all_reduce(flag, group=mesh.get_group())
    except Exception as err:  # gloo/NCCL raise RuntimeError or DistBackendError
        raise DistributedError(f"{what}: another rank failed, died or timed out before finishing "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if int(flag.item()) != int(mesh.size()):
        raise DistributedError(f"{what}: the ranks disagree")
