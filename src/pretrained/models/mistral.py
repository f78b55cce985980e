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

from typing import Any, Optional

from ..modeling.decoder import (DecoderAttention, DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification,
                                DecoderLayer, DecoderModel, DecoderPreTrainedModel)

__all__ = ["MistralConfig", "MistralModel", "MistralForCausalLM", "MistralForSequenceClassification",
           "MistralPreTrainedModel"]


class MistralConfig(DecoderConfig):
    """Mistral hyper-parameters; the defaults are Transformers' (Mistral-7B shapes).

    Keyword-only; the keywords not listed here, and their defaults, are
    :class:`~pretrained.modeling.decoder.DecoderConfig`'s.
    """

    model_type = "mistral"

    def __init__(
        self,
        *,
        intermediate_size: int = 14336,
        num_key_value_heads: Optional[int] = 8,
        max_position_embeddings: int = 4096 * 32,
        sliding_window: Optional[int] = 4096,
        **kwargs: Any,
    ) -> None:
        super().__init__(intermediate_size=intermediate_size, num_key_value_heads=num_key_value_heads,
                         max_position_embeddings=max_position_embeddings, **kwargs)
        self.sliding_window = sliding_window

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
