"""What every task head shares: the losses, and the last-token pooling of decoder classifiers.

The losses follow Transformers: ``config.problem_type`` is inferred on the first
call with labels when it is ``None`` (one label: ``"regression"``; integer labels:
``"single_label_classification"``; otherwise ``"multi_label_classification"``) and
written to the config, so a saved fine-tuned model keeps it.

Example:
    >>> import torch
    >>> from pretrained import BertConfig
    >>> config = BertConfig(num_labels=3)
    >>> loss = sequence_classification_loss(torch.zeros(2, 3), torch.tensor([0, 2]), config)
    >>> round(float(loss), 4), config.problem_type
    (1.0986, 'single_label_classification')
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..logging import get_logger, warning_once
from .outputs import SequenceClassifierOutputWithPast

logger = get_logger(__name__)

__all__ = ["sequence_classification_loss", "token_classification_loss", "question_answering_loss",
           "last_token_pooling", "last_token_classifier_output"]


def sequence_classification_loss(logits: Tensor, labels: Tensor, config: Any) -> Tensor:
    """The loss of a sequence classifier, by ``config.problem_type`` (inferred when ``None``).

    Args:
        logits: (B, num_labels).
        labels: (B,) class ids, (B,) or (B, num_labels) targets for regression,
            (B, num_labels) 0/1 floats for multi-label.
        config: the model config; its ``problem_type`` is set when it was ``None``.

    Returns:
        The scalar loss: MSE (regression), cross-entropy ignoring -100 (single
        label), BCE with logits (multi label).

    Raises:
        ValueError: ``problem_type`` is not one of the three.
    """
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1), ignore_index=-100)
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"config.problem_type {config.problem_type!r} is not 'regression', "
                     "'single_label_classification' or 'multi_label_classification'")


def token_classification_loss(logits: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """Mean cross-entropy over the tokens (labels -100 ignored).

    Shapes:
        logits (B, S, num_labels), labels (B, S) -> a scalar.
    """
    return F.cross_entropy(logits.view(-1, num_labels), labels.to(logits.device).view(-1), ignore_index=-100)


def question_answering_loss(start_logits: Tensor, end_logits: Tensor, start_positions: Optional[Tensor],
                            end_positions: Optional[Tensor]) -> Optional[Tensor]:
    """The mean of the start and end cross-entropies; positions outside the
    sequence are clamped to S and ignored.  ``None`` unless both positions are given.

    Shapes:
        start_logits, end_logits (B, S); start_positions, end_positions (B,) or (B, 1).
    """
    if start_positions is None or end_positions is None:
        return None
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start_positions = start_positions.to(start_logits.device).clamp(0, ignored)
    end_positions = end_positions.to(end_logits.device).clamp(0, ignored)
    start = F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
    end = F.cross_entropy(end_logits, end_positions, ignore_index=ignored)
    return (start + end) / 2


def last_token_pooling(logits: Tensor, input_ids: Optional[Tensor], pad_token_id: Optional[int],
                       *, model_name: str) -> Tensor:
    """The logits at each row's last token that is not ``pad_token_id`` (left or
    right padding alike: the rightmost non-pad token), as Transformers picks it.

    Without ``pad_token_id`` only a batch of one is accepted (its last token);
    with ``inputs_embeds`` (``input_ids`` None) padding cannot be seen and the last
    position is taken, with a warning.

    Args:
        logits: (B, T, N) per-token scores.
        input_ids: (B, T) or None.
        pad_token_id: ``config.pad_token_id``.
        model_name: the class name, for the messages.

    Returns:
        (B, N).

    Raises:
        ValueError: a batch of more than one without a pad token.
    """
    batch = logits.shape[0]
    if pad_token_id is None and batch != 1:
        raise ValueError(f"{model_name} cannot handle batch sizes > 1 if no padding token is defined: "
                         "set config.pad_token_id (the id the tokenizer pads with)")
    if pad_token_id is None:
        last = -1
    elif input_ids is not None:
        non_pad = (input_ids != pad_token_id).to(logits.device, torch.int32)
        positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
        last = (positions * non_pad).argmax(-1)
    else:
        last = -1
        warning_once(logger, f"{model_name} will not detect padding tokens in `inputs_embeds`. Results may be "
                             "unexpected if using padding tokens in conjunction with `inputs_embeds.`")
    return logits[torch.arange(batch, device=logits.device), last]


def last_token_classifier_output(logits: Tensor, body: Any, input_ids: Optional[Tensor], labels: Optional[Tensor],
                                 config: Any, *, model_name: str) -> SequenceClassifierOutputWithPast:
    """A decoder classifier's output: ``logits`` (B, T, N) read at each row's last non-pad
    token (:func:`last_token_pooling`), the loss of ``labels`` (see
    :func:`sequence_classification_loss`), and the body's cache and per-layer states."""
    pooled = last_token_pooling(logits, input_ids, config.pad_token_id, model_name=model_name)
    loss = sequence_classification_loss(pooled, labels, config) if labels is not None else None
    return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, past_key_values=body.past_key_values,
                                            hidden_states=body.hidden_states, attentions=body.attentions)
