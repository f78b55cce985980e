"""Plan: which device each module goes to, from sizes and budgets alone.

Everything here is pure: it reads names, shapes and dtypes (a model built on
the ``meta`` device is enough, or a plain ``{tensor name: bytes}`` dict) and
returns small dataclasses. No tensor data is touched, so planning a 70B model
takes milliseconds and no memory.

Devices in plans and maps are written as Transformers writes them in
``hf_device_map``: an ``int`` for a CUDA GPU, ``"mps"``, ``"cpu"``, ``"disk"``.

The greedy algorithm (:func:`infer_device_map`) follows Accelerate's
``infer_auto_device_map``: walk the top-level modules in order, put each on
the current device while it fits, split a module that does not fit into its
children unless its class is in ``no_split_module_classes``, and move to the
next device (GPUs in id order, then ``mps``, ``cpu``, ``disk``) otherwise.
Tied tensors pull the modules that share them onto the same device.

Deliberate differences from Accelerate (documented in ``docs/placement.md``):

* *Reserve only when needed.* Accelerate always keeps room for the largest
  layer on the main GPU and on the CPU, so a model that fits on two GPUs may
  still spill to the CPU and GPU 0 may get nothing (``{0: 300KB, 1: 300KB}``
  with a 256 KB embedding). Here the reserve exists only when something is
  actually offloaded: the plan is computed without it first, and again with
  it on the execution device (the first GPU with a budget, or the CPU) when
  modules land on ``cpu``/``disk``, and on the CPU when modules land on
  ``disk``.
* *The reserve is what the hooks really hold at once.* Hooks bring offloaded
  weights in module by module (a module's direct tensors, plus its ancestors'
  while it runs; see :mod:`.hooks`), so the reserve is the largest such set
  among the modules the plan actually offloads — a GPT-2 block's biggest
  linear, not Accelerate's whole no-split block, and nothing for an embedding
  that stays resident. The plan is recomputed with the reserve grown to what
  it needs until it holds (falling back, after a few rounds, to the largest
  set over the whole model, :func:`offload_reserve`, which always holds).
* *Default budgets* are 90% of each GPU's free memory and 90% of the
  available host RAM (Accelerate: 100% except a single GPU under "balanced"),
  leaving room for activations, the CUDA context and Python itself.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import DeviceMapError
from ..utils import parse_size

Device = Union[int, str]
"""A planned device: a CUDA GPU index, or ``"mps"``, ``"cpu"``, ``"disk"``."""

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DEFAULT_BUDGET_FRACTION = 0.9
"""Share of free GPU memory / available RAM used when ``max_memory`` is omitted."""
_BALANCE_BUFFER = 1.25
_MAX_REPLANS = 8
"""Plans computed with a growing offload reserve before falling back to the largest possible one."""
_NAMED_DEVICES = ("mps", "cpu", "disk")


# --------------------------------------------------------------------------- devices and budgets


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


def available_memory(*, fraction: float = DEFAULT_BUDGET_FRACTION) -> Dict[Device, int]:
    """Default budgets: ``fraction`` of each CUDA GPU's free memory and of the available RAM.

    MPS (Apple unified memory) gets the same RAM figure as the CPU. Disk is not
    listed (unlimited).

    Returns:
        ``{device: bytes}`` ordered like :func:`parse_max_memory`.
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


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class ModelSizes:
    """What the planner knows about a model: tensor sizes, module classes, ties.

    Attributes:
        tensors: tensor name -> bytes, in model order. A tied tensor is counted
            once, under the first of its names; its other names weigh 0.
        modules: module name -> class name, in model order (``""`` is the root).
            Modules without tensors (dropout) are listed when known.
        tied: groups of names that reach one tensor.
    """

    tensors: Dict[str, int]
    modules: Dict[str, str] = field(default_factory=dict)
    tied: Tuple[Tuple[str, ...], ...] = ()

    @classmethod
    def from_dict(cls, sizes: Mapping[str, int], *, classes: Optional[Mapping[str, str]] = None,
                  tied: Iterable[Sequence[str]] = ()) -> "ModelSizes":
        """Sizes from ``{tensor name: bytes}`` (modules are the dotted prefixes).

        Args:
            sizes: tensor name -> bytes, in model order.
            classes: optional module name -> class name (for ``no_split_module_classes``).
            tied: groups of tensor names sharing one tensor; only the first name's size counts.
        """
        groups = tuple(tuple(group) for group in tied if len(group) > 1)
        followers = {name for group in groups for name in group[1:]}
        tensors = {name: (0 if name in followers else int(size)) for name, size in sizes.items()}
        modules: Dict[str, str] = {"": (classes or {}).get("", "")}
        for name in tensors:
            parts = name.split(".")[:-1]
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                modules.setdefault(prefix, (classes or {}).get(prefix, ""))
        return cls(tensors, modules, groups)

    @property
    def total(self) -> int:
        """Bytes of all tensors, tied ones counted once."""
        return sum(self.tensors.values())


def _tensor_bytes(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> int:
    element = dtype.itemsize if dtype is not None and tensor.is_floating_point() else tensor.element_size()
    return tensor.numel() * element


def model_sizes(model: nn.Module, *, dtype: Optional[torch.dtype] = None,
                special_dtypes: Optional[Mapping[str, torch.dtype]] = None) -> ModelSizes:
    """Read the sizes of ``model``'s parameters and buffers (shapes only: ``meta`` is fine).

    Args:
        model: any module; its tensors are never read.
        dtype: count floating-point tensors in this dtype (default: their own).
        special_dtypes: tensor name -> dtype overriding ``dtype`` (e.g. fp32 keep-modules).

    Returns:
        A :class:`ModelSizes`; all buffers count (they occupy device memory too).
    """
    special = dict(special_dtypes or {})
    tensors: Dict[str, int] = {}
    modules: Dict[str, str] = {}
    first_name: Dict[int, str] = {}
    groups: Dict[int, List[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):  # shared modules under every name
        modules[module_name] = type(module).__name__
        prefix = f"{module_name}." if module_name else ""
        for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is None:
                continue
            name = prefix + attr
            if id(tensor) in first_name:
                tensors[name] = 0
                groups[id(tensor)].append(name)
                continue
            first_name[id(tensor)] = name
            groups[id(tensor)] = [name]
            tensors[name] = _tensor_bytes(tensor, special.get(name, dtype))
    tied = tuple(tuple(names) for names in groups.values() if len(names) > 1)
    return ModelSizes(tensors, modules, tied)


def module_sizes(sizes: ModelSizes) -> Dict[str, int]:
    """Bytes under every module prefix and every tensor name (``""`` is the total).

    >>> module_sizes(ModelSizes.from_dict({"a.w": 4, "a.b": 2, "c": 1}))
    {'': 7, 'a': 6, 'a.w': 4, 'a.b': 2, 'c': 1}
    """
    totals: Dict[str, int] = {name: 0 for name in sizes.modules}
    totals.setdefault("", 0)
    for name, size in sizes.tensors.items():
        totals[""] += size
        parts = name.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            totals[prefix] = totals.get(prefix, 0) + size
        totals[name] = totals.get(name, 0) + size
    return totals


def no_split_classes(model: nn.Module) -> List[str]:
    """The union of ``_no_split_modules`` over every module of ``model`` that declares it
    (a model without it may be split anywhere)."""
    found: List[str] = []
    for module in model.modules():
        for cls_name in getattr(module, "_no_split_modules", None) or ():
            if cls_name not in found:
                found.append(cls_name)
    return found


def _as_sizes(model_or_sizes, dtype, special_dtypes) -> ModelSizes:
    if isinstance(model_or_sizes, ModelSizes):
        return model_or_sizes
    if isinstance(model_or_sizes, nn.Module):
        return model_sizes(model_or_sizes, dtype=dtype, special_dtypes=special_dtypes)
    if isinstance(model_or_sizes, Mapping):
        return ModelSizes.from_dict(model_or_sizes)
    raise TypeError(f"expected a model, a ModelSizes or a dict of sizes, got {type(model_or_sizes).__name__}")


# --------------------------------------------------------------------------- the module tree


@dataclass
class _Node:
    """A module (or a tensor, when ``is_tensor``) of the tree the planner walks."""

    name: str
    cls: str
    size: int = 0
    is_tensor: bool = False
    children: List["_Node"] = field(default_factory=list)
    nbytes: int = 0  # for a tensor: its real size, also when it is a tied name that weighs 0 in ``size``


def _build_tree(sizes: ModelSizes) -> _Node:
    """Modules in model order; a module's direct tensors come before its submodules."""
    nodes: Dict[str, _Node] = {"": _Node("", sizes.modules.get("", ""))}
    real = {name: sizes.tensors[group[0]] for group in sizes.tied for name in group if group[0] in sizes.tensors}

    def module(name: str) -> _Node:
        if name not in nodes:
            parent = module(name.rpartition(".")[0] if "." in name else "")
            nodes[name] = _Node(name, sizes.modules.get(name, ""))
            parent.children.append(nodes[name])
        return nodes[name]

    for name in sizes.modules:
        module(name)
    for name, size in sizes.tensors.items():
        owner = module(name.rpartition(".")[0] if "." in name else "")
        owner.children.append(_Node(name, "", size, is_tensor=True, nbytes=real.get(name, size)))

    def total(node: _Node) -> int:
        if not node.is_tensor:
            node.size = sum(total(child) for child in node.children)
        return node.size

    root = nodes[""]
    _restore_tensor_order(root)
    total(root)
    return root


def _restore_tensor_order(node: _Node) -> None:
    """Direct tensors first (in insertion order), then submodules (in registration order)."""
    tensors = [c for c in node.children if c.is_tensor]
    modules = [c for c in node.children if not c.is_tensor]
    node.children = tensors + modules
    for child in modules:
        _restore_tensor_order(child)


def _splittable(node: _Node, no_split: frozenset) -> bool:
    return bool(node.children) and node.cls not in no_split


def largest_layer(model_or_sizes, *, no_split_module_classes: Sequence[str] = (),
                  dtype: Optional[torch.dtype] = None) -> Tuple[str, int]:
    """The biggest unit the planner never splits: a module of a no-split class, a module
    whose children are all tensors, or a tensor owned beside submodules.

    Returns:
        ``(name, bytes)``; ``("", 0)`` for an empty model.
    """
    root = _build_tree(_as_sizes(model_or_sizes, dtype, None))
    return _largest_unit(root, frozenset(no_split_module_classes))


def _largest_unit(node: _Node, no_split: frozenset) -> Tuple[str, int]:
    if node.is_tensor or not _splittable(node, no_split) or all(c.is_tensor for c in node.children):
        return node.name, node.size
    best = ("", 0)
    for child in node.children:
        candidate = _largest_unit(child, no_split)
        if candidate[1] > best[1]:
            best = candidate
    return best


def _largest_fetch(node: _Node, above: int = 0) -> int:
    """The most bytes a forward hook holds at once when every module is offloaded:
    a module's direct tensors plus those of its ancestors (which stay in while it runs)."""
    direct = above + sum(child.nbytes for child in node.children if child.is_tensor)
    nested = [_largest_fetch(child, direct) for child in node.children if not child.is_tensor]
    return max([direct] + nested)


def offload_reserve(model_or_sizes, *, dtype: Optional[torch.dtype] = None) -> int:
    """Bytes the execution device needs to bring offloaded weights in (see :func:`infer_device_map`):
    the largest module's direct tensors plus its ancestors' direct tensors; a tied
    tensor counts for every module that uses it (each brings its own copy)."""
    return _largest_fetch(_build_tree(_as_sizes(model_or_sizes, dtype, None)))


# --------------------------------------------------------------------------- balancing


def get_balanced_memory(model_or_sizes, max_memory: Optional[Mapping] = None, *,
                        no_split_module_classes: Sequence[str] = (), dtype: Optional[torch.dtype] = None,
                        low_zero: bool = False) -> Dict[Device, int]:
    """Budgets that spread the model evenly over the GPUs (for ``"balanced"``/``"auto"``).

    When the model fits on the GPUs, every GPU is capped at the smallest
    uniform budget for which the in-order fill still places everything on the
    GPUs (found by bisection; the most even split that keeps modules in
    order). Otherwise — something will be offloaded anyway — Accelerate's rule
    applies: each GPU but the last gets ``total / n_gpus`` plus 1.25 x the
    largest layer, the last keeps its full budget.

    With ``low_zero`` the model is balanced over GPUs 1..n-1 and GPU 0 keeps
    only what they cannot hold (``"balanced_low_0"``: GPU 0 stays free for
    generation's activations). Without GPUs, or with one (``low_zero`` then
    ignored), the budgets are returned unchanged.

    Args:
        model_or_sizes: a model (``meta`` is fine), a :class:`ModelSizes` or ``{name: bytes}``.
        max_memory: device -> size; default :func:`available_memory`.
        no_split_module_classes: class names never split.
        dtype: count floating-point tensors in this dtype.
        low_zero: leave GPU 0 as empty as possible.

    Returns:
        ``{device: bytes}``.

    Raises:
        DeviceMapError: for a malformed ``max_memory``.
    """
    sizes = _as_sizes(model_or_sizes, dtype, None)
    budgets = parse_max_memory(max_memory) if max_memory is not None else available_memory()
    gpus = [d for d in budgets if isinstance(d, int) and budgets[d] > 0]
    if len(gpus) <= 1:
        return budgets
    spread = gpus[1:] if low_zero else gpus
    root = _build_tree(sizes)
    no_split = frozenset(no_split_module_classes)
    balanced = dict(budgets)
    cap = _even_cap(root, spread, budgets, no_split, sizes.tied)
    if cap is not None:
        for gpu in spread:
            balanced[gpu] = min(cap, budgets[gpu])
        if low_zero:
            balanced[gpus[0]] = 0
        return balanced
    total = sizes.total
    _, layer = _largest_unit(root, no_split)
    per_gpu = math.ceil(total / len(spread)) + int(_BALANCE_BUFFER * layer)
    for gpu in spread[:-1]:
        balanced[gpu] = min(per_gpu, budgets[gpu])
    if low_zero:
        others = sum(balanced[gpu] for gpu in spread)
        balanced[gpus[0]] = min(budgets[gpus[0]], max(0, total - others))
    return balanced


def _even_cap(root: _Node, gpus: List[Device], budgets: Mapping[Device, int], no_split: frozenset,
              tied: Sequence[Sequence[str]]) -> Optional[int]:
    """The smallest per-GPU cap under which ``gpus`` alone hold the whole model, or None."""

    def fits(cap: int) -> bool:
        caps = {gpu: min(cap, budgets[gpu]) for gpu in gpus}
        try:
            _greedy(root, list(gpus), caps, {}, no_split, tied)
        except DeviceMapError:
            return False
        return True

    high = max(budgets[gpu] for gpu in gpus)
    if not fits(high):
        return None
    low = max(0, math.ceil(root.size / len(gpus)) - 1)  # below the mean: never enough
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high


# --------------------------------------------------------------------------- the greedy planner


@dataclass(frozen=True)
class DevicePlan:
    """The result of :func:`infer_device_map`.

    Attributes:
        device_map: module prefix -> device, cleaned (a module whose whole
            subtree shares a device appears alone), in placement order.
        main_device: where modules mapped to ``cpu``/``disk`` execute (the first
            GPU with a budget, else ``mps``, else ``"cpu"``).
        budgets: the budgets used (after balancing).
        reserved: bytes kept free per device for bringing offloaded layers in.
        used: bytes of weights planned per device.
    """

    device_map: Dict[str, Device]
    main_device: Device
    budgets: Dict[Device, int]
    reserved: Dict[Device, int]
    used: Dict[Device, int]


def infer_device_map(model_or_sizes, max_memory: Optional[Mapping] = None, *,
                     no_split_module_classes: Optional[Sequence[str]] = None,
                     dtype: Optional[torch.dtype] = None,
                     special_dtypes: Optional[Mapping[str, torch.dtype]] = None,
                     strategy: str = "auto") -> DevicePlan:
    """Compute a device map from sizes and budgets (no tensor is touched).

    Args:
        model_or_sizes: a model (build it under ``torch.device("meta")`` for
            big ones), a :class:`ModelSizes`, or ``{tensor name: bytes}``.
        max_memory: device -> int bytes or size string; default: 90% of free
            GPU memory and available RAM. Devices absent from a given dict get
            nothing, except ``"disk"``, which is unlimited unless listed.
        no_split_module_classes: class names whose instances stay whole; default:
            the model's ``_no_split_modules`` (none for a dict of sizes).
        dtype: count floating-point tensors in this dtype.
        special_dtypes: tensor name -> dtype overriding ``dtype``.
        strategy: ``"auto"`` (= ``"balanced"``), ``"balanced"``,
            ``"balanced_low_0"`` or ``"sequential"`` (fill GPU 0 first).

    Returns:
        A :class:`DevicePlan`; ``plan.device_map`` is ready for ``from_pretrained``.

    Raises:
        DeviceMapError: unknown strategy or ``max_memory`` keys, or a model that
            does not fit even on ``disk`` (only when ``disk`` has a budget).

    >>> plan = infer_device_map({"a.w": 60, "b.w": 60}, {0: 100, 1: 100}, strategy="sequential")
    >>> plan.device_map
    {'a': 0, 'b': 1}
    >>> infer_device_map({"a.w": 60, "b.w": 60}, {0: 100, "cpu": 100}).device_map  # b would need 60 more on GPU 0
    {'': 'disk'}
    """
    if strategy not in STRATEGIES:
        raise DeviceMapError(f"strategy={strategy!r} is not one of {list(STRATEGIES)}")
    sizes = _as_sizes(model_or_sizes, dtype, special_dtypes)
    if no_split_module_classes is None:
        no_split_module_classes = no_split_classes(model_or_sizes) if isinstance(model_or_sizes, nn.Module) else ()
    no_split = frozenset(no_split_module_classes)
    if strategy == "sequential":
        budgets = parse_max_memory(max_memory) if max_memory is not None else available_memory()
    else:
        budgets = get_balanced_memory(sizes, max_memory, no_split_module_classes=no_split,
                                      low_zero=strategy == "balanced_low_0")
    budgets = dict(budgets)
    budgets.setdefault("disk", -1)  # -1: unlimited
    devices = [d for d in budgets]
    main = next((d for d in devices if isinstance(d, int) and budgets[d] > 0),
                "mps" if "mps" in budgets else "cpu")

    root = _build_tree(sizes)
    reserved: Dict[Device, int] = {}
    for attempt in range(_MAX_REPLANS + 1):
        assigned, order, used = _greedy(root, devices, budgets, reserved, no_split, sizes.tied)
        needed = _needed_reserve(root, assigned, main)
        if all(reserved.get(d, 0) >= amount for d, amount in needed.items()):
            break
        if attempt == _MAX_REPLANS - 1:  # not settled: reserve for any module, which always holds
            needed = {d: _largest_fetch(root) for d in needed}
        for d, amount in needed.items():
            reserved[d] = max(reserved.get(d, 0), amount)
    device_map = _clean(root, assigned, order)
    budgets = {d: b for d, b in budgets.items() if not (d == "disk" and b < 0)}
    return DevicePlan(device_map, main, budgets, reserved, {d: u for d, u in used.items() if u})


def _needed_reserve(root: _Node, assigned: Mapping[str, Device], main: Device) -> Dict[Device, int]:
    """What a plan must keep free: on the execution device, the most the hooks bring in at
    once from ``cpu``/``disk``; on the CPU, the most they read from ``disk`` at once."""
    needed: Dict[Device, int] = {}
    to_main = _fetch_peak(root, assigned, frozenset({"cpu", "disk"} - {main}))
    if to_main:
        needed[main] = to_main
    from_disk = _fetch_peak(root, assigned, frozenset({"disk"}))
    if from_disk:
        needed["cpu"] = max(needed.get("cpu", 0), from_disk)
    return needed


def _fetch_peak(node: _Node, assigned: Mapping[str, Device], offloaded: frozenset,
                device: Optional[Device] = None, above: int = 0) -> int:
    """:func:`_largest_fetch` counting only tensors placed on an ``offloaded`` device."""
    device = assigned.get(node.name, device)
    direct = above + sum(child.nbytes for child in node.children
                         if child.is_tensor and assigned.get(child.name, device) in offloaded)
    nested = [_fetch_peak(child, assigned, offloaded, device, direct) for child in node.children if not child.is_tensor]
    return max([direct] + nested)


def _greedy(root: _Node, devices: List[Device], budgets: Mapping[Device, int], reserved: Mapping[Device, int],
            no_split: frozenset, tied: Sequence[Sequence[str]]):
    """One pass of the sequential fill. Returns (name -> device, assignment order, bytes per device)."""
    tied_with: Dict[str, List[str]] = {}
    for group in tied:
        for name in group:
            tied_with[name] = [other for other in group if other != name]
    if root.is_tensor or not _splittable(root, no_split):
        work = deque([root])
    else:
        work = deque(root.children)
    assigned: Dict[str, Device] = {}
    order: List[str] = []
    used: Dict[Device, int] = {d: 0 for d in devices}
    index = 0
    while work:
        node = work.popleft()
        device = devices[index]
        capacity = math.inf if budgets[device] < 0 else max(0, budgets[device] - reserved.get(device, 0))
        partners = _tied_partners(node, work, tied_with)
        need = node.size + sum(p.size for p in partners)
        if used[device] + need <= capacity:
            for item in [node] + partners:
                if item is not node:
                    work.remove(item)
                assigned[item.name] = device
                order.append(item.name)
            used[device] += need
            continue
        splittable_partner = next((p for p in partners if _splittable(p, no_split)), None)
        if splittable_partner is not None and used[device] + node.size <= capacity:
            position = work.index(splittable_partner)
            work.remove(splittable_partner)
            for offset, child in enumerate(splittable_partner.children):
                work.insert(position + offset, child)
            work.appendleft(node)
            continue
        if _splittable(node, no_split):
            work.extendleft(reversed(node.children))
            continue
        index += 1
        if index == len(devices):
            raise DeviceMapError(
                f"the model does not fit in max_memory={dict(budgets)}: {node.name or 'the model'} "
                f"({node.size} bytes) has no room left even on disk; raise the 'disk' budget or drop it"
            )
        work.appendleft(node)
    return assigned, order, used


def _tied_partners(node: _Node, work: deque, tied_with: Mapping[str, List[str]]) -> List[_Node]:
    """Work items not yet placed that hold a tensor tied to one under ``node``, or
    (transitively) to one under such an item, in work-list order."""
    if not tied_with:
        return []
    partners: List[_Node] = []
    frontier = [node]
    while frontier:
        wanted = {other for item in frontier for n in _tensor_names(item) for other in tied_with.get(n, ())}
        frontier = [item for item in work if item is not node and item not in partners
                    and any(_covers(item.name, other) for other in wanted)]
        partners.extend(frontier)
    return [item for item in work if item in partners]


def _tensor_names(node: _Node) -> List[str]:
    if node.is_tensor:
        return [node.name]
    return [name for child in node.children for name in _tensor_names(child)]


def _covers(prefix: str, name: str) -> bool:
    """True when ``prefix`` is ``name`` or one of its module prefixes (at a dot boundary)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _clean(root: _Node, assigned: Mapping[str, Device], order: Sequence[str]) -> Dict[str, Device]:
    """Collapse every module whose whole subtree sits on one device into one entry,
    keeping the order in which the entries were placed."""
    rank = {name: i for i, name in enumerate(order)}
    entries: List[Tuple[int, str, Device]] = []

    def visit(node: _Node, inherited: Optional[Device]) -> Tuple[Optional[Device], int]:
        """Returns (the single device of the subtree or None if mixed, first rank)."""
        device = assigned.get(node.name, inherited)
        if node.name in assigned or not node.children:
            return device, rank.get(node.name, math.inf)
        results = [visit(child, device) for child in node.children]
        devices = {d for d, _ in results}
        first = min((r for _, r in results), default=math.inf)
        return (devices.pop() if len(devices) == 1 else None), first

    def emit(node: _Node, inherited: Optional[Device]) -> None:
        device, first = visit(node, inherited)
        if device is not None:
            entries.append((first, node.name, device))
            return
        for child in node.children:
            emit(child, assigned.get(node.name, inherited))

    emit(root, None)
    entries.sort(key=lambda entry: entry[0])
    return {name: device for _, name, device in entries}


# --------------------------------------------------------------------------- explicit maps


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
    "DevicePlan",
    "ModelSizes",
    "STRATEGIES",
    "available_memory",
    "device_key",
    "get_balanced_memory",
    "infer_device_map",
    "largest_layer",
    "lookup",
    "model_sizes",
    "module_sizes",
    "no_split_classes",
    "normalize_map_device",
    "offload_reserve",
    "parse_max_memory",
    "resolve_device_map",
]
