"""Quantization configs: ``BitsAndBytesConfig`` (Transformers 4.37 field names) and our ``Int4Config``.

``to_dict`` / ``from_dict`` follow the ``quantization_config`` block Transformers
writes to ``config.json``, so either library reads the other's checkpoints.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Union

import torch

from ..utils import dtype_name

_KNOWN_ELSEWHERE = ("gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "compressed-tensors", "fbgemm_fp8", "torchao",
                    "bitnet", "vptq", "spqr", "fp8", "higgs", "quark", "auto-round", "mxfp4")


class QuantizationConfigBase:
    """Shared by every config: ``quant_method``, dict round trip, JSON-able."""

    quant_method: str = ""

    def to_dict(self) -> Dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def to_json_string(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


class BitsAndBytesConfig(QuantizationConfigBase):
    """bitsandbytes-format quantization (int8 rows, or 4-bit nf4/fp4 blocks).

    Args:
        load_in_8bit: int8 weights (``weight`` int8 + ``SCB``).
        load_in_4bit: 4-bit weights in bitsandbytes' packed layout.
        llm_int8_threshold: recorded for Transformers; our int8 matmul is weight-only
            (activations are never quantized, so there are no outliers to split).
        llm_int8_skip_modules: module names kept in full precision (default: the LM
            head, tied modules and the last module, as Transformers).
        llm_int8_enable_fp32_cpu_offload / llm_int8_has_fp16_weight: recorded; only
            ``llm_int8_has_fp16_weight=False`` is supported.
        bnb_4bit_compute_dtype: dtype of 4-bit matmuls (default float32).
        bnb_4bit_quant_type: ``"nf4"`` or ``"fp4"``.
        bnb_4bit_use_double_quant: quantize the block absmax values again.
        bnb_4bit_quant_storage: dtype the packed 4-bit weight is stored as (default uint8).

    Raises:
        ValueError: both or neither of ``load_in_8bit``/``load_in_4bit``, or an unknown value.
    """

    quant_method = "bitsandbytes"

    def __init__(self, load_in_8bit: bool = False, load_in_4bit: bool = False, llm_int8_threshold: float = 6.0,
                 llm_int8_skip_modules: Optional[List[str]] = None, llm_int8_enable_fp32_cpu_offload: bool = False,
                 llm_int8_has_fp16_weight: bool = False, bnb_4bit_compute_dtype=None,
                 bnb_4bit_quant_type: str = "fp4", bnb_4bit_use_double_quant: bool = False,
                 bnb_4bit_quant_storage=None, **kwargs: Any):
        if load_in_8bit and load_in_4bit:
            raise ValueError("load_in_8bit and load_in_4bit are both True; choose one")
        if bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ValueError(f"bnb_4bit_quant_type must be 'nf4' or 'fp4', got {bnb_4bit_quant_type!r}")
        if llm_int8_has_fp16_weight:
            raise ValueError("llm_int8_has_fp16_weight=True (trainable fp16 copies) is not supported")
        self.load_in_8bit, self.load_in_4bit = bool(load_in_8bit), bool(load_in_4bit)
        self.llm_int8_threshold = float(llm_int8_threshold)
        self.llm_int8_skip_modules = None if llm_int8_skip_modules is None else list(llm_int8_skip_modules)
        self.llm_int8_enable_fp32_cpu_offload = bool(llm_int8_enable_fp32_cpu_offload)
        self.llm_int8_has_fp16_weight = False
        self.bnb_4bit_compute_dtype = _dtype(bnb_4bit_compute_dtype, torch.float32, "bnb_4bit_compute_dtype")
        self.bnb_4bit_quant_type = bnb_4bit_quant_type
        self.bnb_4bit_use_double_quant = bool(bnb_4bit_use_double_quant)
        self.bnb_4bit_quant_storage = _dtype(bnb_4bit_quant_storage, torch.uint8, "bnb_4bit_quant_storage")

    @property
    def method(self) -> str:
        """``"bitsandbytes_8bit"`` / ``"bitsandbytes_4bit"`` (what ``model.quantization_method`` reports)."""
        if self.load_in_8bit:
            return "bitsandbytes_8bit"
        if self.load_in_4bit:
            return "bitsandbytes_4bit"
        raise ValueError("BitsAndBytesConfig needs load_in_8bit=True or load_in_4bit=True")

    def to_dict(self) -> Dict[str, Any]:
        """The ``quantization_config`` block of ``config.json`` (Transformers' keys)."""
        return {
            "_load_in_4bit": self.load_in_4bit, "_load_in_8bit": self.load_in_8bit,
            "bnb_4bit_compute_dtype": dtype_name(self.bnb_4bit_compute_dtype),
            "bnb_4bit_quant_storage": dtype_name(self.bnb_4bit_quant_storage),
            "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
            "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
            "llm_int8_enable_fp32_cpu_offload": self.llm_int8_enable_fp32_cpu_offload,
            "llm_int8_has_fp16_weight": self.llm_int8_has_fp16_weight,
            "llm_int8_skip_modules": copy.copy(self.llm_int8_skip_modules),
            "llm_int8_threshold": self.llm_int8_threshold,
            "load_in_4bit": self.load_in_4bit, "load_in_8bit": self.load_in_8bit,
            "quant_method": self.quant_method,
        }

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any]) -> "BitsAndBytesConfig":
        """Read a ``quantization_config`` block (``_load_in_*`` and unknown keys tolerated)."""
        data = {k: v for k, v in config_dict.items() if k != "quant_method"}
        data.setdefault("load_in_8bit", data.pop("_load_in_8bit", False))
        data.setdefault("load_in_4bit", data.pop("_load_in_4bit", False))
        data.pop("_load_in_8bit", None)
        data.pop("_load_in_4bit", None)
        known = cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]
        return cls(**{k: v for k, v in data.items() if k in known})


class Int4Config(QuantizationConfigBase):
    """Our fast group-wise int4 mode (``torch._weight_int4pack_mm_for_cpu``); layout in docs/quantization.md.

    Args:
        group_size: weights per scale/zero pair along the input dimension (32, 64, 128 or 256).
        modules_to_not_convert: module names kept in full precision (default as Transformers).
    """

    quant_method = "pretrained_int4"
    method = "pretrained_int4"

    def __init__(self, group_size: int = 128, modules_to_not_convert: Optional[List[str]] = None, **kwargs: Any):
        if group_size not in (32, 64, 128, 256):
            raise ValueError(f"group_size must be 32, 64, 128 or 256, got {group_size!r}")
        self.group_size = int(group_size)
        self.modules_to_not_convert = None if modules_to_not_convert is None else list(modules_to_not_convert)

    @property
    def llm_int8_skip_modules(self) -> Optional[List[str]]:
        return self.modules_to_not_convert

    def to_dict(self) -> Dict[str, Any]:
        return {"quant_method": self.quant_method, "group_size": self.group_size, "layout": "int4-rows-v1",
                "modules_to_not_convert": copy.copy(self.modules_to_not_convert)}

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any]) -> "Int4Config":
        layout = config_dict.get("layout", "int4-rows-v1")
        if layout != "int4-rows-v1":
            raise ValueError(f"quantization_config layout {layout!r} is not one this version reads")
        return cls(group_size=config_dict.get("group_size", 128),
                   modules_to_not_convert=config_dict.get("modules_to_not_convert"))


def _dtype(value, default: torch.dtype, name: str) -> torch.dtype:
    if value is None:
        return default
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).replace("torch.", ""), None) if isinstance(value, str) else None
    if not isinstance(found, torch.dtype):
        raise ValueError(f"{name}: {value!r} is not a torch dtype")
    return found


def quantization_config_from(value: Union[None, Dict[str, Any], QuantizationConfigBase], *,
                             where: str = "quantization_config") -> Optional[QuantizationConfigBase]:
    """A config object from an object or a ``quantization_config`` dict.

    Raises:
        ValueError: a method this library does not implement (named), or a bad value.
    """
    if value is None or isinstance(value, QuantizationConfigBase):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a BitsAndBytesConfig, Int4Config or dict, got {type(value).__name__}")
    method = value.get("quant_method", "bitsandbytes" if ("load_in_8bit" in value or "load_in_4bit" in value)
                       else None)
    if method == "bitsandbytes":
        return BitsAndBytesConfig.from_dict(value)
    if method == Int4Config.quant_method:
        return Int4Config.from_dict(value)
    hint = " (a method Transformers supports but this library does not)" if method in _KNOWN_ELSEWHERE else ""
    raise ValueError(f"{where}: quant_method {method!r} is not supported{hint}; supported: 'bitsandbytes' "
                     f"(load_in_8bit / load_in_4bit) and 'pretrained_int4'")
