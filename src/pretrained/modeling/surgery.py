"""Model surgery behind ``PreTrainedModel``: resizing, pruning and tying.

Resizing keeps the module objects (so ``padding_idx``, subclasses, hooks and
the "already initialised" flag survive); only their weight data and sizes change.

A model loaded with a ``device_map`` whose hooks bring weights in for each
forward (offloaded to disk or CPU RAM, or spread over devices) refuses every
operation here that would change a weight (:func:`refuse_if_dispatched`):
its hooks and offloaded files would keep serving the old tensors.

Example:
    >>> import torch
    >>> from torch import nn
    >>> emb = nn.Embedding(10, 4, padding_idx=0)
    >>> resize_embedding(emb, 16) is emb, emb.weight.shape, emb.padding_idx
    (True, torch.Size([16, 4]), 0)
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

__all__ = ["heads_to_prune_are_new", "is_dispatched", "new_rows", "refuse_if_dispatched", "resize_embedding", "resize_linear_rows",
           "resize_token_embeddings", "tie_would_change"]


def refuse_if_dispatched(model: nn.Module, operation: str) -> None:
    """Refuse ``operation`` on a model whose weights a device_map's hooks serve.

    Raises:
        RuntimeError: saying how to do it instead (load whole, change, save, load placed).
    """
    if not is_dispatched(model):
        return
    placement = model.__dict__["_placement"]
    where = sorted({str(d) for d in placement.hf_device_map.values()})
    raise RuntimeError(
        f"{operation} is not supported on a model loaded with a device_map that offloads or spreads its weights "
        f"({where}): its hooks and offloaded files would keep serving the old weights. Load the model without a "
        f"device_map (from_pretrained(path)), call {operation} there, save_pretrained(folder), then load that "
        "folder with the device_map you want."
    )


def is_dispatched(model: nn.Module) -> bool:
    """True when a device_map's hooks serve ``model``'s weights (offloaded, or spread over devices)."""
    placement = model.__dict__.get("_placement")
    return placement is not None and bool(getattr(placement, "hooks", None))


def tie_would_change(output: nn.Module, input: nn.Module, *, torchscript: bool) -> bool:
    """Whether tying ``output`` to ``input`` would replace a tensor or change a size."""
    if torchscript:
        weight_changes = output.weight is input.weight or output.weight.shape != input.weight.shape or \
            "meta" in (output.weight.device.type, input.weight.device.type) or \
            not torch.equal(output.weight, input.weight)
    else:
        weight_changes = output.weight is not input.weight
    bias = getattr(output, "bias", None)
    return weight_changes or (bias is not None and bias.shape[0] != input.weight.shape[0])


def heads_to_prune_are_new(request: Dict[int, List[int]], pruned: Dict[int, List[int]]) -> bool:
    """True when ``request`` names a head that ``pruned`` (``config.pruned_heads``) lacks."""
    return any(set(int(h) for h in heads) - set(pruned.get(int(layer), [])) for layer, heads in request.items())


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


def _target_size(current: int, new_num_tokens: Optional[int], pad_to_multiple_of: Optional[int]) -> int:
    if pad_to_multiple_of is not None:
        if not isinstance(pad_to_multiple_of, int) or isinstance(pad_to_multiple_of, bool) or pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        target = current if new_num_tokens is None else new_num_tokens
        new_num_tokens = -(-target // pad_to_multiple_of) * pad_to_multiple_of
    if not isinstance(new_num_tokens, int) or isinstance(new_num_tokens, bool) or new_num_tokens <= 0:
        raise ValueError(f"new_num_tokens must be a positive int, got {new_num_tokens!r}")
    return new_num_tokens


def resize_token_embeddings(model, new_num_tokens: Optional[int], pad_to_multiple_of: Optional[int],
                            mean_resizing: bool) -> nn.Module:
    """:meth:`PreTrainedModel.resize_token_embeddings` (see there); returns the input embedding."""
    old = model.get_input_embeddings()
    if new_num_tokens is None and pad_to_multiple_of is None:
        return old
    new_num_tokens = _target_size(old.weight.shape[0], new_num_tokens, pad_to_multiple_of)
    if not isinstance(old, nn.Embedding):
        raise TypeError(f"resize_token_embeddings needs an nn.Embedding input embedding, got {type(old).__name__}")
    text_config = model.config.get_text_config()
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is old.weight
    untied_head = output is not None and not tied and not getattr(text_config, "tie_word_embeddings", True)
    if untied_head and not isinstance(output, nn.Linear):
        raise TypeError(f"resize_token_embeddings needs an nn.Linear output layer, got {type(output).__name__}")
    refuse_if_dispatched(model, "resize_token_embeddings")
    std = None if mean_resizing else getattr(text_config, "initializer_range", 0.02)
    resize_embedding(old, new_num_tokens, std=std)
    if untied_head:
        resize_linear_rows(output, new_num_tokens, std=std)
    text_config.vocab_size = new_num_tokens
    if hasattr(model, "vocab_size"):
        model.vocab_size = new_num_tokens
    model.tie_weights()
    return model.get_input_embeddings()
