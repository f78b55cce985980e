"""Placement: where each loaded tensor goes (``device_map``), and how it gets there.

Three phases, each usable alone:

* *plan* (:mod:`.plan`, over :mod:`.devices` and :mod:`.sizes`): a device map from
  sizes and budgets — :func:`infer_device_map`, :func:`get_balanced_memory`,
  :func:`parse_max_memory`; pure functions that work on a ``meta`` model or a
  ``{name: bytes}`` dict. Budgets not given come from :func:`memory_budgets`
  (:mod:`.machine`: free GPU memory and RAM, read when planning for this machine);
* *load*: :func:`plan_placement` returns a placement whose ``device_for(name)``
  tells :func:`pretrained.loading.load_weights` where each tensor goes, and whose
  ``offload`` records the tensors that stay on disk (:mod:`.offload`);
* *place*: ``placement.place(model, source)`` moves what is left, attaches the
  forward hooks that bring offloaded weights in (:mod:`.hooks`) and sets
  ``model.hf_device_map``.

See ``docs/placement.md`` for the decisions (reserve, default budgets, offload format).
"""

from __future__ import annotations

from .dispatch import Placement, SingleDevicePlacement, check_available, hf_device, plan_placement, torch_device
from .hooks import ModuleHook, send_to_device
from .machine import memory_budgets
from .offload import DiskReader, DiskTensor, write_offloaded
from .plan import (
    STRATEGIES,
    DevicePlan,
    ModelSizes,
    available_memory,
    get_balanced_memory,
    infer_device_map,
    largest_layer,
    lookup,
    model_sizes,
    module_sizes,
    no_split_classes,
    offload_reserve,
    parse_max_memory,
    resolve_device_map,
)

__all__ = [
    "STRATEGIES",
    "DevicePlan",
    "DiskReader",
    "DiskTensor",
    "ModelSizes",
    "ModuleHook",
    "Placement",
    "SingleDevicePlacement",
    "available_memory",
    "check_available",
    "get_balanced_memory",
    "hf_device",
    "infer_device_map",
    "largest_layer",
    "lookup",
    "memory_budgets",
    "model_sizes",
    "module_sizes",
    "no_split_classes",
    "offload_reserve",
    "parse_max_memory",
    "plan_placement",
    "resolve_device_map",
    "send_to_device",
    "torch_device",
    "write_offloaded",
]
