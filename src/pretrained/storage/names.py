"""File names of a Hugging Face checkpoint: weights, index, shards, variants.

The rules (identical in Transformers 4.37 and 5.x):

* weights file: ``model.safetensors`` or ``pytorch_model.bin``;
* a variant goes before the last extension: ``model.fp16.safetensors``,
  ``pytorch_model.fp16.bin``, ``model.safetensors.index.fp16.json``;
* shards replace the extension of the variant-expanded name by
  ``-0000k-of-0000n.<ext>``: ``model-00001-of-00003.safetensors``,
  ``model.fp16-00001-of-00003.safetensors``, ``pytorch_model-00001-of-00003.bin``;
* one shard means no suffix and no index.

>>> shard_names("safetensors", "fp16", 2)
['model.fp16-00001-of-00002.safetensors', 'model.fp16-00002-of-00002.safetensors']
"""

from __future__ import annotations

import re
from typing import Optional

FORMATS = ("safetensors", "bin")
_WEIGHTS = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}
_INDEX = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}
_EXTENSION = {"safetensors": ".safetensors", "bin": ".bin"}


def _check_format(fmt: str) -> str:
    if fmt not in _WEIGHTS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {list(FORMATS)}")
    return fmt


def _check_variant(variant: Optional[str]) -> Optional[str]:
    if variant is None or variant == "":
        return None
    if not isinstance(variant, str) or any(c in variant for c in "/\\\0") or variant in (".", ".."):
        raise ValueError(f"variant={variant!r} is not a valid variant (a short tag such as 'fp16')")
    return variant


def extension(fmt: str) -> str:
    """The file extension of a format, with its dot: ``".safetensors"`` or ``".bin"``."""
    return _EXTENSION[_check_format(fmt)]


def add_variant(name: str, variant: Optional[str] = None) -> str:
    """Insert ``.<variant>`` before the last extension of ``name``.

    Args:
        name: a file name such as ``"model.safetensors"``.
        variant: a tag such as ``"fp16"``; ``None`` or ``""`` leaves ``name`` unchanged.

    Returns:
        The variant file name.

    Raises:
        ValueError: for a variant containing a path separator.

    >>> add_variant("model.safetensors.index.json", "fp16")
    'model.safetensors.index.fp16.json'
    """
    variant = _check_variant(variant)
    if variant is None:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        return f"{name}.{variant}"
    return f"{stem}.{variant}.{ext}"


def weights_name(fmt: str, variant: Optional[str] = None) -> str:
    """The single-file weights name: ``model[.v].safetensors`` or ``pytorch_model[.v].bin``.

    Raises:
        ValueError: for an unknown format or a bad variant.
    """
    return add_variant(_WEIGHTS[_check_format(fmt)], variant)


def index_name(fmt: str, variant: Optional[str] = None) -> str:
    """The index name: ``model.safetensors.index[.v].json`` or ``pytorch_model.bin.index[.v].json``.

    Raises:
        ValueError: for an unknown format or a bad variant.
    """
    return add_variant(_INDEX[_check_format(fmt)], variant)


def shard_names(fmt: str, variant: Optional[str], n: int) -> list[str]:
    """The ``n`` file names of a checkpoint split in ``n`` shards.

    Args:
        fmt: ``"safetensors"`` or ``"bin"``.
        variant: variant tag or ``None``.
        n: number of shards, at least 1.

    Returns:
        ``[weights_name(fmt, variant)]`` when ``n == 1``, else
        ``[<stem>-00001-of-0000n<ext>, ...]``.

    Raises:
        ValueError: when ``n < 1``, or for an unknown format or bad variant.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"a checkpoint has at least one shard, got n={n!r}")
    single = weights_name(fmt, variant)
    if n == 1:
        return [single]
    stem = single[: -len(extension(fmt))]
    return [f"{stem}-{i:05d}-of-{n:05d}{extension(fmt)}" for i in range(1, n + 1)]


def _shard_pattern(fmt: str, variant: Optional[str]) -> re.Pattern:
    stem = weights_name(fmt, variant)[: -len(extension(fmt))]
    return re.compile(re.escape(stem) + r"-\d{5,}-of-\d{5,}" + re.escape(extension(fmt)))


def is_family_file(filename: str, fmt: str, variant: Optional[str] = None) -> bool:
    """Whether ``filename`` belongs to the weights of one format and variant.

    The family is the single weights file, every shard name (any count) and
    the index, all of that exact format and variant. Other variants, the other
    format and unrelated files (``config.json``, ``tokenizer.json``) are not in it.

    Args:
        filename: a bare file name (no folder).
        fmt: ``"safetensors"`` or ``"bin"``.
        variant: variant tag or ``None``.

    Returns:
        ``True`` for a member of the family.

    >>> is_family_file("model-00002-of-00009.safetensors", "safetensors")
    True
    >>> is_family_file("model.fp16.safetensors", "safetensors")
    False
    """
    if filename in (weights_name(fmt, variant), index_name(fmt, variant)):
        return True
    return _shard_pattern(fmt, variant).fullmatch(filename) is not None


_VARIANT_FILE = re.compile(
    r"(?:model|pytorch_model)\.(?P<v>[^.]+?)(?:-\d{5,}-of-\d{5,})?\.(?:safetensors|bin)"
    r"|(?:model\.safetensors|pytorch_model\.bin)\.index\.(?P<iv>[^.]+)\.json"
)


def variants_in(filenames) -> list[str]:
    """The variants whose weights files (single, shards or index) are among ``filenames``, sorted.

    >>> variants_in(["config.json", "model.fp16.safetensors", "model.safetensors"])
    ['fp16']
    """
    found = set()
    for filename in filenames:
        match = _VARIANT_FILE.fullmatch(filename)
        if match:
            found.add(match.group("v") or match.group("iv"))
    return sorted(found)


__all__ = [
    "FORMATS",
    "variants_in",
    "add_variant",
    "extension",
    "weights_name",
    "index_name",
    "shard_names",
    "is_family_file",
]
