"""What a checkpoint holds, from ``config.json`` and file headers only.

:func:`inspect_checkpoint` reads no tensor data of a safetensors checkpoint:
sizes and dtypes come from the headers, and which weights are embeddings or
tied comes from the model built on the meta device from the config.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .auto import AutoConfig, _MODELS, _CONFIGS, _import_attr
from .loading import no_init_weights
from .logging import get_logger
from .storage.checkpoint import Checkpoint
from .storage.resolve import resolve_checkpoint
from .utils import dtype_name

logger = get_logger(__name__)


def meta_model(config, architecture: Optional[str] = None) -> Optional[nn.Module]:
    """The model class named by ``architecture`` (else ``config.architectures[0]``,
    else the base model) built on the meta device, or ``None`` if unknown."""
    names = [architecture] if architecture else list(config.architectures or [])
    module_name = _CONFIGS.get(config.model_type, (None,))[0]
    heads = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")
    candidates = names + [_MODELS[auto].get(config.model_type) for auto in heads]
    for name in candidates:
        if not name or module_name is None:
            continue
        try:
            cls = _import_attr(module_name, name)
        except ValueError:
            continue
        with torch.device("meta"), no_init_weights():
            model = cls(config)
        model.tie_weights()
        return model
    return None


def tied_groups(model: nn.Module) -> List[List[str]]:
    """Lists of parameter names that share one tensor."""
    groups: Dict[int, List[str]] = OrderedDict()
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def inspect_checkpoint(name_or_path, *, variant: Optional[str] = None, **hub_kwargs: Any) -> Dict[str, Any]:
    """Summarise a checkpoint without reading its weights.

    Returns:
        A JSON-ready dict: ``model_type``, ``architecture``, ``format``, ``files``
        (name and bytes), ``parameters`` (``total``, ``embedding``,
        ``non_embedding``), ``bytes_per_dtype``, ``tied_weights``,
        ``pruned_heads``, ``flops_per_token`` (``forward`` = 2·N and
        ``training`` = 6·N, N non-embedding parameters), ``config``.

    Raises:
        CheckpointNotFoundError / CheckpointError: as ``from_pretrained`` would.
    """
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    resolved = resolve_checkpoint(name_or_path, variant=variant, **hub_kwargs)
    model = meta_model(config)
    embedding_names: set = set()
    parameter_names: Optional[set] = None  # unknown architecture: every floating tensor counts
    tied: List[List[str]] = []
    if model is not None:
        embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        named = list(model.named_parameters(remove_duplicate=False))
        embedding_names = {n for n, p in named if id(p) in embedding_ids}
        parameter_names = {n for n, _ in named}
        tied = tied_groups(model)
    prefix = getattr(model, "base_model_prefix", "") if model is not None else ""

    def model_name(key: str) -> Optional[str]:
        for candidate in (key, f"{prefix}.{key}" if prefix else None,
                          key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else None):
            if candidate and parameter_names is not None and candidate in parameter_names:
                return candidate
        return None

    per_dtype: Dict[str, int] = {}
    total = embedding = 0
    with Checkpoint(resolved) as checkpoint:
        for key in checkpoint.keys():
            dtype, shape = checkpoint.dtype_shape(key)
            numel = 1
            for dim in shape:
                numel *= dim
            per_dtype[dtype_name(dtype)] = per_dtype.get(dtype_name(dtype), 0) + numel * dtype.itemsize
            name = model_name(key)
            if name is None and (parameter_names is not None or not dtype.is_floating_point):
                continue  # a buffer (e.g. position_ids) or a tensor the model does not use
            total += numel
            if name in embedding_names:
                embedding += numel
    non_embedding = total - embedding
    return {
        "name_or_path": os.fspath(name_or_path),
        "model_type": config.model_type,
        "architecture": (config.architectures or [type(model).__name__ if model is not None else None])[0],
        "format": resolved.format,
        "files": [{"name": os.path.basename(f), "bytes": os.path.getsize(f)} for f in resolved.files],
        "parameters": {"total": total, "embedding": embedding, "non_embedding": non_embedding},
        "bytes_per_dtype": per_dtype,
        "tied_weights": tied,
        "pruned_heads": {str(k): v for k, v in (config.pruned_heads or {}).items()},
        "flops_per_token": {"forward": 2 * non_embedding, "training": 6 * non_embedding},
        "config": config.to_dict(),
    }
