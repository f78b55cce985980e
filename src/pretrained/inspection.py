"""What a checkpoint holds, from ``config.json`` and file headers only.

:func:`inspect_checkpoint` reads no tensor data of a safetensors checkpoint:
sizes and dtypes come from the headers, and which weights are embeddings or
tied comes from the model built on the meta device from the config.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .auto import AutoConfig, auto_class_name, builtin_class, builtin_model_types
from .configuration import PretrainedConfig
from .errors import CheckpointError, CheckpointNotFoundError
from .legacy_keys import current_name
from .loading import no_init_weights
from .logging import get_logger
from .storage.checkpoint import Checkpoint
from .storage.resolve import resolve_checkpoint
from .utils import dtype_name

logger = get_logger(__name__)


def meta_model(config, architecture: Optional[str] = None) -> Optional[nn.Module]:
    """The model class named by ``architecture`` (else ``config.architectures[0]``,
    else the base model) built on the meta device, or ``None`` if unknown."""
    return meta_model_or_reason(config, architecture)[0]


def meta_model_or_reason(config, architecture: Optional[str] = None) -> Tuple[Optional[nn.Module], Optional[str]]:
    """:func:`meta_model`, and when it is ``None`` a sentence saying why (an unknown
    ``model_type``, or a config this library cannot build, e.g. an unsupported rope type)."""
    names = [architecture] if architecture else list(config.architectures or [])
    if config.model_type not in builtin_model_types():
        return None, f"model_type {config.model_type or None!r} is not an architecture pretrained implements"
    heads = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")
    candidates = names + [auto_class_name(auto, config.model_type) for auto in heads]
    for name in candidates:
        if not name:
            continue
        try:
            cls = builtin_class(config.model_type, name)
        except ValueError:
            continue
        try:
            with torch.device("meta"), no_init_weights():
                model = cls(config)
            model.tie_weights()
        except (ValueError, NotImplementedError, TypeError, KeyError) as err:
            return None, f"pretrained cannot build {name} from this config ({err})"
        return model, None
    return None, f"no model class of pretrained matches {names or config.model_type!r}"


def read_config(name_or_path, **hub_kwargs: Any):
    """The checkpoint's config: the architecture's class when pretrained knows its
    ``model_type``, else a plain :class:`PretrainedConfig` carrying the file's ``model_type``."""
    try:
        return AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    except CheckpointError as err:
        if "Unrecognized model_type" not in str(err):
            raise
    raw, _ = PretrainedConfig.get_config_dict(name_or_path, **hub_kwargs)
    config = PretrainedConfig.from_dict(raw)
    object.__setattr__(config, "model_type", str(raw.get("model_type") or ""))  # an instance value only
    return config


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
        ``training`` = 6·N, N non-embedding parameters), ``config``, ``limitations``.
        An architecture pretrained cannot build (an unknown ``model_type``, an
        unsupported rope type) is still described from the headers: then
        ``embedding``, ``non_embedding`` and ``flops_per_token`` are ``None``
        and ``limitations`` says why.

    Raises:
        CheckpointNotFoundError / CheckpointError: as ``from_pretrained`` would.
    """
    config = read_config(name_or_path, **hub_kwargs)
    resolved = resolve_checkpoint(name_or_path, variant=variant, **hub_kwargs)
    model, reason = meta_model_or_reason(config)
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
        key = key if parameter_names is None or key in parameter_names else current_name(key) or key
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
    non_embedding = total - embedding if model is not None else None
    return {
        "name_or_path": os.fspath(name_or_path),
        "model_type": config.model_type,
        "architecture": (config.architectures or [type(model).__name__ if model is not None else None])[0],
        "format": resolved.format,
        "files": [{"name": os.path.basename(f), "bytes": os.path.getsize(f)} for f in resolved.files],
        "parameters": {"total": total, "embedding": embedding if model is not None else None,
                       "non_embedding": non_embedding},
        "bytes_per_dtype": per_dtype,
        "tied_weights": tied if model is not None else None,
        "pruned_heads": {str(k): v for k, v in (config.pruned_heads or {}).items()},
        "flops_per_token": {"forward": 2 * non_embedding, "training": 6 * non_embedding}
        if model is not None else None,
        "config": config.to_dict(),
        "limitations": [] if model is not None else [
            f"{reason}: parameters count every floating-point tensor of the weights files; "
            "embedding parameters, tied weights and FLOPs are unknown"],
    }


_NUMBERED = re.compile(r"(.*\.)?\d+")


def sizes_for_plan(name_or_path, config, *, dtype: Optional[torch.dtype] = None,
                   **hub_kwargs: Any) -> Tuple[Any, Optional[List[str]], Optional[str]]:
    """What ``pretrained plan`` plans: the meta model, or — for an architecture
    pretrained cannot build — sizes read from the weights files' headers.

    Returns:
        ``(model or ModelSizes, no_split_module_classes or None, note)``: with
        header sizes every numbered module (``model.layers.0``) is one unit
        kept whole (as a decoder layer is), and ``note`` says so.

    Raises:
        CheckpointNotFoundError: neither an architecture pretrained builds nor weights files.
    """
    from .placement.plan import ModelSizes

    model, reason = meta_model_or_reason(config)
    if model is not None:
        return model, None, None
    try:
        resolved = resolve_checkpoint(name_or_path, **hub_kwargs)
    except CheckpointNotFoundError as err:
        raise CheckpointNotFoundError(f"{reason}, and it has no weights files to read sizes from ({err})") from None
    sizes: Dict[str, int] = {}
    with Checkpoint(resolved) as checkpoint:
        for key in checkpoint.keys():
            stored, shape = checkpoint.dtype_shape(key)
            element = dtype.itemsize if dtype is not None and stored.is_floating_point else stored.itemsize
            sizes[key] = math.prod(shape) * element
    units = {".".join(key.split(".")[:i]) for key in sizes for i in range(1, key.count(".") + 1)}
    classes = {unit: "NumberedLayer" for unit in units if _NUMBERED.fullmatch(unit)}
    note = (f"{reason}: planned from the weights files' headers (buffers such as rotary tables are not "
            "counted; each numbered layer is kept whole; tied weights are not known)")
    return ModelSizes.from_dict(sizes, classes=classes), ["NumberedLayer"], note
