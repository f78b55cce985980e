"""Training losses shared by the language-model heads.

:func:`causal_lm_loss` is the next-token cross-entropy of every causal LM head
(GPT-2, the Llama-style decoders), computed as Transformers computes it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["causal_lm_loss"]


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy: position t predicts label t+1; labels of -100 are ignored.

    Shapes:
        logits ``(B, T, V)``, labels ``(B, T)`` -> a scalar (computed in float32).
    """
    labels = labels.to(logits.device)
    shift_logits = logits[..., :-1, :].float()                       # (B, T-1, V)
    shift_labels = labels[..., 1:]                                    # (B, T-1)
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=-100)
