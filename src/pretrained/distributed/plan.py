"""Tensor-parallel plans: which modules are split, and how each parameter is cut.

A plan maps module-name patterns (``*`` = one name segment, as in
``"layers.*.self_attn.q_proj"``) to a style:

- ``"colwise"``: the output features are split; the input is replicated.
- ``"rowwise"``: the input features are split; the outputs are summed (all-reduce).
- ``"packed_colwise"``: ``"colwise"`` for a fused projection whose output is
  three equal blocks (GPT-2's ``c_attn``: q, k, v); each block is split on its own.

Architectures declare theirs as ``base_model_tp_plan`` on the config class
(relative to the base model); ``tp_plan="auto"`` uses it. ``nn.Linear`` keeps
``weight`` as (out, in); GPT-2's ``Conv1D`` as (in, out), so its dims swap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from torch import nn

__all__ = ["STYLES", "ParamCut", "resolve_plan", "plan_cuts", "check_divisible", "heads_to_divide", "divide_heads"]

STYLES = ("colwise", "rowwise", "packed_colwise")
_HEAD_ATTRS = ("num_heads", "num_key_value_heads", "num_attention_heads", "all_head_size", "split_size")


@dataclass(frozen=True)
class ParamCut:
    """How one parameter is split over ``world`` ranks.

    Attributes:
        dim: the split dimension (``None``: replicated on every rank).
        parts: equal blocks along ``dim`` split one by one (3 for fused q/k/v).
        style: the module's plan style.
    """

    dim: Optional[int]
    parts: int
    style: str

    def ranges(self, size: int, rank: int, world: int) -> List[Tuple[int, int]]:
        """This rank's ``[start, stop)`` ranges of a dim of ``size`` (one per block)."""
        block = size // self.parts
        share = block // world
        return [(p * block + rank * share, p * block + (rank + 1) * share) for p in range(self.parts)]


def resolve_plan(model: nn.Module, tp_plan) -> Dict[str, str]:
    """The plan as ``{pattern relative to model: style}``.

    Args:
        model: the model about to be split.
        tp_plan: ``"auto"`` (the config's ``base_model_tp_plan``) or a dict of
            ``{pattern: style}`` relative to ``model``.

    Raises:
        ValueError: an unknown ``tp_plan``, an architecture without a plan, an unknown style.
    """
    if isinstance(tp_plan, str):
        if tp_plan != "auto":
            raise ValueError(f'tp_plan must be "auto" or a dict of module pattern -> style, got {tp_plan!r}')
        base = getattr(type(model.config), "base_model_tp_plan", None) or getattr(model.config, "base_model_tp_plan",
                                                                                   None)
        if not base:
            raise ValueError(f'tp_plan="auto": {type(model.config).__name__} declares no base_model_tp_plan; '
                             "pass tp_plan= as a dict of module pattern -> style")
        prefix = getattr(model, "base_model_prefix", "") or ""
        has_base = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)
        plan = {(f"{prefix}.{k}" if has_base else k): v for k, v in base.items()}
    elif isinstance(tp_plan, Mapping):
        plan = dict(tp_plan)
    else:
        raise ValueError(f'tp_plan must be "auto" or a dict of module pattern -> style, got {type(tp_plan).__name__}')
    for pattern, style in plan.items():
        if style not in STYLES:
            raise ValueError(f"tp_plan entry {pattern!r}: unknown style {style!r}; use one of {list(STYLES)}")
    return plan


def _pattern(pattern: str) -> "re.Pattern[str]":
    return re.compile(re.escape(pattern).replace(r"\*", r"[^.]+"))


def _transposed(module: nn.Module, name: str) -> bool:
    """True for GPT-2's Conv1D (weight stored (in, out)); False for nn.Linear."""
    if isinstance(module, nn.Linear):
        return False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx"):
        return True
    raise ValueError(f"tp_plan: module {name!r} is a {type(module).__name__}; only nn.Linear and Conv1D can be split")


def plan_cuts(model: nn.Module, plan: Mapping[str, str]) -> Dict[str, Tuple[str, ParamCut]]:
    """``{parameter name: (module name, cut)}`` for every parameter of a planned module.

    Raises:
        ValueError: a pattern matching no module (named), or a module that is not Linear/Conv1D.
    """
    modules = dict(model.named_modules())
    cuts: Dict[str, Tuple[str, ParamCut]] = {}
    for pattern, style in plan.items():
        regex = _pattern(pattern)
        matched = [name for name in modules if name and regex.fullmatch(name)]
        if not matched:
            raise ValueError(f"tp_plan entry {pattern!r} names no module of {type(model).__name__}")
        for name in matched:
            module = modules[name]
            transposed = _transposed(module, name)
            out_dim, in_dim = (1, 0) if transposed else (0, 1)
            parts = 3 if style == "packed_colwise" else 1
            weight_dim = in_dim if style == "rowwise" else out_dim
            entries = {"weight": ParamCut(weight_dim, parts, style)}
            if getattr(module, "bias", None) is not None:
                entries["bias"] = ParamCut(None if style == "rowwise" else 0, parts, style)
            for attr, cut in entries.items():
                cuts[f"{name}.{attr}"] = (name, cut)
    return cuts


def check_divisible(model: nn.Module, cuts: Mapping[str, Tuple[str, ParamCut]], world: int) -> None:
    """Raise ValueError naming the first split dimension ``world`` does not divide."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, (_, cut) in cuts.items():
        size = params[name].shape[cut.dim] if cut.dim is not None else 0
        if size % (cut.parts * world):
            raise ValueError(f"tp_plan: {name} has {size} features on dim {cut.dim}, which "
                             f"{cut.parts * world} (world size {world} x {cut.parts} blocks) does not divide")


def heads_to_divide(model: nn.Module, cuts: Mapping[str, Tuple[str, ParamCut]]) -> Dict[str, List[str]]:
    """``{module name: [head attributes]}`` of the attention modules whose projections are split."""
    split_modules = {module for module, cut in cuts.values() if cut.style != "rowwise"}
    found: Dict[str, List[str]] = {}
    for name, module in model.named_modules():
        attrs = [a for a in _HEAD_ATTRS if isinstance(getattr(module, a, None), int)]
        children = {f"{name}.{child}" if name else child for child, _ in module.named_children()}
        if attrs and children & split_modules:
            found[name] = attrs
    return found


def divide_heads(model: nn.Module, heads: Mapping[str, List[str]], world: int) -> None:
    """Divide each attention module's head counts (and head-sized widths) by ``world``.

    Raises:
        ValueError: ``world`` does not divide a head count (named with its module).
    """
    modules = dict(model.named_modules())
    for name, attrs in heads.items():
        for attr in attrs:
            value = getattr(modules[name], attr)
            if value % world:
                raise ValueError(f"tensor parallel over {world} ranks: {name}.{attr} = {value} is not divisible by "
                                 f"the world size {world}")
    for name, attrs in heads.items():
        for attr in attrs:
            setattr(modules[name], attr, getattr(modules[name], attr) // world)
