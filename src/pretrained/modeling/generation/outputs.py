"""What ``generate(..., return_dict_in_generate=True)`` returns, named and shaped as in Transformers.

Per-step tuples hold one entry per generated token: ``scores`` the processed
scores (B, V), ``logits`` the raw last-position logits (B, V) in float32,
``attentions``/``hidden_states`` the model's per-layer tuples of that step
(the prompt's at step 0).  ``past_key_values`` (also readable as ``cache``, the
5.x name) is the final cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

from ..outputs import ModelOutput

__all__ = ["GenerateDecoderOnlyOutput", "GenerateEncoderDecoderOutput", "GenerateBeamDecoderOnlyOutput",
           "GenerateBeamEncoderDecoderOutput"]


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    sequences: torch.LongTensor = None
    scores: Optional[Tuple[torch.Tensor, ...]] = None
    logits: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[Any, ...]] = None
    hidden_states: Optional[Tuple[Any, ...]] = None
    past_key_values: Optional[Any] = None


@dataclass
class GenerateEncoderDecoderOutput(ModelOutput):
    sequences: torch.LongTensor = None
    scores: Optional[Tuple[torch.Tensor, ...]] = None
    logits: Optional[Tuple[torch.Tensor, ...]] = None
    encoder_attentions: Optional[Tuple[torch.Tensor, ...]] = None
    encoder_hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    decoder_attentions: Optional[Tuple[Any, ...]] = None
    cross_attentions: Optional[Tuple[Any, ...]] = None
    decoder_hidden_states: Optional[Tuple[Any, ...]] = None
    past_key_values: Optional[Any] = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    sequences: torch.LongTensor = None
    sequences_scores: Optional[torch.Tensor] = None
    scores: Optional[Tuple[torch.Tensor, ...]] = None
    logits: Optional[Tuple[torch.Tensor, ...]] = None
    beam_indices: Optional[torch.LongTensor] = None
    attentions: Optional[Tuple[Any, ...]] = None
    hidden_states: Optional[Tuple[Any, ...]] = None
    past_key_values: Optional[Any] = None


@dataclass
class GenerateBeamEncoderDecoderOutput(ModelOutput):
    sequences: torch.LongTensor = None
    sequences_scores: Optional[torch.Tensor] = None
    scores: Optional[Tuple[torch.Tensor, ...]] = None
    logits: Optional[Tuple[torch.Tensor, ...]] = None
    beam_indices: Optional[torch.LongTensor] = None
    encoder_attentions: Optional[Tuple[torch.Tensor, ...]] = None
    encoder_hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    decoder_attentions: Optional[Tuple[Any, ...]] = None
    cross_attentions: Optional[Tuple[Any, ...]] = None
    decoder_hidden_states: Optional[Tuple[Any, ...]] = None
    past_key_values: Optional[Any] = None
