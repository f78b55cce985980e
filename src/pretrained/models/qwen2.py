"""Qwen2 (Qwen team, 2024): Llama's decoder with biases on the q, k and v projections.

The delta from Llama: ``q_proj``/``k_proj``/``v_proj`` have biases (``o_proj``
none), and, as in Transformers 5, a sliding window only when
``use_sliding_window``: then layers ``max_window_layers`` and up (or those that
``layer_types`` marks ``"sliding_attention"``) attend to the last
``sliding_window`` positions.  Without ``use_sliding_window`` the config keeps
``sliding_window=None``, as Transformers 5 does.

Example:
    >>> import torch
    >>> from pretrained import Qwen2Config, Qwen2ForCausalLM
    >>> config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
    ...                      num_attention_heads=4, num_key_value_heads=2)
    >>> Qwen2ForCausalLM(config).model.layers[0].self_attn.q_proj.bias.shape
    torch.Size([32])
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Union

from ..modeling.decoder import (DecoderAttention, DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification,
                                DecoderLayer, DecoderModel, DecoderPreTrainedModel, sliding_layer_types)

__all__ = ["Qwen2Config", "Qwen2Model", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification",
           "Qwen2PreTrainedModel"]


class Qwen2Config(DecoderConfig):
    """Qwen2 hyper-parameters; the defaults are Transformers' (Qwen2-7B-like shapes)."""

    model_type = "qwen2"

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: Optional[int] = 32,
        head_dim: Optional[int] = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: Optional[float] = None,
        rope_scaling: Optional[Mapping[str, Any]] = None,
        rope_parameters: Optional[Mapping[str, Any]] = None,
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
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        self.layer_types = (list(layer_types) if layer_types is not None
                            else sliding_layer_types(num_hidden_layers, self.sliding_window, max_window_layers))
        self.attention_dropout = attention_dropout
        self._set_rope(rope_parameters, rope_theta=rope_theta, rope_scaling=rope_scaling)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class Qwen2Attention(DecoderAttention):
    """Llama's attention with biases on q, k, v (not o)."""

    qkv_bias = True
    o_bias = False


class Qwen2DecoderLayer(DecoderLayer):
    attention_class = Qwen2Attention


class Qwen2PreTrainedModel(DecoderPreTrainedModel):
    config_class = Qwen2Config
    _no_split_modules = ["Qwen2DecoderLayer"]


class Qwen2Model(DecoderModel, Qwen2PreTrainedModel):
    """The Qwen2 body: token embeddings, decoder layers, final RMSNorm."""

    layer_class = Qwen2DecoderLayer


class Qwen2ForCausalLM(DecoderForCausalLM, Qwen2PreTrainedModel):
    """Qwen2 with a language-modelling head (tied when ``tie_word_embeddings``, as the small Qwen2s are)."""

    model_class = Qwen2Model


class Qwen2ForSequenceClassification(DecoderForSequenceClassification, Qwen2PreTrainedModel):
    """Qwen2 with a classifier (``score``) read at the last non-padding token."""

    model_class = Qwen2Model
