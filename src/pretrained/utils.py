"""Small shared helpers: size strings, dtype names, natural key order.

Imports nothing heavier than ``torch``; every layer may use it.
"""

from __future__ import annotations

import re
from typing import Union

import torch

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]I?B)?\s*$", re.IGNORECASE)
_UNITS = {
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}


def parse_size(size: Union[int, str], *, name: str = "size") -> int:
    """Parse a byte count: an int, or a string such as ``"5GB"`` (5·10⁹),
    ``"5GiB"`` (5·2³⁰), ``"500MB"``, ``"1.5 GiB"``, ``"1024"``.

    Units are bytes whatever their case (``"5gb"`` is 5·10⁹, not bits).

    Raises:
        ValueError: naming ``name`` and the value, when it is malformed or negative.

    >>> parse_size("5GB"), parse_size("2KiB"), parse_size(7)
    (5000000000, 2048, 7)
    """
    if isinstance(size, bool):
        raise ValueError(f"{name}={size!r} is not a size; pass bytes as an int or a string like '5GB'")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"{name}={size!r} is negative")
        return size
    if isinstance(size, float) and size >= 0 and size == size:
        return int(size)
    if not isinstance(size, str):
        raise ValueError(f"{name}={size!r} is not a size; pass bytes as an int or a string like '5GB'")
    match = _SIZE_RE.match(size)
    if match is None:
        raise ValueError(
            f"{name}={size!r} is not a valid size: use an int of bytes or a number with a unit "
            "(KB, MB, GB, TB = powers of 10; KiB, MiB, GiB, TiB = powers of 2), e.g. '5GB' or '500MiB'"
        )
    number, unit = match.groups()
    return int(float(number) * (_UNITS[unit.upper()] if unit else 1))


_DTYPE_NAMES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "double": torch.float64, "fp64": torch.float64,
}


def parse_dtype(dtype, *, name: str = "dtype", allow_auto: bool = True):
    """Turn a ``torch.dtype``, a name (``"float16"``, ``"bf16"``, ``"torch.float32"``)
    or ``"auto"`` into a ``torch.dtype`` (or the string ``"auto"``).

    Raises:
        ValueError: for unknown names and non floating-point dtypes.
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.strip()
        if key == "auto" and allow_auto:
            return "auto"
        key = key[len("torch."):] if key.startswith("torch.") else key
        if key not in _DTYPE_NAMES:
            raise ValueError(
                f"{name}={dtype!r} is not a floating-point dtype; use a torch.dtype or one of "
                f"{sorted(set(_DTYPE_NAMES))}" + (" or 'auto'" if allow_auto else "")
            )
        return _DTYPE_NAMES[key]
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"{name}={dtype} is not a floating-point dtype")
        return dtype
    raise ValueError(f"{name}={dtype!r} is not a dtype")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (the form config.json uses)."""
    return str(dtype).rsplit(".", 1)[-1]


def natural_key(name: str):
    """Sort key that orders ``h.2`` before ``h.10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
