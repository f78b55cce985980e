"""``save_pretrained``: what a model writes, on a copy of its config.

The model's config is never changed by a save: the ``torch_dtype``,
``architectures`` and ``auto_map`` that ``config.json`` records are set on a
copy. Unknown keywords are refused by name before anything is written.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..quantization import check_saveable
from ..utils import dtype_name, parse_size
from .generation import GENERATION_CONFIG_NAME

__all__ = ["SAVE_KEYWORDS", "deduplicate_shared_tensors", "push_folder", "save_model"]

# keywords save_pretrained takes beyond its named parameters: ours, then push_to_hub's
SAVE_KEYWORDS = ("checksums", "durable", "repo_id", "commit_message", "private", "create_pr", "revision")


def check_save_keywords(kwargs: Dict[str, Any]) -> None:
    """Raises: TypeError naming the first keyword ``save_pretrained`` does not know."""
    for key in kwargs:
        if key not in SAVE_KEYWORDS:
            raise TypeError(f"save_pretrained() got an unexpected keyword argument {key!r}; it takes "
                            f"{', '.join(SAVE_KEYWORDS)} beyond its named parameters")


def save_model(model, save_directory, *, is_main_process: bool, state_dict, save_function, push_to_hub: bool,
               max_shard_size, safe_serialization: bool, variant: Optional[str], token, save_peft_format: bool,
               **kwargs: Any) -> None:
    """:meth:`PreTrainedModel.save_pretrained` (see there for the arguments)."""
    from ..storage.writer import save_checkpoint

    check_save_keywords(kwargs)
    checksums, durable = kwargs.pop("checksums", False), kwargs.pop("durable", False)
    check_saveable(model, safe_serialization=safe_serialization)
    if os.path.isfile(save_directory):
        raise ValueError(f"save_directory {os.fspath(save_directory)!r} is a file, not a folder")
    if state_dict is None and any(type(p).__name__ == "DTensor" for p in model.parameters()):
        from ..distributed.save import save_distributed  # tensor-parallel / FSDP2: gathered tensor by tensor

        return save_distributed(model, save_directory, is_main_process=is_main_process, save_function=save_function,
                                push_to_hub=push_to_hub, max_shard_size=max_shard_size,
                                safe_serialization=safe_serialization, variant=variant, token=token,
                                checksums=checksums, durable=durable, **kwargs)
    if not is_main_process:
        return None
    limit = parse_size(max_shard_size, name="max_shard_size")
    extra_files = _side_files(model, save_peft_format=save_peft_format, save_function=save_function,
                              safe_serialization=safe_serialization)
    if model._hf_peft_config_loaded:  # only the adapter is saved, in PEFT's layout (as Transformers does)
        save_checkpoint(save_directory, None, extra_files=extra_files, durable=durable)
    else:
        save_checkpoint(
            save_directory, _tensors_to_save(model, state_dict), max_shard_size=limit,
            safe_serialization=safe_serialization, variant=variant, save_function=save_function,
            extra_files=extra_files, index_metadata={"total_parameters": model.num_parameters()},
            checksums=checksums, durable=durable,
        )
    if push_to_hub:
        return model._push_folder(save_directory, token=token, **kwargs)
    return None


def _side_files(model, *, save_peft_format: bool, save_function, safe_serialization: bool
                ) -> Dict[str, Union[str, bytes]]:
    """``config.json`` (from a copy of the config), generation config, custom code, adapter files."""
    config = copy.deepcopy(model.config)
    config.torch_dtype = dtype_name(model.dtype)
    config.architectures = [type(model).__name__]
    extra_files: Dict[str, Union[str, bytes]] = {}
    if model._hf_peft_config_loaded:
        extra_files.update(model._adapter_save_files(save_peft_format=save_peft_format, save_function=save_function,
                                                     safe_serialization=safe_serialization))
    if model._auto_class is not None:
        from .custom_code import custom_code_files

        extra_files.update(custom_code_files(model, config))
    if not model._hf_peft_config_loaded:
        extra_files["config.json"] = config.to_json_string()
    if model.can_generate() and model.generation_config is not None:
        extra_files[GENERATION_CONFIG_NAME] = model.generation_config.to_json_string()
    return extra_files


def _tensors_to_save(model, state_dict: Optional[Dict[str, torch.Tensor]]) -> Dict[str, Any]:
    tied = model._tied_weight_patterns()
    if state_dict is None:
        state_dict = model.state_dict()
        placement = model.__dict__.get("_placement")
        if placement is not None:  # offloaded weights are read back one at a time while writing
            state_dict = placement.offloaded_state_dict(state_dict, tied)
    for key in model._keys_to_ignore_on_save or []:
        state_dict.pop(key, None)
    return deduplicate_shared_tensors(state_dict, tied)


def push_folder(folder, *, repo_id: Optional[str] = None, token=None, commit_message: str = "Upload model",
                private: Optional[bool] = None, create_pr: bool = False, revision: Optional[str] = None,
                **_: Any):
    """Upload ``folder`` to ``repo_id`` (default: the folder's name) with ``huggingface_hub``."""
    from huggingface_hub import HfApi

    repo_id = repo_id or os.path.basename(os.path.normpath(os.fspath(folder)))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), commit_message=commit_message,
                             create_pr=create_pr, revision=revision)


def deduplicate_shared_tensors(state_dict: Dict[str, torch.Tensor], tied_patterns: Sequence[str]
                               ) -> Dict[str, torch.Tensor]:
    """Make a state dict storable in safetensors (which forbids aliasing).

    Declared ties (names matching ``tied_patterns``) are stored once; any other
    tensors that share memory — disjoint views of one buffer, or undeclared
    aliases — are saved as separate copies, never dropped
    (:func:`~pretrained.placement.dispatch.stored_tied_names` picks the names).
    """
    from ..placement.dispatch import stored_tied_names

    groups: Dict[Tuple, List[str]] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        storage = tensor.untyped_storage()
        groups.setdefault((tensor.device, storage.data_ptr(), storage.nbytes()), []).append(name)
    result = dict(state_dict)
    for names in groups.values():
        if len(names) < 2:
            continue
        views: Dict[Tuple, List[str]] = {}
        for name in names:
            t = state_dict[name]
            views.setdefault((t.storage_offset(), tuple(t.shape), t.stride(), t.dtype), []).append(name)
        first_view = True
        for same in views.values():
            keep = stored_tied_names(same, tied_patterns)
            for n in same:
                if n not in keep:
                    del result[n]
            for i, n in enumerate(keep):
                if not (first_view and i == 0):
                    result[n] = state_dict[n].detach().clone()
            first_view = False
    return result
