"""`LoraConfig`: PEFT's LoRA configuration, with PEFT 0.21's field names and defaults.

The fields this library implements behave as in PEFT; every other PEFT field is
accepted only at its default value, and refused by name otherwise, so an
adapter that needs a feature we do not have (DoRA, LoftQ, ...) is never loaded
silently wrong. ``adapter_config.json`` files are read and written in PEFT's
format (every field, sorted keys, indent 2).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from ..errors import CheckpointError
from ..logging import get_logger

logger = get_logger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_BIN_NAME = "adapter_model.bin"
PEFT_FORMAT_VERSION = "0.21.2"  # the PEFT release whose files we read and write
INCLUDE_LINEAR = "all-linear"
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")

# PEFT fields we do not implement, with the only value we accept (their default).
UNSUPPORTED_DEFAULTS: Dict[str, Any] = {
    "use_dora": False, "lora_bias": False, "megatron_config": None, "trainable_token_indices": None,
    "loftq_config": {}, "eva_config": None, "corda_config": None, "lora_ga_config": None,
    "velora_config": None, "alora_invocation_tokens": None, "use_qalora": False, "monteclora_config": None,
    "layer_replication": None, "target_parameters": None, "use_bdlora": None, "arrow_config": None,
    "kasa_config": None, "ensure_weight_tying": False,
}
# PEFT fields without any effect on plain LoRA: kept and written back as they are.
INERT_DEFAULTS: Dict[str, Any] = {"megatron_core": "megatron.core", "qalora_group_size": 16}


@dataclass
class LoraConfig:
    """Configuration of a LoRA adapter, field for field PEFT's ``LoraConfig``.

    Args:
        r: the rank (default 8). ``lora_alpha``: the scale numerator (default 8);
            the update is scaled by ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``).
        target_modules: module names (a list: exact name or name suffix at a dot),
            a regex (a str, full match), or ``"all-linear"`` (every Linear / Conv1D
            except the output layer). ``exclude_modules``: the same, to skip.
        lora_dropout: dropout on the adapter's input. ``fan_in_fan_out``: the
            target stores ``(in, out)`` weights (GPT-2's Conv1D; set automatically).
        bias: ``"none"``, ``"all"`` or ``"lora_only"``: which biases train and are saved.
        modules_to_save: modules (name suffixes) trained and saved whole.
        layers_to_transform / layers_pattern: only these layer indices (of the
            ``layers_pattern`` list, e.g. ``"layers"`` or ``"h"``).
        rank_pattern / alpha_pattern: ``{regex or name suffix: r / alpha}`` overrides.
        init_lora_weights: ``True`` (A Kaiming-uniform, B zero: a no-op),
            ``"gaussian"`` (A ~ N(0, 1/r), B zero) or ``False`` (both random).
        task_type, base_model_name_or_path, revision, inference_mode: as PEFT.

    Raises:
        ValueError: a bad value, or a PEFT feature we do not implement (named).

    Example:
        >>> config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    """

    r: int = 8
    target_modules: Optional[Union[List[str], str]] = None
    exclude_modules: Optional[Union[List[str], str]] = None
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: Optional[List[str]] = None
    init_lora_weights: Union[bool, str] = True
    layers_to_transform: Optional[Union[List[int], int]] = None
    layers_pattern: Optional[Union[List[str], str]] = None
    rank_pattern: Dict[str, int] = field(default_factory=dict)
    alpha_pattern: Dict[str, float] = field(default_factory=dict)
    task_type: Optional[str] = None
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    inference_mode: bool = False
    auto_mapping: Optional[dict] = None
    peft_version: Optional[str] = None
    peft_type: str = "LORA"
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.peft_type != "LORA":
            raise ValueError(f"LoraConfig: peft_type={self.peft_type!r}; only 'LORA' adapters are supported")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.exclude_modules, (set, tuple)):
            self.exclude_modules = sorted(self.exclude_modules)
        _check_values(self)
        self.extra = dict(self.extra)
        for name, value in self.extra.items():
            _check_extra(name, value)

    # ------------------------------------------------------------ scaling per module
    def rank_and_alpha(self, module_name: str) -> tuple:
        """``(r, lora_alpha)`` of ``module_name``, after ``rank_pattern`` / ``alpha_pattern`` (PEFT's matching)."""
        return (_pattern_value(self.rank_pattern, module_name, self.r),
                _pattern_value(self.alpha_pattern, module_name, self.lora_alpha))

    # ------------------------------------------------------------ dict / JSON
    def to_dict(self) -> Dict[str, Any]:
        """Every PEFT field (ours, the unsupported ones at their defaults, and unknown ones kept)."""
        result = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"}
        result.update(copy.deepcopy(UNSUPPORTED_DEFAULTS))
        result.update(INERT_DEFAULTS)
        result.update(copy.deepcopy(self.extra))
        if result["peft_version"] is None:
            result["peft_version"] = PEFT_FORMAT_VERSION
        return result

    def to_json_string(self) -> str:
        """``adapter_config.json``'s text, as PEFT writes it (indent 2, sorted keys)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Dict[str, Any], *, source: str = "the adapter config") -> "LoraConfig":
        """Build from a parsed ``adapter_config.json``.

        Raises:
            CheckpointError: not a LoRA config (another or no ``peft_type``), a
                PEFT feature we do not implement, or a bad value; naming ``source``.
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"{source} must hold a JSON object, got {type(data).__name__}")
        peft_type = data.get("peft_type")
        if peft_type != "LORA":
            raise CheckpointError(
                f"{source} has peft_type={peft_type!r}; only LoRA adapters (peft_type 'LORA') are supported")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "runtime_config"}
        try:
            return cls(**known, extra=extra)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]) -> "LoraConfig":
        """Read an ``adapter_config.json`` file (errors name it)."""
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read the adapter config {os.fspath(path)}: {exc}") from exc
        return cls.from_dict(data, source=os.fspath(path))


def _check_values(config: LoraConfig) -> None:
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(getattr(config, name), dict):
            raise ValueError(f"LoraConfig: {name} must be a dict, got {getattr(config, name)!r}")
    for name, value in [("r", config.r), *(("rank_pattern", v) for v in config.rank_pattern.values())]:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"LoraConfig: {name} ranks must be positive ints, got {value!r}")
    if not isinstance(config.lora_alpha, (int, float)) or isinstance(config.lora_alpha, bool):
        raise ValueError(f"LoraConfig: lora_alpha must be a number, got {config.lora_alpha!r}")
    if not isinstance(config.lora_dropout, (int, float)) or not 0.0 <= config.lora_dropout < 1.0:
        raise ValueError(f"LoraConfig: lora_dropout must be in [0, 1), got {config.lora_dropout!r}")
    if config.bias not in ("none", "all", "lora_only"):
        raise ValueError(f"LoraConfig: bias must be 'none', 'all' or 'lora_only', got {config.bias!r}")
    if not (isinstance(config.init_lora_weights, bool) or config.init_lora_weights == "gaussian"):
        raise ValueError(f"LoraConfig: init_lora_weights={config.init_lora_weights!r} is not supported here "
                         f"(supported: True, False, 'gaussian')")
    if config.task_type is not None and config.task_type not in TASK_TYPES:
        raise ValueError(f"LoraConfig: invalid task_type {config.task_type!r}; use one of {list(TASK_TYPES)}")
    if config.target_modules is not None and not isinstance(config.target_modules, (str, list)):
        raise ValueError(f"LoraConfig: target_modules must be a list of names or a regex string, "
                         f"got {type(config.target_modules).__name__}")
    if isinstance(config.target_modules, str) and (config.layers_to_transform is not None
                                                   or config.layers_pattern is not None):
        raise ValueError("LoraConfig: layers_to_transform / layers_pattern cannot be used when target_modules "
                         "is a str (a regex)")
    if config.layers_pattern and config.layers_to_transform is None:
        raise ValueError("LoraConfig: when layers_pattern is specified, layers_to_transform must also be specified")


def _check_extra(name: str, value: Any) -> None:
    """A field outside plain LoRA: accepted at its default (or, when unknown, empty), refused otherwise."""
    if name in UNSUPPORTED_DEFAULTS:
        if value == UNSUPPORTED_DEFAULTS[name] or (value is None and UNSUPPORTED_DEFAULTS[name] == {}):
            return
        raise ValueError(f"LoraConfig: {name}={value!r} is not supported by pretrained (only plain LoRA is); "
                         f"load it with PEFT, or remove {name}")
    if name in INERT_DEFAULTS:
        return
    if value in (None, False, {}, [], ""):
        logger.info("LoraConfig: ignoring the unknown field %s=%r (empty)", name, value)
        return
    raise ValueError(f"LoraConfig: unknown field {name}={value!r}; pretrained implements PEFT {PEFT_FORMAT_VERSION}'s "
                     "plain LoRA and refuses what it does not know")


def _pattern_value(patterns: Dict[str, Any], module_name: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first key that matches the end of the name at a dot boundary."""
    import re

    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)}
_init = LoraConfig.__init__


def _init_with_peft_fields(self, *args: Any, **kwargs: Any) -> None:
    """Accept PEFT's other field names as keywords: at their default they are kept, otherwise refused by name."""
    extra = dict(kwargs.pop("extra", None) or {})
    for name in [k for k in kwargs if k not in _FIELDS]:
        if name not in UNSUPPORTED_DEFAULTS and name not in INERT_DEFAULTS:
            raise TypeError(f"LoraConfig got an unexpected keyword argument {name!r}")
        extra[name] = kwargs.pop(name)
    _init(self, *args, extra=extra, **kwargs)


LoraConfig.__init__ = _init_with_peft_fields  # type: ignore[method-assign]

__all__ = ["LoraConfig", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "ADAPTER_BIN_NAME"]
