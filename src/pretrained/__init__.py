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
    "BertForSequenceClassification": "pretrained.models.bert_heads",
    "BertForTokenClassification": "pretrained.models.bert_heads",
    "BertForQuestionAnswering": "pretrained.models.bert_heads",
    "GPT2Config": "pretrained.models.gpt2",
    "GPT2Model": "pretrained.models.gpt2",
    "GPT2LMHeadModel": "pretrained.models.gpt2",
    "GPT2ForSequenceClassification": "pretrained.models.gpt2",
    "LlamaConfig": "pretrained.models.llama",
    "LlamaModel": "pretrained.models.llama",
    "LlamaForCausalLM": "pretrained.models.llama",
    "LlamaForSequenceClassification": "pretrained.models.llama",
    "MistralConfig": "pretrained.models.mistral",
    "MistralModel": "pretrained.models.mistral",
    "MistralForCausalLM": "pretrained.models.mistral",
    "MistralForSequenceClassification": "pretrained.models.mistral",
    "Qwen2Config": "pretrained.models.qwen2",
    "Qwen2Model": "pretrained.models.qwen2",
    "Qwen2ForCausalLM": "pretrained.models.qwen2",
    "Qwen2ForSequenceClassification": "pretrained.models.qwen2",
    "Qwen3Config": "pretrained.models.qwen3",
    "Qwen3Model": "pretrained.models.qwen3",
    "Qwen3ForCausalLM": "pretrained.models.qwen3",
    "Qwen3ForSequenceClassification": "pretrained.models.qwen3",
    "GemmaConfig": "pretrained.models.gemma",
    "GemmaModel": "pretrained.models.gemma",
    "GemmaForCausalLM": "pretrained.models.gemma",
    "GemmaForSequenceClassification": "pretrained.models.gemma",
    "T5Config": "pretrained.models.t5",
    "T5Model": "pretrained.models.t5_heads",
    "T5EncoderModel": "pretrained.models.t5_heads",
    "T5ForConditionalGeneration": "pretrained.models.t5_heads",
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
    "AutoModelForSequenceClassification": "pretrained.auto",
    "AutoModelForTokenClassification": "pretrained.auto",
    "AutoModelForQuestionAnswering": "pretrained.auto",
    # quantization
    "BitsAndBytesConfig": "pretrained.quantization",
    "Int4Config": "pretrained.quantization",
    # errors
    "PretrainedError": "pretrained.errors",
    "CheckpointNotFoundError": "pretrained.errors",
    "CheckpointError": "pretrained.errors",
    "UnsafeCheckpointError": "pretrained.errors",
    "WeightsMismatchError": "pretrained.errors",
    "RemoteCodeError": "pretrained.errors",
    "SaveError": "pretrained.errors",
    "DeviceMapError": "pretrained.errors",
    "DistributedError": "pretrained.errors",
    # utilities
    "parse_size": "pretrained.utils",
    "load_sharded": "pretrained.distributed.fsdp",
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
