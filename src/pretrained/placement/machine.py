"""Budgets from this machine: free GPU memory and available RAM.

The planner (:mod:`.plan`, :mod:`.sizes`, :mod:`.devices`) works on budgets it is
given and never asks the machine; :func:`memory_budgets` is where
``max_memory=None`` becomes budgets read from the machine. :mod:`.dispatch`
calls it before planning (it also checks, in :func:`~.dispatch.check_available`,
that mapped GPUs exist), and so do the public planner functions
:func:`~.plan.infer_device_map` and :func:`~.plan.get_balanced_memory` when
their ``max_memory`` is omitted.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from .devices import Device, parse_max_memory

DEFAULT_BUDGET_FRACTION = 0.9
"""Share of free GPU memory / available RAM used when ``max_memory`` is omitted."""


def available_memory(*, fraction: float = DEFAULT_BUDGET_FRACTION) -> Dict[Device, int]:
    """Default budgets: ``fraction`` of each CUDA GPU's free memory and of the available RAM.

    MPS (Apple unified memory) gets the same RAM figure as the CPU. Disk is not
    listed (unlimited).

    Returns:
        ``{device: bytes}`` ordered like :func:`~.devices.parse_max_memory`.
    """
    import psutil

    budgets: Dict[Device, int] = {}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, _ = torch.cuda.mem_get_info(index)
            budgets[index] = int(free * fraction)
    ram = int(psutil.virtual_memory().available * fraction)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        budgets["mps"] = ram
    budgets["cpu"] = ram
    return budgets


def memory_budgets(max_memory: Optional[Mapping] = None) -> Dict[Device, int]:
    """The budgets to plan with: ``max_memory`` validated and in bytes, or — when it is
    ``None`` — :func:`available_memory` of this machine.

    Raises:
        DeviceMapError: for a malformed ``max_memory`` (naming the key or size).
    """
    return parse_max_memory(max_memory) if max_memory is not None else available_memory()


__all__ = ["DEFAULT_BUDGET_FRACTION", "available_memory", "memory_budgets"]
