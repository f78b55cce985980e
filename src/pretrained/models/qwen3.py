"""Qwen3 (Qwen team, 2025): Llama's decoder with a per-head RMSNorm on queries and keys.

The delta from Llama: ``q_norm``/``k_norm`` (RMSNorm over ``head_dim``, one
weight shared by all heads) normalise each head's q and k *before* RoPE;
``head_dim`` is explicit (128 by default, not hidden_size / heads); biases
follow ``attention_bias``; sliding windows as Qwen2 (``use_sliding_window``,
``max_window_layers``, ``layer_types``).

Example:
    >>> import torch
    >>> from pretrained import Qwen3Config, Qwen3ForCausalLM
    >>> config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
    ...                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    >>> Qwen3ForCausalLM(config).model.layers[0].self_attn.q_proj.weight.shape
    torch.Size([64, 32])
"""

from __future__ import annotations

from typing import Any, List, Optional, Union

from ..modeling.decoder import (DecoderAttention, DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification,
                                DecoderLayer, DecoderModel, DecoderPreTrainedModel)
from ..modeling.norms import RMSNorm

__all__ = ["Qwen3Config", "Qwen3Model", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification",
           "Qwen3PreTrainedModel"]


class Qwen3Config(DecoderConfig):
    """Qwen3 hyper-parameters; the defaults are Transformers'.

    Keyword-only; the keywords not listed here, and their defaults, are
    :class:`~pretrained.modeling.decoder.DecoderConfig`'s.
    """

    model_type = "qwen3"

    def __init__(
        self,
        *,
        vocab_size: int = 151936,
        intermediate_size: int = 22016,
        num_key_value_heads: Optional[int] = 32,
        head_dim: int = 128,
        max_position_embeddings: int = 32768,
        attention_bias: bool = False,
        use_sliding_window: bool = False,
        sliding_window: Optional[int] = 4096,
        max_window_layers: int = 28,
        layer_types: Optional[List[str]] = None,
        bos_token_id: Optional[int] = None,
        eos_token_id: Optional[Union[int, list]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(vocab_size=vocab_size, intermediate_size=intermediate_size,
                         num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self.head_dim = head_dim  # explicit, never hidden_size // num_attention_heads
        self.attention_bias = attention_bias
        self._set_sliding_layers(use_sliding_window, sliding_window, max_window_layers, layer_types)



class Qwen3Attention(DecoderAttention):
    """Llama's attention with ``q_norm``/``k_norm`` on each head before RoPE."""

    qk_norm = RMSNorm


class Qwen3DecoderLayer(DecoderLayer):
    attention_class = Qwen3Attention


class Qwen3PreTrainedModel(DecoderPreTrainedModel):
    config_class = Qwen3Config
    _no_split_modules = ["Qwen3DecoderLayer"]


class Qwen3Model(DecoderModel, Qwen3PreTrainedModel):
    """The Qwen3 body: token embeddings, decoder layers, final RMSNorm."""

    layer_class = Qwen3DecoderLayer


class Qwen3ForCausalLM(DecoderForCausalLM, Qwen3PreTrainedModel):
    """Qwen3 with a language-modelling head."""

    model_class = Qwen3Model


class Qwen3ForSequenceClassification(DecoderForSequenceClassification, Qwen3PreTrainedModel):
    """Qwen3 with a classifier (``score``) read at the last non-padding token."""

    model_class = Qwen3Model
