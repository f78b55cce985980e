"""Gemma (Gemma team, 2024): Llama's decoder with (1 + w) RMSNorm, scaled embeddings,
a GELU (tanh) MLP and a tied head.

The delta from Llama:

- :class:`GemmaRMSNorm` multiplies by ``1 + weight`` in float32 and casts after
  (Llama casts first); its weights start at 0.
- token embeddings are multiplied by ``sqrt(hidden_size)`` rounded to the
  embedding dtype (as Transformers 5: ``inputs_embeds`` given by the caller are
  not scaled);
- ``hidden_act`` ``"gelu_pytorch_tanh"``; the legacy ``"gelu"`` of the official
  files is read as it (Transformers 5); ``hidden_activation`` (the 4.x key) is
  kept but Transformers 5 does not read it, nor do we;
- ``tie_word_embeddings`` defaults to True, ``head_dim`` to 256.

Example:
    >>> import torch
    >>> from pretrained import GemmaConfig, GemmaForCausalLM
    >>> config = GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
    ...                      num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    >>> model = GemmaForCausalLM(config)
    >>> model.lm_head.weight is model.model.embed_tokens.weight
    True
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..logging import get_logger
from ..modeling.decoder import (DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification, DecoderLayer,
                                DecoderModel, DecoderPreTrainedModel)

logger = get_logger(__name__)

__all__ = ["GemmaConfig", "GemmaModel", "GemmaForCausalLM", "GemmaForSequenceClassification",
           "GemmaPreTrainedModel", "GemmaRMSNorm"]


class GemmaConfig(DecoderConfig):
    """Gemma hyper-parameters; the defaults are Transformers' (Gemma-7B shapes).

    Keyword-only; the keywords not listed here, and their defaults, are
    :class:`~pretrained.modeling.decoder.DecoderConfig`'s.
    """

    model_type = "gemma"

    def __init__(
        self,
        *,
        vocab_size: int = 256000,
        hidden_size: int = 3072,
        intermediate_size: int = 24576,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 16,
        num_key_value_heads: Optional[int] = 16,
        head_dim: int = 256,
        hidden_act: str = "gelu_pytorch_tanh",
        max_position_embeddings: int = 8192,
        pad_token_id: Optional[int] = 0,
        eos_token_id: Optional[Union[int, list]] = 1,
        bos_token_id: Optional[int] = 2,
        tie_word_embeddings: bool = True,
        attention_bias: bool = False,
        use_bidirectional_attention: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        if hidden_act == "gelu":
            logger.warning('Gemma config has hidden_act="gelu", the legacy value of the official releases meant '
                           'as the tanh approximation: using hidden_act="gelu_pytorch_tanh" (as Transformers).')
            hidden_act = "gelu_pytorch_tanh"
        super().__init__(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_key_value_heads, hidden_act=hidden_act,
                         max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id,
                         eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.head_dim = head_dim  # explicit, never hidden_size // num_attention_heads
        self.attention_bias = attention_bias
        self.use_bidirectional_attention = use_bidirectional_attention



class GemmaRMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * (1 + weight)``, all in float32, then cast to x's dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: Tensor) -> Tensor:                              # (..., C) -> (..., C)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class GemmaDecoderLayer(DecoderLayer):
    norm_class = GemmaRMSNorm


class GemmaPreTrainedModel(DecoderPreTrainedModel):
    config_class = GemmaConfig
    _no_split_modules = ["GemmaDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """Llama's, and GemmaRMSNorm weights 0 (the norm scales by 1 + weight)."""
        super()._init_weights(module)
        if isinstance(module, GemmaRMSNorm):
            module.weight.data.zero_()


class GemmaModel(DecoderModel, GemmaPreTrainedModel):
    """The Gemma body: scaled token embeddings, decoder layers, final GemmaRMSNorm."""

    layer_class = GemmaDecoderLayer
    norm_class = GemmaRMSNorm
    scale_embeddings = True

    def __init__(self, config: GemmaConfig) -> None:
        if config.use_bidirectional_attention:
            raise ValueError("GemmaConfig.use_bidirectional_attention=True (non-causal Gemma) is not supported")
        super().__init__(config)


class GemmaForCausalLM(DecoderForCausalLM, GemmaPreTrainedModel):
    """Gemma with a language-modelling head, tied to the embeddings by default."""

    model_class = GemmaModel


class GemmaForSequenceClassification(DecoderForSequenceClassification, GemmaPreTrainedModel):
    """Gemma with a classifier (``score``) read at the last non-padding token."""

    model_class = GemmaModel
