"""Resizing helpers used by ``PreTrainedModel.resize_token_embeddings``.

The module objects are kept (so ``padding_idx``, subclasses and hooks
survive); only their weight data and sizes change.
"""

from __future__ import annotations

import torch
from torch import nn


def _new_rows(old: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows drawn from N(mean, 1e-9·cov) of ``old``'s rows, computed in
    float32 — exactly the mean when the scaled covariance is not positive definite."""
    data = old.detach().to(torch.float32)
    mean = data.mean(dim=0)
    if data.shape[0] > 1 and data.shape[1] > 0:
        centred = data - mean
        covariance = centred.T @ centred / data.shape[0]
        try:
            dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-9 * covariance)
            return dist.sample((count,)).to(old.dtype)
        except (ValueError, RuntimeError):
            pass
    return mean.expand(count, -1).to(old.dtype).clone()


def resize_embedding(embedding: nn.Embedding, new_num_tokens: int) -> nn.Embedding:
    """Grow (mean/covariance-initialised rows) or shrink (drop last rows) in place."""
    old = embedding.weight
    old_num = old.shape[0]
    if new_num_tokens == old_num:
        return embedding
    with torch.no_grad():
        if new_num_tokens < old_num:
            data = old.data[:new_num_tokens].clone()
        else:
            data = torch.cat([old.data, _new_rows(old.data, new_num_tokens - old_num)], dim=0)
    embedding.weight = nn.Parameter(data, requires_grad=old.requires_grad)
    embedding.num_embeddings = new_num_tokens
    if embedding.padding_idx is not None and embedding.padding_idx >= new_num_tokens:
        embedding.padding_idx = None
    return embedding


def resize_linear_rows(linear: nn.Linear, new_num_tokens: int) -> nn.Linear:
    """Resize an (untied) output layer's rows and bias in place, new rows like the old ones."""
    old = linear.weight
    old_num = old.shape[0]
    if new_num_tokens == old_num:
        return linear
    with torch.no_grad():
        if new_num_tokens < old_num:
            weight = old.data[:new_num_tokens].clone()
        else:
            weight = torch.cat([old.data, _new_rows(old.data, new_num_tokens - old_num)], dim=0)
        linear.weight = nn.Parameter(weight, requires_grad=old.requires_grad)
        if linear.bias is not None:
            bias = linear.bias
            if new_num_tokens < old_num:
                data = bias.data[:new_num_tokens].clone()
            else:
                data = torch.cat([bias.data, bias.data.float().mean().expand(new_num_tokens - old_num).to(bias.dtype)])
            linear.bias = nn.Parameter(data, requires_grad=bias.requires_grad)
    linear.out_features = new_num_tokens
    return linear
