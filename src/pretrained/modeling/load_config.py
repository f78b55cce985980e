"""Which config a ``from_pretrained`` call loads with, checked before anything is read.

* :func:`check_loadable_class` refuses the bare :class:`PreTrainedModel` (no
  ``config_class``, no layers), naming the class ``config.json`` asks for.
* :func:`adopt_config` turns another library's config object (a Transformers
  ``BertConfig``) into ours, through its ``to_dict()``.

Example:
    >>> from pretrained import BertConfig
    >>> class Other:  # stands for transformers.BertConfig
    ...     model_type = "bert"
    ...     def to_dict(self):
    ...         return {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4}
    >>> adopt_config(Other(), BertConfig, owner="BertModel").hidden_size
    32
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ..configuration import PretrainedConfig
from ..errors import CheckpointError, CheckpointNotFoundError

__all__ = ["adopt_config", "check_loadable_class", "is_foreign_config"]


def is_foreign_config(config: Any) -> bool:
    """True for a config object of another library: not ours, not a path, but with ``to_dict()``."""
    if config is None or isinstance(config, (PretrainedConfig, str, bytes, os.PathLike)):
        return False
    return callable(getattr(config, "to_dict", None))


def adopt_config(config: Any, config_class: Optional[type], *, owner: str) -> Any:
    """``config`` as ``from_pretrained(config=...)`` uses it.

    Ours, a path, a repo id or ``None`` are returned as they are. Another
    library's config object (e.g. ``transformers.BertConfig``) becomes
    ``config_class.from_dict(config.to_dict())`` when its ``model_type`` is
    ``config_class``'s.

    Args:
        config: what was passed as ``config=``.
        config_class: the config class the model needs.
        owner: the class being loaded, for messages.

    Raises:
        TypeError: anything else, or a config of another ``model_type``; the
            message says what to pass.
    """
    if config is None or isinstance(config, (PretrainedConfig, str, os.PathLike)):
        return config
    expected = config_class.__name__ if config_class is not None else "PretrainedConfig"
    if not is_foreign_config(config):
        raise TypeError(f"{owner}.from_pretrained(config=...) takes a {expected}, a path or a repo id; "
                        f"got {type(config).__module__}.{type(config).__name__}")
    theirs = getattr(config, "model_type", None)
    ours = getattr(config_class, "model_type", "") if config_class is not None else ""
    if config_class is None or (ours and theirs != ours):
        raise TypeError(f"{owner}.from_pretrained(config=...) got a {type(config).__module__}."
                        f"{type(config).__name__} of model_type {theirs!r}; pass a {expected} "
                        f"(model_type {ours!r}), or that config's to_dict() through {expected}.from_dict")
    return config_class.from_dict(config.to_dict())


def check_loadable_class(cls: type, name_or_path: Any, config: Any, hub: dict) -> None:
    """Refuse ``from_pretrained`` on a class that cannot be built from a checkpoint.

    The bare base class has no layers, and a class without ``config_class``
    cannot read ``config.json`` (Transformers raises ``ValueError`` too).

    Raises:
        ValueError: naming the class ``config.json``'s ``architectures`` lists,
            or the auto class to use.
    """
    bare = bool(cls.__dict__.get("_abstract_base"))  # PreTrainedModel itself, not a subclass
    if not bare and (cls.config_class is not None or isinstance(config, PretrainedConfig)):
        return
    what = "is the abstract base class (no layers)" if bare else "defines no config_class"
    named = _architectures(name_or_path, hub) if name_or_path is not None else None
    hint = (f"config.json there names {named}: use pretrained.{named[0]}.from_pretrained(...)" if named
            else "use the model class of that checkpoint (e.g. pretrained.BertModel)")
    raise ValueError(f"{cls.__name__}.from_pretrained: {cls.__name__} {what}; {hint}, or "
                     "pretrained.AutoModel.from_pretrained(...) to pick it from config.json")


def _architectures(name_or_path: Any, hub: dict) -> Optional[list]:
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(name_or_path, **hub)
    except (CheckpointNotFoundError, CheckpointError, OSError, ValueError, TypeError):
        return None
    names = config_dict.get("architectures")
    return names if isinstance(names, list) and names and all(isinstance(n, str) for n in names) else None
