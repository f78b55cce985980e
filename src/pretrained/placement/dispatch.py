"""A device map applied to one model: the object ``from_pretrained`` drives.

:func:`plan_placement` turns the user's ``device_map`` / ``max_memory`` into a
placement before any weight is read; :func:`pretrained.loading.load_weights`
then asks it where each tensor goes (:meth:`Placement.device_for`) and hands
it the tensors mapped to ``"disk"`` (:meth:`Placement.offload`), which stay on
the ``meta`` device; finally :meth:`Placement.place` moves what is left,
writes what must be written, attaches the hooks and sets ``hf_device_map``.

Execution devices: a module mapped to a GPU or ``mps`` runs there. Modules
mapped to ``"cpu"`` or ``"disk"`` run on the *main device* — the first GPU of
the map (for a computed map, the first GPU with a budget), else ``mps``, else
the CPU — and their weights are brought there for each forward: from RAM for
``"cpu"`` (when the main device is a GPU), read from a file for ``"disk"``.
Buffers always live on their module's execution device.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from ..errors import DeviceMapError
from ..logging import get_logger
from ..storage.safetensors import read_header
from .hooks import Fetch, ModuleHook, attach_hooks, remove_hooks
from .machine import memory_budgets
from .offload import DiskReader, DiskTensor, OffloadWriter, disk_tensor_in, write_offloaded
from .plan import (
    STRATEGIES,
    Device,
    device_order,
    infer_device_map,
    lookup,
    normalize_map_device,
    resolve_device_map,
)

logger = get_logger(__name__)


def torch_device(device: Device) -> torch.device:
    """Planner form -> ``torch.device`` (``0`` -> ``cuda:0``); ``"disk"`` is not a torch device."""
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def hf_device(device: Union[Device, torch.device]) -> Device:
    """``torch.device`` -> the form ``hf_device_map`` uses (``cuda:1`` -> ``1``, ``cpu`` -> ``"cpu"``)."""
    if isinstance(device, torch.device):
        if device.type == "cuda":
            return device.index if device.index is not None else torch.cuda.current_device()
        return device.type
    return device


def check_available(devices: Sequence[Device]) -> None:
    """Refuse GPUs this machine does not have.

    Raises:
        DeviceMapError: naming the device and what exists.
    """
    for device in devices:
        if isinstance(device, int):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if device >= count:
                raise DeviceMapError(
                    f"device_map uses GPU {device}, but this machine has {count} CUDA device(s); "
                    "pass max_memory without it, or a device_map for the devices you have"
                )
        elif device == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise DeviceMapError("device_map uses 'mps', but MPS is not available on this machine")


def _named_tensors(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str, bool, torch.Tensor]]:
    """(name, owner module, attribute, is_parameter, tensor) for every parameter and buffer,
    tied names included, in model order."""
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for attr, tensor in module._parameters.items():
            if tensor is not None:
                yield prefix + attr, module, attr, True, tensor
        for attr, tensor in module._buffers.items():
            if tensor is not None:
                yield prefix + attr, module, attr, False, tensor


class SingleDevicePlacement:
    """The whole model on one device: loaded straight there, no hooks.

    Args:
        device: the device.
        hf_device_map: what ``model.hf_device_map`` will hold (``{"": "cpu"}`` ...).
    """

    def __init__(self, device: torch.device, hf_device_map: Optional[Dict[str, Device]] = None) -> None:
        self.device = device
        self.hf_device_map = hf_device_map if hf_device_map is not None else {"": hf_device(device)}

    def device_for(self, name: str) -> torch.device:
        """Where tensor ``name`` is loaded: the device."""
        return self.device

    offload = None

    def place(self, model: nn.Module, source: Any = None) -> None:
        """Move what loading left elsewhere (initialised tensors, buffers) and set ``hf_device_map``."""
        model.to(self.device)
        model.hf_device_map = dict(self.hf_device_map)


class Placement:
    """A multi-device or offloaded placement of one model.

    Args:
        model: the skeleton (tensors may be uninitialised; only names and shapes are read).
        device_map: module/tensor prefix -> device (planner form), covering every tensor.
        main_device: where ``cpu``/``disk`` modules execute.
        offload_folder: where converted disk tensors are written (``None``: not allowed to write).
        hf_device_map: what ``model.hf_device_map`` will hold.
        offload_buffers: offload the persistent buffers of offloaded modules too
            (default: buffers live on their module's execution device).

    Raises:
        DeviceMapError: when ``device_map`` leaves a tensor uncovered.
    """

    def __init__(self, model: nn.Module, device_map: Mapping[str, Device], *, main_device: Device,
                 offload_folder: Optional[Union[str, os.PathLike]] = None,
                 hf_device_map: Optional[Dict[str, Device]] = None, offload_buffers: bool = False) -> None:
        self.device_map = dict(device_map)
        self.main_device = main_device
        self.offload_folder = os.fspath(offload_folder) if offload_folder is not None else None
        self.hf_device_map = dict(hf_device_map if hf_device_map is not None else device_map)
        names = list(dict.fromkeys(name for name, *_ in _named_tensors(model)))
        # the tensors kept where the map says (else on their module's execution device): the parameters,
        # and with offload_buffers the persistent buffers too (offloaded with their module, as Accelerate does)
        self.parameter_names: Set[str] = {
            name for name, module, attr, is_param, _ in _named_tensors(model)
            if is_param or (offload_buffers and attr not in module._non_persistent_buffers_set)}
        self.tensor_devices: Dict[str, Device] = resolve_device_map(self.device_map, names)
        self.disk: Dict[str, DiskTensor] = {}
        self.reader = DiskReader()
        self.hooks: Dict[str, ModuleHook] = {}
        self._headers: Dict[str, Any] = {}
        self._writer: Optional[OffloadWriter] = None  # converted disk tensors being written
        self._written_as: Dict[str, List[str]] = {}  # first name -> every name of that tensor
        self._warn_unused_keys(model, names)

    # ------------------------------------------------------------ facts

    def execution_device(self, device: Device) -> torch.device:
        """Where a module mapped to ``device`` computes."""
        return torch_device(self.main_device if device in ("cpu", "disk") else device)

    @property
    def offloaded(self) -> bool:
        """True when some weights are not resident on their execution device (disk, or CPU under a GPU)."""
        return any(d == "disk" or self.execution_device(d) != torch_device(d) for d in self.tensor_devices.values())

    @property
    def disk_bytes(self) -> int:
        """Bytes of the distinct tensors kept on disk."""
        return sum(entry.nbytes for entry in {id(e): e for e in self.disk.values()}.values())

    def _warn_unused_keys(self, model: nn.Module, names: Sequence[str]) -> None:
        known = set(names) | {name for name, _ in model.named_modules()}
        unused = [key for key in self.device_map if key and key not in known]
        if unused:
            logger.warning("device_map keys that name no module or tensor of %s were ignored: %s",
                           type(model).__name__, unused)

    # ------------------------------------------------------------ load phase

    def device_for(self, name: str) -> Union[torch.device, str]:
        """Where :func:`~pretrained.loading.load_weights` puts tensor ``name``: a device, or
        ``"disk"`` for a parameter that stays offloaded (then :meth:`offload` is called)."""
        device = self.tensor_devices[name]
        if device == "disk":
            return "disk" if name in self.parameter_names else self.execution_device(device)
        if name not in self.parameter_names:  # buffers live where their module runs
            return self.execution_device(device)
        return torch_device(device)

    def offload(self, names: Sequence[str], key: str, source: Any, dtype: torch.dtype) -> None:
        """Record where the disk tensor ``names`` (checkpoint key ``key``) is read from.

        A safetensors checkpoint tensor already in ``dtype`` is used in place; any
        other is converted once and written to the offload folder (without a
        folder, a safetensors tensor is converted on each read instead).

        Raises:
            DeviceMapError: a ``.bin`` or state-dict source without ``offload_folder``.
        """
        entry = None
        in_safetensors = getattr(source, "format", None) == "safetensors" and hasattr(source, "file_of")
        if in_safetensors:
            file = source.file_of(key)
            header = self._headers.get(file)
            if header is None:
                header = self._headers[file] = read_header(file)
            entry = disk_tensor_in(file, key, target_dtype=dtype, header=header)
            self.reader.pin(file)
        if entry is None or (entry.dtype != dtype and self.offload_folder is not None):
            if self.offload_folder is None:
                raise DeviceMapError(_NEEDS_FOLDER)
            # through a mapping of this tensor alone (the reader's), not the checkpoint's: its pages go with it
            value = self.reader.read(entry) if entry is not None else source.get(key).to(dtype)
            if self._writer is None:
                self._writer = OffloadWriter(self.offload_folder)
            self._writer.submit(names[0], value)  # written while the next tensors load
            self._written_as[names[0]] = list(names)
            return
        for name in names:
            self.disk[name] = entry

    def _finish_writes(self) -> None:
        """Wait for the offload folder's background writes and record where they went."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            for first, entry in writer.finish().items():
                for name in self._written_as.pop(first):
                    self.disk[name] = entry

    # ------------------------------------------------------------ place phase

    def place(self, model: nn.Module, source: Any = None) -> None:
        """Finish the placement of a loaded model.

        Tensors not yet at home move there (initialised ones, buffers); disk
        parameters that loading did not offload (initialised because missing
        from the checkpoint) are written to the offload folder — or kept in RAM,
        with a warning, when there is none; hooks are attached; ``hf_device_map``
        is set.
        """
        self._finish_writes()
        groups: Dict[int, List[Tuple[str, nn.Module, str, bool, torch.Tensor]]] = {}
        for item in _named_tensors(model):
            groups.setdefault(id(item[4]), []).append(item)
        homes: Dict[int, Device] = {}
        for members in groups.values():
            settled = self._settle(members)  # first: it may offload the tensor, which changes its home
            homes[id(settled)] = self._home(members[0][0], members[0][3])
        self._attach(model, homes)
        model.hf_device_map = dict(self.hf_device_map)
        model.__dict__["_placement"] = self
        if self.disk or self.offloaded:
            logger.info("%s placed with offloaded weights (%d bytes on disk); they are brought in per forward",
                        type(model).__name__, self.disk_bytes)

    def _home(self, name: str, is_parameter: bool) -> Device:
        device = self.tensor_devices[name]
        if name not in self.parameter_names:
            return hf_device(self.execution_device(device))
        if device == "disk" and name not in self.disk:
            return "cpu"  # an initialised tensor kept in RAM (see _settle)
        return device

    def _settle(self, members: List[Tuple[str, nn.Module, str, bool, torch.Tensor]]) -> torch.Tensor:
        """Put one tensor (all of its names) at its home; returns the object now in the model."""
        name, _, _, _, tensor = members[0]
        device = self.tensor_devices[name]
        offloadable = name in self.parameter_names
        if offloadable and device == "disk":
            if name not in self.disk:
                if tensor.device.type == "meta":
                    raise DeviceMapError(f"{name} is on the meta device but was never offloaded")
                if self.offload_folder is None:
                    logger.warning("%s is mapped to 'disk' but was not in the checkpoint and no offload_folder "
                                   "was given: it is kept in RAM", name)
                    return self._move(members, torch.device("cpu"))
                entry = write_offloaded(self.offload_folder, name, tensor)
                for member in members:
                    self.disk[member[0]] = entry
            if tensor.device.type != "meta":
                return self._replace(members, torch.empty(tensor.shape, dtype=tensor.dtype, device="meta"))
            return tensor
        target = self.execution_device(device) if not offloadable else torch_device(device)
        return self._move(members, target)

    def _move(self, members, device: torch.device) -> torch.Tensor:
        tensor = members[0][4]
        if tensor.device == device:
            return tensor
        return self._replace(members, tensor.detach().to(device))

    @staticmethod
    def _replace(members, value: torch.Tensor) -> torch.Tensor:
        old = members[0][4]
        new = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
        for _, module, attr, is_parameter, _ in members:
            (module._parameters if is_parameter else module._buffers)[attr] = new
        return new

    def _attach(self, model: nn.Module, homes: Mapping[int, Device]) -> None:
        """Build one hook per module that needs one, and attach them."""
        skip = getattr(model, "_skip_keys_device_placement", None) or ()
        skip = (skip,) if isinstance(skip, str) else tuple(skip)
        modules = dict(model.named_modules())
        executions = {name: self._module_execution(name, module) for name, module in modules.items()}
        moving = {d for d in executions.values() if d is not None} != {torch.device("cpu")}
        entry_modules = [key for key in self.device_map if key in modules] if moving else []
        for name, module in modules.items():
            execution = executions[name]
            fetches = self._fetches(name, module, execution, homes) if execution is not None else []
            is_entry = name in entry_modules
            is_root = name == "" and moving
            if fetches or is_entry or is_root:
                self.hooks[name] = ModuleHook(execution or torch.device("cpu"), fetches=fetches,
                                              move_inputs=is_entry and execution is not None,
                                              io_same_device=is_root, skip_keys=skip)
        attach_hooks(model, self.hooks)

    def _module_execution(self, name: str, module: nn.Module) -> Optional[torch.device]:
        key = lookup(self.device_map, name)
        if key is not None:
            return self.execution_device(self.device_map[key])
        prefix = f"{name}." if name else ""
        for attr in list(module._parameters) + list(module._buffers):
            if prefix + attr in self.tensor_devices:
                return self.execution_device(self.tensor_devices[prefix + attr])
        return None

    def _fetches(self, name: str, module: nn.Module, execution: torch.device,
                 homes: Mapping[int, Device]) -> List[Fetch]:
        prefix = f"{name}." if name else ""
        fetches = []
        for is_parameter, table in ((True, module._parameters), (False, module._buffers)):
            for attr, tensor in table.items():
                if tensor is None:
                    continue
                home = homes.get(id(tensor))
                if home == "disk":
                    entry = self.disk[prefix + attr]
                    fetches.append(Fetch(attr, is_parameter, self._disk_loader(entry, execution)))
                elif home is not None and torch_device(home) != execution:
                    fetches.append(Fetch(attr, is_parameter, _mover(execution)))
        return fetches

    def _disk_loader(self, entry: DiskTensor, execution: torch.device):
        # a partial, not a closure: copy.deepcopy of the model then gives the hooks the copy's reader
        return functools.partial(_read_entry, self.reader, entry, execution)

    # ------------------------------------------------------------ after loading

    def check_movable(self) -> None:
        """Refuse ``.to()``/``.cuda()``/casts of a model whose weights are spread by hooks.

        Raises:
            RuntimeError: when hooks are attached (offloaded or multi-device placement).
        """
        if not self.hooks:
            return
        where = sorted({str(d) for d in self.tensor_devices.values()})
        raise RuntimeError(
            f"this model was loaded with a device_map that spreads it over {where}"
            + (" with offloaded weights (kept on 'disk' or in CPU RAM and brought in by hooks for each forward)"
               if self.disk or self.offloaded else "")
            + "; it cannot be moved or cast as a whole with .to()/.cuda()/.half(). Load it again with the "
            "device_map and torch_dtype you want (e.g. from_pretrained(..., device_map='cuda:0'))."
        )

    def offloaded_state_dict(self, state_dict: Mapping[str, torch.Tensor],
                             tied_patterns: Sequence[str] = ()) -> Dict[str, Any]:
        """``state_dict`` with every disk tensor replaced by a lazy entry read when written.

        Names of one disk tensor are stored as :func:`stored_tied_names` says:
        the declared tied names (matching ``tied_patterns``) are dropped in favour
        of the others, each of which is read and written on its own.

        Returns:
            name -> tensor or :class:`~pretrained.storage.writer.LazyTensor`.
        """
        from ..storage.writer import LazyTensor

        result: Dict[str, Any] = {}
        seen: Dict[int, List[str]] = {}
        for name, tensor in state_dict.items():
            entry = self.disk.get(name)
            if entry is None or not isinstance(tensor, torch.Tensor) or tensor.device.type != "meta":
                result[name] = tensor
                continue
            seen.setdefault(id(entry), []).append(name)
            result[name] = LazyTensor(entry.target_dtype, tuple(entry.shape), _reader_of(self.reader, entry))
        for names in seen.values():
            keep = stored_tied_names(names, tied_patterns)
            for name in names:
                if name not in keep:
                    del result[name]
        return result

    def remove(self) -> None:
        """Detach the hooks and close the files (the offloaded weights stay unreachable)."""
        remove_hooks(self.hooks)
        self.hooks.clear()
        self.reader.close()


def _read_entry(reader: DiskReader, entry: DiskTensor, execution: torch.device, original: torch.Tensor):
    return reader.read(entry, execution)


def stored_tied_names(names: Sequence[str], tied_patterns: Sequence[str]) -> List[str]:
    """Which names of one shared tensor a checkpoint stores.

    Names matching a declared tie (``tied_patterns``, regexes searched in each
    name) are left out, as they are re-tied on load; every other name is
    stored (the caller copies the extra ones). When all are declared, the first is kept.

    Example:
        >>> stored_tied_names(["transformer.wte.weight", "lm_head.weight"], ["lm_head"])
        ['transformer.wte.weight']
    """
    kept = [name for name in names if not any(re.search(p, name) for p in tied_patterns)]
    return kept or list(names[:1])


def _mover(execution: torch.device):
    def load(original: torch.Tensor) -> torch.Tensor:
        return original.detach().to(execution)

    return load


def _reader_of(reader: DiskReader, entry: DiskTensor):
    return lambda: reader.read(entry)


_NEEDS_FOLDER = (
    "the device_map puts weights on 'disk' but they cannot be read from the checkpoint in place "
    "(a .bin checkpoint or a state_dict): pass offload_folder=<a folder with room for them> so they are "
    "written there once"
)


# --------------------------------------------------------------------------- planning entry point


def _main_of(devices) -> Device:
    gpus = sorted(d for d in devices if isinstance(d, int))
    if gpus:
        return gpus[0]
    return "mps" if "mps" in devices else "cpu"


def plan_placement(model: nn.Module, *, device_map=None, max_memory=None, offload_folder=None,
                   offload_state_dict=None, dtype=None, checkpoint=None, offload_buffers=False):
    """Turn ``from_pretrained``'s placement arguments into a placement, before loading.

    Args:
        model: the skeleton (shapes and dtypes are read, never values).
        device_map: ``None``, a strategy (``"auto"``, ``"balanced"``,
            ``"balanced_low_0"``, ``"sequential"``), a device (``"cpu"``,
            ``"cuda:1"``, ``0``, ``"mps"``, ``"disk"``, ``torch.device``) or a
            dict prefix -> device.
        max_memory: device -> bytes or size string, for strategies.
        offload_folder: where disk weights are written when they cannot be read
            from the checkpoint in place (``.bin`` checkpoints, dtype conversions).
        offload_state_dict: accepted for compatibility; no effect (see ``docs/placement.md``).
        dtype: the target dtype (the skeleton already has it; unused).
        checkpoint: the :class:`~pretrained.storage.checkpoint.Checkpoint`, or ``None``
            for a ``state_dict=`` load.
        offload_buffers: persistent buffers of modules on ``"disk"`` (or in CPU RAM
            under a GPU) are offloaded with them and brought in per forward, as
            Accelerate's ``offload_buffers=True`` does; by default they live where
            their module runs.

    Returns:
        ``None`` (no device_map), a :class:`SingleDevicePlacement`, or a :class:`Placement`.

    Raises:
        DeviceMapError: a malformed map or budget, devices this machine lacks,
            or disk weights of a ``.bin``/state-dict source without ``offload_folder``.
    """
    if device_map is None:
        if max_memory is not None:
            raise DeviceMapError("max_memory only applies with a device_map (e.g. device_map='auto')")
        return None
    if isinstance(device_map, str) and device_map in STRATEGIES:
        plan = infer_device_map(model, memory_budgets(max_memory), strategy=device_map)
        device_map, main, hf_map = plan.device_map, plan.main_device, dict(plan.device_map)
    elif isinstance(device_map, Mapping):
        if not device_map:
            raise DeviceMapError("device_map is an empty dict; map at least '' to a device")
        hf_map = {str(k): normalize_map_device(v, key=k) for k, v in device_map.items()}
        resolve_device_map(hf_map, dict.fromkeys(name for name, *_ in _named_tensors(model)))  # all covered?
        device_map, main = hf_map, _main_of(hf_map.values())
    else:
        device = _single_device(device_map)
        if max_memory is not None:
            logger.warning("max_memory is ignored with device_map=%r (a single device)", device_map)
        device_map = {"": device}
        hf_map, main = dict(device_map), _main_of([device])
    check_available(sorted(set(device_map.values()) - {"disk"}, key=device_order))
    devices = set(device_map.values())
    if len(devices) == 1 and "disk" not in devices:
        (only,) = devices
        return SingleDevicePlacement(torch_device(only), hf_map)
    placement = Placement(model, device_map, main_device=main, offload_folder=offload_folder, hf_device_map=hf_map,
                          offload_buffers=bool(offload_buffers))
    _check_disk_source(placement, checkpoint, offload_folder)
    return placement


def _single_device(device_map) -> Device:
    if isinstance(device_map, torch.device) and device_map.type == "cuda" and device_map.index is None:
        device_map = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if isinstance(device_map, str) and device_map.strip() == "cuda":
        device_map = f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"
    try:
        return normalize_map_device(device_map, key="")
    except DeviceMapError:
        raise DeviceMapError(
            f"device_map={device_map!r}: pass a device name (e.g. 'cpu', 'cuda:0', 0) or one of "
            f"{list(STRATEGIES)} or a dict of module prefix -> device"
        ) from None


def _check_disk_source(placement: Placement, checkpoint, offload_folder) -> None:
    on_disk = [n for n in placement.parameter_names if placement.tensor_devices[n] == "disk"]
    if not on_disk:
        return
    if offload_folder is None and getattr(checkpoint, "format", None) != "safetensors":
        what = "this .bin checkpoint" if checkpoint is not None else "a state_dict"
        raise DeviceMapError(
            f"the device_map puts {len(on_disk)} weights on 'disk' (e.g. {sorted(on_disk)[0]}); weights of {what} "
            "cannot be read in place, so pass offload_folder=<a folder with room for them> to write them there once"
        )
    if offload_folder is not None:
        os.makedirs(offload_folder, exist_ok=True)


__all__ = [
    "Placement",
    "SingleDevicePlacement",
    "check_available",
    "hf_device",
    "plan_placement",
    "stored_tied_names",
    "torch_device",
]
