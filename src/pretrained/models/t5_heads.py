"""T5's model classes: the shared base (initialisation, embedding tying), the bare
encoder-decoder, the conditional-generation (LM head) model and the encoder alone.

This file belongs to the T5 architecture: it imports ``t5.py`` only (the config,
the layers and the stack), and ``t5.py`` re-exports its classes, so
``pretrained.models.t5.T5ForConditionalGeneration`` stays the name to use.

One embedding matrix ``shared`` serves the encoder and the decoder (their
``embed_tokens.weight`` is the same parameter) and, when ``tie_word_embeddings``
(T5 v1.0), the LM head, in which case the decoder output is multiplied by
``d_model ** -0.5`` before the head (see :class:`~pretrained.models.t5.T5Config`).

Example:
    >>> import torch
    >>> from pretrained import T5Config, T5ForConditionalGeneration
    >>> config = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    >>> model = T5ForConditionalGeneration(config).eval()
    >>> out = model(torch.tensor([[5, 6, 7, 1]]), labels=torch.tensor([[8, 9, 1]]))
    >>> out.logits.shape, out.loss.dim()
    (torch.Size([1, 3, 99]), 0)
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

from torch import Tensor, nn

from ..modeling.base import PreTrainedModel
from ..modeling.cache import Cache
from ..modeling.generation import GenerationMixin
from ..modeling.heads import token_classification_loss
from ..modeling.outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    output_flags,
)
from .t5 import T5Attention, T5Config, T5DenseActDense, T5DenseGatedActDense, T5LayerNorm, T5Stack

__all__ = ["T5PreTrainedModel", "T5Model", "T5EncoderModel", "T5ForConditionalGeneration"]

# Transformers 4.37 warns the same way when only ``head_mask`` is given.
_HEAD_MASK_WARNING = (
    "The input argument `head_mask` was split into two arguments `head_mask` and `decoder_head_mask`. "
    "Currently, `decoder_head_mask` is set to copy `head_mask`, but this feature is deprecated and will be "
    "removed in future versions. If you do not want to use any `decoder_head_mask` now, please set "
    "`decoder_head_mask = torch.ones(num_layers, num_heads)`."
)


class T5PreTrainedModel(PreTrainedModel):
    config_class = T5Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    is_parallelizable = True  # as Transformers 4.37 (a flag: no naive parallelize() here)
    _no_split_modules = ["T5Block"]
    _keep_in_fp32_modules = ["wo"]
    _supports_sdpa = True
    # The first cross-attention never had a position bias, but old checkpoints carry one.
    _keys_to_ignore_on_load_unexpected = [
        r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",
    ]

    def _init_weights(self, module: nn.Module) -> None:
        """Mesh TensorFlow's initialisation, scaled by ``initializer_factor`` (f):
        ``shared`` (and an untied ``lm_head``) N(0, f); q N(0, f (C D)^-1/2); k, v
        N(0, f C^-1/2); o N(0, f (H D)^-1/2); the position bias N(0, f C^-1/2);
        wi* N(0, f C^-1/2); wo N(0, f F^-1/2); norms f."""
        factor = self.config.initializer_factor
        d_model, d_kv, d_ff, n_heads = self.config.d_model, self.config.d_kv, self.config.d_ff, self.config.num_heads
        if isinstance(module, T5LayerNorm):
            module.weight.data.fill_(factor * 1.0)
        elif isinstance(module, nn.Embedding) and module is getattr(self, "shared", None):
            module.weight.data.normal_(mean=0.0, std=factor * 1.0)
        elif isinstance(module, nn.Linear) and module is getattr(self, "lm_head", None):
            if not self.config.tie_word_embeddings:
                module.weight.data.normal_(mean=0.0, std=factor * 1.0)
        elif isinstance(module, T5DenseActDense):
            module.wi.weight.data.normal_(mean=0.0, std=factor * d_model ** -0.5)
            module.wo.weight.data.normal_(mean=0.0, std=factor * d_ff ** -0.5)
        elif isinstance(module, T5DenseGatedActDense):
            module.wi_0.weight.data.normal_(mean=0.0, std=factor * d_model ** -0.5)
            module.wi_1.weight.data.normal_(mean=0.0, std=factor * d_model ** -0.5)
            module.wo.weight.data.normal_(mean=0.0, std=factor * d_ff ** -0.5)
        elif isinstance(module, T5Attention):
            module.q.weight.data.normal_(mean=0.0, std=factor * (d_model * d_kv) ** -0.5)
            module.k.weight.data.normal_(mean=0.0, std=factor * d_model ** -0.5)
            module.v.weight.data.normal_(mean=0.0, std=factor * d_model ** -0.5)
            module.o.weight.data.normal_(mean=0.0, std=factor * (n_heads * d_kv) ** -0.5)
            if module.has_relative_attention_bias:
                module.relative_attention_bias.weight.data.normal_(mean=0.0, std=factor * d_model ** -0.5)

    def _shift_right(self, input_ids: Tensor) -> Tensor:
        """``decoder_start_token_id`` followed by ``input_ids[:, :-1]``, with -100 replaced by the pad id."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None:
            raise ValueError(
                "self.model.config.decoder_start_token_id has to be defined. In T5 it is usually set to the "
                "pad_token_id. See T5 docs for more information."
            )
        if pad is None:
            raise ValueError("self.model.config.pad_token_id has to be defined.")
        shifted = input_ids.new_zeros(input_ids.shape)
        shifted[..., 1:] = input_ids[..., :-1].clone()
        shifted[..., 0] = start
        return shifted.masked_fill_(shifted == -100, pad)

    # ---- shared by the three models: the embedding, pruning, the stacks
    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.shared = new_embeddings
        self._tie_embed_tokens()

    def tie_weights(self) -> None:
        """The encoder's and decoder's ``embed_tokens`` always share ``shared.weight``;
        the LM head does when ``config.tie_word_embeddings``."""
        self._tie_embed_tokens()
        super().tie_weights()

    def _tie_embed_tokens(self) -> None:
        shared = self.shared
        for stack in (getattr(self, "encoder", None), getattr(self, "decoder", None)):
            if stack is None:
                continue
            embed = stack.embed_tokens
            embed.weight = shared.weight
            embed.num_embeddings, embed.embedding_dim = shared.weight.shape
            embed.padding_idx = shared.padding_idx

    def get_encoder(self) -> T5Stack:
        return self.encoder

    def _prune_heads(self, heads_to_prune: Dict[int, List[int]]) -> None:
        """``{layer: [heads]}``: prune self-attention heads of those *encoder* blocks (as Transformers 4.x)."""
        for layer, heads in heads_to_prune.items():
            self.encoder.block[int(layer)].layer[0].SelfAttention.prune_heads(heads)

    def _build_stacks(self, config: T5Config, decoder: bool = True) -> None:
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        if decoder:
            self.decoder = T5Stack(config, is_decoder=True)


def _as_encoder_output(encoder_outputs: Any) -> BaseModelOutput:
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    return BaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
        attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
    )


class T5Model(T5PreTrainedModel):
    """The bare encoder-decoder: returns the decoder's last hidden state (B, T, C)."""

    _tied_weights_keys = [r"^encoder\.embed_tokens\.weight$", r"^decoder\.embed_tokens\.weight$"]

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self._build_stacks(config)
        self.post_init()

    def get_decoder(self) -> T5Stack:
        return self.decoder

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, S)
        attention_mask: Optional[Tensor] = None,                         # (B, S)
        decoder_input_ids: Optional[Tensor] = None,                      # (B, T)
        decoder_attention_mask: Optional[Tensor] = None,                 # (B, P+T)
        head_mask: Optional[Tensor] = None,
        decoder_head_mask: Optional[Tensor] = None,
        cross_attn_head_mask: Optional[Tensor] = None,
        encoder_outputs: Optional[Any] = None,
        past_key_values: Optional[Any] = None,
        inputs_embeds: Optional[Tensor] = None,
        decoder_inputs_embeds: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
    ) -> Union[Seq2SeqModelOutput, Tuple]:
        return_dict = output_flags(self.config, return_dict=return_dict).return_dict
        encoder_outputs, decoder_outputs = _encode_decode(
            self, input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, head_mask=head_mask, decoder_head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask, encoder_outputs=encoder_outputs,
            past_key_values=past_key_values if past_key_values is not None else cache, inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        out = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return out if return_dict else out.to_tuple()


def _encode_decode(
    model: T5PreTrainedModel,
    *,
    input_ids: Optional[Tensor],
    attention_mask: Optional[Tensor],
    decoder_input_ids: Optional[Tensor],
    decoder_attention_mask: Optional[Tensor],
    head_mask: Optional[Tensor],
    decoder_head_mask: Optional[Tensor],
    cross_attn_head_mask: Optional[Tensor],
    encoder_outputs: Optional[Any],
    past_key_values: Optional[Any],
    inputs_embeds: Optional[Tensor],
    decoder_inputs_embeds: Optional[Tensor],
    use_cache: Optional[bool],
    output_attentions: Optional[bool],
    output_hidden_states: Optional[bool],
) -> Tuple[BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions]:
    """Run the encoder (unless ``encoder_outputs`` are given) and the decoder over it
    (``past_key_values``: the cache given either way, 4.x or 5.x name)."""
    if head_mask is not None and decoder_head_mask is None:
        if model.config.num_layers == model.config.num_decoder_layers:
            warnings.warn(_HEAD_MASK_WARNING, FutureWarning)
            decoder_head_mask = head_mask
    if encoder_outputs is None:
        encoder_outputs = model.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, head_mask=head_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
    else:
        encoder_outputs = _as_encoder_output(encoder_outputs)
    decoder_outputs = model.decoder(
        input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, inputs_embeds=decoder_inputs_embeds,
        past_key_values=past_key_values, encoder_hidden_states=encoder_outputs.last_hidden_state,
        encoder_attention_mask=attention_mask,
        head_mask=decoder_head_mask, cross_attn_head_mask=cross_attn_head_mask, use_cache=use_cache,
        output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
    )
    return encoder_outputs, decoder_outputs


class T5ForConditionalGeneration(T5PreTrainedModel, GenerationMixin):
    """T5 with its language-modelling head: logits (B, T, V) over the next decoder token.

    With ``labels`` (B, T) and no ``decoder_input_ids``, the decoder input is
    ``labels`` shifted right behind ``decoder_start_token_id`` (-100 -> pad), and
    ``loss`` is the mean cross-entropy over labels that are not -100.

    ``generate(input_ids, attention_mask=..., max_new_tokens=...)`` runs the
    encoder once and the decoder one token per step from
    ``decoder_start_token_id`` with the cache; it returns the decoder ids,
    start token first.
    """

    _tied_weights_keys = [r"^encoder\.embed_tokens\.weight$", r"^decoder\.embed_tokens\.weight$",
                          r"^lm_head\.weight$"]

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.model_dim = config.d_model
        self._build_stacks(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> T5Stack:
        return self.decoder

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, S)
        attention_mask: Optional[Tensor] = None,                         # (B, S)
        decoder_input_ids: Optional[Tensor] = None,                      # (B, T)
        decoder_attention_mask: Optional[Tensor] = None,                 # (B, P+T)
        head_mask: Optional[Tensor] = None,
        decoder_head_mask: Optional[Tensor] = None,
        cross_attn_head_mask: Optional[Tensor] = None,
        encoder_outputs: Optional[Any] = None,
        past_key_values: Optional[Any] = None,
        inputs_embeds: Optional[Tensor] = None,
        decoder_inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B, T); -100 is ignored
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Any] = None,
    ) -> Union[Seq2SeqLMOutput, Tuple]:
        return_dict = output_flags(self.config, return_dict=return_dict).return_dict
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        encoder_outputs, decoder_outputs = _encode_decode(
            self, input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, head_mask=head_mask, decoder_head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask, encoder_outputs=encoder_outputs,
            past_key_values=past_key_values if past_key_values is not None else cache, inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        sequence_output = decoder_outputs.last_hidden_state              # (B, T, C)
        if self.config.scale_decoder_outputs:  # tied head: Mesh TensorFlow rescales before the shared matrix
            sequence_output = sequence_output * (self.model_dim ** -0.5)
        logits = self.lm_head(sequence_output)  # (B, T, V)

        loss = token_classification_loss(logits, labels, logits.size(-1)) if labels is not None else None

        out = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return out if return_dict else out.to_tuple()

    # ---- generation hooks
    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,                                               # (B, P+T) decoder ids so far
        past_key_values: Optional[Any] = None,
        attention_mask: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        decoder_head_mask: Optional[Tensor] = None,
        decoder_attention_mask: Optional[Tensor] = None,
        cross_attn_head_mask: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        encoder_outputs: Optional[Any] = None,
        **kwargs: Any,
    ) -> Dict[str, Any]:
        """The keyword arguments of the next ``forward`` in a decoding loop.

        With a cache, only the decoder ids it has not seen are passed (the last
        one when the caller already cut them).  ``attention_mask`` is the
        encoder's padding mask.
        """
        if past_key_values is not None:
            past_length = _past_length(past_key_values)
            cut = past_length if input_ids.shape[1] > past_length else input_ids.shape[1] - 1
            input_ids = input_ids[:, cut:]
        return {
            "decoder_input_ids": input_ids,
            "past_key_values": past_key_values,
            "encoder_outputs": encoder_outputs,
            "attention_mask": attention_mask,
            "head_mask": head_mask,
            "decoder_head_mask": decoder_head_mask,
            "decoder_attention_mask": decoder_attention_mask,
            "cross_attn_head_mask": cross_attn_head_mask,
            "use_cache": use_cache,
        }

    def prepare_decoder_input_ids_from_labels(self, labels: Tensor) -> Tensor:
        return self._shift_right(labels)


def _past_length(past_key_values: Any) -> int:
    if isinstance(past_key_values, Cache):
        return past_key_values.get_seq_length()
    return past_key_values[0][0].shape[2] if len(past_key_values) else 0


class T5EncoderModel(T5PreTrainedModel):
    """The encoder alone: last hidden state (B, S, C)."""

    _tied_weights_keys = [r"^encoder\.embed_tokens\.weight$"]
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^lm_head\."]

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self._build_stacks(config, decoder=False)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[Tensor] = None,                              # (B, S)
        attention_mask: Optional[Tensor] = None,                         # (B, S)
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,                          # (B, S, C)
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[BaseModelOutput, Tuple]:
        return_dict = output_flags(self.config, return_dict=return_dict).return_dict
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, head_mask=head_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        out = BaseModelOutput(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                              attentions=out.attentions)
        return out if return_dict else out.to_tuple()
