"""Auto classes: pick the config and model class from ``config.json``'s ``model_type``.

Architectures register by table (``model_type`` -> module and class names),
imported only when used.  ``AutoConfig.register`` / ``AutoModel.register`` add
user classes; checkpoints with custom code (``auto_map``) load only with
``trust_remote_code=True``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import types
from typing import Any, Dict, List, Optional, Tuple, Type

from .configuration import LoadedConfig, PretrainedConfig
from .errors import CheckpointError, RemoteCodeError
from .modeling.custom_code import AUTO_MODEL_CLASSES
from .storage.resolve import HUB_KWARGS

# model_type -> (module, config class)
_CONFIGS: Dict[str, Tuple[str, str]] = {
    "bert": ("pretrained.models.bert", "BertConfig"),
    "gpt2": ("pretrained.models.gpt2", "GPT2Config"),
    "llama": ("pretrained.models.llama", "LlamaConfig"),
    "mistral": ("pretrained.models.mistral", "MistralConfig"),
    "qwen2": ("pretrained.models.qwen2", "Qwen2Config"),
    "qwen3": ("pretrained.models.qwen3", "Qwen3Config"),
    "gemma": ("pretrained.models.gemma", "GemmaConfig"),
    "t5": ("pretrained.models.t5", "T5Config"),
}
# auto class -> model_type -> model class name (in the same module as the config, or "module:Class")
_DECODERS = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma"}
_BERT_HEADS = "pretrained.models.bert_heads:"
_T5_HEADS = "pretrained.models.t5_heads:"
_MODELS: Dict[str, Dict[str, str]] = {
    "AutoModel": {"bert": "BertModel", "gpt2": "GPT2Model", "t5": _T5_HEADS + "T5Model",
                  **{t: f"{n}Model" for t, n in _DECODERS.items()}},
    "AutoModelForCausalLM": {"gpt2": "GPT2LMHeadModel", **{t: f"{n}ForCausalLM" for t, n in _DECODERS.items()}},
    "AutoModelForMaskedLM": {"bert": "BertForMaskedLM"},
    "AutoModelForSeq2SeqLM": {"t5": _T5_HEADS + "T5ForConditionalGeneration"},
    "AutoModelForSequenceClassification": {
        "bert": _BERT_HEADS + "BertForSequenceClassification", "gpt2": "GPT2ForSequenceClassification",
        **{t: f"{n}ForSequenceClassification" for t, n in _DECODERS.items()}},
    "AutoModelForTokenClassification": {"bert": _BERT_HEADS + "BertForTokenClassification"},
    "AutoModelForQuestionAnswering": {"bert": _BERT_HEADS + "BertForQuestionAnswering"},
}
_REGISTERED_CONFIGS: Dict[str, Type[PretrainedConfig]] = {}
# keyed by the table the modeling layer checks register_for_auto_class against (one list of auto class names)
_REGISTERED_MODELS: Dict[str, Dict[type, type]] = {name: {} for name in AUTO_MODEL_CLASSES}


def _import_attr(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{name} is not available in this version of pretrained ({err})") from err


def config_class_for(model_type: str) -> Type[PretrainedConfig]:
    if model_type in _REGISTERED_CONFIGS:
        return _REGISTERED_CONFIGS[model_type]
    if model_type in _CONFIGS:
        return _import_attr(*_CONFIGS[model_type])
    known = sorted(set(_CONFIGS) | set(_REGISTERED_CONFIGS))
    raise ValueError(f"Unrecognized model_type {model_type!r}; pretrained knows {known}")


# ------------------------------------------------------------------ built-in lookup (public)


def builtin_model_types() -> List[str]:
    """The ``model_type`` values pretrained implements itself (not those added with ``register``).

    >>> "llama" in builtin_model_types()
    True
    """
    return sorted(_CONFIGS)


def auto_class_name(auto_class: str, model_type: str) -> Optional[str]:
    """Name of the built-in class that ``auto_class`` builds for ``model_type``; ``None`` when none.

    Args:
        auto_class: the auto class's name, e.g. ``"AutoModelForCausalLM"``.
        model_type: ``config.model_type``.

    Raises:
        KeyError: ``auto_class`` is not an auto class of pretrained.

    >>> auto_class_name("AutoModelForCausalLM", "llama")
    'LlamaForCausalLM'
    >>> auto_class_name("AutoModelForSeq2SeqLM", "bert") is None
    True
    """
    return _MODELS[auto_class].get(model_type, "").rpartition(":")[2] or None


def builtin_class(model_type: str, class_name: str) -> type:
    """The built-in class ``class_name`` of architecture ``model_type``, imported now from
    the module that defines it (BERT's heads from ``models/bert_heads.py``).

    Raises:
        ValueError: ``model_type`` is not built in, or its modules have no ``class_name``.

    >>> builtin_class("bert", "BertForSequenceClassification").__module__
    'pretrained.models.bert_heads'
    """
    if model_type not in _CONFIGS:
        raise ValueError(f"model_type {model_type!r} is not an architecture pretrained implements; "
                         f"it implements {sorted(_CONFIGS)}")
    module = _CONFIGS[model_type][0]
    for table in _MODELS.values():
        where, _, name = table.get(model_type, "").rpartition(":")
        if name == class_name and where:
            module = where
    return _import_attr(module, class_name)


# ------------------------------------------------------------------ custom code


def _load_custom_class(name_or_path, reference: str, hub: Dict[str, Any]):
    """Import ``module.ClassName`` from the checkpoint's own folder, as a package
    so the file's relative imports work."""
    from .storage.resolve import resolve_file

    if not isinstance(reference, str):
        raise CheckpointError(f"auto_map entry {reference!r} is not of the form 'module.ClassName'")
    if "--" in reference:  # "repo--module.Class": code in another repo
        name_or_path, reference = reference.split("--", 1)
    module_name, _, class_name = reference.rpartition(".")
    if not module_name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module_name):
        raise CheckpointError(f"auto_map entry {reference!r} is not of the form 'module.ClassName'")
    path = resolve_file(name_or_path, f"{module_name}.py", **hub)
    folder = os.path.dirname(os.path.abspath(path))
    package = "pretrained_modules._" + hashlib.sha256(folder.encode()).hexdigest()[:16]
    if "pretrained_modules" not in sys.modules:
        root = types.ModuleType("pretrained_modules")
        root.__path__ = []
        sys.modules["pretrained_modules"] = root
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [folder]
        sys.modules[package] = pkg
    module = importlib.import_module(f"{package}.{module_name}")
    try:
        return getattr(module, class_name)
    except AttributeError as err:
        raise CheckpointError(f"{path} defines no class {class_name!r} (named by auto_map)") from err


def _require_trust(name_or_path, trust_remote_code: bool) -> None:
    if not trust_remote_code:
        raise RemoteCodeError(
            f"The checkpoint at {name_or_path} contains custom code which must be executed to load it. "
            "Read that code, then pass the argument `trust_remote_code=True` to allow it to run."
        )


# ------------------------------------------------------------------ AutoConfig


class AutoConfig:
    """``AutoConfig.from_pretrained(path)`` returns the right config subclass."""

    def __init__(self) -> None:
        raise EnvironmentError("AutoConfig is instantiated with AutoConfig.from_pretrained(...) or for_model(...)")

    @staticmethod
    def register(model_type: str, config_class: Type[PretrainedConfig], exist_ok: bool = False) -> None:
        if config_class.model_type and config_class.model_type != model_type:
            raise ValueError(
                f"{config_class.__name__}.model_type is {config_class.model_type!r}, not {model_type!r}"
            )
        if not exist_ok and (model_type in _CONFIGS or model_type in _REGISTERED_CONFIGS):
            raise ValueError(f"model_type {model_type!r} is already registered")
        _REGISTERED_CONFIGS[model_type] = config_class

    @staticmethod
    def for_model(model_type: str, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return config_class_for(model_type)(*args, **kwargs)

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, *, trust_remote_code: bool = False, **kwargs: Any):
        """Read ``config.json`` and build the config class its ``model_type`` names.

        Raises:
            CheckpointNotFoundError: no config there.
            ValueError: an unknown ``model_type``.
            RemoteCodeError: the config needs custom code and ``trust_remote_code`` is False.
        """
        return_unused = kwargs.pop("return_unused_kwargs", False)
        config, unused, _ = AutoConfig._load_pretrained(pretrained_model_name_or_path,
                                                        trust_remote_code=trust_remote_code, **kwargs)
        return (config, unused) if return_unused else config

    @staticmethod
    def _load_pretrained(pretrained_model_name_or_path, *, trust_remote_code: bool = False,
                         **kwargs: Any) -> LoadedConfig:
        """:meth:`from_pretrained`, returning ``(config, unused, raw)`` (see
        :class:`~pretrained.configuration.LoadedConfig`)."""
        config_dict, remaining = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **dict(kwargs))
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        overrides = {k: v for k, v in kwargs.items() if k not in HUB_KWARGS}
        auto_map = config_dict.get("auto_map") or {}
        if not isinstance(auto_map, dict):
            raise CheckpointError(f"config.json of {pretrained_model_name_or_path}: 'auto_map' must be an object, "
                                  f"got {type(auto_map).__name__}")
        if "AutoConfig" in auto_map:
            _require_trust(pretrained_model_name_or_path, trust_remote_code)
            config_class = _load_custom_class(pretrained_model_name_or_path, auto_map["AutoConfig"], hub)
        elif "model_type" in config_dict:
            model_type = config_dict["model_type"]
            try:
                if not isinstance(model_type, str):
                    raise ValueError(f"'model_type' must be a string, got {type(model_type).__name__}")
                config_class = config_class_for(model_type)
            except ValueError as err:
                raise CheckpointError(f"config.json of {pretrained_model_name_or_path}: {err}") from err
        else:
            raise CheckpointError(
                f"config.json of {pretrained_model_name_or_path} has no 'model_type' key; pretrained knows "
                f"{sorted(set(_CONFIGS) | set(_REGISTERED_CONFIGS))}"
            )
        config, unused = config_class._from_file_dict(config_dict, os.fspath(pretrained_model_name_or_path),
                                                      **overrides)
        config.name_or_path = os.fspath(pretrained_model_name_or_path)
        return LoadedConfig(config, unused, config_dict)


# ------------------------------------------------------------------ AutoModel*


class _BaseAutoModel:
    _auto_name = ""

    def __init__(self) -> None:
        raise EnvironmentError(
            f"{type(self).__name__} is instantiated with {type(self).__name__}.from_pretrained(...) "
            "or .from_config(config)"
        )

    @classmethod
    def register(cls, config_class: type, model_class: type, exist_ok: bool = False) -> None:
        registry = _REGISTERED_MODELS[cls._auto_name]
        if getattr(model_class, "config_class", None) not in (None, config_class):
            raise ValueError(
                f"{model_class.__name__}.config_class is {model_class.config_class.__name__}, "
                f"not {config_class.__name__}"
            )
        if config_class in registry and not exist_ok:
            raise ValueError(f"{config_class.__name__} is already registered with {cls.__name__}")
        registry[config_class] = model_class

    @classmethod
    def _model_class(cls, config: PretrainedConfig):
        registry = _REGISTERED_MODELS[cls._auto_name]
        if type(config) in registry:
            return registry[type(config)]
        table = _MODELS[cls._auto_name]
        if config.model_type in table and config.model_type in _CONFIGS:
            module, _, name = table[config.model_type].rpartition(":")
            return _import_attr(module or _CONFIGS[config.model_type][0], name)
        raise ValueError(
            f"Unrecognized configuration class {type(config).__name__} for {cls.__name__}; it supports "
            f"model types {sorted(table)}"
        )

    @classmethod
    def from_config(cls, config: PretrainedConfig, torch_dtype=None, attn_implementation=None,
                    trust_remote_code: bool = False, **kwargs: Any):
        """A freshly initialised model for ``config``."""
        auto_map = getattr(config, "auto_map", None) or {}
        if cls._auto_name in auto_map:
            _require_trust(config.name_or_path, trust_remote_code)
            model_class = _load_custom_class(config.name_or_path, auto_map[cls._auto_name], {})
        else:
            model_class = cls._model_class(config)
        return model_class._from_config(config, torch_dtype=torch_dtype, attn_implementation=attn_implementation,
                                        **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, config=None,
                        trust_remote_code: bool = False, **kwargs: Any):
        """Load the model class that the checkpoint's config names (see
        :meth:`pretrained.PreTrainedModel.from_pretrained` for the keywords)."""
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        from .modeling.load_config import adopt_config, is_foreign_config

        if is_foreign_config(config):  # a Transformers config object: ours of its model_type
            config = adopt_config(config, config_class_for(str(getattr(config, "model_type", ""))), owner=cls.__name__)
        beside_weights = config is None  # then the config is read from where the weights are
        if config is None:  # an adapter folder: the config of the base model it names
            from .adapters.entry import base_of_adapter

            config = base_of_adapter(pretrained_model_name_or_path, hub)
        if not isinstance(config, PretrainedConfig):
            config_kwargs = {k: v for k, v in kwargs.items()
                             if k not in hub and k not in _MODEL_LOAD_KEYS}
            config, unused, raw = AutoConfig._load_pretrained(
                config if config is not None else pretrained_model_name_or_path,
                trust_remote_code=trust_remote_code, **hub, **config_kwargs,
            )
            kwargs = {k: v for k, v in kwargs.items() if k not in config_kwargs or k in unused}
            if beside_weights:  # from_pretrained checks it against the folder the weights come from
                kwargs["_config_read"] = (raw, {k: v for k, v in config_kwargs.items() if k not in unused})
        auto_map = getattr(config, "auto_map", None) or {}
        if cls._auto_name in auto_map:
            _require_trust(pretrained_model_name_or_path, trust_remote_code)
            model_class = _load_custom_class(pretrained_model_name_or_path, auto_map[cls._auto_name], hub)
        else:
            model_class = cls._model_class(config)
        return model_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)


_MODEL_LOAD_KEYS = frozenset({
    "ignore_mismatched_sizes", "use_safetensors", "torch_dtype", "dtype", "device_map", "max_memory",
    "offload_folder", "offload_state_dict", "low_cpu_mem_usage", "variant", "output_loading_info",
    "attn_implementation", "state_dict", "_fast_init", "proxies", "mirror", "from_tf", "from_flax",
    "resume_download", "_commit_hash", "offload_buffers", "verify",
})


class AutoModel(_BaseAutoModel):
    """The base model (no head) of any supported architecture."""

    _auto_name = "AutoModel"


class AutoModelForCausalLM(_BaseAutoModel):
    """Causal language models: GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma."""

    _auto_name = "AutoModelForCausalLM"


class AutoModelForMaskedLM(_BaseAutoModel):
    """Masked language models: BERT."""

    _auto_name = "AutoModelForMaskedLM"


class AutoModelForSeq2SeqLM(_BaseAutoModel):
    """Encoder-decoder language models: T5."""

    _auto_name = "AutoModelForSeq2SeqLM"


class AutoModelForSequenceClassification(_BaseAutoModel):
    """Sequence classifiers: BERT, GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma."""

    _auto_name = "AutoModelForSequenceClassification"


class AutoModelForTokenClassification(_BaseAutoModel):
    """Token classifiers: BERT."""

    _auto_name = "AutoModelForTokenClassification"


class AutoModelForQuestionAnswering(_BaseAutoModel):
    """Extractive question answering: BERT."""

    _auto_name = "AutoModelForQuestionAnswering"
