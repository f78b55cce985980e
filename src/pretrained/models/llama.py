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

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..configuration import PretrainedConfig
from ..logging import get_logger, warning_once
from ..modeling.activations import ACT2FN
from ..modeling.attention import attention, causal_mask, packed_sequence_mask
from ..modeling.base import PreTrainedModel
from ..modeling.cache import DynamicCache, as_cache
from ..modeling.generation import GenerationMixin, causal_lm_loss
from ..modeling.norms import RMSNorm
from ..modeling.outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from ..modeling.rope import RotaryEmbedding, apply_rotary, rope_parameters

logger = get_logger(__name__)

__all__ = ["LlamaConfig", "LlamaModel", "LlamaForCausalLM", "LlamaPreTrainedModel"]


class LlamaConfig(PretrainedConfig):
    """Llama hyper-parameters; the defaults are Transformers' (Llama-2-7B shapes).

    RoPE settings are read in either spelling: 5.x ``rope_parameters`` (a dict
    with ``rope_type``, ``rope_theta``, ``factor``...) or 4.x ``rope_theta`` +
    ``rope_scaling``; when both are given, ``rope_scaling`` wins, as in
    Transformers 5.  They are kept as one standard ``rope_parameters`` dict;
    ``rope_theta`` and ``rope_scaling`` read and write it.  ``config.json``
    gets all three keys, so 4.x and 5.x readers both find theirs.

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
        pretraining_tp: int = 1,
        tie_word_embeddings: bool = False,
        rope_theta: Optional[float] = None,
        rope_scaling: Optional[Mapping[str, Any]] = None,
        rope_parameters: Optional[Mapping[str, Any]] = None,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        mlp_bias: bool = False,
        head_dim: Optional[int] = None,
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
        self.pretraining_tp = pretraining_tp
        self.use_cache = use_cache
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias
        self._set_rope(rope_parameters, rope_theta=rope_theta, rope_scaling=rope_scaling)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    # --- RoPE settings: one dict, three names -------------------------------------------------
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
    def rope_scaling(self, value: Optional[Mapping[str, Any]]) -> None:
        theta = self.rope_parameters["rope_theta"]
        self.rope_parameters = rope_parameters(dict(value) if value else {"rope_type": "default"}, rope_theta=theta,
                                               max_position_embeddings=self.max_position_embeddings)

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        out["rope_theta"] = self.rope_theta
        out["rope_scaling"] = self.rope_scaling
        return out


# ------------------------------------------------------------------------------ modules


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``, C -> I -> C."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:                              # (B, T, C)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttention(nn.Module):
    """Causal self-attention with rotary positions and Hkv <= H key/value heads."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
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
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

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
        q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, H, T, D)
        k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, Hkv, T, D)
        v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, Hkv, T, D)
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


class LlamaDecoderLayer(nn.Module):
    """``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: Tensor, cos: Tensor, sin: Tensor, mask: Optional[Tensor] = None,
                cache: Optional[Any] = None, output_attentions: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        a, weights = self.self_attn(self.input_layernorm(hidden_states), cos, sin, mask, cache, output_attentions)
        hidden_states = hidden_states + a
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, weights


# ------------------------------------------------------------------------------ models


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # Checkpoints of some older conversions carry the rotary table; it is always recomputed.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq$"]

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for Linear and Embedding weights, zero biases and
        padding row, RMSNorm weights 1."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class LlamaModel(LlamaPreTrainedModel):
    """The Llama body: token embeddings, ``num_hidden_layers`` decoder layers, final RMSNorm."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
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
        cfg = self.config
        output_attentions = output_attentions if output_attentions is not None else cfg.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        use_cache = use_cache if use_cache is not None else cfg.use_cache
        return_dict = return_dict if return_dict is not None else cfg.use_return_dict

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
            inputs_embeds = self.embed_tokens(input_ids)                 # (B, T, C)
        B, T = inputs_embeds.shape[:2]

        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointing and use_cache:
            warning_once(logger, "`use_cache=True` is incompatible with gradient checkpointing. "
                                 "Setting `use_cache=False`.")
            use_cache = False

        kv_cache = as_cache(past_key_values if past_key_values is not None else cache)
        if kv_cache is None and use_cache:
            kv_cache = DynamicCache()
        past_length = kv_cache.get_seq_length() if kv_cache is not None else 0
        packed = None
        if position_ids is not None and attention_mask is None and kv_cache is None:
            packed = packed_sequence_mask(position_ids, B, causal=True, dtype=inputs_embeds.dtype)
        if checkpointing:
            kv_cache = None

        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + T, device=inputs_embeds.device)[None]
        hidden_states = inputs_embeds
        cos, sin = self.rotary_emb(position_ids, dtype=hidden_states.dtype)          # (B|1, T, D) each
        mask = packed if packed is not None else self._attention_mask(
            attention_mask, T, past_length, hidden_states.dtype, hidden_states.device)

        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
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

    def _attention_mask(self, attention_mask: Optional[Tensor], new: int, past: int, dtype: torch.dtype,
                        device: torch.device) -> Optional[Tensor]:
        """The additive mask (B, 1, T, P+T), or None when causality alone does it
        (no padding): the attention then runs its own causal kernel."""
        if attention_mask is None:
            return None
        if attention_mask.dim() == 4:                                    # already expanded by the caller
            if attention_mask.dtype == torch.bool:
                return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
                    ~attention_mask, torch.finfo(dtype).min)
            return attention_mask.to(dtype)
        if attention_mask.dim() != 2 or attention_mask.shape[1] != past + new:
            raise ValueError(f"attention_mask must be (batch, past + new tokens) = (B, {past + new}), "
                             f"got {tuple(attention_mask.shape)}")
        if bool(attention_mask.all()):
            return None
        return causal_mask(attention_mask, new, past + new, dtype=dtype, device=device)


class LlamaForCausalLM(LlamaPreTrainedModel, GenerationMixin):
    """Llama with a language-modelling head (untied from the embeddings unless
    ``config.tie_word_embeddings``)."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> LlamaModel:
        return self.model

    def set_decoder(self, decoder: LlamaModel) -> None:
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
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
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

