"""Plan: which device each module goes to, from sizes and budgets alone.

The planner is pure: :func:`plan_device_map` takes the sizes (:mod:`.sizes`)
and the budgets per device (:mod:`.devices`) as required arguments and
returns small dataclasses. No tensor data is touched and nothing asks the
machine what it has, so planning a 70B model takes milliseconds and no memory.
The public :func:`infer_device_map` and :func:`get_balanced_memory` also
accept a model and ``max_memory=None``; then they take the machine's budgets
from :func:`.machine.memory_budgets`, the one place placement asks.

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
* *Default budgets* (:func:`.machine.available_memory`) are 90% of each GPU's
  free memory and 90% of the available host RAM (Accelerate: 100% except a
  single GPU under "balanced"), leaving room for activations, the CUDA
  context and Python itself.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..errors import DeviceMapError
from .devices import (
    Device,
    device_key,
    device_order,
    lookup,
    normalize_map_device,
    parse_max_memory,
    resolve_device_map,
)
from .machine import DEFAULT_BUDGET_FRACTION, available_memory, memory_budgets
from .sizes import (
    ModelSizes,
    _as_sizes,
    _build_tree,
    _largest_fetch,
    _largest_unit,
    _Node,
    _splittable,
    largest_layer,
    model_sizes,
    module_sizes,
    no_split_classes,
    offload_reserve,
)

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_BALANCE_BUFFER = 1.25
_MAX_REPLANS = 8
"""Plans computed with a growing offload reserve before falling back to the largest possible one."""


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise DeviceMapError(f"strategy={strategy!r} is not one of {list(STRATEGIES)}")


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
    budgets = memory_budgets(max_memory)
    root = _build_tree(sizes)
    no_split = frozenset(no_split_module_classes)
    return _balance(root, budgets, no_split, _index_ties(root, sizes.tied), low_zero=low_zero)


def _balance(root: _Node, budgets: Dict[Device, int], no_split: frozenset, ties: _Ties, *,
             low_zero: bool) -> Dict[Device, int]:
    """:func:`get_balanced_memory` on parsed ``budgets`` (pure)."""
    gpus = [d for d in budgets if isinstance(d, int) and budgets[d] > 0]
    if len(gpus) <= 1:
        return budgets
    spread = gpus[1:] if low_zero else gpus
    balanced = dict(budgets)
    cap = _even_cap(root, spread, budgets, no_split, ties)
    if cap is not None:
        for gpu in spread:
            balanced[gpu] = min(cap, budgets[gpu])
        if low_zero:
            balanced[gpus[0]] = 0
        return balanced
    total = root.size
    _, layer = _largest_unit(root, no_split)
    per_gpu = math.ceil(total / len(spread)) + int(_BALANCE_BUFFER * layer)
    for gpu in spread[:-1]:
        balanced[gpu] = min(per_gpu, budgets[gpu])
    if low_zero:
        others = sum(balanced[gpu] for gpu in spread)
        balanced[gpus[0]] = min(budgets[gpus[0]], max(0, total - others))
    return balanced


def _even_cap(root: _Node, gpus: List[Device], budgets: Mapping[Device, int], no_split: frozenset,
              ties: _Ties) -> Optional[int]:
    """The smallest per-GPU cap under which ``gpus`` alone hold the whole model, or None."""

    def fits(cap: int) -> bool:
        caps = {gpu: min(cap, budgets[gpu]) for gpu in gpus}
        try:
            _greedy(root, list(gpus), caps, {}, no_split, ties)
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


# --------------------------------------------------------------------------- the plan


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
    _check_strategy(strategy)
    sizes = _as_sizes(model_or_sizes, dtype, special_dtypes)
    if no_split_module_classes is None:
        no_split_module_classes = no_split_classes(model_or_sizes) if isinstance(model_or_sizes, nn.Module) else ()
    return plan_device_map(sizes, memory_budgets(max_memory), no_split_module_classes=no_split_module_classes,
                           strategy=strategy)


def plan_device_map(sizes: ModelSizes, budgets: Mapping, *, no_split_module_classes: Iterable[str] = (),
                    strategy: str = "auto") -> DevicePlan:
    """The pure planner behind :func:`infer_device_map`: sizes and budgets in, a plan out.

    Args:
        sizes: what each tensor weighs (:func:`~.sizes.model_sizes` or :meth:`ModelSizes.from_dict`).
        budgets: device -> int bytes or size string, required (nothing is read from the
            machine); devices absent get nothing, except ``"disk"``, unlimited unless listed.
        no_split_module_classes: class names whose instances stay whole.
        strategy: as for :func:`infer_device_map`.

    Returns:
        A :class:`DevicePlan`.

    Raises:
        DeviceMapError: unknown strategy or budget keys, or a model that does not fit even on ``disk``.

    >>> sizes = ModelSizes.from_dict({"a.w": 60, "b.w": 60})
    >>> plan_device_map(sizes, {0: 200, 1: 200}, strategy="sequential").device_map
    {'': 0}
    >>> plan = plan_device_map(sizes, {0: 200, 1: 200})  # "auto": balanced over the GPUs
    >>> plan.device_map, plan.budgets
    ({'a': 0, 'b': 1}, {0: 60, 1: 60})
    """
    _check_strategy(strategy)
    budgets = parse_max_memory(budgets)
    root = _build_tree(sizes)
    no_split = frozenset(no_split_module_classes)
    ties = _index_ties(root, sizes.tied)
    if strategy != "sequential":
        budgets = _balance(root, budgets, no_split, ties, low_zero=strategy == "balanced_low_0")
    budgets = dict(budgets)
    budgets.setdefault("disk", -1)  # -1: unlimited
    devices = list(budgets)
    main = next((d for d in devices if isinstance(d, int) and budgets[d] > 0),
                "mps" if "mps" in budgets else "cpu")
    fill, reserved = _fill_with_reserve(root, devices, budgets, main, no_split, ties)
    device_map = _clean(root, fill.assigned, fill.order)
    budgets = {d: b for d, b in budgets.items() if not (d == "disk" and b < 0)}
    return DevicePlan(device_map, main, budgets, reserved, {d: u for d, u in fill.used.items() if u})


def _fill_with_reserve(root: _Node, devices: List[Device], budgets: Mapping[Device, int], main: Device,
                       no_split: frozenset, ties: _Ties):
    """Fill, then refill keeping free what the plan's offloaded modules need (see the module
    docstring) until the reserve holds. Returns (the last :class:`GreedyResult`, the reserve)."""
    reserved: Dict[Device, int] = {}
    for attempt in range(_MAX_REPLANS + 1):
        fill = _greedy(root, devices, budgets, reserved, no_split, ties)
        needed = _needed_reserve(root, fill.assigned, main)
        if all(reserved.get(d, 0) >= amount for d, amount in needed.items()):
            break
        if attempt == _MAX_REPLANS - 1:  # not settled: reserve for any module, which always holds
            needed = {d: _largest_fetch(root) for d in needed}
        for d, amount in needed.items():
            reserved[d] = max(reserved.get(d, 0), amount)
    return fill, reserved


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


# --------------------------------------------------------------------------- the greedy fill


class GreedyResult(NamedTuple):
    """One pass of the sequential fill (:func:`_greedy`)."""

    assigned: Dict[str, Device]
    """Module or tensor name -> device, for every unit placed whole."""
    order: List[str]
    """The names of ``assigned`` in the order they were placed."""
    used: Dict[Device, int]
    """Bytes placed per device (every device listed, 0 when empty)."""


@dataclass(frozen=True)
class _Ties:
    """Tied tensors, indexed once per plan for the fill.

    Attributes:
        tied_with: tensor name -> the other names of its tensor.
        under: node rank -> the names in ``tied_with`` of the tensors in that subtree.
        covering: a name tied to another -> the nodes whose name is it or one of its
            module prefixes (at a dot boundary; the root covers every name).
    """

    tied_with: Dict[str, List[str]]
    under: Dict[int, List[str]]
    covering: Dict[str, List[_Node]]


def _index_ties(root: _Node, tied: Sequence[Sequence[str]]) -> _Ties:
    tied_with: Dict[str, List[str]] = {}
    for group in tied:
        for name in group:
            tied_with[name] = [other for other in group if other != name]
    under: Dict[int, List[str]] = {}
    covering: Dict[str, List[_Node]] = {}
    if not tied_with:
        return _Ties(tied_with, under, covering)
    by_prefix: Dict[str, List[str]] = {}
    for name in {other for others in tied_with.values() for other in others}:
        prefixes = {name, ""} | {name[:i] for i, char in enumerate(name) if char == "."}
        for prefix in prefixes:
            by_prefix.setdefault(prefix, []).append(name)

    def walk(node: _Node, path: List[_Node]) -> None:
        path.append(node)
        for name in by_prefix.get(node.name, ()):
            covering.setdefault(name, []).append(node)
        if node.is_tensor and node.name in tied_with:
            for holder in path:
                under.setdefault(holder.rank, []).append(node.name)
        for child in node.children:
            walk(child, path)
        path.pop()

    walk(root, [])
    return _Ties(tied_with, under, covering)


class _WorkList:
    """What is still to be placed, in model order (by pre-order rank, which the fill keeps:
    a unit is only ever replaced by its children, in place).

    A heap of ranks with lazy removal: taking the first unit, taking out a tied partner
    anywhere, or splitting one in place costs O(log n), never a scan of the list.
    """

    def __init__(self, nodes: Sequence[_Node]) -> None:
        self._live: Dict[int, _Node] = {node.rank: node for node in nodes}
        self._heap: List[int] = sorted(self._live)

    def __bool__(self) -> bool:
        return bool(self._live)

    def __contains__(self, node: _Node) -> bool:
        return self._live.get(node.rank) is node

    def pop(self) -> _Node:
        """Take the first unit out."""
        while True:
            node = self._live.pop(heapq.heappop(self._heap), None)
            if node is not None:
                return node

    def push(self, nodes: Iterable[_Node]) -> None:
        """Put units (back) in; each goes to its place in model order."""
        for node in nodes:
            self._live[node.rank] = node
            heapq.heappush(self._heap, node.rank)

    def discard(self, node: _Node) -> None:
        """Take a unit out from anywhere (its heap entry is skipped when reached)."""
        del self._live[node.rank]


def _greedy(root: _Node, devices: List[Device], budgets: Mapping[Device, int], reserved: Mapping[Device, int],
            no_split: frozenset, ties: _Ties) -> GreedyResult:
    """One pass of the sequential fill: each unit, with its tied partners, on the current
    device while they fit; a unit that does not fit is split (unless it is no-split) or
    goes to the next device."""
    work = _WorkList([root] if root.is_tensor or not _splittable(root, no_split) else root.children)
    result = GreedyResult({}, [], {d: 0 for d in devices})
    index = 0
    while work:
        node = work.pop()
        device = devices[index]
        capacity = math.inf if budgets[device] < 0 else max(0, budgets[device] - reserved.get(device, 0))
        partners = _tied_partners(node, work, ties)
        need = node.size + sum(p.size for p in partners)
        if result.used[device] + need <= capacity:
            for item in [node] + partners:
                if item is not node:
                    work.discard(item)
                result.assigned[item.name] = device
                result.order.append(item.name)
            result.used[device] += need
            continue
        splittable_partner = next((p for p in partners if _splittable(p, no_split)), None)
        if splittable_partner is not None and result.used[device] + node.size <= capacity:
            work.discard(splittable_partner)
            work.push(splittable_partner.children)
            work.push([node])
            continue
        if _splittable(node, no_split):
            work.push(node.children)
            continue
        index += 1
        if index == len(devices):
            raise DeviceMapError(
                f"the model does not fit in max_memory={dict(budgets)}: {node.name or 'the model'} "
                f"({node.size} bytes) has no room left even on disk; raise the 'disk' budget or drop it"
            )
        work.push([node])
    return result


def _tied_partners(node: _Node, work: _WorkList, ties: _Ties) -> List[_Node]:
    """Work items not yet placed that hold a tensor tied to one under ``node``, or
    (transitively) to one under such an item, in work-list order."""
    if not ties.tied_with:
        return []
    found: Dict[int, _Node] = {}
    frontier = [node]
    while frontier:
        wanted = {other for item in frontier for name in ties.under.get(item.rank, ())
                  for other in ties.tied_with[name]}
        frontier = []
        for name in wanted:
            for holder in ties.covering.get(name, ()):
                if holder.rank not in found and holder in work:
                    found[holder.rank] = holder
                    frontier.append(holder)
    return [found[rank] for rank in sorted(found)]


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


__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "Device",
    "DevicePlan",
    "GreedyResult",
    "ModelSizes",
    "STRATEGIES",
    "available_memory",
    "device_key",
    "device_order",
    "get_balanced_memory",
    "infer_device_map",
    "largest_layer",
    "lookup",
    "memory_budgets",
    "model_sizes",
    "module_sizes",
    "no_split_classes",
    "normalize_map_device",
    "offload_reserve",
    "parse_max_memory",
    "plan_device_map",
    "resolve_device_map",
]
