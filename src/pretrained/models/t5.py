"""T5 (Raffel et al., 2019): an encoder-decoder transformer with relative position buckets.

Shape notation: B batch, S encoder length, T new decoder tokens, P cached
decoder tokens, C = d_model, H heads, D = d_kv, F = d_ff, V vocabulary.

Parameter names are those of the Hugging Face checkpoints
(``encoder.block.0.layer.0.SelfAttention.q.weight``, ``shared.weight``...).
Differences from the usual transformer, each kept exactly:

* RMS-style ``T5LayerNorm`` (no mean, no bias; the variance in float32), pre-norm.
* Attention scores are not scaled by ``D ** -0.5``; instead a learned bias per
  head and *relative position bucket* is added.  Only the first block of each
  stack owns the ``relative_attention_bias`` table; the bias it gives is
  computed once per forward and reused by every block.  The encoder's buckets
  are bidirectional, the decoder's causal.  Cross-attention has no position bias.
* One embedding matrix ``shared`` serves both stacks and, when
  ``tie_word_embeddings`` (T5 v1.0), the LM head, whose input is then scaled by
  ``d_model ** -0.5``.  T5 v1.1 (``feed_forward_proj="gated-gelu"``,
  ``tie_word_embeddings=False``) has its own ``lm_head`` and no rescaling.
  Transformers 5 writes v1.1 configs as ``tie_word_embeddings=True,
  scale_decoder_outputs=False`` (and ties); that pair is read the same way here.

The position bias and the masks are folded into one additive float tensor,
``bias = position_bias + mask`` (B|1, H, Tq, Tk), which the shared
:func:`~pretrained.modeling.attention.attention` takes as its mask with
``scale=1.0``, so ``"eager"`` and ``"sdpa"`` both work.

The key/value cache is an :class:`~pretrained.modeling.cache.EncoderDecoderCache`
(self-attention keys grow each step; cross-attention keys are computed from the
encoder output once).  The legacy format — per layer ``(self_k, self_v,
cross_k, cross_v)``, each (B, H, len, D) — is accepted and then returned as it came.

The model classes (:class:`T5Model`, :class:`T5ForConditionalGeneration`,
:class:`T5EncoderModel`, :class:`T5PreTrainedModel`) are in ``t5_heads.py``
(``pretrained.T5Model`` etc. name them).

Example:
    >>> import torch
    >>> from pretrained.models.t5 import T5Config, T5Stack
    >>> stack = T5Stack(T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    >>> stack(torch.tensor([[5, 6, 7, 1]])).last_hidden_state.shape
    torch.Size([1, 4, 32])
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from ..configuration import PretrainedConfig
from ..logging import get_logger
from ..modeling.activations import ACT2FN
from ..modeling.attention import (attention, causal_mask, expanded_mask, find_pruneable_heads_and_indices,
                                  padding_mask, prune_linear_layer)
from ..modeling.cache import EncoderDecoderCache, prepare_cache
from ..modeling.mixin import ModuleUtilsMixin
from ..modeling.outputs import BaseModelOutputWithPastAndCrossAttentions, output_flags

logger = get_logger(__name__)

__all__ = ["T5Config", "T5Stack"]


class T5Config(PretrainedConfig):
    """T5 hyper-parameters; the defaults are those of ``t5-small``.

    ``hidden_size``, ``num_attention_heads``, ``num_hidden_layers`` and ``head_dim``
    are aliases of ``d_model``, ``num_heads``, ``num_layers`` and ``d_kv``.

    Args:
        feed_forward_proj: ``"relu"`` (T5 v1.0), ``"gated-gelu"`` (v1.1: ``gelu_new``
            gated by a second projection) or ``"{act}"`` / ``"gated-{act}"``.
            Sets ``dense_act_fn`` and ``is_gated_act``.
        num_decoder_layers: default ``num_layers``.
        tie_word_embeddings: the LM head shares ``shared.weight``.
        scale_decoder_outputs: multiply the decoder output by ``d_model ** -0.5``
            before the LM head; default ``tie_word_embeddings`` (as in 4.x).

    Raises:
        ValueError: a malformed ``feed_forward_proj``.
    """

    model_type = "t5"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "head_dim": "d_kv",
    }

    def __init__(
        self,
        vocab_size: int = 32128,
        d_model: int = 512,
        d_kv: int = 64,
        d_ff: int = 2048,
        num_layers: int = 6,
        num_decoder_layers: Optional[int] = None,
        num_heads: int = 8,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        dropout_rate: float = 0.1,
        layer_norm_epsilon: float = 1e-6,
        initializer_factor: float = 1.0,
        feed_forward_proj: str = "relu",
        is_encoder_decoder: bool = True,
        use_cache: bool = True,
        pad_token_id: int = 0,
        eos_token_id: int = 1,
        decoder_start_token_id: int = 0,
        classifier_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.d_kv = d_kv
        self.d_ff = d_ff
        self.num_layers = num_layers
        self.num_decoder_layers = num_decoder_layers if num_decoder_layers is not None else num_layers
        self.num_heads = num_heads
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.dropout_rate = dropout_rate
        self.classifier_dropout = classifier_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_factor = initializer_factor
        self.feed_forward_proj = feed_forward_proj
        self.use_cache = use_cache

        act_info = feed_forward_proj.split("-")
        if (len(act_info) > 1 and act_info[0] != "gated") or len(act_info) > 2:
            raise ValueError(
                f"`feed_forward_proj`: {feed_forward_proj} is not a valid activation function of the dense layer. "
                "Please make sure `feed_forward_proj` is of the format `gated-{ACT_FN}` or `{ACT_FN}`, e.g. "
                "'gated-gelu' or 'relu'"
            )
        self.dense_act_fn = act_info[-1]
        self.is_gated_act = act_info[0] == "gated"
        if feed_forward_proj == "gated-gelu":  # what the v1.1 checkpoints were trained with
            self.dense_act_fn = "gelu_new"

        scale = kwargs.pop("scale_decoder_outputs", None)
        super().__init__(
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            **kwargs,
        )
        self.scale_decoder_outputs = self.tie_word_embeddings if scale is None else bool(scale)


# ----------------------------------------------------------------------------- layers
class T5LayerNorm(nn.Module):
    """Root-mean-square norm without bias: ``weight * x / sqrt(mean(x²) + eps)``,
    the mean taken in float32; the result is cast to a half-precision weight's dtype.

    Not the shared :class:`~pretrained.modeling.norms.RMSNorm`: that one casts to
    the *input's* dtype, while T5 casts to the *weight's* — which matters in a
    float16 model whose float32 ``wo`` makes the residual stream float32.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:                 # (..., C)
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


def _to_wo_dtype(hidden_states: Tensor, wo: nn.Linear) -> Tensor:
    """``wo`` may be kept in float32 in a half-precision model (``_keep_in_fp32_modules``)."""
    weight = wo.weight
    if isinstance(weight, Tensor) and hidden_states.dtype != weight.dtype and weight.dtype != torch.int8:
        hidden_states = hidden_states.to(weight.dtype)
    return hidden_states


class T5DenseActDense(nn.Module):
    """``wo(dropout(act(wi(x))))`` (T5 v1.0: act = ReLU)."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = ACT2FN[config.dense_act_fn]

    def forward(self, hidden_states: Tensor) -> Tensor:                 # (B, S, C)
        hidden_states = self.dropout(self.act(self.wi(hidden_states)))  # (B, S, F)
        return self.wo(_to_wo_dtype(hidden_states, self.wo))            # (B, S, C)


class T5DenseGatedActDense(nn.Module):
    """``wo(dropout(act(wi_0(x)) * wi_1(x)))`` (T5 v1.1: act = gelu_new)."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = ACT2FN[config.dense_act_fn]

    def forward(self, hidden_states: Tensor) -> Tensor:                 # (B, S, C)
        gate = self.act(self.wi_0(hidden_states))                       # (B, S, F)
        hidden_states = self.dropout(gate * self.wi_1(hidden_states))   # (B, S, F)
        return self.wo(_to_wo_dtype(hidden_states, self.wo))            # (B, S, C)


class T5LayerFF(nn.Module):
    """Pre-norm feed-forward sublayer with its residual: ``x + dropout(ff(norm(x)))``."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated_act else T5DenseActDense(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states: Tensor) -> Tensor:                 # (B, S, C)
        return hidden_states + self.dropout(self.DenseReluDense(self.layer_norm(hidden_states)))


class T5Attention(nn.Module):
    """Multi-head attention without score scaling; the position bias comes in with the mask.

    Args:
        config: the model config.
        has_relative_attention_bias: own the (buckets, H) ``relative_attention_bias``
            table (first block of a stack).
        is_decoder: causal buckets (decoder) or bidirectional ones (encoder).
        layer_idx: which slot of the cache this layer reads and writes.
    """

    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, *,
                 is_decoder: bool = False, layer_idx: Optional[int] = None) -> None:
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        self.has_relative_attention_bias = has_relative_attention_bias
        self.relative_attention_num_buckets = config.relative_attention_num_buckets
        self.relative_attention_max_distance = config.relative_attention_max_distance
        self.d_model = config.d_model
        self.key_value_proj_dim = config.d_kv
        self.n_heads = config.num_heads
        self.dropout = config.dropout_rate
        self.inner_dim = self.n_heads * self.key_value_proj_dim
        self.layer_idx = layer_idx

        self.q = nn.Linear(self.d_model, self.inner_dim, bias=False)
        self.k = nn.Linear(self.d_model, self.inner_dim, bias=False)
        self.v = nn.Linear(self.d_model, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, self.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.relative_attention_num_buckets, self.n_heads)
        self.pruned_heads: Set[int] = set()

    def prune_heads(self, heads: Iterable[int]) -> None:
        """Remove ``heads`` (original numbering): their rows of q/k/v and columns of o.
        The position bias keeps all heads; each layer picks the ones it still has."""
        heads, index = find_pruneable_heads_and_indices(heads, self.n_heads, self.key_value_proj_dim,
                                                        self.pruned_heads)
        if not heads:
            return
        self.q = prune_linear_layer(self.q, index)
        self.k = prune_linear_layer(self.k, index)
        self.v = prune_linear_layer(self.v, index)
        self.o = prune_linear_layer(self.o, index, dim=1)
        self.n_heads -= len(heads)
        self.inner_dim = self.key_value_proj_dim * self.n_heads
        self.pruned_heads |= heads

    @staticmethod
    def _relative_position_bucket(relative_position: Tensor, bidirectional: bool = True, num_buckets: int = 32,
                                  max_distance: int = 128) -> Tensor:
        """Map ``key_pos - query_pos`` to a bucket in ``[0, num_buckets)`` (Mesh TensorFlow's scheme).

        Half of the buckets (per direction when bidirectional) are exact offsets
        0..n/2-1; the rest grow logarithmically up to ``max_distance``, beyond
        which all offsets share the last bucket.  Causal (``bidirectional=False``):
        keys after the query all fall into bucket 0.
        """
        relative_buckets = 0
        if bidirectional:
            num_buckets //= 2
            relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
            relative_position = torch.abs(relative_position)
        else:
            relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
        max_exact = num_buckets // 2                                     # relative_position >= 0 from here
        is_small = relative_position < max_exact
        if_large = max_exact + (
            torch.log(relative_position.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).to(torch.long)
        if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
        return relative_buckets + torch.where(is_small, relative_position, if_large)

    def compute_bias(self, query_length: int, key_length: int, device: Optional[torch.device] = None,
                     past_length: int = 0) -> Tensor:
        """The position bias (1, H, Tq, Tk) of queries ``past_length ..`` over keys ``0 .. key_length``."""
        if device is None:
            device = self.relative_attention_bias.weight.device
        context_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None] + past_length
        memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        buckets = self._relative_position_bucket(
            memory_position - context_position,                         # (Tq, Tk)
            bidirectional=not self.is_decoder,
            num_buckets=self.relative_attention_num_buckets,
            max_distance=self.relative_attention_max_distance,
        )
        values = self.relative_attention_bias(buckets)                  # (Tq, Tk, H)
        return values.permute(2, 0, 1).unsqueeze(0)                      # (1, H, Tq, Tk)

    def forward(
        self,
        hidden_states: Tensor,                                           # (B, Tq, C)
        bias: Optional[Tensor] = None,                                   # (B|1, H0|1, Tq, Tk), additive
        key_value_states: Optional[Tensor] = None,                       # (B, S, C): cross-attention
        cache: Optional[EncoderDecoderCache] = None,
        head_mask: Optional[Tensor] = None,                              # (1|B, H, 1, 1)
        output_attentions: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        B, Tq, _ = hidden_states.shape

        def heads(t: Tensor) -> Tensor:                                  # (B, L, H*D) -> (B, H, L, D)
            return t.view(B, -1, self.n_heads, self.key_value_proj_dim).transpose(1, 2)

        q = heads(self.q(hidden_states))                                 # (B, H, Tq, D)
        if key_value_states is None:                                     # self-attention
            k, v = heads(self.k(hidden_states)), heads(self.v(hidden_states))
            if cache is not None:
                k, v = cache.self_attention_cache.update(k, v, self.layer_idx)   # (B, H, P+T, D)
        else:                                                            # cross-attention, cached once
            cross = cache.cross_attention_cache if cache is not None else None
            if cross is not None and self.layer_idx < len(cross):
                k, v = cross[self.layer_idx]                             # (B, H, S, D)
            else:
                k, v = heads(self.k(key_value_states)), heads(self.v(key_value_states))
                if cross is not None:
                    cross.update(k, v, self.layer_idx)

        if bias is not None and self.pruned_heads and bias.shape[1] > 1:  # the bias has every original head
            keep = [h for h in range(bias.shape[1]) if h not in self.pruned_heads]
            bias = bias[:, keep]
        y, weights = attention(
            q, k, v, mask=bias, scale=1.0, head_mask=head_mask,
            dropout_p=self.dropout if self.training else 0.0,
            implementation=self.config._attn_implementation or "eager",
            output_attentions=output_attentions,
        )                                                                # (B, H, Tq, D)
        y = y.transpose(1, 2).reshape(B, Tq, self.inner_dim)
        return self.o(y), weights                                        # (B, Tq, C)


class T5LayerSelfAttention(nn.Module):
    """``x + dropout(self_attention(norm(x)))``."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, *,
                 is_decoder: bool = False, layer_idx: Optional[int] = None) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, is_decoder=is_decoder,
                                         layer_idx=layer_idx)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states: Tensor, bias: Optional[Tensor] = None, cache=None,
                head_mask: Optional[Tensor] = None, output_attentions: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        y, weights = self.SelfAttention(self.layer_norm(hidden_states), bias, cache=cache, head_mask=head_mask,
                                        output_attentions=output_attentions)
        return hidden_states + self.dropout(y), weights


class T5LayerCrossAttention(nn.Module):
    """``x + dropout(cross_attention(norm(x), encoder_states))``."""

    def __init__(self, config: T5Config, *, layer_idx: Optional[int] = None) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, has_relative_attention_bias=False, is_decoder=True,
                                           layer_idx=layer_idx)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states: Tensor, key_value_states: Tensor, bias: Optional[Tensor] = None, cache=None,
                head_mask: Optional[Tensor] = None, output_attentions: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        y, weights = self.EncDecAttention(self.layer_norm(hidden_states), bias, key_value_states=key_value_states,
                                          cache=cache, head_mask=head_mask, output_attentions=output_attentions)
        return hidden_states + self.dropout(y), weights


def _clamp_fp16(hidden_states: Tensor) -> Tensor:
    """Keep float16 activations finite (T5 overflows in half precision without it)."""
    if hidden_states.dtype != torch.float16:
        return hidden_states
    limit = torch.finfo(torch.float16).max
    clamp_value = torch.where(torch.isinf(hidden_states).any(), limit - 1000, limit)
    return torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)


class T5Block(nn.Module):
    """``layer[0]`` self-attention, ``layer[1]`` cross-attention (decoder only), ``layer[-1]`` feed-forward."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, *,
                 is_decoder: bool = False, layer_idx: Optional[int] = None) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, has_relative_attention_bias,
                                                         is_decoder=is_decoder, layer_idx=layer_idx)])
        if is_decoder:
            self.layer.append(T5LayerCrossAttention(config, layer_idx=layer_idx))
        self.layer.append(T5LayerFF(config))

    def forward(
        self,
        hidden_states: Tensor,                                           # (B, T, C)
        bias: Optional[Tensor] = None,                                   # (B|1, H, T, P+T)
        encoder_hidden_states: Optional[Tensor] = None,                  # (B, S, C)
        cross_bias: Optional[Tensor] = None,                             # (B, 1, 1, S)
        head_mask: Optional[Tensor] = None,
        cross_head_mask: Optional[Tensor] = None,
        cache: Optional[EncoderDecoderCache] = None,
        output_attentions: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        hidden_states, self_weights = self.layer[0](hidden_states, bias, cache, head_mask, output_attentions)
        hidden_states = _clamp_fp16(hidden_states)
        cross_weights = None
        if self.is_decoder and encoder_hidden_states is not None:
            hidden_states, cross_weights = self.layer[1](hidden_states, encoder_hidden_states, cross_bias, cache,
                                                         cross_head_mask, output_attentions)
            hidden_states = _clamp_fp16(hidden_states)
        hidden_states = _clamp_fp16(self.layer[-1](hidden_states))
        return hidden_states, self_weights, cross_weights


# ----------------------------------------------------------------------------- stack
class T5Stack(nn.Module, ModuleUtilsMixin):
    """The encoder (``is_decoder=False``) or the decoder: embeddings, blocks, final norm.

    In a model, ``embed_tokens.weight`` is the model's ``shared.weight`` (tied by
    :meth:`T5PreTrainedModel.tie_weights`).  The config object is the model's;
    the stack's own facts (``is_decoder``, its number of blocks) are attributes here.
    """

    def __init__(self, config: T5Config, embed_tokens: Optional[nn.Embedding] = None, *,
                 is_decoder: bool = False) -> None:
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens if embed_tokens is not None else nn.Embedding(config.vocab_size,
                                                                                       config.d_model)
        num_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList([
            T5Block(config, has_relative_attention_bias=(i == 0), is_decoder=is_decoder, layer_idx=i)
            for i in range(num_layers)
        ])
        self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> Optional[nn.Embedding]:
        return self.embed_tokens

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.embed_tokens = new_embeddings

    def _self_bias(self, attention_mask: Optional[Tensor], B: int, T: int, past: int, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
        """Relative position bias plus the padding (and, in the decoder, causal) mask: (B|1, H, T, P+T)."""
        total = past + T
        bias = self.block[0].layer[0].SelfAttention.compute_bias(T, total, device=device, past_length=past)
        bias = bias.to(dtype)                                            # (1, H, T, P+T)
        if attention_mask is not None and attention_mask.dim() == 4:     # already expanded by the caller
            return bias + expanded_mask(attention_mask, dtype)
        if attention_mask is not None and attention_mask.shape[-1] != total:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions; the "
                             f"{'decoder' if self.is_decoder else 'encoder'} attends over {total} "
                             f"({past} cached + {T} new)")
        if self.is_decoder:
            return bias + causal_mask(attention_mask, T, total, dtype=dtype, device=device)
        if attention_mask is not None:
            return bias + padding_mask(attention_mask, dtype)           # (B, H, T, S)
        return bias

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, T)
        attention_mask: Optional[Tensor] = None,                         # (B, P+T) of 1/0
        encoder_hidden_states: Optional[Tensor] = None,                  # (B, S, C)
        encoder_attention_mask: Optional[Tensor] = None,                 # (B, S) of 1/0
        inputs_embeds: Optional[Tensor] = None,                          # (B, T, C)
        head_mask: Optional[Tensor] = None,                              # (H,) or (L, H)
        cross_attn_head_mask: Optional[Tensor] = None,                   # (H,) or (L, H)
        past_key_values: Optional[Any] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
    ) -> Union[BaseModelOutputWithPastAndCrossAttentions, Tuple]:
        output_attentions, output_hidden_states, use_cache, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, use_cache, return_dict)
        use_cache = use_cache and self.is_decoder
        past_key_values = past_key_values if past_key_values is not None else cache
        inputs_embeds = self._inputs_embeds(input_ids, inputs_embeds)    # (B, T, C)
        B, T = inputs_embeds.shape[:2]

        checkpointing, use_cache = self._checkpointing(use_cache, logger)
        # The cache (decoder only): legacy tuples in -> legacy tuples out; a cache object is used as it is.
        legacy = isinstance(past_key_values, (tuple, list))
        kv_cache, past = prepare_cache(past_key_values if self.is_decoder else None, use_cache=use_cache,
                                       encoder_decoder=True)
        if checkpointing:
            kv_cache = None

        dtype, device = inputs_embeds.dtype, inputs_embeds.device
        bias = self._self_bias(attention_mask, B, T, past, dtype, device)
        cross_bias = self._cross_bias(encoder_hidden_states, encoder_attention_mask, dtype)
        head_mask = self.get_head_mask(head_mask, len(self.block))
        cross_attn_head_mask = self.get_head_mask(cross_attn_head_mask, len(self.block))

        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_cross = () if output_attentions and self.is_decoder else None
        hidden_states = self.dropout(inputs_embeds)                      # (B, T, C)
        for i, block in enumerate(self.block):
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if checkpointing:
                hidden_states, weights, cross_weights = self._gradient_checkpointing_func(
                    block.__call__, hidden_states, bias, encoder_hidden_states, cross_bias, head_mask[i],
                    cross_attn_head_mask[i], None, output_attentions)
            else:
                hidden_states, weights, cross_weights = block(
                    hidden_states, bias, encoder_hidden_states, cross_bias, head_mask[i], cross_attn_head_mask[i],
                    kv_cache, output_attentions)
            if output_attentions:
                all_attentions += (weights,)
                if self.is_decoder:
                    all_cross += (cross_weights,)

        hidden_states = self.dropout(self.final_layer_norm(hidden_states))  # (B, T, C)
        if output_hidden_states:
            all_hidden += (hidden_states,)

        next_cache = None
        if use_cache and kv_cache is not None:
            next_cache = kv_cache.to_legacy_cache() if legacy else kv_cache
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, past_key_values=next_cache, hidden_states=all_hidden,
            attentions=all_attentions, cross_attentions=all_cross,
        )
        return out if return_dict else out.to_tuple()

    def _inputs_embeds(self, input_ids: Optional[Tensor], inputs_embeds: Optional[Tensor]) -> Tensor:
        """The token embeddings (B, T, C), from exactly one of ``input_ids`` and ``inputs_embeds``."""
        self._input_shape(input_ids, inputs_embeds, side="decoder_" if self.is_decoder else "")
        if input_ids is None:
            return inputs_embeds
        if self.embed_tokens is None:
            raise ValueError("You have to initialize the model with valid token embeddings")
        return self.embed_tokens(input_ids.view(-1, input_ids.shape[-1]))

    def _cross_bias(self, encoder_hidden_states: Optional[Tensor], encoder_attention_mask: Optional[Tensor],
                    dtype: torch.dtype) -> Optional[Tensor]:
        """The decoder's additive mask over the encoder output (B, 1, 1, S), or None."""
        if not self.is_decoder or encoder_hidden_states is None or encoder_attention_mask is None:
            return None
        if encoder_attention_mask.dim() == 4:
            return expanded_mask(encoder_attention_mask, dtype)
        return padding_mask(encoder_attention_mask, dtype)

