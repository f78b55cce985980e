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

from typing import Any, List, Optional, Union

from ..modeling.decoder import (DecoderAttention, DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification,
                                DecoderLayer, DecoderModel, DecoderPreTrainedModel)

__all__ = ["Qwen2Config", "Qwen2Model", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification",
           "Qwen2PreTrainedModel"]


class Qwen2Config(DecoderConfig):
    """Qwen2 hyper-parameters; the defaults are Transformers' (Qwen2-7B-like shapes).

    Keyword-only; the keywords not listed here, and their defaults, are
    :class:`~pretrained.modeling.decoder.DecoderConfig`'s.
    """

    model_type = "qwen2"

    def __init__(
        self,
        *,
        vocab_size: int = 151936,
        intermediate_size: int = 22016,
        num_key_value_heads: Optional[int] = 32,
        max_position_embeddings: int = 32768,
        bos_token_id: Optional[int] = None,
        eos_token_id: Optional[Union[int, list]] = None,
        use_sliding_window: bool = False,
        sliding_window: Optional[int] = 4096,
        max_window_layers: int = 28,
        layer_types: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(vocab_size=vocab_size, intermediate_size=intermediate_size,
                         num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self._set_sliding_layers(use_sliding_window, sliding_window, max_window_layers, layer_types)



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
