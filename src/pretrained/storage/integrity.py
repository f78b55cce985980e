"""SHA-256 checksums of weights files: how they are stored and checked.

``save_pretrained(..., checksums=True)`` (``save_checkpoint(checksums=True)``) records them:

* sharded checkpoints: the index gets ``metadata["checksums"] = {shard file:
  sha256 hex of the whole file}``;
* a single safetensors file has no index, so it carries its own checksum in its
  header: ``__metadata__["sha256"]`` is the SHA-256 of the whole file in which
  the 64 hex digits of that value are replaced by 64 ``"0"`` characters (the
  writer hashes the file as written with that placeholder, then patches the
  digest in). Header and data are both covered; other readers (Transformers,
  ``safetensors``) ignore the extra metadata key;
* a single ``.bin`` file cannot carry one: the save logs a warning.

``from_pretrained(..., verify=True)`` (``Checkpoint(resolved, verify=True)``)
hashes every weights file through the very descriptors the tensors are mapped
from, before any tensor is read, and raises
:class:`~pretrained.errors.CheckpointError` naming the first file whose digest
differs. A checkpoint without checksums is loaded with a warning.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from typing import Optional

from ..errors import CheckpointError

CHECKSUM_KEY = "sha256"
"""``__metadata__`` key of a single safetensors file's own checksum."""

PLACEHOLDER = "0" * 64
"""What the digest is replaced by while it is computed."""

_HEX = re.compile(r"[0-9a-f]{64}")
_BLOCK = 8 << 20


def fd_sha256(fd: int, *, zero_at: Optional[int] = None) -> str:
    """Hex SHA-256 of the file behind ``fd`` (read with ``pread``; the position is not used).

    Args:
        fd: an open descriptor.
        zero_at: byte offset of a 64-byte digest to hash as :data:`PLACEHOLDER` instead.
    """
    digest = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, _BLOCK, offset)
        if not block:
            break
        if zero_at is not None and offset < zero_at + 64 and zero_at < offset + len(block):
            start, stop = max(zero_at - offset, 0), min(zero_at + 64 - offset, len(block))
            block = block[:start] + PLACEHOLDER[: stop - start].encode() + block[stop:]
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def misplaced_checksums(metadata, key: str, where: str) -> None:
    """Raise if ``metadata`` lacks ``key`` but holds digests under another key.

    A corrupted key name (one flipped bit in ``"sha256"`` or ``"checksums"``)
    would otherwise make a checksummed checkpoint look like one without
    checksums, which ``verify=True`` only warns about.
    """
    if not isinstance(metadata, dict):
        return
    for name, value in metadata.items():
        digests = list(value.values()) if isinstance(value, dict) and value else [value]
        if name != key and all(isinstance(d, str) and _HEX.fullmatch(d) for d in digests):
            raise CheckpointError(f"{where}: no {key!r} checksum entry, but {name!r} holds SHA-256 digests; "
                                  "the metadata is corrupt")


def check_digest(value, where: str) -> str:
    """``value`` if it is a lower-case 64-digit hex string, else a CheckpointError naming ``where``."""
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise CheckpointError(f"{where}: malformed SHA-256 checksum {value!r} (expected 64 lower-case hex digits)")
    return value


def embedded_digest_offset(fd: int, data_offset: int, value: str, where: str) -> int:
    """Absolute offset of the header's own digest ``value`` in a safetensors file.

    Raises:
        CheckpointError: the digest does not occur exactly once in the header.
    """
    raw = os.pread(fd, data_offset - 8, 8)
    needle = value.encode("ascii")
    if raw.count(needle) != 1:
        raise CheckpointError(f"{where}: cannot verify the file: its checksum {value} does not occur exactly once "
                              "in its header")
    return 8 + raw.index(needle)


def embed_checksum(path: str) -> str:
    """Patch the SHA-256 of a just-written safetensors file into its ``"sha256"`` placeholder.

    The file must have been written with ``__metadata__["sha256"] = PLACEHOLDER``.

    Returns:
        The digest.
    """
    marker = b'"%s":"%s"' % (CHECKSUM_KEY.encode(), PLACEHOLDER.encode())
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        (length,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        raw = os.pread(fd, length, 8)
        where = raw.find(marker)
        if where < 0:
            raise ValueError(f"{path} has no {CHECKSUM_KEY!r} placeholder in its header")
        offset = 8 + where + len(marker) - 65
        digest = fd_sha256(fd)
        os.pwrite(fd, digest.encode("ascii"), offset)
    finally:
        os.close(fd)
    return digest


def mismatch(where: str, expected: str, actual: str) -> CheckpointError:
    return CheckpointError(f"checksum mismatch in {where}: expected sha256 {expected}, got {actual}; "
                           "the file is corrupt or was modified after it was saved")


__all__ = ["CHECKSUM_KEY", "PLACEHOLDER", "fd_sha256", "check_digest", "misplaced_checksums", "embedded_digest_offset", "embed_checksum",
           "mismatch"]
