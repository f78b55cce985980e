"""The Llama-style decoder that Llama, Mistral, Qwen2, Qwen3 and Gemma share.

A pre-norm stack: token embeddings, layers of ``x + attn(norm(x))`` then
``x + mlp(norm(x))`` with rotary positions, grouped-query attention and a gated
MLP, a final norm.  Each family file (``models/<family>.py``) subclasses these
classes and sets what differs as class attributes, so its delta reads at a
glance:

- :class:`DecoderAttention`: ``qkv_bias`` / ``o_bias`` (``None``: from
  ``config.attention_bias``), ``qk_norm`` (a norm class applied per head to q
  and k before RoPE, Qwen3).
- :class:`DecoderLayer`: ``attention_class``, ``mlp_class``, ``norm_class``.
- :class:`DecoderModel`: ``layer_class``, ``norm_class``, ``scale_embeddings``
  (multiply token embeddings by sqrt(hidden_size) in their dtype, Gemma).
- :class:`DecoderConfig`: the keywords every family shares, with Llama's
  defaults (a family config states only those it changes and its own), RoPE
  settings in both spellings and :meth:`DecoderConfig.layer_window` (the
  sliding window of layer i, or None).

Shape notation: B batch, T new tokens, P cached tokens, C hidden_size, H heads,
Hkv key/value heads, D head_dim, W sliding window.

Sliding windows are Transformers': query at cache position q sees key k when
``q - W < k <= q`` (positions count padding), also across cache steps.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ..configuration import PretrainedConfig
from ..logging import get_logger
from .activations import ACT2FN
from .attention import additive_mask, attention, expanded_mask, packed_sequence_mask
from .base import PreTrainedModel
from .cache import prepare_cache
from .generation import GenerationMixin
from .heads import last_token_classifier_output
from .losses import causal_lm_loss
from .mixin import init_normal_
from .norms import RMSNorm
from .outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, SequenceClassifierOutputWithPast, output_flags
from .rope import RotaryEmbedding, apply_rotary, rope_parameters

logger = get_logger(__name__)

__all__ = ["DecoderConfig", "DecoderMLP", "DecoderAttention", "DecoderLayer", "DecoderPreTrainedModel",
           "DecoderModel", "DecoderForCausalLM", "DecoderForSequenceClassification", "decoder_mask"]


class DecoderConfig(PretrainedConfig):
    """Base of the decoder family configs: the keywords they share, RoPE read in either spelling.

    The defaults are Llama-2-7B's (:class:`~pretrained.LlamaConfig` adds only
    its own keys); each family passes those it changes.  The first fourteen
    may be given by position, in Llama's (Transformers 4.37) order.
    ``num_key_value_heads`` defaults to ``num_attention_heads`` (no GQA),
    ``head_dim`` to ``hidden_size // num_attention_heads``.

    RoPE: 5.x ``rope_parameters`` (a dict with ``rope_type``, ``rope_theta``,
    ``factor``...) or 4.x ``rope_theta`` + ``rope_scaling``; when both are
    given, ``rope_scaling`` wins, as in Transformers 5.  They are kept as one
    standard ``rope_parameters`` dict; ``rope_theta`` and ``rope_scaling`` read
    and write it, and ``config.json`` gets all three keys.
    """

    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: Optional[int] = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: Optional[int] = None,
        bos_token_id: Optional[int] = 1,
        eos_token_id: Optional[Union[int, list]] = 2,
        *,
        head_dim: Optional[int] = None,
        tie_word_embeddings: bool = False,
        rope_theta: Optional[float] = None,
        rope_scaling: Optional[Mapping[str, Any]] = None,
        rope_parameters: Optional[Mapping[str, Any]] = None,
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
        self.attention_dropout = attention_dropout
        self._set_rope(rope_parameters, rope_theta=rope_theta, rope_scaling=rope_scaling)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _set_sliding_layers(self, use_sliding_window: bool, sliding_window: Optional[int], max_window_layers: int,
                            layer_types: Optional[List[str]]) -> None:
        """Qwen2/Qwen3's window keys, as Transformers 5: a window only with
        ``use_sliding_window`` (else ``sliding_window`` is None), on the layers
        from ``max_window_layers`` on unless ``layer_types`` says which."""
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        self.layer_types = (list(layer_types) if layer_types is not None
                            else sliding_layer_types(self.num_hidden_layers, self.sliding_window, max_window_layers))

    def _set_rope(self, params, *, rope_theta=None, rope_scaling=None) -> None:
        params = dict(params or {})
        if rope_scaling:
            scaling_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
            if params.get("rope_type", params.get("type", "default")) == scaling_type:
                params.update(rope_scaling)                    # the 4.x view of the same settings: merge
            else:
                params = dict(rope_scaling)                    # they disagree: rope_scaling wins (Transformers 5)
        if rope_theta is not None and "rope_theta" not in params:
            params["rope_theta"] = rope_theta
        self.rope_parameters = rope_parameters(params, max_position_embeddings=self.max_position_embeddings)

    @property
    def rope_theta(self) -> float:
        """The 4.x name of ``rope_parameters["rope_theta"]``."""
        return self.rope_parameters["rope_theta"]

    @rope_theta.setter
    def rope_theta(self, value: float) -> None:
        self.rope_parameters = {**self.rope_parameters, "rope_theta": value}

    @property
    def rope_scaling(self) -> Optional[Dict[str, Any]]:
        """The 4.x view: ``None`` for plain RoPE; ``{"type", "factor"}`` for linear
        and dynamic (what 4.37 accepts); the full dict less theta otherwise."""
        params = self.rope_parameters
        kind = params["rope_type"]
        if kind == "default":
            return None
        if kind in ("linear", "dynamic") and set(params) <= {"rope_type", "rope_theta", "factor"}:
            return {"type": kind, "factor": params["factor"]}
        return {k: v for k, v in params.items() if k != "rope_theta"}

    @rope_scaling.setter
    def rope_scaling(self, value) -> None:
        theta = self.rope_parameters["rope_theta"]
        self.rope_parameters = rope_parameters(dict(value) if value else {"rope_type": "default"}, rope_theta=theta,
                                               max_position_embeddings=self.max_position_embeddings)

    def layer_window(self, layer_idx: int) -> Optional[int]:
        """The sliding window of layer ``layer_idx``, None for full attention: from
        ``layer_types`` (``"sliding_attention"`` -> ``sliding_window``) when the
        config has them, else None."""
        layer_types = getattr(self, "layer_types", None)
        if layer_types and layer_types[layer_idx] == "sliding_attention":
            return getattr(self, "sliding_window", None)
        return None

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        out["rope_theta"] = self.rope_theta
        out["rope_scaling"] = self.rope_scaling
        return out


def sliding_layer_types(num_layers: int, sliding_window: Optional[int], max_window_layers: int) -> list:
    """Qwen2/Qwen3's default ``layer_types``: sliding from layer ``max_window_layers`` on,
    when a window is in use."""
    return ["sliding_attention" if sliding_window is not None and i >= max_window_layers else "full_attention"
            for i in range(num_layers)]


# ------------------------------------------------------------------------------ modules


class DecoderMLP(nn.Module):
    """Gated MLP: ``down(act(gate(x)) * up(x))``, C -> I -> C."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:                              # (B, T, C)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderAttention(nn.Module):
    """Causal self-attention with rotary positions and Hkv <= H key/value heads."""

    qkv_bias: Optional[bool] = None          # None: config.attention_bias
    o_bias: Optional[bool] = None
    qk_norm: Optional[Type[nn.Module]] = None   # per-head norm of q and k before RoPE

    def __init__(self, config: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                             f"({self.num_key_value_heads})")
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        self.sliding_window = config.layer_window(layer_idx)
        default = getattr(config, "attention_bias", False)
        qkv = default if self.qkv_bias is None else self.qkv_bias
        o = default if self.o_bias is None else self.o_bias
        C, D = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(C, self.num_heads * D, bias=qkv)
        self.k_proj = nn.Linear(C, self.num_key_value_heads * D, bias=qkv)
        self.v_proj = nn.Linear(C, self.num_key_value_heads * D, bias=qkv)
        self.o_proj = nn.Linear(self.num_heads * D, C, bias=o)
        if self.qk_norm is not None:
            self.q_norm = self.qk_norm(D, eps=config.rms_norm_eps)
            self.k_norm = self.qk_norm(D, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: Tensor,                                           # (B, T, C)
        cos: Tensor,                                                     # (B|1, T, D)
        sin: Tensor,
        mask: Optional[Tensor] = None,                                   # additive (B|1, 1, T, P+T) or None
        cache: Optional[Any] = None,
        output_attentions: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim)     # (B, T, H, D)
        k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim)     # (B, T, Hkv, D)
        v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, Hkv, T, D)
        if self.qk_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)                    # (B, Hkv, P+T, D)
        y, weights = attention(
            q, k, v, mask=mask, is_causal=True, scale=self.scaling,
            dropout_p=self.attention_dropout if self.training else 0.0,
            implementation=self.config._attn_implementation or "sdpa", output_attentions=output_attentions,
        )                                                                 # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(y), weights                                    # (B, T, C)


class DecoderLayer(nn.Module):
    """``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    attention_class: Type[DecoderAttention] = DecoderAttention
    mlp_class: Type[nn.Module] = DecoderMLP
    norm_class: Type[nn.Module] = RMSNorm

    def __init__(self, config: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = self.attention_class(config, layer_idx)
        self.mlp = self.mlp_class(config)
        self.input_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: Tensor, cos: Tensor, sin: Tensor, mask: Optional[Tensor] = None,
                cache: Optional[Any] = None, output_attentions: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        a, weights = self.self_attn(self.input_layernorm(hidden_states), cos, sin, mask, cache, output_attentions)
        hidden_states = hidden_states + a
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, weights


def decoder_mask(attention_mask: Optional[Tensor], new: int, past: int, *, window: Optional[int],
                 dtype: torch.dtype, device: torch.device) -> Optional[Tensor]:
    """The additive mask (B|1, 1, T, P+T), or None when causality alone does it (no
    padding and no window that cuts anything): attention then runs its causal kernel.

    Args:
        attention_mask: (B, P+T) of 1/0, a 4-D mask (used as given), or None.
        new, past: T and P.
        window: the sliding window W, or None.

    Raises:
        ValueError: a 2-D mask whose length is not P+T.
    """
    total = past + new
    if attention_mask is not None and attention_mask.dim() == 4:         # already expanded by the caller
        return expanded_mask(attention_mask, dtype)
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[1] != total):
        raise ValueError(f"attention_mask must be (batch, past + new tokens) = (B, {total}), "
                         f"got {tuple(attention_mask.shape)}")
    padded = attention_mask is not None and not bool(attention_mask.all())
    windowed = window is not None and total > window
    if not padded and not windowed:
        return None
    if attention_mask is not None:
        device = attention_mask.device
    rows = torch.arange(new, device=device)[:, None] + past               # cache position of each query
    cols = torch.arange(total, device=device)[None, :]
    keep = cols <= rows
    if window is not None:
        keep = keep & (cols > rows - window)
    keep = keep[None, None]                                               # (1, 1, T, P+T)
    if padded:
        keep = keep & attention_mask[:, None, None, :].to(torch.bool)    # (B, 1, T, P+T)
    return additive_mask(keep, dtype)


# ------------------------------------------------------------------------------ models


class DecoderPreTrainedModel(PreTrainedModel):
    """Shared settings of the decoder families; each sets ``config_class`` and ``_no_split_modules``."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # Checkpoints of some older conversions carry the rotary table; it is always recomputed.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq$"]

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for Linear and Embedding weights, zero biases and
        padding row, RMSNorm weights 1."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init_normal_(module, std)
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class DecoderModel(DecoderPreTrainedModel):
    """The body: token embeddings, ``num_hidden_layers`` decoder layers, final norm."""

    layer_class: Type[DecoderLayer] = DecoderLayer
    norm_class: Type[nn.Module] = RMSNorm
    scale_embeddings: bool = False           # Gemma: embeddings * sqrt(C), in the embedding dtype

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([self.layer_class(config, i) for i in range(config.num_hidden_layers)])
        self.norm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.rope_parameters, config.head_dim, config.max_position_embeddings)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, T)
        attention_mask: Optional[Tensor] = None,                         # (B, P+T) of 1/0, or 4-D
        position_ids: Optional[Tensor] = None,                           # (B|1, T)
        past_key_values: Optional[Any] = None,
        inputs_embeds: Optional[Tensor] = None,                          # (B, T, C)
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
        cache_position: Optional[Tensor] = None,                         # accepted, unused: the cache knows P
    ) -> Union[BaseModelOutputWithPast, Tuple]:
        """Last hidden state (B, T, C) after the final norm; the cache (with ``use_cache``)."""
        output_attentions, output_hidden_states, use_cache, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, use_cache, return_dict)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
            inputs_embeds = self.embed_tokens(input_ids)                 # (B, T, C)
            if self.scale_embeddings:
                inputs_embeds = inputs_embeds * torch.tensor(self.config.hidden_size ** 0.5).to(inputs_embeds.dtype)
        T = inputs_embeds.shape[1]

        checkpointing, use_cache = self._checkpointing(use_cache, logger)
        kv_cache, past_length = prepare_cache(past_key_values if past_key_values is not None else cache,
                                              use_cache=use_cache)
        packed = None       # padding-free rows, read as Transformers 5 does (no mask, no cache)
        if position_ids is not None and attention_mask is None and kv_cache is None:
            packed = packed_sequence_mask(position_ids, inputs_embeds.shape[0], causal=True, dtype=inputs_embeds.dtype)
        if checkpointing:
            kv_cache = None

        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + T, device=inputs_embeds.device)[None]
        hidden_states = inputs_embeds
        cos, sin = self.rotary_emb(position_ids, dtype=hidden_states.dtype)          # (B|1, T, D) each
        masks = self._masks(attention_mask, packed, T, past_length, hidden_states)

        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            mask = masks[layer.self_attn.sliding_window]
            if checkpointing:
                hidden_states, weights = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, cos, sin, mask, None, output_attentions)
            else:
                hidden_states, weights = layer(hidden_states, cos, sin, mask, kv_cache, output_attentions)
            if output_attentions:
                all_attentions += (weights,)

        hidden_states = self.norm(hidden_states)                         # (B, T, C)
        if output_hidden_states:
            all_hidden += (hidden_states,)

        out = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, past_key_values=kv_cache if use_cache else None,
            hidden_states=all_hidden, attentions=all_attentions,
        )
        return out if return_dict else out.to_tuple()

    def _masks(self, attention_mask: Optional[Tensor], packed: Optional[Tensor], new: int, past: int,
               hidden_states: Tensor) -> Dict[Optional[int], Optional[Tensor]]:
        """One additive mask per sliding window in use (None: causality alone), packed rows kept apart."""
        masks: Dict[Optional[int], Optional[Tensor]] = {}
        for layer in self.layers:
            window = layer.self_attn.sliding_window
            if window not in masks:
                mask = decoder_mask(attention_mask, new, past, window=window,
                                    dtype=hidden_states.dtype, device=hidden_states.device)
                if packed is not None:
                    mask = packed if mask is None else torch.minimum(mask, packed)
                masks[window] = mask
        return masks


class DecoderForCausalLM(DecoderPreTrainedModel, GenerationMixin):
    """The body (``model_class``) with a language-modelling head, tied to the
    embeddings when ``config.tie_word_embeddings``."""

    model_class: Type[DecoderModel] = DecoderModel
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.model = self.model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> DecoderModel:
        return self.model

    def set_decoder(self, decoder: DecoderModel) -> None:
        self.model = decoder

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_key_values: Optional[Any] = None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B, T); -100 is ignored
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
        logits_to_keep: Union[int, Tensor] = 0,
        cache_position: Optional[Tensor] = None,
    ) -> Union[CausalLMOutputWithPast, Tuple]:
        """Logits (B, T, V) in the model's dtype; with ``labels`` also the mean
        cross-entropy (float32) of predicting token t+1 from tokens <= t (labels
        are shifted inside).  ``logits_to_keep``: an int n > 0 computes the last n
        positions only (``generate`` passes 1), a 1-D tensor those positions."""
        return_dict = output_flags(self.config, return_dict=return_dict).return_dict
        body = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, cache=cache,
        )
        hidden_states = body.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])                 # (B, T|n, V)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        out = CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=body.past_key_values,
            hidden_states=body.hidden_states, attentions=body.attentions,
        )
        return out if return_dict else out.to_tuple()


class DecoderForSequenceClassification(DecoderPreTrainedModel):
    """The body with ``score`` (C -> num_labels, no bias) read at each row's last
    non-padding token (see :func:`pretrained.modeling.heads.last_token_pooling`)."""

    model_class: Type[DecoderModel] = DecoderModel

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.model_class(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_key_values: Optional[Any] = None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B,) or (B, num_labels)
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
    ) -> Union[SequenceClassifierOutputWithPast, Tuple]:
        """Logits (B, num_labels); with ``labels`` the loss ``config.problem_type`` names.

        Raises:
            ValueError: a batch of more than one and no ``config.pad_token_id``.
        """
        return_dict = output_flags(self.config, return_dict=return_dict).return_dict
        body = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, cache=cache,
        )
        logits = self.score(body.last_hidden_state)                      # (B, T, num_labels)
        out = last_token_classifier_output(logits, body, input_ids, labels, self.config,
                                           model_name=type(self).__name__)
        return out if return_dict else out.to_tuple()
