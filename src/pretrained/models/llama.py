"""Llama (Touvron et al., 2023): a pre-norm decoder with RMSNorm, rotary positions,
grouped-query attention and a SwiGLU MLP.

Shape notation: B batch, T new tokens, P cached tokens, C hidden_size,
H attention heads, Hkv key/value heads (H / Hkv query heads share one), D head_dim,
I intermediate_size, V vocabulary.

Parameter names are those of the Hugging Face checkpoints
(``model.layers.0.self_attn.q_proj.weight``...).  The rotary ``inv_freq`` is a
non-persistent buffer computed from the config (see
:mod:`pretrained.modeling.rope`), never read from a checkpoint.

The key/value cache is passed as ``past_key_values`` (or ``cache``, the 5.x
name): a cache object (:class:`~pretrained.modeling.cache.DynamicCache`, or any
object with ``update``/``get_seq_length``), or the legacy tuple of ``(key,
value)`` per layer, each (B, Hkv, P, D).  With ``use_cache`` a cache object is
returned: the one passed in, updated, or a new ``DynamicCache``.

Example:
    >>> import torch
    >>> from pretrained import LlamaConfig, LlamaForCausalLM
    >>> config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                      num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(config).eval()
    >>> out = model(torch.tensor([[1, 5, 9]]), labels=torch.tensor([[1, 5, 9]]))
    >>> out.logits.shape, out.past_key_values.get_seq_length()
    (torch.Size([1, 3, 128]), 3)
"""

from __future__ import annotations

from typing import Any

from ..modeling.decoder import (DecoderAttention, DecoderConfig, DecoderForCausalLM, DecoderForSequenceClassification,
                                DecoderLayer, DecoderMLP, DecoderModel, DecoderPreTrainedModel)

__all__ = ["LlamaConfig", "LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaPreTrainedModel"]


class LlamaConfig(DecoderConfig):
    """Llama hyper-parameters; the defaults are Transformers' (Llama-2-7B shapes).

    The shared keywords, their defaults and RoPE settings in either spelling are
    :class:`~pretrained.modeling.decoder.DecoderConfig`'s; Llama adds
    ``pretraining_tp``, ``attention_bias`` and ``mlp_bias``.

    ``num_key_value_heads`` defaults to ``num_attention_heads`` (no GQA) and
    ``head_dim`` to ``hidden_size // num_attention_heads``.  ``pretraining_tp``
    is kept for the file but ignored (it only changed how the original
    training sliced matmuls, not the function).
    """

    model_type = "llama"
    base_model_tp_plan = {  # tensor parallel (tp_plan="auto"): see pretrained.distributed
        "layers.*.self_attn.q_proj": "colwise", "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise", "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise", "layers.*.mlp.up_proj": "colwise", "layers.*.mlp.down_proj": "rowwise",
    }

    def __init__(
        self,
        *args: Any,
        pretraining_tp: int = 1,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # positional: DecoderConfig's fourteen, in Transformers 4.37's order
        self.pretraining_tp = pretraining_tp
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias



# Llama is the plain decoder of :mod:`pretrained.modeling.decoder`: the classes only give it its names.


class LlamaMLP(DecoderMLP):
    """SwiGLU: ``down(act(gate(x)) * up(x))``, C -> I -> C (``mlp_bias`` on all three)."""


class LlamaAttention(DecoderAttention):
    """Causal self-attention with rotary positions; ``attention_bias`` on q, k, v and o."""


class LlamaDecoderLayer(DecoderLayer):
    attention_class = LlamaAttention
    mlp_class = LlamaMLP


class LlamaPreTrainedModel(DecoderPreTrainedModel):
    config_class = LlamaConfig
    _no_split_modules = ["LlamaDecoderLayer"]


class LlamaModel(DecoderModel, LlamaPreTrainedModel):
    """The Llama body: token embeddings, ``num_hidden_layers`` decoder layers, final RMSNorm."""

    layer_class = LlamaDecoderLayer


class LlamaForCausalLM(DecoderForCausalLM, LlamaPreTrainedModel):
    """Llama with a language-modelling head (untied from the embeddings unless
    ``config.tie_word_embeddings``)."""

    model_class = LlamaModel


class LlamaForSequenceClassification(DecoderForSequenceClassification, LlamaPreTrainedModel):
    """Llama with a classifier (``score``) read at the last non-padding token."""

    model_class = LlamaModel
