"""Which modules an adapter targets, and putting its layers in (all or nothing) and out again.

Matching follows PEFT 0.21: a list of ``target_modules`` matches a module
whose name equals an entry or ends with ``.<entry>``; a string is a regex that
must match the whole name; ``"all-linear"`` takes every Linear / Conv1D except
the output layer (and, for ``task_type="SEQ_CLS"`` without an output layer,
the ``score`` / ``classifier`` head). ``modules_to_save`` entries match
any module name that ends with them and are never LoRA targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..logging import get_logger
from .config import INCLUDE_LINEAR, LoraConfig
from .layers import LoraLayer, ModulesToSaveWrapper, linear_features

logger = get_logger(__name__)

_SEQ_CLS_HEADS = ("score", "classifier")


def _wrapped_inside(names: List[str], wrappers: List[str]) -> List[str]:
    """``names`` minus those strictly inside one of the ``wrappers`` (adapter internals)."""
    prefixes = tuple(w + "." for w in wrappers)
    return [n for n in names if not n.startswith(prefixes)] if prefixes else names


def _candidate_modules(model: nn.Module) -> Dict[str, nn.Module]:
    modules = dict(model.named_modules())
    wrappers = [n for n, m in modules.items() if isinstance(m, (LoraLayer, ModulesToSaveWrapper)) and n]
    return {n: modules[n] for n in _wrapped_inside(list(modules), wrappers)}


def _all_linear(model: nn.Module, modules: Dict[str, nn.Module], config: LoraConfig) -> List[str]:
    names = [n for n, m in modules.items() if n and (isinstance(m, LoraLayer) or linear_features(m) is not None)]
    excluded = set()
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        excluded |= {n for n, m in modules.items() if m is output}
    elif config.task_type == "SEQ_CLS":
        for head_name in _SEQ_CLS_HEADS:
            head = getattr(model, head_name, None)
            if head is not None:
                excluded |= {n for n, m in modules.items() if m is head}
                break
    return [n for n in names if n not in excluded]


def _matches_list(key: str, entries) -> bool:
    return key in entries or any(key.endswith(f".{entry}") for entry in entries)


def _layer_index_ok(key: str, config: LoraConfig) -> bool:
    indices = config.layers_to_transform
    if indices is None or (isinstance(indices, list) and not indices):
        return True
    patterns = config.layers_pattern
    match = None
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == indices if isinstance(indices, int) else index in indices


def _is_target(key: str, config: LoraConfig, targets) -> bool:
    excluded = config.exclude_modules
    if excluded:
        if isinstance(excluded, str) and re.fullmatch(excluded, key):
            return False
        if not isinstance(excluded, str) and _matches_list(key, excluded):
            return False
    if config.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in config.modules_to_save):
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    return _matches_list(key, targets) and _layer_index_ok(key, config)


def find_targets(model: nn.Module, config: LoraConfig) -> Tuple[List[str], List[str], LoraConfig]:
    """The module names the adapter wraps with LoRA and with modules-to-save.

    Returns:
        ``(lora_names, save_names, config)``; ``config`` is a copy whose
        ``"all-linear"`` is expanded to the names (PEFT saves it that way).

    Raises:
        ValueError: ``target_modules`` missing or matching nothing, or a target
            that is not a Linear / Conv1D (named).
    """
    import copy

    config = copy.deepcopy(config)
    modules = _candidate_modules(model)
    targets = config.target_modules
    if targets is None:
        raise ValueError("LoraConfig.target_modules is not set: pass the module names (e.g. ['q_proj', 'v_proj']), "
                         "a regex, or 'all-linear'")
    if isinstance(targets, str) and targets.lower() == INCLUDE_LINEAR:
        targets = config.target_modules = sorted(_all_linear(model, modules, config))
    lora_names = [n for n in modules if n and _is_target(n, config, targets)]
    if not lora_names and targets and not config.modules_to_save:
        raise ValueError(f"Target modules {config.target_modules} not found in the base model "
                         f"({type(model).__name__}). Please check the target modules and try again.")
    for name in lora_names:
        module = modules[name]
        if not isinstance(module, LoraLayer) and linear_features(module) is None:
            raise ValueError(f"Target module {name} ({type(module).__name__}) is not supported: LoRA here wraps "
                             "nn.Linear, Conv1D and quantized linear modules only")
    save_names = []
    for entry in config.modules_to_save or []:
        found = [n for n in modules if n and n.endswith(entry) and n not in save_names]
        if not found:
            raise ValueError(f"modules_to_save entry {entry!r} matches no module of {type(model).__name__}")
        save_names += found
    return lora_names, save_names, config


@dataclass
class Injection:
    """What an injection changed, so that it can be undone exactly."""

    replaced: List[Tuple[nn.Module, str, nn.Module]] = field(default_factory=list)  # (parent, attr, original)
    added: List[Tuple[nn.Module, str]] = field(default_factory=list)                 # (wrapper, adapter name)

    def undo(self) -> None:
        for wrapper, name in reversed(self.added):
            wrapper.delete_adapter(name)
        for parent, attr, original in reversed(self.replaced):
            setattr(parent, attr, original)
        self.replaced.clear()
        self.added.clear()


def _parent(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _device_dtype(model: nn.Module, name: str, base: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Where the adapter of module ``name`` lives: with the base weight (its execution device when offloaded)."""
    weight = base.weight
    dtype = weight.dtype if weight.dtype.is_floating_point else getattr(base, "compute_dtype", torch.float32)
    if weight.device.type != "meta":
        return weight.device, dtype
    placement = model.__dict__.get("_placement")
    hook = getattr(placement, "hooks", {}).get(name) if placement is not None else None
    return (hook.execution_device if hook is not None else torch.device("cpu")), dtype


def inject(model: nn.Module, config: LoraConfig, adapter_name: str, lora_names: List[str],
           save_names: List[str], *, init="config") -> Injection:
    """Wrap ``lora_names`` with LoRA layers and ``save_names`` with modules-to-save copies; all or nothing.

    ``init``: ``"config"`` initialises as ``config.init_lora_weights`` says; ``None`` leaves the
    factors empty (a load fills them).

    Raises:
        Whatever a step raises, after undoing every change made so far.
    """
    init = config.init_lora_weights if init == "config" else init
    done = Injection()
    try:
        for name in lora_names:
            _add_lora(model, name, config, adapter_name, init, done)
        for name in save_names:
            _add_saved(model, name, adapter_name, done)
    except BaseException:
        done.undo()
        raise
    return done


def _add_lora(model: nn.Module, name: str, config: LoraConfig, adapter_name: str, init,
              done: Injection) -> None:
    module = model.get_submodule(name)
    if not isinstance(module, LoraLayer):
        _, _, conv1d = linear_features(module)
        if config.fan_in_fan_out != conv1d:
            logger.warning("fan_in_fan_out is set to %s but the target module %s is %s. Setting fan_in_fan_out to %s.",
                           config.fan_in_fan_out, name, "`Conv1D`" if conv1d else "`torch.nn.Linear`", conv1d)
            config.fan_in_fan_out = conv1d
        parent, attr = _parent(model, name)
        wrapper = LoraLayer(module, fan_in_fan_out=conv1d)
        setattr(parent, attr, wrapper)
        done.replaced.append((parent, attr, module))
        module = wrapper
    r, alpha = config.rank_and_alpha(name)
    device, dtype = _device_dtype(model, name, module.base_layer)
    module.update_layer(adapter_name, r=r, lora_alpha=alpha, lora_dropout=config.lora_dropout,
                        use_rslora=config.use_rslora, init_lora_weights=init,
                        device=device, dtype=dtype)
    done.added.append((module, adapter_name))


def _add_saved(model: nn.Module, name: str, adapter_name: str, done: Injection) -> None:
    module = model.get_submodule(name)
    if not isinstance(module, ModulesToSaveWrapper):
        parent, attr = _parent(model, name)
        wrapper = ModulesToSaveWrapper(module)
        setattr(parent, attr, wrapper)
        done.replaced.append((parent, attr, module))
        module = wrapper
    module.update(adapter_name)
    done.added.append((module, adapter_name))


def adapter_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every LoRA layer and modules-to-save wrapper, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LoraLayer, ModulesToSaveWrapper))]


def unwrap(model: nn.Module, choose: Callable[[nn.Module], nn.Module]) -> None:
    """Replace every adapter wrapper by ``choose(wrapper)`` (its base, or the active saved copy)."""
    for name, module in reversed(adapter_modules(model)):
        parent, attr = _parent(model, name)
        setattr(parent, attr, choose(module))


__all__ = ["Injection", "adapter_modules", "find_targets", "inject", "unwrap"]
