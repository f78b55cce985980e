"""Adapter files in PEFT's layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys in the file drop the adapter name: the model's
``<module>.lora_A.<adapter>.weight`` is stored as
``base_model.model.<module>.lora_A.weight`` (the prefix only with
``save_peft_format=True``; both spellings load). A modules-to-save copy is
stored under the module's own names (``<module>.weight``); with
``bias="all"``/``"lora_only"`` the trained biases are stored too, under the
model's names (``<target>.base_layer.bias`` for a LoRA target).
"""

from __future__ import annotations

import io
import os
import struct
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError, CheckpointNotFoundError, WeightsMismatchError
from .config import ADAPTER_BIN_NAME, ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoraConfig
from .inject import adapter_modules
from .layers import LoraLayer, ModulesToSaveWrapper

PEFT_PREFIX = "base_model.model."


def remove_adapter_name(key: str, adapter_name: str) -> str:
    """``a.lora_A.default.weight`` -> ``a.lora_A.weight`` (PEFT's rule: only the last-but-one part, or the last)."""
    parts = key.split(".")
    if len(parts) > 1 and parts[-1] == adapter_name:
        return ".".join(parts[:-1])
    if len(parts) > 2 and parts[-2] == adapter_name:
        return ".".join(parts[:-2] + parts[-1:])
    return key


def adapter_tensors(model: nn.Module, adapter_name: str, config: LoraConfig) -> Dict[str, torch.Tensor]:
    """The live tensors of adapter ``adapter_name``, under their file names (no prefix)."""
    result: Dict[str, torch.Tensor] = {}
    lora_paths = []
    for path, module in adapter_modules(model):
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            lora_paths.append(path)
            result[f"{path}.lora_A.weight"] = module.lora_A[adapter_name].weight
            result[f"{path}.lora_B.weight"] = module.lora_B[adapter_name].weight
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            for key, tensor in module.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                result[f"{path}.{key}"] = tensor
    if config.bias == "all":
        others = [n for n in getattr(model, "peft_config", {}) if n != adapter_name]
        for key, tensor in model.state_dict(keep_vars=True).items():
            if (key == "bias" or key.endswith(".bias")) and not any(f".{o}." in key for o in others):
                result.setdefault(remove_adapter_name(key, adapter_name), tensor)
    elif config.bias == "lora_only":
        for path in lora_paths:
            bias = getattr(model.get_submodule(path).base_layer, "bias", None)
            if bias is not None:
                result[f"{path}.base_layer.bias"] = bias
    return result


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]]) -> bytes:
    """A safetensors file's bytes (the layout of :func:`~pretrained.storage.safetensors.save_safetensors`)."""
    from ..storage.safetensors import _check_inputs, _layout, tensor_bytes

    _check_inputs(tensors, metadata)
    order, raw = _layout(tensors, metadata)
    chunks = [struct.pack("<Q", len(raw)), raw]
    chunks += [bytes(tensor_bytes(tensors[name])) for name in order if tensors[name].numel()]
    return b"".join(chunks)


def adapter_files(config: LoraConfig, tensors: Dict[str, torch.Tensor], *, safe_serialization: bool,
                  save_function=torch.save) -> Dict[str, bytes]:
    """``{file name: bytes}`` of an adapter save: its config and its weights."""
    tensors = {k: v.detach() for k, v in tensors.items()}
    if safe_serialization:
        weights = {ADAPTER_WEIGHTS_NAME: safetensors_bytes(tensors, {"format": "pt"})}
    else:
        buffer = io.BytesIO()
        save_function({k: v.contiguous() for k, v in tensors.items()}, buffer)
        weights = {ADAPTER_BIN_NAME: buffer.getvalue()}
    return {ADAPTER_CONFIG_NAME: config.to_json_string().encode("utf-8"), **weights}


def find_adapter_config(name_or_path, **hub_kwargs: Any) -> Optional[str]:
    """The local path of ``adapter_config.json`` of a folder or Hub repo, or ``None`` when it has none."""
    from ..storage.resolve import resolve_file

    try:
        return resolve_file(name_or_path, ADAPTER_CONFIG_NAME, required=False, **hub_kwargs)
    except CheckpointNotFoundError:
        return None


def read_adapter(name_or_path, *, use_safetensors: Optional[bool] = None,
                 **hub_kwargs: Any) -> Tuple[LoraConfig, Dict[str, torch.Tensor], str]:
    """Read an adapter folder or Hub repo: ``(config, tensors, weights file path)``.

    Raises:
        CheckpointNotFoundError: no ``adapter_config.json`` or no adapter weights file.
        CheckpointError: an unreadable file or a config that is not plain LoRA (naming the file).
    """
    from ..storage.pickle import load_pickle
    from ..storage.resolve import resolve_file
    config = LoraConfig.from_json_file(resolve_file(name_or_path, ADAPTER_CONFIG_NAME, **hub_kwargs))
    names = [ADAPTER_WEIGHTS_NAME, ADAPTER_BIN_NAME]
    if use_safetensors is False:
        names.reverse()
    elif use_safetensors:
        names = names[:1]
    for name in names:
        path = resolve_file(name_or_path, name, required=False, **hub_kwargs)
        if path is None:
            continue
        if name == ADAPTER_WEIGHTS_NAME:
            return config, read_safetensors_in_memory(path), path
        return config, load_pickle(path), path
    raise CheckpointNotFoundError(f"no {' or '.join(names)} found in {os.fspath(name_or_path)}")


def match_tensors(expected: Dict[str, torch.Tensor], loaded: Mapping[str, torch.Tensor], config: LoraConfig,
                  where: str) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Pair each file tensor with the model tensor it fills (``base_model.model.`` prefix optional).

    Raises:
        CheckpointError: a key that matches no adapter tensor of the model, or an adapter tensor the file lacks.
        WeightsMismatchError: a shape that differs (e.g. another rank than the config's).
    """
    pairs: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    for key, value in loaded.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        target = expected.get(name)
        if target is None:
            raise CheckpointError(f"{where}: adapter key {key!r} matches no module of the model targeted by the "
                                  f"adapter config (target_modules={config.target_modules})")
        if tuple(value.shape) != tuple(target.shape):
            raise WeightsMismatchError(
                f"{where}: adapter key {key!r} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(target.shape)} (r={config.r}, rank_pattern={config.rank_pattern}: a rank mismatch "
                "between adapter_config.json and the weights, or another base model)")
        pairs[name] = (target, value)
    missing = sorted(n for n in expected if n not in pairs and _is_adapter_key(n))
    if missing:
        raise CheckpointError(f"{where}: adapter weights missing for {len(missing)} targeted module tensor(s), "
                              f"e.g. {missing[:3]}")
    return pairs


def _is_adapter_key(name: str) -> bool:
    """LoRA factors must be in the file; biases (``bias="all"``) and saved modules may be partial."""
    return name.endswith((".lora_A.weight", ".lora_B.weight"))


def read_safetensors_in_memory(path: str) -> Dict[str, torch.Tensor]:
    """Every tensor of a (small) safetensors file, as views of one private in-memory copy of it.

    One read instead of a mapping: the tensors own their memory (no file mapping stays
    alive behind a model's parameters) and nothing is copied tensor by tensor.
    """
    from ..storage.safetensors import read_header

    header = read_header(path)
    data = bytearray(header.file_size)
    with open(path, "rb") as handle:
        if handle.readinto(data) != header.file_size:
            raise CheckpointError(f"{path}: file changed while it was read")
    tensors = {}
    for key, info in header.tensors.items():
        if info.numel == 0:
            tensors[key] = torch.empty(info.shape, dtype=info.dtype)
        elif info.start % info.dtype.itemsize:  # misaligned: an aligned copy of its bytes
            raw = torch.frombuffer(data, dtype=torch.uint8, count=info.end - info.start, offset=info.start)
            tensors[key] = raw.clone().view(info.dtype).view(info.shape)
        else:
            tensors[key] = torch.frombuffer(data, dtype=info.dtype, count=info.numel, offset=info.start).view(info.shape)
    return tensors


def copy_tensors(pairs: Dict[str, Tuple[torch.Tensor, torch.Tensor]], *, owned: bool = False) -> None:
    """Fill every model tensor from its file tensor (cast to the model tensor's dtype and device).

    ``owned``: the file tensors are ours (read for this load), so a model tensor takes
    one over (``.data``) where dtype and device already match instead of copying it.
    """
    with torch.no_grad():
        for target, value in pairs.values():
            if owned and isinstance(target, nn.Parameter) and value.is_contiguous():
                target.data = value.to(device=target.device, dtype=target.dtype)
            else:
                target.copy_(value)


__all__ = ["PEFT_PREFIX", "adapter_files", "adapter_tensors", "copy_tensors", "find_adapter_config",
           "match_tensors", "read_adapter", "read_safetensors_in_memory", "remove_adapter_name"]
