"""The exceptions `pretrained` raises on bad input.

Every error subclasses both :class:`PretrainedError` and the builtin a caller
would naturally catch (``FileNotFoundError``, ``ValueError``, ...), so
``except OSError`` style code written for Transformers keeps working.
"""

from __future__ import annotations


class PretrainedError(Exception):
    """Base class of every error raised by `pretrained` on purpose."""


class CheckpointNotFoundError(PretrainedError, FileNotFoundError):
    """A folder, repository, config or weights file that should exist does not."""


class CheckpointError(PretrainedError, ValueError):
    """A checkpoint file exists but cannot be read: truncated, garbage, inconsistent."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks for something we refuse to do: a path outside its folder,
    pickled code, a wrong file extension in an index."""


class WeightsMismatchError(PretrainedError, RuntimeError):
    """Checkpoint tensors do not fit the model (shape mismatch) and
    ``ignore_mismatched_sizes`` was not set."""


class RemoteCodeError(PretrainedError, ValueError):
    """A checkpoint carries custom code and ``trust_remote_code`` was not ``True``."""


class SaveError(PretrainedError, OSError):
    """A save failed part way; the previous checkpoint in the folder is untouched."""


class DeviceMapError(PretrainedError, ValueError):
    """A device map or ``max_memory`` budget that cannot be honoured."""


__all__ = [
    "PretrainedError",
    "CheckpointNotFoundError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "RemoteCodeError",
    "SaveError",
    "DeviceMapError",
]


class DistributedError(PretrainedError, RuntimeError):
    """Another rank of a distributed load or save failed, died or timed out."""
