"""Kept for imports of ``pretrained.modeling.decoding``: it now lives in
:mod:`pretrained.modeling.generation.decoding`."""

from .generation.decoding import (  # noqa: F401
    DecodeSettings, Step, decode,
)

__all__ = ["DecodeSettings", "Step", "decode"]
