"""Size accounting: what each tensor and module weighs, and the module tree the planner walks.

Sizes come from a model's parameters and buffers (shapes and dtypes only, so a
model built on the ``meta`` device is enough) or from a plain
``{tensor name: bytes}`` dict. No tensor data is read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn


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
    rank: int = 0  # position in a pre-order walk: model order, a module before everything under it


def _build_tree(sizes: ModelSizes) -> _Node:
    """Modules in model order; a module's direct tensors come before its submodules.
    Every node gets its pre-order ``rank``."""
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

    ranks = itertools.count()

    def total(node: _Node) -> int:
        node.rank = next(ranks)
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


__all__ = [
    "ModelSizes",
    "largest_layer",
    "model_sizes",
    "module_sizes",
    "no_split_classes",
    "offload_reserve",
]
