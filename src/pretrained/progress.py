"""Progress bars (tqdm) for long reads and writes, only where a person watches.

Bars are shown when standard error is a terminal, unless
``HF_HUB_DISABLE_PROGRESS_BARS`` or ``PRETRAINED_NO_PROGRESS`` is set to a
non-empty value other than ``0``/``false``.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")
_OFF_SWITCHES = ("PRETRAINED_NO_PROGRESS", "HF_HUB_DISABLE_PROGRESS_BARS")


def progress_enabled() -> bool:
    """Whether bars are shown now (see the module docstring)."""
    for name in _OFF_SWITCHES:
        if os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no"):
            return False
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress(iterable: Iterable[T], *, total: Optional[int] = None, desc: str = "", unit: str = "it",
             min_total: int = 2) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar when bars are on and there are at least ``min_total`` items."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not progress_enabled() or (total is not None and total < min_total):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
