"""Custom code beside a checkpoint: the files of a class registered with
``register_for_auto_class`` and the ``auto_map`` entry naming them.

:data:`AUTO_MODEL_CLASSES` is the table of auto model class names: the
modeling layer validates ``register_for_auto_class`` with it, and
:mod:`pretrained.auto` keys its registries by it (so modeling never imports auto).
"""

from __future__ import annotations

import ast
import inspect
import os
from typing import Dict, Tuple, Union

__all__ = ["AUTO_MODEL_CLASSES", "auto_class_name", "custom_code_files", "module_files"]

AUTO_MODEL_CLASSES: Tuple[str, ...] = (
    "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoModelForQuestionAnswering",
)


def auto_class_name(auto_class: Union[str, type]) -> str:
    """The name of ``auto_class`` (a name or a class), checked against :data:`AUTO_MODEL_CLASSES`.

    Raises:
        ValueError: not an auto model class.
    """
    name = auto_class if isinstance(auto_class, str) else auto_class.__name__
    if name not in AUTO_MODEL_CLASSES:
        raise ValueError(f"{name} is not a valid auto class.")
    return name


def custom_code_files(model, config) -> Dict[str, str]:
    """Source files of a registered custom model (and config) class, the files
    they import relatively (``from .layers import X``), and the ``auto_map`` entry.

    Returns:
        ``{file name: source}`` to write beside the checkpoint; ``config.auto_map``
        is updated in place (``{"AutoConfig": "module.Class", "AutoModel...": ...}``).

    Raises:
        ValueError: a class whose source file cannot be found.
    """
    files: Dict[str, str] = {}
    auto_map = dict(getattr(config, "auto_map", None) or {})
    library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    entries = [(type(model), type(model)._auto_class)]
    config_auto = getattr(type(config), "_auto_class", None)
    config_path = inspect.getsourcefile(type(config))
    if config_auto is None and "AutoConfig" not in auto_map and config_path and \
            not os.path.abspath(config_path).startswith(library + os.sep):
        config_auto = "AutoConfig"  # a custom config must travel with a custom model
    entries.insert(0, (type(config), config_auto))
    for obj, auto_name in entries:
        if auto_name is None:
            continue
        path = inspect.getsourcefile(obj)
        if path is None:
            raise ValueError(f"cannot find the source file of {obj.__name__} to save beside the checkpoint")
        files.update(module_files(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        auto_map[auto_name] = f"{stem}.{obj.__name__}"
    config.auto_map = auto_map
    return files


def module_files(path: str) -> Dict[str, str]:
    """``path``'s source and, recursively, the sibling files it imports relatively."""
    files: Dict[str, str] = {}
    pending = [os.path.abspath(path)]
    while pending:
        current = pending.pop()
        name = os.path.basename(current)
        if name in files:
            continue
        with open(current, "r", encoding="utf-8") as f:
            files[name] = f.read()
        folder = os.path.dirname(current)
        for node in ast.walk(ast.parse(files[name], filename=current)):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            modules = [node.module] if node.module else [alias.name for alias in node.names]
            for module in modules:
                candidate = os.path.join(folder, module.split(".")[0] + ".py")
                if os.path.isfile(candidate):
                    pending.append(candidate)
    return files
