"""Logits processors of ``generate``, in Transformers' order.

Each processor maps ``(ids (B, L), scores (B, V))`` to new scores (removed
tokens at ``-inf``).  :func:`build_logits_processor` builds the pipeline once
per ``generate`` call: the repetition penalty, the n-gram ban, the minimum
length, then, when sampling, temperature, top-k, top-p and min-p.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["process_logits", "min_p_filter", "ban_repeated_ngrams", "build_logits_processor"]


def process_logits(
    scores: Tensor,
    *,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
) -> Tensor:
    """Sampling's logits processors in Transformers' order: temperature, top-k, top-p.

    Args:
        scores: (B, V) float logits.
        temperature: divides the logits (skipped when None or 1.0).
        top_k: keep the k largest (ties with the k-th kept too); None or 0 skips.
        top_p: keep the smallest set of largest-probability tokens whose mass
            reaches ``top_p`` (at least one); None or 1.0 skips.

    Returns:
        (B, V) with removed tokens at ``-inf``.
    """
    if temperature is not None and temperature != 1.0:
        scores = scores / temperature
    if top_k is not None and top_k != 0:
        k = min(top_k, scores.size(-1))
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)                                    # (B, V) in ascending order
        remove[..., -1:] = False                                              # keep at least one
        scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), -float("inf"))
    return scores


def _apply_processors(scores: Tensor, ids: Tensor, penalty: Optional[float], skip: Optional[Tensor],
                      eos_ids: Optional[Tensor], min_length: int, ngram: Optional[int] = None) -> Tensor:
    """The repetition penalty (``penalty`` None: none), then repeated n-grams banned (``ngram``), then EOS forbidden while ``ids`` is
    shorter than ``min_length``.  ``scores`` (B, V): logits, or log-probabilities in beam search."""
    if penalty is not None:
        scores = _penalize_repetitions(scores, ids, penalty, skip)
    if ngram:
        scores = ban_repeated_ngrams(scores, ids, ngram)
    if eos_ids is not None and ids.shape[1] < min_length:
        vocab = torch.arange(scores.shape[-1], device=scores.device)
        scores = scores.masked_fill(torch.isin(vocab, eos_ids), -float("inf"))
    return scores


def _penalize_repetitions(scores: Tensor, ids: Tensor, penalty: float, skip: Optional[Tensor] = None) -> Tensor:
    """Transformers' (CTRL's) repetition penalty.

    Args:
        scores: (B, V) float logits.
        ids: (B, L) the sequence so far.
        penalty: a seen token's positive score is divided by it, a negative one multiplied.
        skip: (B,) leading positions of each row that do not count (left padding), or None.

    Returns:
        (B, V) the penalised scores.
    """
    vocab = scores.shape[-1]
    ids = ids.clamp(max=vocab)                                  # ids the head cannot produce: column V, dropped
    if skip is not None:
        positions = torch.arange(ids.shape[1], device=ids.device)
        ids = ids.masked_fill(positions < skip[:, None], vocab)
    seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    seen = seen.scatter(1, ids, True)[:, :vocab]                                 # (B, V)
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def min_p_filter(scores: Tensor, min_p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Transformers' min-p: drop tokens whose probability is below ``min_p`` times the top one's.

    Args:
        scores: (B, V) logits (after temperature).
        min_p: in [0, 1].
        min_tokens_to_keep: the most probable tokens always kept.

    Returns:
        (B, V) with removed tokens at ``-inf``.
    """
    probs = torch.softmax(scores, dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    kept = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    remove = remove.scatter(-1, kept, False)
    return scores.masked_fill(remove, -float("inf"))


def ban_repeated_ngrams(scores: Tensor, ids: Tensor, size: int) -> Tensor:
    """Transformers' ``no_repeat_ngram_size``: a token that would repeat an n-gram of ``ids`` is banned.

    Args:
        scores: (B, V).
        ids: (B, L) the whole sequence so far (padding included, as in Transformers).
        size: n; nothing is banned while ``L + 1 < n``.

    Returns:
        (B, V) with banned tokens at ``-inf``.
    """
    length = ids.shape[1]
    if length + 1 < size:
        return scores
    banned = torch.zeros_like(scores, dtype=torch.bool)
    for row, tokens in enumerate(ids.tolist()):
        prefix = tuple(tokens[length - size + 1:]) if size > 1 else ()
        for start in range(length - size + 1):
            if tuple(tokens[start:start + size - 1]) == prefix:
                token = tokens[start + size - 1]
                if token < scores.shape[-1]:
                    banned[row, token] = True
    return scores.masked_fill(banned, -float("inf"))


def build_logits_processor(*, penalty: Optional[float], skip: Optional[Tensor], eos_ids: Optional[Tensor],
                           min_length: int, ngram: Optional[int], sampling: Optional[dict]) -> Callable:
    """The pipeline of one ``generate`` call, as a function ``(ids, scores) -> scores``.

    Args:
        penalty, skip, eos_ids, min_length: see :func:`_apply_processors`.
        ngram: ``no_repeat_ngram_size`` (None or 0: none).
        sampling: ``temperature``/``top_k``/``top_p``/``min_p`` when sampling, else None.
    """
    def run(ids: Tensor, scores: Tensor) -> Tensor:
        scores = _apply_processors(scores, ids, penalty, skip, eos_ids, min_length, ngram)
        if sampling is not None:
            scores = process_logits(scores, temperature=sampling["temperature"], top_k=sampling["top_k"],
                                    top_p=sampling.get("top_p"))
            if sampling.get("min_p") is not None:
                scores = min_p_filter(scores, float(sampling["min_p"]))
        return scores
    return run
