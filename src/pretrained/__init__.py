"""`pretrained`: the pretrained-model layer for PyTorch.

Hugging Face checkpoints in and out (sharded safetensors, variants, dtypes),
models larger than memory, and the model-surgery and accounting tools of the
Transformers 4.37 ``PreTrainedModel`` API.

Names are imported lazily, so ``import pretrained`` costs little more than
``import torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # configuration and models
    "PretrainedConfig": "pretrained.configuration",
    "PreTrainedConfig": "pretrained.configuration",
    "PreTrainedModel": "pretrained.modeling.base",
    "ModuleUtilsMixin": "pretrained.modeling.mixin",
    "BertConfig": "pretrained.models.bert",
    "BertModel": "pretrained.models.bert",
    "BertForMaskedLM": "pretrained.models.bert",
    "GPT2Config": "pretrained.models.gpt2",
    "GPT2Model": "pretrained.models.gpt2",
    "GPT2LMHeadModel": "pretrained.models.gpt2",
    "LlamaConfig": "pretrained.models.llama",
    "LlamaModel": "pretrained.models.llama",
    "LlamaForCausalLM": "pretrained.models.llama",
    "T5Config": "pretrained.models.t5",
    "T5Model": "pretrained.models.t5",
    "T5EncoderModel": "pretrained.models.t5",
    "T5ForConditionalGeneration": "pretrained.models.t5",
    "DynamicCache": "pretrained.modeling.cache",
    "GenerationConfig": "pretrained.modeling.generation",
    "GenerationMixin": "pretrained.modeling.generation",
    "StoppingCriteria": "pretrained.modeling.stopping_criteria",
    "StoppingCriteriaList": "pretrained.modeling.stopping_criteria",
    "MaxLengthCriteria": "pretrained.modeling.stopping_criteria",
    "GenerateDecoderOnlyOutput": "pretrained.modeling.generation_outputs",
    "GenerateEncoderDecoderOutput": "pretrained.modeling.generation_outputs",
    "GenerateBeamDecoderOnlyOutput": "pretrained.modeling.generation_outputs",
    "GenerateBeamEncoderDecoderOutput": "pretrained.modeling.generation_outputs",
    # auto classes
    "AutoConfig": "pretrained.auto",
    "AutoModel": "pretrained.auto",
    "AutoModelForCausalLM": "pretrained.auto",
    "AutoModelForMaskedLM": "pretrained.auto",
    "AutoModelForSeq2SeqLM": "pretrained.auto",
    # errors
    "PretrainedError": "pretrained.errors",
    "CheckpointNotFoundError": "pretrained.errors",
    "CheckpointError": "pretrained.errors",
    "UnsafeCheckpointError": "pretrained.errors",
    "WeightsMismatchError": "pretrained.errors",
    "RemoteCodeError": "pretrained.errors",
    "SaveError": "pretrained.errors",
    "DeviceMapError": "pretrained.errors",
    # utilities
    "parse_size": "pretrained.utils",
}
_ALIASES = {"PreTrainedConfig": "PretrainedConfig"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pretrained' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
