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

from typing import Any, List, Mapping, Optional, Union

from ..modeling.decoder import (DecoderAttention, DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification,
                                DecoderLayer, DecoderModel, DecoderPreTrainedModel, sliding_layer_types)
from ..modeling.norms import RMSNorm

__all__ = ["Qwen3Config", "Qwen3Model", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification",
           "Qwen3PreTrainedModel"]


class Qwen3Config(DecoderConfig):
    """Qwen3 hyper-parameters; the defaults are Transformers'."""

    model_type = "qwen3"

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: Optional[int] = 32,
        head_dim: int = 128,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: Optional[float] = None,
        rope_scaling: Optional[Mapping[str, Any]] = None,
        rope_parameters: Optional[Mapping[str, Any]] = None,
        attention_bias: bool = False,
        use_sliding_window: bool = False,
        sliding_window: Optional[int] = 4096,
        max_window_layers: int = 28,
        layer_types: Optional[List[str]] = None,
        attention_dropout: float = 0.0,
        pad_token_id: Optional[int] = None,
        bos_token_id: Optional[int] = None,
        eos_token_id: Optional[Union[int, list]] = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.attention_bias = attention_bias
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        self.layer_types = (list(layer_types) if layer_types is not None
                            else sliding_layer_types(num_hidden_layers, self.sliding_window, max_window_layers))
        self.attention_dropout = attention_dropout
        self._set_rope(rope_parameters, rope_theta=rope_theta, rope_scaling=rope_scaling)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


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
