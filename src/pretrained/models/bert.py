"""BERT (Devlin et al., 2018): a bidirectional post-norm transformer encoder.

Shape notation: B batch, S sequence length, C = hidden_size, H heads,
D = C / H, V vocabulary, T tokens of a packed batch.

Parameter names are those of the Hugging Face checkpoints
(``bert.encoder.layer.0.attention.self.query.weight``, ``cls.predictions...``).

Padding, with ``attn_implementation="sdpa"``: when at least 1/8 of the
batch is padding (and the first token of every row is real, as with right padding),
:class:`BertModel` takes the padding out, runs every layer on the T real
tokens and attention per sequence, and puts the padding back at the end
(:class:`~pretrained.modeling.attention.PackedSequences`).  Outputs at real
tokens equal the padded computation's; outputs at pad positions are zeros
(the padded computation gives vectors there that no head should read).  The
eager path, ``output_attentions=True``, a ``head_mask``, or
the default (``unpad_inputs`` False) compute every position as Transformers does.
The padding-free path is opt-in — ``model.to_bettertransformer()`` or
``model.bert.unpad_inputs = True`` — like the BetterTransformer fast path it
replaces, which also returned zeros at padding.

Example:
    >>> import torch
    >>> from pretrained import BertConfig, BertForMaskedLM
    >>> config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    >>> model = BertForMaskedLM(config).eval()
    >>> model(torch.tensor([[101, 2054, 103, 102]])).logits.shape
    torch.Size([1, 4, 30522])
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from ..configuration import PretrainedConfig
from ..logging import get_logger
from ..modeling.activations import ACT2FN
from ..modeling.attention import (
    PackedSequences, attention, find_pruneable_heads_and_indices, packed_sequence_mask, prune_linear_layer,
)
from ..modeling.base import PreTrainedModel
from ..modeling.heads import token_classification_loss
from ..modeling.mixin import init_normal_
from ..modeling.outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    output_flags,
)

logger = get_logger(__name__)

__all__ = ["BertConfig", "BertModel", "BertForMaskedLM", "BertPreTrainedModel"]
POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")


class BertConfig(PretrainedConfig):
    """BERT hyper-parameters; the defaults are those of ``bert-base-uncased``.

    ``position_embedding_type``: ``"absolute"`` (learned position embeddings
    added to the input), or, as in Transformers 4.37, ``"relative_key"`` /
    ``"relative_key_query"`` (Shaw et al. 2018 / Huang et al. 2020): each
    attention layer has a ``distance_embedding`` of ``2 * max_position_embeddings
    - 1`` rows of head size, whose dot products with the queries (and keys)
    are added to the attention scores; the absolute embeddings are then kept
    in the checkpoint but not added.  Transformers 5 ignores the relative
    types (it loads such a checkpoint as absolute and drops
    ``distance_embedding``); this library follows 4.37.

    """

    model_type = "bert"
    base_model_tp_plan = {  # tensor parallel (tp_plan="auto"): see pretrained.distributed
        "encoder.layer.*.attention.self.query": "colwise", "encoder.layer.*.attention.self.key": "colwise",
        "encoder.layer.*.attention.self.value": "colwise", "encoder.layer.*.attention.output.dense": "rowwise",
        "encoder.layer.*.intermediate.dense": "colwise", "encoder.layer.*.output.dense": "rowwise",
    }

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        position_embedding_type: str = "absolute",
        use_cache: bool = True,
        classifier_dropout: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.use_cache = use_cache
        self.classifier_dropout = classifier_dropout
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.position_embedding_type = _position_embedding_type(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Not saved: (1, max_positions) defaults for position and token-type ids.
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long),
                             persistent=False)

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, S)
        token_type_ids: Optional[Tensor] = None,                         # (B, S)
        position_ids: Optional[Tensor] = None,                           # (B|1, S)
        inputs_embeds: Optional[Tensor] = None,                          # (B, S, C)
        past_key_values_length: int = 0,
    ) -> Tensor:
        B, S = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if position_ids is None:
            position_ids = self.position_ids[:, past_key_values_length:past_key_values_length + S]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :S].expand(B, S)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.position_embedding_type == "absolute":
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))                           # (B, S, C)


class BertSelfAttention(nn.Module):
    """Multi-head attention with separate ``query``/``key``/``value`` projections."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0 and not hasattr(config, "embedding_size"):
            raise ValueError(f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention "
                             f"heads ({config.num_attention_heads})")
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.position_embedding_type = _position_embedding_type(config)
        if self.position_embedding_type != "absolute":
            self.max_position_embeddings = config.max_position_embeddings
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.attention_head_size)
        self.is_decoder = config.is_decoder

    def forward(
        self,
        hidden_states: Tensor,                                           # (B, S, C) or packed (T, C)
        attention_mask: Union[Tensor, PackedSequences, None] = None,     # additive (B, 1, 1|S, S)
        head_mask: Optional[Tensor] = None,
        output_attentions: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        lead = hidden_states.shape[:-1]                                  # (B, S) or (T,)

        def heads(t: Tensor) -> Tensor:                                  # -> (B, H, S, D) or (H, T, D)
            return t.view(*lead, self.num_attention_heads, self.attention_head_size).transpose(-3, -2)

        q, k, v = heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
        if self.position_embedding_type != "absolute":
            attention_mask = self._add_relative_scores(q, k, attention_mask)
        y, weights = attention(
            q, k, v, mask=attention_mask, is_causal=self.is_decoder, scale=self.attention_head_size ** -0.5,
            dropout_p=self.dropout.p if self.training else 0.0, head_mask=head_mask,
            implementation=self.config._attn_implementation or "eager", output_attentions=output_attentions,
        )
        return y.transpose(-3, -2).reshape(*lead, self.all_head_size), weights

    def _add_relative_scores(self, q: Tensor, k: Tensor, mask: Optional[Tensor]) -> Tensor:
        """``mask`` (additive, or None) plus the scaled relative-position scores, (B, H, S, S).

        As Transformers 4.37: ``distance_embedding[i - j + max_position_embeddings - 1]``
        dotted with query i (``relative_key``), plus with key j (``relative_key_query``),
        added to ``q k^T`` before the ``1/sqrt(D)`` scaling.
        """
        if isinstance(mask, PackedSequences):
            raise ValueError("relative position embeddings need the padded batch, not a packed one")
        s_q, s_k = q.shape[-2], k.shape[-2]
        distance = (torch.arange(s_q, device=q.device).view(-1, 1)
                    - torch.arange(s_k, device=q.device).view(1, -1))                    # (S, S)
        table = self.distance_embedding(distance + self.max_position_embeddings - 1).to(q.dtype)   # (S, S, D)
        scores = torch.einsum("bhld,lrd->bhlr", q, table)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", k, table)
        scores = scores / math.sqrt(self.attention_head_size)
        if mask is None and self.is_decoder:                 # the causal part `is_causal` would have added
            mask = torch.full((s_q, s_k), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device).triu(1)
        return scores if mask is None else scores + mask


def _position_embedding_type(config: BertConfig) -> str:
    kind = getattr(config, "position_embedding_type", None) or "absolute"
    if kind not in POSITION_EMBEDDING_TYPES:
        raise NotImplementedError(f"position_embedding_type={kind!r} is not supported; "
                                  f"use one of {list(POSITION_EMBEDDING_TYPES)}")
    return kind


class BertSelfOutput(nn.Module):
    """``LN(dropout(dense(h)) + residual)``: the attention's output (``BertOutput``: the MLP's)."""

    def __init__(self, config: BertConfig, in_features: Optional[int] = None) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertAttention(nn.Module):
    """Self-attention followed by its output projection, residual and LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)
        self.pruned_heads: Set[int] = set()

    def prune_heads(self, heads: Iterable[int]) -> None:
        """Remove ``heads`` (original numbering): rows of query/key/value, columns of ``output.dense``."""
        heads, index = find_pruneable_heads_and_indices(
            heads, self.self.num_attention_heads, self.self.attention_head_size, self.pruned_heads)
        if not heads:
            return
        self.self.query = prune_linear_layer(self.self.query, index)
        self.self.key = prune_linear_layer(self.self.key, index)
        self.self.value = prune_linear_layer(self.self.value, index)
        self.output.dense = prune_linear_layer(self.output.dense, index, dim=1)
        self.self.num_attention_heads -= len(heads)
        self.self.all_head_size = self.self.attention_head_size * self.self.num_attention_heads
        self.pruned_heads |= heads

    def forward(self, hidden_states: Tensor, attention_mask=None, head_mask: Optional[Tensor] = None,
                output_attentions: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        a, weights = self.self(hidden_states, attention_mask, head_mask, output_attentions)
        return self.output(a, hidden_states), weights


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        act = config.hidden_act
        self.intermediate_act_fn = ACT2FN[act] if isinstance(act, str) else act

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(BertSelfOutput):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, config.intermediate_size)


class BertLayer(nn.Module):
    """Post-norm block: ``x = LN(x + attn(x))``, then ``x = LN(x + ffn(x))``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.add_cross_attention:
            raise NotImplementedError("BERT with cross-attention (add_cross_attention=True) is not supported yet")
        self.chunk_size_feed_forward = getattr(config, "chunk_size_feed_forward", 0) or 0
        self.attention = BertAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states: Tensor, attention_mask=None, head_mask: Optional[Tensor] = None,
                output_attentions: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        x, weights = self.attention(hidden_states, attention_mask, head_mask, output_attentions)
        if self.chunk_size_feed_forward:  # token-wise, so chunks along the sequence give the same result
            chunks = x.split(self.chunk_size_feed_forward, dim=-2)
            return torch.cat([self.feed_forward_chunk(c) for c in chunks], dim=-2), weights
        return self.feed_forward_chunk(x), weights

    def feed_forward_chunk(self, attention_output: Tensor) -> Tensor:
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    """The stack of layers; owns the gradient-checkpointing switch."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: Tensor,                                           # (B, S, C) or packed (T, C)
        attention_mask: Union[Tensor, PackedSequences, None] = None,
        head_mask: Optional[Union[Tensor, List[None]]] = None,
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        past_key_values: Optional[Any] = None,
        use_cache: Optional[bool] = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> Union[BaseModelOutputWithPastAndCrossAttentions, Tuple]:
        if encoder_hidden_states is not None or past_key_values is not None:
            raise NotImplementedError("BERT cross-attention and key/value caching are not supported yet")
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                all_hidden += (hidden_states,)
            layer_head_mask = head_mask[i] if head_mask is not None else None
            if checkpointing:
                hidden_states, weights = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, attention_mask, layer_head_mask, output_attentions)
            else:
                hidden_states, weights = layer(hidden_states, attention_mask, layer_head_mask, output_attentions)
            if output_attentions:
                all_attentions += (weights,)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_attentions)
        return out if return_dict else out.to_tuple()


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: the first token's state, for sentence-level heads."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:                  # (B, S, C) -> (B, C)
        return self.activation(self.dense(hidden_states[:, 0]))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        act = config.hidden_act
        self.transform_act_fn = ACT2FN[act] if isinstance(act, str) else act
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    """Transform, then ``decoder`` (tied to the word embeddings) with an output-only ``bias``.

    ``decoder.bias`` and ``bias`` are one Parameter, so both checkpoint names load it.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def _tie_weights(self) -> None:
        # After a resize the decoder may hold a new, longer bias: adopt it; otherwise share ours.
        decoder_bias = self.decoder.bias
        if decoder_bias is not None and decoder_bias is not self.bias and \
                decoder_bias.shape[0] == self.decoder.weight.shape[0] != self.bias.shape[0]:
            self.bias = decoder_bias
        else:
            self.decoder.bias = self.bias

    def forward(self, hidden_states: Tensor) -> Tensor:                  # (..., C) -> (..., V)
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, sequence_output: Tensor) -> Tensor:
        return self.predictions(sequence_output)


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["BertEmbeddings", "BertLayer"]
    # Older checkpoints saved the position-id buffer.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)embeddings\.position_ids$"]

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for Linear and Embedding weights (padding row
        zero), zero biases, LayerNorm 1/0, zero MLM output bias."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init_normal_(module, std)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        elif isinstance(module, BertLMPredictionHead):
            module.bias.data.zero_()
        elif isinstance(module, BertEmbeddings) and module.position_ids.device.type != "meta":
            with torch.no_grad():  # buffers are not in checkpoints: rebuild them (e.g. after a meta-device build)
                module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
                module.token_type_ids.zero_()


class BertModel(BertPreTrainedModel):
    """The BERT body: embeddings, encoder and (optionally) the pooler."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.unpad_inputs = False  # opt-in padding-free SDPA (to_bettertransformer turns it on)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _prune_heads(self, heads_to_prune: Dict[int, List[int]]) -> None:
        """``{layer: [heads]}``: prune those heads in those layers."""
        for layer, heads in heads_to_prune.items():
            self.encoder.layer[int(layer)].attention.prune_heads(heads)

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, S)
        attention_mask: Optional[Tensor] = None,                         # (B, S) of 1/0, or (B, S, S)
        token_type_ids: Optional[Tensor] = None,                         # (B, S)
        position_ids: Optional[Tensor] = None,                           # (B|1, S)
        head_mask: Optional[Tensor] = None,                              # (H,) or (L, H)
        inputs_embeds: Optional[Tensor] = None,                          # (B, S, C)
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        past_key_values: Optional[Any] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[BaseModelOutputWithPoolingAndCrossAttentions, Tuple]:
        cfg = self.config
        output_attentions, output_hidden_states, _, return_dict = output_flags(
            cfg, output_attentions, output_hidden_states, return_dict=return_dict)
        if encoder_hidden_states is not None or past_key_values is not None:
            raise NotImplementedError("BERT cross-attention and key/value caching are not supported yet")
        input_shape = self._input_shape(input_ids, inputs_embeds)
        if input_ids is not None:
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)

        x = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                            inputs_embeds=inputs_embeds)                 # (B, S, C)
        packed, mask = None, None
        if attention_mask is None and position_ids is not None:             # padding-free rows, as Transformers 5
            mask = packed_sequence_mask(position_ids.view(-1, input_shape[-1]), input_shape[0],
                                        causal=bool(cfg.is_decoder), dtype=x.dtype)
        elif attention_mask is not None and not (attention_mask.dim() == 2 and bool(attention_mask.all())):
            if self._can_pack(attention_mask, head_mask, output_attentions):
                packed = mask = PackedSequences.from_mask(attention_mask)
                x = packed.pack(x)                                       # (T, C)
            else:
                mask = self.get_extended_attention_mask(attention_mask, input_shape, dtype=x.dtype)
        head_mask = self.get_head_mask(head_mask, cfg.num_hidden_layers)

        enc = self.encoder(x, attention_mask=mask, head_mask=head_mask, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, return_dict=True)
        sequence_output, hidden_states = enc.last_hidden_state, enc.hidden_states
        if packed is not None:
            sequence_output = packed.unpack(sequence_output)             # (B, S, C), zeros at padding
            if hidden_states is not None:
                hidden_states = tuple(packed.unpack(h) for h in hidden_states)
        pooled = self.pooler(sequence_output) if self.pooler is not None else None

        out = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output, pooler_output=pooled,
            hidden_states=hidden_states, attentions=enc.attentions,
        )
        return out if return_dict else out.to_tuple()

    def _can_pack(self, attention_mask: Tensor, head_mask: Optional[Tensor], output_attentions: bool) -> bool:
        """Whether to run this padded batch without its padding (see the module docstring)."""
        return (
            self.config._attn_implementation == "sdpa"
            and self.unpad_inputs
            and attention_mask.dim() == 2
            and not output_attentions
            and head_mask is None
            and not self.config.is_decoder
            and _position_embedding_type(self.config) == "absolute"
            and not torch.jit.is_tracing()
            and not _is_compiling()
            and bool(attention_mask[:, 0].all())                         # the pooler reads token 0
            and int(attention_mask.sum()) <= 0.875 * attention_mask.numel()  # enough padding to gain
        )


class BertForMaskedLM(BertPreTrainedModel):
    """BERT with the masked-language-modelling head (``cls.predictions``)."""

    _tied_weights_keys = ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        if config.is_decoder:
            logger.warning("If you want to use `BertForMaskedLM` make sure `config.is_decoder=False` for "
                           "bi-directional self-attention.")
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B, S); -100 is ignored
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[MaskedLMOutput, Tuple]:
        """Logits (B, S, V); with ``labels`` also the mean cross-entropy over the
        labelled positions."""
        body, return_dict = run_body(self, return_dict, input_ids, attention_mask, token_type_ids, position_ids,
                                     head_mask, inputs_embeds, encoder_hidden_states, encoder_attention_mask,
                                     output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self.cls(body.last_hidden_state)                        # (B, S, V)
        loss = token_classification_loss(logits.float(), labels, self.config.vocab_size) if labels is not None else None
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=body.hidden_states, attentions=body.attentions)
        return out if return_dict else out.to_tuple()


def run_body(head: BertPreTrainedModel, return_dict: Optional[bool], *inputs: Any,
             **options: Any) -> Tuple[BaseModelOutputWithPoolingAndCrossAttentions, bool]:
    """What a head's forward starts with: ``head.bert`` on ``inputs`` (positional, in
    :meth:`BertModel.forward`'s order) as a dataclass, and whether the head returns one."""
    body = head.bert(*inputs, **options, return_dict=True)
    return body, output_flags(head.config, return_dict=return_dict).return_dict


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False
