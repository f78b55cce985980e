"""The library logger: ``pretrained.logging.set_verbosity_info()`` and friends.

Library code calls ``get_logger(__name__)``; nothing here prints.  Warnings
that would repeat on every call go through :func:`warning_once`.
"""

from __future__ import annotations

import logging as _logging
import os

CRITICAL, ERROR, WARNING, INFO, DEBUG = (
    _logging.CRITICAL, _logging.ERROR, _logging.WARNING, _logging.INFO, _logging.DEBUG,
)
_ROOT = "pretrained"


def _root() -> _logging.Logger:
    logger = _logging.getLogger(_ROOT)
    if not getattr(logger, "_pretrained_configured", False):
        level = os.environ.get("PRETRAINED_VERBOSITY", "").upper()
        logger.setLevel(getattr(_logging, level, _logging.WARNING) if level else _logging.WARNING)
        handler = _logging.StreamHandler()
        handler.setFormatter(_logging.Formatter("[pretrained] %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger._pretrained_configured = True
    return logger


def get_logger(name: str = _ROOT) -> _logging.Logger:
    """The logger for a module of the library (child of ``pretrained``)."""
    _root()
    return _logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def set_verbosity(level: int) -> None:
    _root().setLevel(level)


def get_verbosity() -> int:
    return _root().getEffectiveLevel()


def set_verbosity_debug() -> None:
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    set_verbosity(ERROR)


def enable_propagation() -> None:
    """Let records reach the root logger too (e.g. for pytest's caplog)."""
    _root().propagate = True


_seen: set = set()


def warning_once(logger: _logging.Logger, message: str) -> None:
    """Log ``message`` at WARNING the first time it is seen in this process."""
    if (logger.name, message) in _seen:
        return
    _seen.add((logger.name, message))
    logger.warning(message)
