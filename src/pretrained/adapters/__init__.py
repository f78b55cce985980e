"""LoRA adapters in PEFT's file format, without PEFT: config, layers, files, the model mixin."""

from .config import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoraConfig
from .layers import LoraLayer, ModulesToSaveWrapper
from .mixin import AdapterMixin

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "AdapterMixin", "LoraConfig", "LoraLayer",
           "ModulesToSaveWrapper"]
