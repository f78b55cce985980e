"""Quantized weights: bitsandbytes-format int8 / nf4 / fp4 and a fast group-wise int4 mode.

No bitsandbytes at run time: quantization and dequantization are plain torch,
int8 and int4 matmuls on the CPU run on PyTorch's own weight-only kernels.
See docs/quantization.md.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from .apply import Quantizer, QuantizingSource, default_skip_modules, should_convert
from .config import BitsAndBytesConfig, Int4Config, QuantizationConfigBase, quantization_config_from
from .modules import Int4Linear, Int8Linear, Linear4bit, QuantizedLinear

__all__ = [
    "BitsAndBytesConfig", "Int4Config", "QuantizationConfigBase", "Quantizer", "QuantizingSource",
    "Int8Linear", "Linear4bit", "Int4Linear", "QuantizedLinear", "quantizer_for_load", "quantization_of",
    "dequantize_model", "packed_parameter_counts", "check_saveable", "default_skip_modules", "should_convert",
]


def quantizer_for_load(kwargs: Dict[str, Any], config, dtype: Optional[torch.dtype]) -> Optional[Quantizer]:
    """The :class:`Quantizer` a ``from_pretrained`` call asks for (``kwargs`` are popped), or None.

    A checkpoint whose ``config.json`` has ``quantization_config`` is loaded
    as quantized (that block wins over the arguments, with a warning if they differ).

    Raises:
        ValueError: a method we do not implement, or conflicting arguments.
    """
    requested = quantization_config_from(kwargs.pop("quantization_config", None))
    in8, in4 = kwargs.pop("load_in_8bit", False), kwargs.pop("load_in_4bit", False)
    if (in8 or in4) and requested is not None:
        raise ValueError("pass either quantization_config= or load_in_8bit/load_in_4bit, not both")
    if in8 or in4:
        requested = BitsAndBytesConfig(load_in_8bit=in8, load_in_4bit=in4)
    saved = quantization_config_from(getattr(config, "quantization_config", None),
                                     where="config.json quantization_config")
    if saved is not None:
        if requested is not None and requested.to_dict() != saved.to_dict():
            from ..logging import get_logger

            get_logger(__name__).warning("the checkpoint is already quantized: its quantization_config is used, "
                                         "the one passed to from_pretrained is ignored")
        requested = saved
    if requested is None:
        return None
    _ = requested.method  # raises for a BitsAndBytesConfig that enables nothing
    return Quantizer(requested, dtype or torch.float32)


def quantization_of(model: nn.Module) -> Optional[QuantizationConfigBase]:
    """The quantization config a model was loaded with (None when not quantized)."""
    return model.__dict__.get("_quantization_config")


def packed_parameter_counts(model: nn.Module) -> Dict[int, int]:
    """``{id(weight): weights per stored element}`` for packed 4-bit weights (2; others absent)."""
    return {id(m.weight): m.values_per_element for m in model.modules()
            if isinstance(m, QuantizedLinear) and m.values_per_element != 1 and m.weight is not None}


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every quantized linear by an ``nn.Linear`` in its compute dtype; drop the config's block."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLinear):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, module.to_linear())
    model.__dict__.pop("_quantization_config", None)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        del config.quantization_config
    return model


def check_saveable(model: nn.Module, *, safe_serialization: bool) -> None:
    """Raise ValueError for a quantized model saved as ``.bin``."""
    if quantization_of(model) is not None and not safe_serialization:
        raise ValueError(
            f"save_pretrained(safe_serialization=False): a {quantization_of(model).method} quantized model is "
            "saved as safetensors only (its packed tensors and quant_state are read back tensor by tensor "
            "from safetensors headers, and Transformers writes quantized checkpoints that way too)")
