"""One local folder, opened once: every file is looked up in the same directory.

A save replaces a checkpoint folder by swapping in a complete new directory
(see :mod:`pretrained.storage.writer`). A loader that looked files up by path
could read the index of one version and the shards of the next. Holding a
descriptor of the directory (``O_DIRECTORY``) and opening every file relative
to it (``openat``) pins one directory: whatever happens to the path meanwhile,
the files come from that directory, i.e. from one complete version. The only
thing a concurrent save can still do is delete the files of the directory we
hold (after swapping it out); opening one of them then fails with
``FileNotFoundError``, which callers treat as "the folder changed: start again".

Where the platform has no ``dir_fd`` support (Windows), the handle falls back
to plain paths and gives no such guarantee.

>>> with FolderHandle("path/to/folder") as folder:
...     if folder.isfile("model.safetensors.index.json"):
...         raw = folder.read_bytes("model.safetensors.index.json")
...         fd = folder.open("model-00001-of-00002.safetensors")    # caller closes it
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Union

PathLike = Union[str, os.PathLike]

_DIR_FD = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
# O_PATH (Linux): a directory handle that needs no read permission on the folder, only search (x),
# exactly what path-based lookups need
_DIR_FLAGS = (getattr(os, "O_PATH", 0) or os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_DIRECTORY", 0)
_PROC_FD = "/proc/self/fd"


class FolderHandle:
    """A directory held open; names are resolved relative to it.

    Args:
        path: the folder. Names given to the methods are relative to it and may
            contain ``/`` (shards in subfolders); absolute names are used as they are.

    Raises:
        FileNotFoundError / NotADirectoryError: the folder does not exist (any
            ``OSError`` of opening it propagates).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.fd: Optional[int] = None
        if _DIR_FD:
            self.fd = os.open(self.path, _DIR_FLAGS)
        elif not os.path.isdir(self.path):
            raise FileNotFoundError(2, "no such folder", self.path)

    def join(self, name: str) -> str:
        """The path of ``name`` for messages (and for the fallback without ``dir_fd``)."""
        return os.path.join(self.path, *name.split("/"))

    def _at(self, name: str) -> tuple[str, Optional[int]]:
        if self.fd is None or os.path.isabs(name):
            return self.join(name), None
        return name, self.fd

    def isfile(self, name: str) -> bool:
        """Whether ``name`` is a regular file (symlinks followed) in this directory."""
        path, dir_fd = self._at(name)
        try:
            return stat.S_ISREG(os.stat(path, dir_fd=dir_fd).st_mode)
        except (OSError, ValueError):  # ValueError: NUL byte or unencodable name
            return False

    def open(self, name: str) -> int:
        """An ``O_RDONLY`` descriptor of ``name``; the caller closes it.

        Raises:
            FileNotFoundError: ``name`` is not in this directory (any longer).
            OSError: any other failure to open it.
        """
        path, dir_fd = self._at(name)
        fd = os.open(path, _FLAGS, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(21, "not a regular file", self.join(name))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_bytes(self, name: str) -> bytes:
        """The whole content of ``name``."""
        fd = self.open(name)
        try:
            with os.fdopen(fd, "rb", closefd=False) as file:
                return file.read()
        finally:
            os.close(fd)

    def replaced(self) -> bool:
        """Whether :attr:`path` now names another directory than the one held (or nothing).

        The held descriptor keeps its directory's inode alive, so an equal inode
        number means the very same directory. Without ``dir_fd`` support: ``False``.
        """
        if self.fd is None:
            return False
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        held = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FolderHandle({self.path!r}, fd={self.fd})"


def fd_path(fd: int, fallback: str) -> str:
    """A path that opens the very file behind ``fd`` (``/proc/self/fd/N`` on Linux), else ``fallback``.

    For libraries that only take file names (``torch.load(mmap=True)``, ``zipfile``).
    """
    candidate = f"{_PROC_FD}/{fd}"
    return candidate if os.path.isdir(_PROC_FD) else fallback


__all__ = ["FolderHandle", "fd_path"]
