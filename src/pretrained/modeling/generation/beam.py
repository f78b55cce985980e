"""Deterministic beam search, with Transformers' (vectorised, 5.x) rules, over one step closure.

Each row of ``ids`` (B, S) becomes K = ``num_beams`` beams (the step's
``model_kwargs`` were repeated per beam by ``generate``, an encoder's output
included).  Only beam 0 starts live (the others score -1e9).  Each step:
log-softmax of the last logits, the processors (on log-probabilities), plus
each beam's running sum; the best ``max(2, 1 + n_eos) * K`` continuations of
the K * V of a row are kept.  Those that end (an EOS id, or ``final_length``
reached) score ``sum_logprobs / generated_length ** length_penalty`` and join
the row's K finished hypotheses when among the first K continuations and
better than the worst one; the best K others run on (the cache is reordered
to them).

A row takes no more hypotheses once it cannot improve: its best running beam,
scored with the current generated length (with ``final_length``'s when
``early_stopping="never"`` and ``length_penalty > 0``), is no better than its
worst hypothesis; with ``early_stopping=True`` also once it holds K
hypotheses.  The search ends when no row can improve, every continuation
ended, or (``early_stopping=True``) every row is full.

Shapes: B rows, K beams, N = ``max(2, 1 + n_eos) * K`` continuations kept per
row, L the final length, G = L - S the generated positions.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .decoding import DecodeSettings, Step, new_records, record_step

__all__ = ["beam_search"]


def _take(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor`` (B, M, ...) gathered along dim 1 by ``index`` (B, N)."""
    return tensor.take_along_dim(index.view(*index.shape, *([1] * (tensor.dim() - 2))), dim=1)


class _Beams:
    """The search state: running beams and finished hypotheses of every row."""

    def __init__(self, ids: Tensor, settings: DecodeSettings) -> None:
        batch, self.prompt_length = ids.shape
        beams, device, final = settings.num_beams, ids.device, settings.final_length
        self.settings, self.length = settings, self.prompt_length
        n_eos = len(settings.eos_ids) if settings.eos_ids is not None else 0
        self.keep = max(2, 1 + n_eos) * beams
        fill = settings.pad if settings.pad is not None else 0      # None only without EOS ids: never shows
        self.running = torch.full((batch, beams, final), fill, dtype=torch.long, device=device)    # (B, K, L)
        self.running[:, :, :self.prompt_length] = ids[:, None, :]
        self.running_scores = torch.zeros(batch, beams, device=device)
        self.running_scores[:, 1:] = -1e9
        self.running_indices = torch.full((batch, beams, final - self.prompt_length), -1, dtype=torch.int32,
                                          device=device)                                          # (B, K, G)
        self.finished, self.finished_indices = self.running.clone(), self.running_indices.clone()
        self.finished_scores = torch.full((batch, beams), -1e9, device=device)
        self.finished_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)      # generated tokens
        self.is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
        self.improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
        self.first_k = torch.arange(self.keep, device=device) < beams                            # (N,)
        self.row_offsets = torch.arange(batch, device=device)[:, None] * beams
        self.ended = None

    def flat(self) -> Tensor:
        """(B*K, length) the running sequences."""
        batch, beams, _ = self.running.shape
        return self.running[:, :, :self.length].reshape(batch * beams, self.length)

    def advance(self, log_probs: Tensor) -> Tensor:
        """Take one step's processed log-probabilities (B*K, V); returns the flat parent
        index (B*K,) of each running beam, to reorder the cache with."""
        settings, length, (batch, beams, _) = self.settings, self.length, self.running.shape
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, beams, vocab) + self.running_scores[:, :, None]).view(batch, beams * vocab)
        top_scores, top_index = torch.topk(totals, self.keep)                                    # (B, N)
        parents, tokens = top_index // vocab, top_index % vocab
        candidates, indices = _take(self.running, parents), _take(self.running_indices, parents)
        candidates[:, :, length] = tokens
        indices[:, :, length - self.prompt_length] = (parents + self.row_offsets).to(indices.dtype)
        ended = torch.full_like(tokens, length + 1 >= settings.final_length, dtype=torch.bool)
        if settings.eos_ids is not None:
            ended = ended | torch.isin(tokens, settings.eos_ids)
        # the best K continuations that did not end run on
        live_scores = top_scores + ended.float() * -1e9
        chosen = torch.topk(live_scores, beams)[1]
        self.running, self.running_scores = _take(candidates, chosen), _take(live_scores, chosen)
        self.running_indices = _take(indices, chosen)
        self._finish(candidates, indices, top_scores, ended)
        self.ended, self.length = ended, length + 1
        return (_take(parents, chosen) + self.row_offsets).flatten()

    def _finish(self, candidates: Tensor, indices: Tensor, top_scores: Tensor, ended: Tensor) -> None:
        """Ended continuations among the first K compete with the row's hypotheses."""
        settings, generated = self.settings, self.length + 1 - self.prompt_length
        new = ended & self.first_k
        scores = top_scores / (generated ** settings.length_penalty)
        scores += (self.is_finished.all(dim=-1, keepdim=True) & (settings.early_stopping is True)).float() * -1e9
        scores += (~self.improvable).float() * -1e9
        scores += (~new).float() * -1e9
        merged_scores = torch.cat([self.finished_scores, scores], dim=1)
        best = torch.topk(merged_scores, settings.num_beams)[1]
        self.finished = _take(torch.cat([self.finished, candidates], dim=1), best)
        self.finished_indices = _take(torch.cat([self.finished_indices, indices], dim=1), best)
        self.finished_scores = _take(merged_scores, best)
        lengths = torch.full_like(new, generated, dtype=torch.long)
        self.finished_lengths = _take(torch.cat([self.finished_lengths, lengths], dim=1), best)
        self.is_finished = _take(torch.cat([self.is_finished, new], dim=1), best)

    def done(self) -> bool:
        """Update whether each row can still improve; True when the search is over."""
        settings, generated = self.settings, self.length - self.prompt_length
        if settings.early_stopping == "never" and settings.length_penalty > 0:
            generated = settings.final_length - self.prompt_length
        best_running = self.running_scores[:, :1] / (generated ** settings.length_penalty)
        worst = torch.where(self.is_finished, self.finished_scores.min(dim=1, keepdim=True)[0], -1e9)
        self.improvable = self.improvable & (best_running > worst).any(dim=-1, keepdim=True)
        return (not bool(self.improvable.any()) or bool(self.ended.all())
                or (settings.early_stopping is True and bool(self.is_finished.all())))

    def result(self) -> Dict[str, Tensor]:
        """Each row's ``num_return_sequences`` best hypotheses, best first, cut to the longest."""
        count, (batch, _, final) = self.settings.num_return_sequences, self.finished.shape
        generated = int(self.finished_lengths[:, :count].max())
        return {"sequences": self.finished[:, :count].reshape(batch * count, final)[:, :self.prompt_length + generated],
                "sequences_scores": self.finished_scores[:, :count].reshape(batch * count),
                "beam_indices": self.finished_indices[:, :count].reshape(batch * count, -1)[:, :generated]}


def beam_search(ids: Tensor, step: Step, settings: DecodeSettings, cache: Any = None,
                records: Optional[Dict[str, List[Any]]] = None) -> Tuple[Dict[str, Tensor], Any]:
    """Run the search (see the module docstring).

    Args:
        ids: (B, S) the sequences to grow, one per row (not repeated per beam).
        step: the step closure, over (B*K, L) ids.
        settings: the call's :class:`DecodeSettings` (``num_beams`` and the beam fields).
        cache: None (beam search starts from an empty cache).
        records: where the per-step outputs of ``settings.record`` go (scores: the processed
            log-probabilities (B*K, V), before the running sums are added).

    Returns:
        ``({"sequences": (B * num_return_sequences, S + n), "sequences_scores": (B * R,),
        "beam_indices": (B * R, n) int32}, cache)``: hypotheses padded after their end with
        ``pad`` (Transformers 5 pads with EOS instead when ``pad`` is 0), ``beam_indices[r, t]``
        the flat beam (row * K + beam) whose continuation made token t (-1 after the end);
        n is the longest returned hypothesis' generated length.
    """
    records = new_records() if records is None else records
    state = _Beams(ids, settings)
    while True:
        flat = state.flat()                                                                 # (B*K, L)
        logits, cache = step(flat, cache)
        log_probs = settings.processor(flat, torch.log_softmax(logits, dim=-1))
        record_step(records, settings.record, logits, log_probs)
        parents = state.advance(log_probs)
        if cache is not None:
            cache.reorder_cache(parents)
        if state.done():
            break
    return state.result(), cache
