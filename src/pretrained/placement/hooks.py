"""Place: forward hooks that bring weights to a module right before it runs.

A :class:`ModuleHook` is attached with ``register_forward_pre_hook`` /
``register_forward_hook`` (``with_kwargs=True``; the post-hook with
``always_call=True`` so weights are released even when forward raises).
Nothing process-wide is patched and :func:`remove_hooks` restores the model.

Before the module's forward, each of its *fetched* tensors (a weight that lives
on disk, in CPU RAM for a module executing on a GPU, or on another device
because it is tied to a module placed elsewhere) is put in the module as a
fresh tensor on the module's execution device; after the forward the original
entry — the ``meta`` placeholder, or the tensor at its home — is put back, so
the fetched memory is freed as soon as nothing else refers to it. Ties stay
ties: the shared placeholder ``Parameter`` object is what every owner gets back.

Hooks on the modules named by the device map also move tensor arguments to
the execution device (arguments named in ``skip_keys``, such as
``past_key_values``, are left alone); a hook on the root moves the outputs
back to the device the inputs came from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn


def send_to_device(obj: Any, device: torch.device, *, skip_keys: Sequence[str] = ()) -> Any:
    """``obj`` with every tensor inside moved to ``device``.

    Tensors, lists, tuples (named ones too) and mappings are walked; mapping
    entries named in ``skip_keys`` and any other object are returned as they
    are. Output objects (``ModelOutput``, an ordered dict) are updated in place.
    """
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device or obj.device.type == "meta" else obj.to(device)
    if isinstance(obj, (list, tuple)):
        moved = [send_to_device(item, device, skip_keys=skip_keys) for item in obj]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*moved)
        return type(obj)(moved)
    if isinstance(obj, dict):
        if dataclasses.is_dataclass(obj):  # ModelOutput: keep the object, replace its fields
            for key in list(obj.keys()):
                if key not in skip_keys:
                    obj[key] = send_to_device(obj[key], device, skip_keys=skip_keys)
            return obj
        return type(obj)(
            (k, v if k in skip_keys else send_to_device(v, device, skip_keys=skip_keys)) for k, v in obj.items()
        )
    return obj


def first_device(args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[torch.device]:
    """Device of the first tensor among ``args`` then ``kwargs`` (looking into lists and dicts)."""
    stack: List[Any] = list(args) + list(kwargs.values())
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            return item.device
        if isinstance(item, (list, tuple)):
            stack[:0] = list(item)
        elif isinstance(item, dict):
            stack[:0] = list(item.values())
    return None


@dataclasses.dataclass
class Fetch:
    """One direct tensor of a module that is brought in for each forward.

    Attributes:
        attr: the attribute name in the module (``"weight"``).
        is_parameter: whether it lives in ``_parameters`` (else ``_buffers``).
        load: called with the entry the module holds between forwards (a ``meta``
            placeholder, or the tensor at its home); returns the value on the
            execution device.
    """

    attr: str
    is_parameter: bool
    load: Callable[[torch.Tensor], torch.Tensor]


class ModuleHook:
    """What happens around one module's forward under a placement.

    Args:
        execution_device: where the module computes.
        fetches: tensors to bring in and release around each call.
        move_inputs: move tensor arguments to ``execution_device``.
        io_same_device: move outputs back to the device of the inputs (the root).
        skip_keys: keyword arguments (and output fields) never moved.
    """

    def __init__(self, execution_device: torch.device, *, fetches: Sequence[Fetch] = (), move_inputs: bool = False,
                 io_same_device: bool = False, skip_keys: Sequence[str] = ()) -> None:
        self.execution_device = execution_device
        self.fetches = list(fetches)
        self.move_inputs = move_inputs
        self.io_same_device = io_same_device
        self.skip_keys = tuple(skip_keys)
        self._depth = 0
        self._originals: Dict[Tuple[str, bool], Any] = {}
        self._input_devices: List[Optional[torch.device]] = []
        self.handles: List[Any] = []

    def attach(self, module: nn.Module) -> None:
        """Register the pre- and post-forward hooks on ``module``."""
        self.handles.append(module.register_forward_pre_hook(self.pre_forward, with_kwargs=True))
        self.handles.append(module.register_forward_hook(self.post_forward, with_kwargs=True, always_call=True))

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def pre_forward(self, module: nn.Module, args: Tuple, kwargs: Dict[str, Any]):
        self._depth += 1
        if self.io_same_device:
            self._input_devices.append(first_device(args, kwargs))
        if self._depth == 1:
            self._bring_in(module)  # on failure the post-hook (always_call) releases what came in
        if self.move_inputs:
            args = send_to_device(args, self.execution_device)
            kwargs = {k: v if k in self.skip_keys else send_to_device(v, self.execution_device)
                      for k, v in kwargs.items()}
        return args, kwargs

    def post_forward(self, module: nn.Module, args: Tuple, kwargs: Dict[str, Any], output: Any):
        if self._depth == 0:  # an earlier pre-hook failed before ours ran: nothing of ours to undo
            return output
        self._depth -= 1
        if self._depth == 0:
            self._release(module)
        if self.io_same_device:
            device = self._input_devices.pop() if self._input_devices else None
            if device is not None and output is not None:
                output = send_to_device(output, device, skip_keys=self.skip_keys)
        return output

    def _bring_in(self, module: nn.Module) -> None:
        for fetch in self.fetches:
            table = module._parameters if fetch.is_parameter else module._buffers
            key = (fetch.attr, fetch.is_parameter)
            if key not in self._originals:
                self._originals[key] = table[fetch.attr]
            value = fetch.load(self._originals[key])
            if fetch.is_parameter:
                value = nn.Parameter(value, requires_grad=False)
            table[fetch.attr] = value

    def _release(self, module: nn.Module) -> None:
        for (attr, is_parameter), original in self._originals.items():
            (module._parameters if is_parameter else module._buffers)[attr] = original
        self._originals.clear()


def attach_hooks(model: nn.Module, hooks: Dict[str, ModuleHook]) -> None:
    """Attach ``hooks`` (module name -> hook) to the modules of ``model``."""
    modules = dict(model.named_modules())
    for name, hook in hooks.items():
        hook.attach(modules[name])


def remove_hooks(hooks: Dict[str, ModuleHook]) -> None:
    """Detach every hook of ``hooks``."""
    for hook in hooks.values():
        hook.detach()


__all__ = ["Fetch", "ModuleHook", "attach_hooks", "first_device", "remove_hooks", "send_to_device"]
