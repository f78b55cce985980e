"""Devices as the planner writes them, budgets per device, and explicit device maps.

A planned device is an ``int`` for a CUDA GPU, or ``"mps"``, ``"cpu"``,
``"disk"`` (as Transformers writes ``hf_device_map``). Everything here is pure
string and dict work: nothing asks the machine what it has (see :mod:`.machine`).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from ..errors import DeviceMapError
from ..utils import parse_size

Device = Union[int, str]
"""A planned device: a CUDA GPU index, or ``"mps"``, ``"cpu"``, ``"disk"``."""

_NAMED_DEVICES = ("mps", "cpu", "disk")


def device_key(key, *, name: str = "max_memory") -> Device:
    """Normalise one device name: ``0``/``"0"``/``"cuda:0"``/``torch.device("cuda", 0)`` -> ``0``;
    ``"cpu"``, ``"mps"``, ``"disk"`` unchanged.

    Args:
        key: the device as a user wrote it.
        name: what to call the argument in error messages.

    Returns:
        An ``int`` GPU index or one of ``"mps"``, ``"cpu"``, ``"disk"``.

    Raises:
        DeviceMapError: for anything else (negative ints, ``"cuda"`` without an index, typos).
    """
    if isinstance(key, torch.device):
        if key.type == "cuda":
            return key.index if key.index is not None else _bad_device(key, name)
        key = key.type
    if isinstance(key, bool):
        return _bad_device(key, name)
    if isinstance(key, int):
        return key if key >= 0 else _bad_device(key, name)
    if isinstance(key, str):
        text = key.strip()
        if text in _NAMED_DEVICES:
            return text
        if text.isdigit():
            return int(text)
        if text.startswith("cuda:") and text[5:].isdigit():
            return int(text[5:])
    return _bad_device(key, name)


def _bad_device(key, name: str):
    raise DeviceMapError(
        f"{name}: {key!r} is not a device; use a GPU index (0, 1, ...), 'cuda:N', 'mps', 'cpu' or 'disk'"
    )


def device_order(device: Device) -> Tuple[int, int]:
    """Sort key putting GPUs first (by index), then ``mps``, ``cpu``, ``disk``."""
    if isinstance(device, int):
        return (0, device)
    return (1, _NAMED_DEVICES.index(device))


def parse_max_memory(max_memory: Mapping) -> Dict[Device, int]:
    """Validate a user ``max_memory`` dict and convert its sizes to bytes.

    Args:
        max_memory: device -> int bytes or a size string (``"2GiB"``, ``"500MB"``);
            devices as in :func:`device_key`.

    Returns:
        ``{device: bytes}`` ordered GPUs (by index), ``mps``, ``cpu``, ``disk``.

    Raises:
        DeviceMapError: naming every unrecognised key, or a malformed size.

    >>> parse_max_memory({"cpu": "1GB", "cuda:1": 2**30, 0: "500MB"})
    {0: 500000000, 1: 1073741824, 'cpu': 1000000000}
    """
    if not isinstance(max_memory, Mapping):
        raise DeviceMapError(f"max_memory must be a dict of device -> size, got {type(max_memory).__name__}")
    unknown, parsed = [], {}
    for key, value in max_memory.items():
        try:
            device = device_key(key)
        except DeviceMapError:
            unknown.append(key)
            continue
        if device in parsed:
            raise DeviceMapError(f"max_memory names device {device!r} twice (as {key!r} and another spelling)")
        try:
            parsed[device] = parse_size(value, name=f"max_memory[{key!r}]")
        except ValueError as err:
            raise DeviceMapError(str(err)) from None
    if unknown:
        raise DeviceMapError(
            f"max_memory has keys that are not devices: {unknown}; use GPU indices (0, 1, ...), "
            "'cuda:N', 'mps', 'cpu' or 'disk'"
        )
    return {device: parsed[device] for device in sorted(parsed, key=device_order)}


def normalize_map_device(value, *, key: str = "") -> Device:
    """A device-map value (``0``, ``"cuda:1"``, ``"cpu"``, ``"disk"``, ``"mps"``,
    ``torch.device``) in planner form (``int`` for GPUs).

    Raises:
        DeviceMapError: naming the key for anything else.
    """
    try:
        return device_key(value, name=f"device_map[{key!r}]")
    except DeviceMapError:
        raise DeviceMapError(
            f"device_map[{key!r}] = {value!r} is not a device; use a GPU index, 'cuda:N', 'mps', 'cpu' or 'disk'"
        ) from None


def lookup(device_map: Mapping[str, Device], name: str) -> Optional[str]:
    """The key of ``device_map`` that governs ``name``: the deepest prefix at a dot
    boundary (``"layers.1"`` covers ``"layers.1.w"``, never ``"layers.10.w"``), ``""`` last.

    Returns:
        The key, or ``None`` when nothing covers ``name``.
    """
    candidate = name
    while True:
        if candidate in device_map:
            return candidate
        if not candidate:
            return None
        candidate = candidate.rpartition(".")[0] if "." in candidate else ""


def resolve_device_map(device_map: Mapping[str, object], names: Iterable[str]) -> Dict[str, Device]:
    """Give every tensor name its device under an explicit (user) map.

    Args:
        device_map: module or tensor prefix -> device.
        names: every parameter and buffer name of the model.

    Returns:
        tensor name -> device (planner form).

    Raises:
        DeviceMapError: listing the names no key covers, or a bad device value.
    """
    normalized = {str(key): normalize_map_device(value, key=key) for key, value in device_map.items()}
    resolved: Dict[str, Device] = {}
    uncovered: List[str] = []
    for name in names:
        key = lookup(normalized, name)
        if key is None:
            uncovered.append(name)
        else:
            resolved[name] = normalized[key]
    if uncovered:
        shown = ", ".join(uncovered[:20]) + (f", ... ({len(uncovered)} in all)" if len(uncovered) > 20 else "")
        raise DeviceMapError(
            f"device_map does not cover these parameters/buffers: {shown}; add entries for them "
            "(or a '' entry as a catch-all)"
        )
    return resolved


__all__ = [
    "Device",
    "device_key",
    "device_order",
    "lookup",
    "normalize_map_device",
    "parse_max_memory",
    "resolve_device_map",
]
