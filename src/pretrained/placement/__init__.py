"""Placement: where each loaded tensor goes (``device_map``), and how it gets there.

Three phases, each usable alone: *plan* (a device map from sizes and budgets),
*load* (``device_for(name)`` tells :func:`pretrained.loading.load_weights`
where each tensor goes), *place* (hooks and ``hf_device_map`` on the loaded
model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

import torch

from ..errors import DeviceMapError

_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def normalize_device(device: Any, *, name: str = "device_map") -> Union[str, torch.device]:
    """``0`` -> ``cuda:0``; ``"cpu"``/``"disk"``/``"cuda:1"``/``torch.device`` checked."""
    if isinstance(device, bool):
        raise DeviceMapError(f"{name}: {device!r} is not a device")
    if isinstance(device, int):
        if device < 0:
            raise DeviceMapError(
                f"{name}: you can't pass a negative int ({device}); to put the model on the cpu pass 'cpu'"
            )
        return torch.device("cuda", device)
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        if device == "disk":
            return "disk"
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise DeviceMapError(
                f"{name}: {device!r} is not a device name (e.g. cpu, cuda:0) nor one of {list(_STRATEGIES)}"
            ) from err
    raise DeviceMapError(f"{name}: {device!r} is not a device")


def _check_available(device: Union[str, torch.device]) -> None:
    if isinstance(device, torch.device) and device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceMapError(f"device_map asks for {device}, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceMapError(f"device_map asks for {device}, but only {torch.cuda.device_count()} GPU(s) exist")


@dataclass
class SingleDevicePlacement:
    """The whole model on one device."""

    device: torch.device

    def device_for(self, name: str) -> torch.device:
        return self.device

    def place(self, model, source) -> None:
        model.to(self.device)
        model.hf_device_map = {"": self.device.type if self.device.type == "cpu" else self.device.index
                               if self.device.type == "cuda" and self.device.index is not None else str(self.device)}


def plan_placement(model, *, device_map=None, max_memory=None, offload_folder=None, offload_state_dict=None,
                   dtype=None, checkpoint=None):
    """Turn ``device_map`` into a placement object, or ``None`` for a plain CPU load."""
    if device_map is None:
        if max_memory is not None:
            raise DeviceMapError("max_memory only applies with a device_map (e.g. device_map='auto')")
        return None
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if isinstance(device_map, str) and device_map in _STRATEGIES or isinstance(device_map, dict):
        raise DeviceMapError(
            f"device_map={device_map!r}: computed and multi-device maps are not available yet in this version; "
            "pass a single device ('cpu', 'cuda:0', 0)"
        )
    device = normalize_device(device_map)
    if device == "disk":
        raise DeviceMapError("device_map: the whole model on 'disk' is not available yet in this version")
    _check_available(device)
    return SingleDevicePlacement(device)
