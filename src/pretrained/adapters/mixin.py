"""`AdapterMixin`: LoRA adapters on a `PreTrainedModel`, with Transformers' PEFT-integration API.

``add_adapter`` / ``load_adapter`` put LoRA layers in (all or nothing: after
an error the model is as it was), ``set_adapter`` / ``disable_adapters`` /
``enable_adapters`` choose what runs, ``get_adapter_state_dict`` and
``save_pretrained`` write PEFT's files, ``merge_and_unload`` folds the
update into the base weights in place and returns the plain model.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from ..logging import get_logger
from ..storage.resolve import HUB_KWARGS
from .config import LoraConfig
from .files import PEFT_PREFIX, adapter_files, adapter_tensors, copy_tensors, match_tensors, read_adapter
from .inject import adapter_modules, find_targets, inject, unwrap
from .layers import LoraLayer, ModulesToSaveWrapper

logger = get_logger(__name__)


class AdapterMixin:
    """Adapter methods of :class:`~pretrained.PreTrainedModel` (Transformers' ``PeftAdapterMixin`` API).

    ``model.peft_config`` maps adapter names to their :class:`LoraConfig`.
    """

    _hf_peft_config_loaded = False

    # ------------------------------------------------------------ adding
    def add_adapter(self, adapter_config: LoraConfig, adapter_name: Optional[str] = None) -> None:
        """Add a fresh LoRA adapter for training and make it the active one.

        Only adapter parameters (and ``modules_to_save`` copies, and biases per
        ``bias``) require grad afterwards; every other parameter is frozen.

        Args:
            adapter_config: a :class:`LoraConfig`.
            adapter_name: default ``"default"``.

        Raises:
            TypeError: not a ``LoraConfig``. ValueError: a name in use, or targets not found.
        """
        if not isinstance(adapter_config, LoraConfig):
            raise TypeError(f"adapter_config should be an instance of LoraConfig. Got {type(adapter_config)} instead.")
        name = adapter_name or "default"
        self._check_new_name(name)
        config = copy.deepcopy(adapter_config)
        config.base_model_name_or_path = self.__dict__.get("name_or_path")
        config.inference_mode = False
        self._inject_adapter(config, name, init="config")
        self.set_adapter(name)

    def load_adapter(self, peft_model_id: Optional[str] = None, adapter_name: Optional[str] = None, *,
                     is_trainable: bool = False, adapter_state_dict: Optional[Dict[str, torch.Tensor]] = None,
                     peft_config: Optional[Union[Dict[str, Any], LoraConfig]] = None,
                     use_safetensors: Optional[bool] = None, adapter_kwargs: Optional[Dict[str, Any]] = None,
                     **hub_kwargs: Any) -> None:
        """Load a saved LoRA adapter (PEFT's files) from a folder or a Hub repo id.

        Args:
            peft_model_id: folder or repo id holding ``adapter_config.json`` and
                ``adapter_model.safetensors`` (or ``.bin``).
            adapter_name: default ``"default"``.
            is_trainable: keep the adapter trainable (default: frozen, inference mode).
            adapter_state_dict: the adapter tensors (PEFT keys) instead of a file;
                then ``peft_config`` (a dict or ``LoraConfig``) or ``peft_model_id`` gives the config.
            use_safetensors / adapter_kwargs / hub_kwargs: which file, and ``cache_dir``, ``revision``, ``token``, ...

        Raises:
            CheckpointNotFoundError: no adapter there. CheckpointError: unknown ``peft_type``,
                keys that match no module, missing keys. WeightsMismatchError: a rank/shape mismatch.
            ValueError: the name is taken. After any error the model is as it was.
        """
        name = adapter_name or "default"
        self._check_new_name(name)
        hub = {k: v for k, v in {**hub_kwargs, **(adapter_kwargs or {})}.items() if k in HUB_KWARGS}
        config, tensors, where, owned = self._adapter_source(peft_model_id, peft_config, adapter_state_dict,
                                                             use_safetensors, hub)
        config.inference_mode = not is_trainable
        injected = self._inject_adapter(config, name, init=None, tensors=tensors, where=where, owned=owned)
        if injected and not self.active_adapters():
            self.set_adapter(name)
        self._set_trainable()

    def _adapter_source(self, peft_model_id, peft_config, adapter_state_dict, use_safetensors, hub):
        if adapter_state_dict is not None:
            if peft_config is None and peft_model_id is None:
                raise ValueError("load_adapter(adapter_state_dict=...) needs peft_config= or peft_model_id= "
                                 "for the adapter config")
            if peft_config is None:
                from .files import find_adapter_config

                peft_config = LoraConfig.from_json_file(find_adapter_config(peft_model_id, **hub)
                                                        or _missing_config(peft_model_id))
            config = peft_config if isinstance(peft_config, LoraConfig) else \
                LoraConfig.from_dict(peft_config, source="peft_config")
            return copy.deepcopy(config), dict(adapter_state_dict), "adapter_state_dict", False
        if peft_model_id is None:
            raise ValueError("You should either pass a `peft_model_id` or a `peft_config` and `adapter_state_dict` "
                             "to load an adapter.")
        config, tensors, path = read_adapter(peft_model_id, use_safetensors=use_safetensors, **hub)
        return config, tensors, path, path.endswith(".safetensors")  # a file's tensors: ours to take over

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"adapter_name must be a non-empty name without dots, got {name!r}")
        if name in self.__dict__.get("peft_config", {}):
            raise ValueError(f"Adapter with name {name} already exists. Please use a different name.")

    def _inject_adapter(self, config: LoraConfig, name: str, *, init, tensors=None, where: str = "",
                        owned: bool = False) -> bool:
        """Find targets, wrap, and fill from ``tensors`` (or initialise); undone completely on any error."""
        lora_names, save_names, config = find_targets(self, config)
        done = inject(self, config, name, lora_names, save_names, init=init)
        try:
            if tensors is not None:
                copy_tensors(match_tensors(adapter_tensors(self, name, config), tensors, config, where), owned=owned)
        except BaseException:
            done.undo()
            raise
        if "peft_config" not in self.__dict__:
            self.peft_config = {}
        self.peft_config[name] = config
        self._hf_peft_config_loaded = True
        self._mark_initialized()
        return bool(done.added)

    # ------------------------------------------------------------ choosing
    def _require_adapters(self) -> Dict[str, LoraConfig]:
        configs = self.__dict__.get("peft_config")
        if not configs:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        return configs

    def set_adapter(self, adapter_name: Union[str, List[str]]) -> None:
        """Make ``adapter_name`` (a name or a list of names) the active adapter(s); the others stop running.

        Active adapters of a config with ``inference_mode=False`` train; inactive ones are frozen.
        """
        configs = self._require_adapters()
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        missing = [n for n in names if n not in configs]
        if missing:
            raise ValueError(f"Adapter(s) {', '.join(missing)} not found. Please pass the correct adapter name(s) "
                             f"among {list(configs)}")
        for _, module in adapter_modules(self):
            module.active_adapters = list(names)
        self._set_trainable()

    def _set_trainable(self) -> None:
        configs = self._require_adapters()
        active = set(self.active_adapters())
        adapter_params = set()
        for _, module in adapter_modules(self):
            tables = [module.lora_A, module.lora_B] if isinstance(module, LoraLayer) else [module.modules_to_save]
            for table in tables:
                for key, sub in table.items():
                    train = key in active and not configs[key].inference_mode
                    for param in sub.parameters():
                        param.requires_grad_(train)
                        adapter_params.add(id(param))
        for param in self.parameters():
            if id(param) not in adapter_params:
                param.requires_grad_(False)
        for key in active:
            if not configs[key].inference_mode and configs[key].bias != "none":
                for tensor in adapter_tensors(self, key, configs[key]).values():
                    tensor.requires_grad_(True)

    def disable_adapters(self) -> None:
        """Run the base model only (merged adapters are taken out again on the next forward)."""
        self._require_adapters()
        for _, module in adapter_modules(self):
            module.disable_adapters = True

    def enable_adapters(self) -> None:
        """Run the active adapters again."""
        self._require_adapters()
        for _, module in adapter_modules(self):
            module.disable_adapters = False

    def active_adapters(self) -> List[str]:
        """The names of the active adapters."""
        self._require_adapters()
        for _, module in adapter_modules(self):
            return list(module.active_adapters)
        return []

    def get_adapter_state_dict(self, adapter_name: Optional[str] = None,
                               state_dict: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """The adapter's tensors under PEFT's names without prefix (``model.layers.0.self_attn.q_proj.lora_A.weight``).

        Args:
            adapter_name: default: the first active adapter.
            state_dict: take the values from this ``model.state_dict()``-like mapping instead.
        """
        configs = self._require_adapters()
        name = adapter_name or self.active_adapters()[0]
        if name not in configs:
            raise ValueError(f"Adapter with name {name} not found among {list(configs)}")
        live = adapter_tensors(self, name, configs[name])
        if state_dict is None:
            return {k: v.detach() for k, v in live.items()}
        by_id = {id(t): k for k, t in self.state_dict(keep_vars=True).items()}
        return {k: state_dict[by_id[id(v)]] for k, v in live.items() if by_id.get(id(v)) in state_dict}

    # ------------------------------------------------------------ removing, merging
    def delete_adapter(self, adapter_names: Union[str, List[str]]) -> None:
        """Remove adapter(s); wrappers left without adapters are replaced by their original modules."""
        configs = self._require_adapters()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        missing = [n for n in names if n not in configs]
        if missing:
            raise ValueError(f"The following adapter(s) are not present and cannot be deleted: {', '.join(missing)}")
        for _, module in adapter_modules(self):
            for name in names:
                if isinstance(module, LoraLayer) and name in module.merged_adapters:
                    raise ValueError(f"adapter {name} is merged into the weights; call unmerge_adapter() first")
                module.delete_adapter(name)
        for name in names:
            configs.pop(name)
        unwrap_empty(self)
        if not configs:
            del self.peft_config
            self._hf_peft_config_loaded = False
        else:
            self.set_adapter([n for n in self.active_adapters() if n in configs] or next(iter(configs)))

    def merge_adapter(self, adapter_names: Optional[List[str]] = None) -> None:
        """Fold the active adapters (or ``adapter_names``) into the base weights, keeping the layers (undo with
        :meth:`unmerge_adapter`)."""
        self._require_adapters()
        for _, module in adapter_modules(self):
            if isinstance(module, LoraLayer):
                module.merge(adapter_names)

    def unmerge_adapter(self) -> None:
        """Take merged adapters back out of the base weights."""
        self._require_adapters()
        for _, module in adapter_modules(self):
            if isinstance(module, LoraLayer):
                module.unmerge()

    def merge_and_unload(self, adapter_names: Optional[List[str]] = None) -> nn.Module:
        """Fold the active adapters (or ``adapter_names``) into the base weights in place, remove every adapter
        layer, and return the model, now plain (no second copy of any weight is made).

        Disabled adapters are not merged (as PEFT). The active adapter's ``modules_to_save`` copies replace
        the originals.
        """
        configs = self._require_adapters()
        for _, module in adapter_modules(self):
            if isinstance(module, LoraLayer) and not module.disable_adapters:
                module.merge(adapter_names)
        unwrap(self, lambda m: m.base_layer if isinstance(m, LoraLayer) else m.current())
        configs.clear()
        del self.peft_config
        self._hf_peft_config_loaded = False
        return self

    def unload(self) -> nn.Module:
        """Remove every adapter layer without merging; returns the base model."""
        self._require_adapters()
        self.unmerge_adapter()
        unwrap(self, lambda m: m.base_layer if isinstance(m, LoraLayer) else m.original_module)
        del self.peft_config
        self._hf_peft_config_loaded = False
        return self

    # ------------------------------------------------------------ saving
    def _adapter_save_files(self, *, save_peft_format: bool, safe_serialization: bool,
                            save_function=torch.save) -> Dict[str, bytes]:
        """The files ``save_pretrained`` writes for a model with adapters (the active one only)."""
        active = self.active_adapters()
        if len(active) > 1:
            raise ValueError("Multiple active adapters detected, saving multiple active adapters is not supported "
                             "yet. You can save adapters separately one by one by iteratively calling "
                             "`model.set_adapter(adapter_name)` then `model.save_pretrained(...)`")
        tensors = self.get_adapter_state_dict(active[0])
        if save_peft_format:
            tensors = {PEFT_PREFIX + k: v for k, v in tensors.items()}
        return adapter_files(self.peft_config[active[0]], tensors, safe_serialization=safe_serialization,
                             save_function=save_function)


def _missing_config(where) -> str:
    from ..errors import CheckpointNotFoundError

    raise CheckpointNotFoundError(f"adapter_config.json not found in {where}")


def unwrap_empty(model: nn.Module) -> None:
    """Replace wrappers that hold no adapter any more by their original modules."""
    def empty(module) -> bool:
        return not (module.lora_A if isinstance(module, LoraLayer) else module.modules_to_save)

    from .inject import _parent

    for path, module in reversed(adapter_modules(model)):
        if empty(module):
            parent, attr = _parent(model, path)
            setattr(parent, attr, module.base_layer if isinstance(module, LoraLayer) else module.original_module)


__all__ = ["AdapterMixin"]
