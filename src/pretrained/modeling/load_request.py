"""What one ``from_pretrained`` call asks for, parsed once into a frozen object.

Every keyword ``from_pretrained`` takes is either a field here, accepted for
compatibility with no effect (:data:`NO_EFFECT_KEYWORDS`), refused
(``from_tf``/``from_flax``), or left in :attr:`LoadRequest.extra`: those are
config overrides (when ``config`` is not an object), then arguments of the
model's ``__init__``; whatever neither takes is refused by name
(:func:`check_model_kwargs`).

Example:
    >>> request = LoadRequest.parse(None, (), {"torch_dtype": "float16", "revision": "main"},
    ...                             {"hidden_dropout_prob": 0.0, "offload_buffers": True})
    >>> request.dtype, dict(request.extra), request.hub["revision"], request.offload_buffers
    (torch.float16, {'hidden_dropout_prob': 0.0}, 'main', True)
"""

from __future__ import annotations

import dataclasses
import inspect
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

from ..adapters.entry import split_adapter_path  # at import: a load opens no file but the checkpoint's
from ..storage.resolve import HUB_KWARGS
from ..utils import parse_dtype

__all__ = ["LOAD_OPTIONS", "NO_EFFECT_KEYWORDS", "LoadRequest", "check_model_kwargs", "pick_dtype"]

# Accepted for compatibility with Transformers, no effect here (see docs/guide.md and docs/placement.md).
NO_EFFECT_KEYWORDS = ("_fast_init", "proxies", "mirror", "resume_download", "_commit_hash", "use_auth_token")
_HUB = HUB_KWARGS
_QUANTIZATION = ("quantization_config", "load_in_8bit", "load_in_4bit")
_ADAPTER = ("adapter_name", "adapter_kwargs")
# keyword -> default, for those not named in from_pretrained's signature
LOAD_OPTIONS: Mapping[str, Any] = MappingProxyType({
    "state_dict": None, "verify": False, "offload_buffers": False, "tp_plan": None, "device_mesh": None,
    "subfolder": "",
})


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def pick_dtype(torch_dtype, dtype):
    """The one dtype of ``torch_dtype=`` / ``dtype=`` (parsed; ``"auto"`` kept), or None.

    Raises:
        ValueError: both given and different, or not a dtype.
    """
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"torch_dtype={torch_dtype!r} and dtype={dtype!r} disagree; pass one of them")
    chosen = dtype if dtype is not None else torch_dtype
    return parse_dtype(chosen, name="torch_dtype") if chosen is not None else None


@dataclasses.dataclass(frozen=True)
class LoadRequest:
    """One ``from_pretrained`` call, parsed (the keywords keep their ``from_pretrained`` meaning).

    Attributes:
        name_or_path: what to load weights (and by default the config) from; for an
            adapter folder, the base model it names.
        dtype: ``None`` (float32), ``"auto"`` or a ``torch.dtype``.
        hub: the file-resolution keywords (``cache_dir`` ... ``subfolder``).
        quantization: the quantization keywords given, for ``quantizer_for_load``.
        adapter_path / adapter_args: an adapter to load onto the model afterwards.
        extra: config overrides / model ``__init__`` arguments.
        config_read: ``(config.json content, overrides)`` of a config AutoModel* read beside
            the weights (its private ``_config_read``), to check it against the folder held open.
    """

    name_or_path: Any
    model_args: Tuple[Any, ...] = ()
    config: Any = None
    hub: Mapping[str, Any] = dataclasses.field(default_factory=_empty)
    dtype: Any = None
    ignore_mismatched_sizes: bool = False
    use_safetensors: Optional[bool] = None
    device_map: Any = None
    max_memory: Optional[Mapping] = None
    offload_folder: Any = None
    offload_state_dict: Optional[bool] = None
    offload_buffers: bool = False
    low_cpu_mem_usage: Optional[bool] = None
    variant: Optional[str] = None
    output_loading_info: bool = False
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None
    state_dict: Optional[Mapping] = None
    verify: bool = False
    tp_plan: Any = None
    device_mesh: Any = None
    quantization: Mapping[str, Any] = dataclasses.field(default_factory=_empty)
    adapter_path: Optional[str] = None
    adapter_args: Mapping[str, Any] = dataclasses.field(default_factory=_empty)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=_empty)
    config_read: Optional[Tuple[Any, Mapping[str, Any]]] = None

    @classmethod
    def parse(cls, name_or_path: Any, model_args: Tuple[Any, ...], named: Dict[str, Any],
              kwargs: Dict[str, Any]) -> "LoadRequest":
        """Parse ``from_pretrained``'s named parameters (``named``) and ``**kwargs``.

        Raises:
            ValueError: ``from_tf``/``from_flax``, or disagreeing dtypes.
        """
        kwargs = dict(kwargs)
        config_read = kwargs.pop("_config_read", None)
        if kwargs.pop("from_tf", False) or kwargs.pop("from_flax", False):
            raise ValueError("TensorFlow and Flax checkpoints are not supported; convert them to safetensors first")
        for key in NO_EFFECT_KEYWORDS:
            kwargs.pop(key, None)
        named = dict(named)
        options = {key: kwargs.pop(key, default) for key, default in LOAD_OPTIONS.items()}
        hub = {key: named.pop(key, None) for key in _HUB if key != "subfolder"}
        hub["subfolder"] = options.pop("subfolder")
        quantization = {key: kwargs.pop(key) for key in _QUANTIZATION if key in kwargs}
        adapter_kwargs = {key: kwargs.pop(key) for key in _ADAPTER if key in kwargs}
        dtype = pick_dtype(named.pop("torch_dtype", None), named.pop("dtype", None))
        adapter_path, name_or_path, adapter_args = split_adapter_path(name_or_path, adapter_kwargs, hub)
        return cls(name_or_path=name_or_path, model_args=tuple(model_args), hub=MappingProxyType(hub), dtype=dtype,
                   quantization=MappingProxyType(quantization), adapter_path=adapter_path,
                   adapter_args=MappingProxyType(adapter_args), extra=MappingProxyType(kwargs), config_read=config_read,
                   **named, **options)


def check_model_kwargs(model_class: type, model_kwargs: Mapping[str, Any], config_class_name: str) -> None:
    """Refuse keywords that are neither load options, config fields nor ``__init__`` arguments.

    Raises:
        TypeError: naming the first such keyword.
    """
    try:
        parameters = inspect.signature(model_class.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in model_kwargs:
        if key not in parameters:
            raise TypeError(
                f"{model_class.__name__}.from_pretrained() got an unexpected keyword argument {key!r}: it is not a "
                f"loading option, a field of {config_class_name} or an argument of {model_class.__name__}.__init__"
            )
