"""Mistral (Jiang et al., 2023): Llama's decoder with a sliding attention window.

The delta from Llama: every layer attends to the last ``sliding_window`` cache
positions only (``q - W < k <= q``, Transformers' rule, also across cache
steps; ``sliding_window=None`` is full attention); no biases; ``head_dim`` may
be given explicitly.  Everything else is :mod:`pretrained.modeling.decoder`.

Example:
    >>> import torch
    >>> from pretrained import MistralConfig, MistralForCausalLM
    >>> config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
    ...                        num_attention_heads=4, num_key_value_heads=2, sliding_window=3)
    >>> MistralForCausalLM(config)(torch.tensor([[1, 5, 9, 4]])).logits.shape
    torch.Size([1, 4, 64])
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from ..modeling.decoder import (DecoderAttention, DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification,
                                DecoderLayer, DecoderModel, DecoderPreTrainedModel)

__all__ = ["MistralConfig", "MistralModel", "MistralForCausalLM", "MistralForSequenceClassification",
           "MistralPreTrainedModel"]


class MistralConfig(DecoderConfig):
    """Mistral hyper-parameters; the defaults are Transformers' (Mistral-7B shapes)."""

    model_type = "mistral"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 14336,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: Optional[int] = 8,
        head_dim: Optional[int] = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 4096 * 32,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: Optional[int] = None,
        bos_token_id: Optional[int] = 1,
        eos_token_id: Optional[Union[int, list]] = 2,
        tie_word_embeddings: bool = False,
        rope_theta: Optional[float] = None,
        rope_scaling: Optional[Mapping[str, Any]] = None,
        rope_parameters: Optional[Mapping[str, Any]] = None,
        sliding_window: Optional[int] = 4096,
        attention_dropout: float = 0.0,
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
        self.sliding_window = sliding_window
        self.attention_dropout = attention_dropout
        self._set_rope(rope_parameters, rope_theta=rope_theta, rope_scaling=rope_scaling)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def layer_window(self, layer_idx: int) -> Optional[int]:
        """Every Mistral layer slides (``layer_types`` in a file are kept, not used, as in Transformers)."""
        return self.sliding_window


class MistralAttention(DecoderAttention):
    """Llama's attention within ``config.sliding_window``; no biases."""

    qkv_bias = False
    o_bias = False


class MistralDecoderLayer(DecoderLayer):
    attention_class = MistralAttention


class MistralPreTrainedModel(DecoderPreTrainedModel):
    config_class = MistralConfig
    _no_split_modules = ["MistralDecoderLayer"]


class MistralModel(DecoderModel, MistralPreTrainedModel):
    """The Mistral body: token embeddings, decoder layers, final RMSNorm."""

    layer_class = MistralDecoderLayer


class MistralForCausalLM(DecoderForCausalLM, MistralPreTrainedModel):
    """Mistral with a language-modelling head."""

    model_class = MistralModel


class MistralForSequenceClassification(DecoderForSequenceClassification, MistralPreTrainedModel):
    """Mistral with a classifier (``score``) read at the last non-padding token."""

    model_class = MistralModel
