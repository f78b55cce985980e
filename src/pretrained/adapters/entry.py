"""``from_pretrained(adapter_folder)``: an adapter folder or repo names its base model.

As Transformers does it: when ``pretrained_model_name_or_path`` holds an
``adapter_config.json``, the base model named by its ``base_model_name_or_path``
is loaded (with every loading argument: dtype, device map, offload) and the
adapter is then loaded onto it. A folder that holds a whole model
(``config.json``) beside the adapter loads that model, then the adapter.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import CheckpointError
from .files import find_adapter_config

_ADAPTER_KEYS = ("adapter_name", "adapter_kwargs")


def split_adapter_path(name_or_path, kwargs: Dict[str, Any], hub: Dict[str, Any]
                       ) -> Tuple[Optional[str], Any, Dict[str, Any]]:
    """``(adapter location or None, what to load as the base, load_adapter keywords)``.

    Pops ``adapter_name`` / ``adapter_kwargs`` from ``kwargs``.

    Raises:
        CheckpointError: the adapter config has no usable ``base_model_name_or_path``.
    """
    adapter_args = {k: kwargs.pop(k) for k in _ADAPTER_KEYS if k in kwargs}
    if name_or_path is None:
        return None, name_or_path, adapter_args
    config_file = find_adapter_config(name_or_path, **hub)
    if config_file is None:
        return None, name_or_path, adapter_args
    adapter_args.update({k: v for k, v in hub.items() if v is not None and k != "subfolder"})
    local = os.fspath(name_or_path)
    if os.path.isdir(local) and os.path.isfile(os.path.join(local, hub.get("subfolder") or "", "config.json")):
        return local, name_or_path, adapter_args  # a whole model with its adapter beside it
    try:
        with open(config_file, "r", encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read the adapter config {config_file}: {exc}") from exc
    if not isinstance(base, str) or not base:
        raise CheckpointError(f"{config_file} has no base_model_name_or_path: load the base model first, then "
                              "call model.load_adapter(...)")
    return local, base, adapter_args


def base_of_adapter(name_or_path, hub: Dict[str, Any]) -> Optional[str]:
    """The base model an adapter folder names (for its ``config.json``), or ``None`` when it is not one."""
    adapter, base, _ = split_adapter_path(name_or_path, {}, hub)
    return None if adapter is None or base is name_or_path else base


__all__ = ["base_of_adapter", "split_adapter_path"]
