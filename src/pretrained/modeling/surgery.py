"""Resizing helpers used by ``PreTrainedModel.resize_token_embeddings``.

The module objects are kept (so ``padding_idx``, subclasses, hooks and the
"already initialised" flag survive); only their weight data and sizes change.

Example:
    >>> import torch
    >>> from torch import nn
    >>> emb = nn.Embedding(10, 4, padding_idx=0)
    >>> resize_embedding(emb, 16) is emb, emb.weight.shape, emb.padding_idx
    (True, torch.Size([16, 4]), 0)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["new_rows", "resize_embedding", "resize_linear_rows"]


def new_rows(old: torch.Tensor, count: int, *, std: Optional[float] = None) -> torch.Tensor:
    """``count`` rows to append to ``old`` (rows, dim), in ``old``'s dtype and device.

    By default they are drawn from N(mean, 1e-9 * covariance) of ``old``'s rows,
    computed in float32 — exactly the mean when the scaled covariance is not
    positive definite (fewer rows than dimensions, or constant columns).  With
    ``std`` they are drawn from N(0, std) instead.
    """
    if std is not None:
        return torch.empty(count, old.shape[1], dtype=old.dtype, device=old.device).normal_(0.0, std)
    data = old.detach().to(torch.float32)
    mean = data.mean(dim=0)
    if data.shape[0] > 1 and data.shape[1] > 0:
        centred = data - mean
        covariance = centred.T @ centred / data.shape[0]
        try:
            dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-9 * covariance)
            return dist.sample((count,)).to(old.dtype)
        except (ValueError, RuntimeError):  # not positive definite
            pass
    return mean.expand(count, -1).to(old.dtype).clone()


def _resized(weight: torch.Tensor, new_num: int, std: Optional[float]) -> torch.Tensor:
    """``weight``'s first ``new_num`` rows, or all of them and new ones below."""
    old_num = weight.shape[0]
    if new_num <= old_num:
        return weight.data[:new_num].clone()
    return torch.cat([weight.data, new_rows(weight.data, new_num - old_num, std=std)], dim=0)


def resize_embedding(embedding: nn.Embedding, new_num_tokens: int, *, std: Optional[float] = None) -> nn.Embedding:
    """Grow (new rows from :func:`new_rows`) or shrink (drop the last rows) in place.

    ``padding_idx`` is kept unless it falls outside the new size.
    """
    old = embedding.weight
    if new_num_tokens == old.shape[0]:
        return embedding
    with torch.no_grad():
        embedding.weight = nn.Parameter(_resized(old, new_num_tokens, std), requires_grad=old.requires_grad)
    embedding.num_embeddings = new_num_tokens
    if embedding.padding_idx is not None and embedding.padding_idx >= new_num_tokens:
        embedding.padding_idx = None
    return embedding


def resize_linear_rows(linear: nn.Linear, new_num_tokens: int, *, std: Optional[float] = None) -> nn.Linear:
    """Resize an (untied) output layer's rows and bias in place, new rows like the
    old ones (:func:`new_rows`); new bias entries are the old bias' mean (zero with ``std``)."""
    old = linear.weight
    old_num = old.shape[0]
    if new_num_tokens == old_num:
        return linear
    with torch.no_grad():
        linear.weight = nn.Parameter(_resized(old, new_num_tokens, std), requires_grad=old.requires_grad)
        if linear.bias is not None:
            bias = linear.bias
            if new_num_tokens < old_num:
                data = bias.data[:new_num_tokens].clone()
            else:
                fill = bias.data.float().mean() if std is None else torch.zeros((), device=bias.device)
                data = torch.cat([bias.data, fill.expand(new_num_tokens - old_num).to(bias.dtype)])
            linear.bias = nn.Parameter(data, requires_grad=bias.requires_grad)
    linear.out_features = new_num_tokens
    return linear
