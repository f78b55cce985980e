"""GPT-2 (Radford et al., 2019): a decoder-only transformer with learned positions.

Shape notation: B batch, T new tokens, P cached tokens, C = n_embd, H heads,
D = C / H, V vocabulary.

Parameter names are those of the Hugging Face checkpoints (``transformer.h.0.
attn.c_attn.weight``...).  The projections are ``Conv1D``: a Linear whose weight
is stored transposed, (in, out), as in OpenAI's original TensorFlow code.

The key/value cache is passed as ``past_key_values``: a cache object
(:class:`~pretrained.modeling.cache.DynamicCache`, or any object with
``get_seq_length()`` and ``update(key, value, layer_idx)``), or the legacy tuple
of ``(key, value)`` per layer, each (B, H, P, D).  With ``use_cache`` a cache
object comes back: the one passed in, updated, or a new ``DynamicCache``.

Example:
    >>> import torch
    >>> from pretrained import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4)).eval()
    >>> out = model(torch.tensor([[464, 2068]]), labels=torch.tensor([[464, 2068]]))
    >>> out.logits.shape, out.past_key_values.get_seq_length()
    (torch.Size([1, 2, 50257]), 2)
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from ..configuration import PretrainedConfig
from ..logging import get_logger
from ..modeling.activations import ACT2FN
from ..modeling.attention import (attention, causal_mask, expanded_mask, find_pruneable_heads_and_indices,
                                  packed_sequence_mask)
from ..modeling.base import PreTrainedModel
from ..modeling.cache import prepare_cache
from ..modeling.generation import GenerationMixin
from ..modeling.heads import last_token_classifier_output
from ..modeling.losses import causal_lm_loss
from ..modeling.mixin import init_normal_
from ..modeling.outputs import (BaseModelOutputWithPastAndCrossAttentions, CausalLMOutputWithCrossAttentions,
                                SequenceClassifierOutputWithPast, output_flags)

logger = get_logger(__name__)

__all__ = ["GPT2Config", "GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2PreTrainedModel",
           "Conv1D"]


class GPT2Config(PretrainedConfig):
    """GPT-2 hyper-parameters; the defaults are those of the 124M ``gpt2`` checkpoint.

    ``hidden_size``, ``max_position_embeddings``, ``num_attention_heads`` and
    ``num_hidden_layers`` are aliases of ``n_embd``, ``n_positions``, ``n_head``
    and ``n_layer``.  ``n_inner`` (default 4 * n_embd) is the MLP width.
    """

    model_type = "gpt2"
    base_model_tp_plan = {  # tensor parallel (tp_plan="auto"): c_attn is fused q/k/v, see pretrained.distributed
        "h.*.attn.c_attn": "packed_colwise", "h.*.attn.c_proj": "rowwise",
        "h.*.mlp.c_fc": "colwise", "h.*.mlp.c_proj": "rowwise",
    }
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        n_positions: int = 1024,
        n_embd: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        n_inner: Optional[int] = None,
        activation_function: str = "gelu_new",
        resid_pdrop: float = 0.1,
        embd_pdrop: float = 0.1,
        attn_pdrop: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        summary_type: str = "cls_index",
        summary_use_proj: bool = True,
        summary_activation: Optional[str] = None,
        summary_proj_to_labels: bool = True,
        summary_first_dropout: float = 0.1,
        scale_attn_weights: bool = True,
        use_cache: bool = True,
        bos_token_id: int = 50256,
        eos_token_id: int = 50256,
        scale_attn_by_inverse_layer_idx: bool = False,
        reorder_and_upcast_attn: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.summary_type = summary_type
        self.summary_use_proj = summary_use_proj
        self.summary_activation = summary_activation
        self.summary_first_dropout = summary_first_dropout
        self.summary_proj_to_labels = summary_proj_to_labels
        self.scale_attn_weights = scale_attn_weights
        self.use_cache = use_cache
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = reorder_and_upcast_attn
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)


class Conv1D(nn.Module):
    """``y = x @ weight + bias`` with ``weight`` (nx, nf): a Linear stored transposed.

    Args:
        nf: output features.
        nx: input features.
    """

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:                              # (..., nx) -> (..., nf)
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], self.nf)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"


def prune_conv1d_layer(layer: Conv1D, index: Tensor, dim: int = 1) -> Conv1D:
    """A new Conv1D keeping ``index`` along ``dim`` of its (nx, nf) weight
    (1: outputs, with the bias; 0: inputs, bias unchanged)."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = (layer.bias[index] if dim == 1 else layer.bias).detach().clone()
    new = Conv1D(weight.shape[1], weight.shape[0]).to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


class GPT2Attention(nn.Module):
    """Causal self-attention with a fused q/k/v projection ``c_attn`` (C -> 3C)."""

    def __init__(self, config: GPT2Config, layer_idx: Optional[int] = None) -> None:
        super().__init__()
        if config.add_cross_attention:
            raise NotImplementedError("GPT-2 with cross-attention (add_cross_attention=True) is not supported yet")
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.split_size = self.embed_dim
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"n_embd ({self.embed_dim}) must be divisible by n_head ({self.num_heads})")
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = config.scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        self.layer_idx = layer_idx

        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.pruned_heads: Set[int] = set()

    def prune_heads(self, heads: Iterable[int]) -> None:
        """Remove ``heads`` (original numbering): their q, k and v columns of
        ``c_attn`` and their rows of ``c_proj``."""
        heads, index = find_pruneable_heads_and_indices(heads, self.num_heads, self.head_dim, self.pruned_heads)
        if not heads:
            return
        index_attn = torch.cat([index, index + self.split_size, index + 2 * self.split_size])
        self.c_attn = prune_conv1d_layer(self.c_attn, index_attn, dim=1)
        self.c_proj = prune_conv1d_layer(self.c_proj, index, dim=0)
        self.num_heads -= len(heads)
        self.split_size = self.num_heads * self.head_dim
        self.pruned_heads |= heads

    def forward(
        self,
        hidden_states: Tensor,                                           # (B, T, C)
        cache: Optional[Any] = None,
        attention_mask: Optional[Tensor] = None,                         # additive (B|1, 1, T, P+T)
        head_mask: Optional[Tensor] = None,
        output_attentions: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        B, T, _ = hidden_states.shape
        q, k, v = self.c_attn(hidden_states).split(self.split_size, dim=2)    # 3 x (B, T, H*D)
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)                     # (B, H, P+T, D)

        scale = self.head_dim ** -0.5 if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        y, weights = attention(
            q, k, v, mask=attention_mask, is_causal=True, scale=scale, head_mask=head_mask,
            dropout_p=self.attn_dropout.p if self.training else 0.0,
            implementation=self.config._attn_implementation or "eager",
            output_attentions=output_attentions, upcast=self.reorder_and_upcast_attn,
        )                                                                 # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        y = self.resid_dropout(self.c_proj(y))                            # (B, T, C)
        return y, weights


class GPT2MLP(nn.Module):
    def __init__(self, intermediate_size: int, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, intermediate_size)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:                              # (B, T, C)
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPT2Config, layer_idx: Optional[int] = None) -> None:
        super().__init__()
        hidden = config.hidden_size
        inner = config.n_inner if config.n_inner is not None else 4 * hidden
        self.ln_1 = nn.LayerNorm(hidden, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(hidden, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(inner, config)

    def forward(
        self,
        hidden_states: Tensor,                                           # (B, T, C)
        cache: Optional[Any] = None,
        attention_mask: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        output_attentions: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        a, weights = self.attn(self.ln_1(hidden_states), cache, attention_mask, head_mask, output_attentions)
        hidden_states = hidden_states + a
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, weights


class GPT2PreTrainedModel(PreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = "transformer"
    is_parallelizable = True
    supports_gradient_checkpointing = True
    is_parallelizable = True  # as Transformers 4.37 (a flag: no naive parallelize() here)
    _no_split_modules = ["GPT2Block"]
    _skip_keys_device_placement = "past_key_values"
    _supports_sdpa = True
    # Old checkpoints carry the causal-mask buffers of the original implementation.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)attn\.(masked_)?bias$", r"(^|\.)crossattention\.(masked_)?bias$"]

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for Linear/Conv1D/Embedding weights, zero biases,
        LayerNorm 1/0; residual output projections (``c_proj``) get
        N(0, initializer_range / sqrt(2 * n_layer)) (GPT-2 paper, section 2.3)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D, nn.Embedding)):
            init_normal_(module, std)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, (GPT2Attention, GPT2MLP)):
            module.c_proj.weight.data.normal_(mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))


class GPT2Model(GPT2PreTrainedModel):
    """The GPT-2 body: token + position embeddings, ``n_layer`` blocks, final LayerNorm."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.embed_dim = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.wpe = nn.Embedding(config.max_position_embeddings, self.embed_dim)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    def _prune_heads(self, heads_to_prune: Dict[int, List[int]]) -> None:
        """``{layer: [heads]}``: prune those heads in those layers."""
        for layer, heads in heads_to_prune.items():
            self.h[int(layer)].attn.prune_heads(heads)

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, T)
        past_key_values: Optional[Any] = None,
        attention_mask: Optional[Tensor] = None,                         # (B, P+T) of 1/0
        token_type_ids: Optional[Tensor] = None,                         # (B, T)
        position_ids: Optional[Tensor] = None,                           # (B|1, T)
        head_mask: Optional[Tensor] = None,                              # (H,) or (L, H)
        inputs_embeds: Optional[Tensor] = None,                          # (B, T, C)
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
    ) -> Union[BaseModelOutputWithPastAndCrossAttentions, Tuple]:
        output_attentions, output_hidden_states, use_cache, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, use_cache, return_dict)
        if encoder_hidden_states is not None:
            raise NotImplementedError("GPT-2 with cross-attention (encoder_hidden_states) is not supported yet")
        input_shape, inputs_embeds = self._inputs_embeds(input_ids, inputs_embeds, attention_mask)
        B, T = inputs_embeds.shape[:2]

        checkpointing, use_cache = self._checkpointing(use_cache, logger)
        kv_cache, past_length = prepare_cache(past_key_values if past_key_values is not None else cache,
                                              use_cache=use_cache)
        packed = None
        if position_ids is not None and attention_mask is None and kv_cache is None:
            packed = packed_sequence_mask(position_ids.view(-1, T), B, causal=True, dtype=inputs_embeds.dtype)
        if checkpointing:
            kv_cache = None

        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + T, device=inputs_embeds.device)[None]
        position_ids = position_ids.view(-1, T)
        hidden_states = inputs_embeds + self.wpe(position_ids).to(inputs_embeds.device)
        if token_type_ids is not None:
            hidden_states = hidden_states + self.wte(token_type_ids.view(-1, T))
        hidden_states = self.drop(hidden_states)                         # (B, T, C)

        mask = packed if packed is not None else self._attention_mask(
            attention_mask, B, T, past_length, hidden_states.dtype, hidden_states.device)
        head_mask = self.get_head_mask(head_mask, self.config.n_layer)

        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, block in enumerate(self.h):
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if checkpointing:
                hidden_states, weights = self._gradient_checkpointing_func(
                    block.__call__, hidden_states, None, mask, head_mask[i], output_attentions)
            else:
                hidden_states, weights = block(hidden_states, kv_cache, mask, head_mask[i], output_attentions)
            if output_attentions:
                all_attentions += (weights,)

        hidden_states = self.ln_f(hidden_states).view(*input_shape, -1)  # (B, T, C)
        if output_hidden_states:
            all_hidden += (hidden_states,)

        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, past_key_values=kv_cache if use_cache else None,
            hidden_states=all_hidden, attentions=all_attentions,
        )
        return out if return_dict else out.to_tuple()

    def _inputs_embeds(self, input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor],
                       attention_mask: Optional[Tensor]) -> Tuple[torch.Size, Tensor]:
        """The input's leading shape and its token embeddings (B, T, C), from exactly one of the two."""
        input_shape = self._input_shape(input_ids, inputs_embeds)
        if input_ids is None:
            return input_shape, inputs_embeds.view(-1, *inputs_embeds.shape[-2:])
        self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
        return input_shape, self.wte(input_ids.view(-1, input_shape[-1]))

    def _attention_mask(self, attention_mask: Optional[Tensor], batch: int, new: int, past: int,
                        dtype: torch.dtype, device: torch.device) -> Optional[Tensor]:
        """The additive causal mask (B|1, 1, T, P+T), or None when causality alone
        does it (SDPA then runs its own causal kernel)."""
        if attention_mask is not None and attention_mask.dim() == 4:      # already expanded by the caller
            return expanded_mask(attention_mask, dtype)
        if attention_mask is not None:
            attention_mask = attention_mask.view(batch, -1)
            if self.config._attn_implementation == "sdpa" and bool(attention_mask.all()):
                attention_mask = None
        if attention_mask is None and self.config._attn_implementation == "sdpa":
            return None
        return causal_mask(attention_mask, new, past + new, dtype=dtype, device=device)


class GPT2LMHeadModel(GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with a language-modelling head tied to the token embeddings."""

    _tied_weights_keys = ["lm_head.weight"]

    _per_position_inputs = ("position_ids", "token_type_ids")  # sliced per generation step

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        past_key_values: Optional[Any] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B, T); -100 is ignored
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
    ) -> Union[CausalLMOutputWithCrossAttentions, Tuple]:
        """Logits (B, T, V); with ``labels`` also the mean cross-entropy of
        predicting token t+1 from tokens <= t (labels are shifted inside)."""
        return_dict = output_flags(self.config, return_dict=return_dict).return_dict
        body = self.transformer(
            input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
            token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, cache=cache,
        )
        hidden_states = body.last_hidden_state
        logits = self.lm_head(hidden_states)  # (B, T, V)

        loss = causal_lm_loss(logits, labels) if labels is not None else None

        out = CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=body.past_key_values,
            hidden_states=body.hidden_states, attentions=body.attentions,
        )
        return out if return_dict else out.to_tuple()


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 with a classifier (``score``, no bias) read at each row's last
    non-padding token (see :func:`pretrained.modeling.heads.last_token_pooling`)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        past_key_values: Optional[Any] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B,) or (B, num_labels)
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[SequenceClassifierOutputWithPast, Tuple]:
        """Logits (B, num_labels); with ``labels`` the loss ``config.problem_type`` names.

        Raises:
            ValueError: a batch of more than one and no ``config.pad_token_id``.
        """
        return_dict = output_flags(self.config, return_dict=return_dict).return_dict
        body = self.transformer(
            input_ids, past_key_values=past_key_values, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self.score(body.last_hidden_state)                      # (B, T, num_labels)
        out = last_token_classifier_output(logits, body, input_ids, labels, self.config,
                                           model_name=type(self).__name__)
        return out if return_dict else out.to_tuple()
