"""The folder transaction of a save: a new version of a folder, assembled beside it and swapped in at once.

How :class:`AtomicFolder` replaces ``folder``:

1. On entry, leftover temporary folders of earlier saves of ``folder`` that
   were killed (their process is gone) are removed.
2. The new version is assembled in a sibling folder
   ``.<name>.pretrained-tmp-<pid>-<random>`` of the same parent: every entry
   of the current folder is hard-linked in (copied where links fail), except
   the entries the caller calls stale and the files it will write. The caller
   writes its files into it (and, with ``durable=True``, each is fsync'ed on a
   background thread while the next is written).
3. On a clean exit the two folders are swapped with one
   ``renameat2(RENAME_EXCHANGE)`` and the old one (now at the temporary name)
   is deleted. A new target is simply renamed into place. On an exception the
   temporary folder is deleted and ``folder`` is untouched.

A reader therefore sees the old version or the new one, never a mix, and a
process killed at any moment leaves one of the two. On systems or file
systems without ``RENAME_EXCHANGE`` the new files are moved in one by one,
the commit file (the last of ``writes``) last, then the stale entries are
deleted in the order the caller gives: a reader may briefly see new files
beside old ones, so the caller orders the files such that what a reader
looks for first always points at a complete set.

Durability: without ``durable=True`` nothing is fsync'ed; the swap is atomic
for readers and for a killed process, but what the kernel had not yet written
may be lost with the machine. With it, every file and folder is on disk
before the swap, and the parent folder after it.

>>> with AtomicFolder("atomic-demo", writes=["notes.txt", "config.json"]) as folder:
...     with open(folder.new_file("notes.txt"), "w") as file:
...         _ = file.write("new")
...     folder.written("notes.txt")                 # complete: fsync'ed in the background when durable
...     folder.write_bytes("config.json", b"{}")    # the same in one call
>>> sorted(os.listdir("atomic-demo"))
['config.json', 'notes.txt']
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import stat
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, Sequence, Union

from ..errors import SaveError
from ..logging import get_logger

logger = get_logger(__name__)

PathLike = Union[str, os.PathLike]

TMP_MARK = ".pretrained-tmp-"
"""What names a temporary folder (or staged file) of a save; no saved name may contain it at top level."""

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE_ERRNOS = {errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EPERM, errno.EBUSY,
                       getattr(errno, "EOPNOTSUPP", errno.EINVAL), getattr(errno, "ENOTSUP", errno.EINVAL)}


# --------------------------------------------------------------------------- fsync


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        _fsync_path(path)
    except OSError:  # some file systems refuse fsync on directories
        pass


class _Syncer:
    """What makes a save durable across a power loss (``durable=True``): each written
    file is fsync'ed on a background thread while the next one is written, and
    :meth:`wait` returns once all are on disk (raising the first fsync error);
    folders are fsync'ed when asked. Not durable, every call is a no-op: the
    save is still atomic for readers and for a process killed part way."""

    def __init__(self, durable: bool) -> None:
        self.durable = durable
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pretrained-fsync") if durable else None
        self._pending: list[Future] = []

    def file(self, path: str) -> None:
        if self._pool is not None:
            self._pending.append(self._pool.submit(_fsync_path, path))

    def folder(self, path: str) -> None:
        if self.durable:
            _fsync_dir(path)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        errors = [error for error in (future.exception() for future in pending) if error is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the thread (after the fsyncs under way); errors are the caller's to have seen."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# --------------------------------------------------------------------------- the temporary folder


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _link_tree(src: str, dst: str, skip: Callable[[str], bool]) -> None:
    """Hard-link every entry of ``src`` (recursively) into ``dst``, except top-level names ``skip`` picks."""
    with os.scandir(src) as entries:
        for entry in entries:
            if skip(entry.name):
                continue
            target = os.path.join(dst, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir():
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def _remove_leftovers(parent: str, base: str) -> None:
    """Delete temporary folders of earlier saves of ``base`` whose process has died."""
    prefix = f".{base}{TMP_MARK}"
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid_text = entry[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        logger.info("removing %s left by an interrupted save", os.path.join(parent, entry))
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _make_temp_folder(parent: str, base: str) -> str:
    while True:
        path = os.path.join(parent, f".{base}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path, 0o777)  # the umask applies, as for a folder made by os.makedirs
            return path
        except FileExistsError:
            continue


# --------------------------------------------------------------------------- swapping folders


_renameat2 = None


def _exchange(first: str, second: str) -> None:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``.

    Raises:
        OSError: with the errno of the call, or ``ENOSYS`` where it does not exist.
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2 is Linux-only")
    if _renameat2 is None:
        function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
        if function is None:
            raise OSError(errno.ENOSYS, "this C library has no renameat2")
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
        _renameat2 = function
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), second)


def _move_into(src: str, dst: str, sync: _Syncer) -> None:
    """``os.replace`` that also works when ``dst`` is on another file system (where the
    copy is fsync'ed before it is renamed into place, when the save is durable)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staging = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}{TMP_MARK}{secrets.token_hex(4)}")
        shutil.copy2(src, staging)
        if sync.durable:
            _fsync_path(staging)
        os.replace(staging, dst)


def _cwd_inside(folder: str) -> Optional[str]:
    """The working directory when it is ``folder`` or below it, else ``None``."""
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    return cwd if cwd == folder or cwd.startswith(folder.rstrip(os.sep) + os.sep) else None


def target_path(folder: PathLike) -> str:
    """The real path of the folder a save of ``folder`` replaces (symlinks followed).

    Raises:
        SaveError: it is a file, or the file system root.
    """
    path = os.path.realpath(os.fspath(folder))
    if os.path.exists(path) and not os.path.isdir(path):
        raise SaveError(f"cannot save a checkpoint to {os.fspath(folder)}: it is a file, not a folder")
    if os.path.dirname(path) == path:
        raise SaveError(f"cannot save a checkpoint to the file system root {path}")
    return path


def _no_stale(entries: list[str]) -> list[str]:
    return []


class AtomicFolder:
    """A context manager that replaces ``folder`` by a new version, atomically (see the module docstring).

    Inside the ``with`` block, write every name of ``writes`` with :meth:`new_file`
    + :meth:`written` or :meth:`write_bytes`; the rest of the old folder is carried
    over (hard links), except the stale entries. The swap happens on a clean exit;
    an exception deletes the temporary folder and leaves ``folder`` as it was.

    Args:
        folder: the folder to replace; created (with its parents) if missing. A
            symlink is followed: the folder it names is replaced, the link stays.
        writes: the names this transaction writes (relative, may contain ``/``), in
            order; the last one is the commit file, moved in last where folders
            cannot be swapped (what a reader looks for first).
        stale: ``stale(entries)`` -> the top-level entries of the old folder the new
            version drops, in the order the fallback deletes them (after moving the
            new files in). Default: none.
        durable: fsync every file and folder before the swap (see the module docstring).

    Raises:
        SaveError: ``folder`` is a file or the file system root (from the constructor);
            any failure while assembling or swapping (on exit, the cause chained; a
            ``SaveError`` or a ``KeyboardInterrupt`` propagates as it is).
    """

    def __init__(self, folder: PathLike, *, writes: Sequence[str],
                 stale: Optional[Callable[[list[str]], list[str]]] = None, durable: bool = False) -> None:
        if not writes:
            raise ValueError("an AtomicFolder transaction writes at least one file")
        self.target = target_path(folder)
        self.writes = list(writes)
        self.commit = self.writes[-1]
        self.stale = stale or _no_stale
        self.path: Optional[str] = None  # the temporary folder, once entered
        self._sync = _Syncer(durable)

    # ----------------------------------------------------------------- writing inside

    def new_file(self, name: str) -> str:
        """The path to write ``name`` at: its folders made, any carried-over entry removed
        (never write through a hard link into the old folder).

        Raises:
            SaveError: a symlinked folder of the old version leads outside the folder.
        """
        path = os.path.join(self.path, *name.split("/"))
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        real_temp = os.path.realpath(self.path)
        if os.path.commonpath([os.path.realpath(folder), real_temp]) != real_temp:
            raise SaveError(f"refusing to write {name!r}: a symlinked folder leads outside the checkpoint")
        if os.path.lexists(path):
            os.unlink(path)
        return path

    def written(self, name: str) -> None:
        """``name`` is complete: fsync it (in the background) when durable."""
        self._sync.file(os.path.join(self.path, *name.split("/")))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name`` (:meth:`new_file`, then :meth:`written`)."""
        with open(self.new_file(name), "wb") as file:
            file.write(data)
        self.written(name)

    # ----------------------------------------------------------------- the transaction

    def __enter__(self) -> "AtomicFolder":
        parent, base = os.path.split(self.target)
        try:
            os.makedirs(parent, exist_ok=True)
            _remove_leftovers(parent, base)
            self.path = _make_temp_folder(parent, base)
            if os.path.isdir(self.target):
                os.chmod(self.path, stat.S_IMODE(os.stat(self.target).st_mode))
                _link_tree(self.target, self.path, self._skip(set(self.stale(os.listdir(self.target)))))
        except BaseException as exc:
            self._raise_failure(exc)
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc is not None:
            self._raise_failure(exc, propagate=True)
            return False
        try:
            self._sync.wait()  # every file on disk before the folder that names them is swapped in
            self._sync.folder(self.path)
            self._install()
        except BaseException as error:  # KeyboardInterrupt too: never leave the temporary folder behind
            self._raise_failure(error)
        self._sync.close()
        return False

    def _raise_failure(self, exc: BaseException, *, propagate: bool = False) -> None:
        """Delete the temporary folder; raise ``exc`` as a SaveError naming the folder (a
        SaveError or a non-``Exception`` as it is; with ``propagate``, return instead)."""
        self._sync.close()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, SaveError):
            raise SaveError(f"saving the checkpoint to {self.target} failed; its previous contents are untouched: "
                            f"{type(exc).__name__}: {exc}") from exc
        if not propagate:
            raise exc

    def _skip(self, stale: set[str]) -> Callable[[str], bool]:
        """Which top-level entries of the old folder are not carried over: stale ones,
        files this save writes, and plain files standing where a new file needs a folder."""
        files = {name for name in self.writes if "/" not in name}
        folders = {name.split("/")[0] for name in self.writes if "/" in name}

        def skip(entry: str) -> bool:
            if entry in files or entry in stale:
                return True
            return entry in folders and not os.path.isdir(os.path.join(self.target, entry))

        return skip

    def _install(self) -> None:
        """Put the assembled folder at the target."""
        temp, target = self.path, self.target
        if not os.path.exists(target):
            os.rename(temp, target)
            self._sync.folder(os.path.dirname(target))
            return
        cwd = _cwd_inside(target)
        try:
            _exchange(temp, target)
        except OSError as exc:
            if exc.errno not in _NO_EXCHANGE_ERRNOS:
                raise
            logger.info("atomic folder exchange unavailable for %s (%s); replacing files one by one", target, exc)
            self._replace_one_by_one()
            return
        if cwd is not None:  # the process sat in the old folder: follow the path to the new one
            try:
                os.chdir(cwd if os.path.isdir(cwd) else target)
            except OSError:
                logger.warning("the working directory %s was replaced by the save; could not re-enter it", cwd)
        self._sync.folder(os.path.dirname(target))
        shutil.rmtree(temp, ignore_errors=True)
        if os.path.lexists(temp):
            logger.warning("could not remove the previous checkpoint, now at %s; a save after this process ends "
                           "removes it", temp)

    def _replace_one_by_one(self) -> None:
        """Fallback without RENAME_EXCHANGE: move new files in, the commit file last, then drop stale ones."""
        temp, target = self.path, self.target
        try:
            for name in [n for n in self.writes if n != self.commit] + [self.commit]:
                path = os.path.join(target, *name.split("/"))
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                _move_into(os.path.join(temp, *name.split("/")), path, self._sync)
            for entry in self.stale(os.listdir(target)):
                if entry not in self.writes:
                    os.unlink(os.path.join(target, entry))
            self._sync.folder(target)
        except OSError as exc:
            raise SaveError(
                f"saving to {target} failed while replacing files one by one (this file system cannot "
                f"swap folders atomically); the folder may hold a mix of old and new files: {exc}"
            ) from exc
        shutil.rmtree(temp, ignore_errors=True)


__all__ = ["AtomicFolder", "TMP_MARK", "target_path"]
