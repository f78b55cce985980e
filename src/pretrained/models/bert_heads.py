"""BERT's task heads: sequence classification, token classification, extractive
question answering.  Parameter names are Transformers' (``bert.*``, ``classifier.*``,
``qa_outputs.*``); the losses are those of :mod:`pretrained.modeling.heads`.

This file belongs to the BERT architecture (it imports ``bert.py`` only, which
stays the file of the config and the body).

Example:
    >>> import torch
    >>> from pretrained import BertConfig, BertForSequenceClassification
    >>> config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                     intermediate_size=37, num_labels=3)
    >>> out = BertForSequenceClassification(config)(torch.tensor([[2, 5, 7]]), labels=torch.tensor([1]))
    >>> out.logits.shape, out.loss.shape
    (torch.Size([1, 3]), torch.Size([]))
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor, nn

from ..modeling.heads import question_answering_loss, sequence_classification_loss, token_classification_loss
from ..modeling.outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput, TokenClassifierOutput
from .bert import BertConfig, BertModel, BertPreTrainedModel, run_body

__all__ = ["BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering"]


def _classifier_dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with a linear classifier on the pooled [CLS] output (``num_labels`` outputs)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B,) or (B, num_labels)
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[SequenceClassifierOutput, Tuple]:
        """Logits (B, num_labels); with ``labels`` the loss that ``config.problem_type``
        names (inferred on first use, see :mod:`pretrained.modeling.heads`)."""
        body, return_dict = run_body(self, return_dict, input_ids, attention_mask, token_type_ids, position_ids,
                                     head_mask, inputs_embeds, output_attentions=output_attentions,
                                     output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(body.pooler_output))      # (B, num_labels)
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=body.hidden_states,
                                       attentions=body.attentions)
        return out if return_dict else out.to_tuple()


class BertForTokenClassification(BertPreTrainedModel):
    """BERT with a linear classifier on every token (no pooler)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,                                 # (B, S); -100 is ignored
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[TokenClassifierOutput, Tuple]:
        """Logits (B, S, num_labels); with ``labels`` the mean cross-entropy over the labelled tokens."""
        body, return_dict = run_body(self, return_dict, input_ids, attention_mask, token_type_ids, position_ids,
                                     head_mask, inputs_embeds, output_attentions=output_attentions,
                                     output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(body.last_hidden_state))  # (B, S, num_labels)
        loss = token_classification_loss(logits, labels, self.num_labels) if labels is not None else None
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=body.hidden_states,
                                    attentions=body.attentions)
        return out if return_dict else out.to_tuple()


class BertForQuestionAnswering(BertPreTrainedModel):
    """BERT with a span head: ``qa_outputs`` (C -> num_labels, 2 in practice) gives
    start and end logits per token."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        head_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        start_positions: Optional[Tensor] = None,                        # (B,)
        end_positions: Optional[Tensor] = None,                          # (B,)
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[QuestionAnsweringModelOutput, Tuple]:
        """``start_logits``/``end_logits`` (B, S); with both positions the mean of the
        two cross-entropies (positions past the sequence are ignored)."""
        body, return_dict = run_body(self, return_dict, input_ids, attention_mask, token_type_ids, position_ids,
                                     head_mask, inputs_embeds, output_attentions=output_attentions,
                                     output_hidden_states=output_hidden_states)
        logits = self.qa_outputs(body.last_hidden_state)                 # (B, S, 2)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                           hidden_states=body.hidden_states, attentions=body.attentions)
        return out if return_dict else out.to_tuple()
