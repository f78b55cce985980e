"""Legacy ``pytorch_model*.bin`` files: safe reading, plain writing.

Reading always uses ``torch.load(weights_only=True)``: the restricted
unpickler only rebuilds tensors and plain containers, so a file whose pickle
would import a function (``os.system``, ``subprocess.Popen``, ...) is refused
with :class:`~pretrained.errors.UnsafeCheckpointError` and nothing runs. There
is deliberately no ``weights_only=False`` fallback. Zip-format files (every
``torch.save`` since 1.6) are memory-mapped.
"""

from __future__ import annotations

import io
import os
import pickle as _pickle
import pickletools
import zipfile
from typing import Callable, Mapping, Optional, Union

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError
from .folder import fd_path
from .safetensors import LFS_PREFIX, lfs_pointer_message

PathLike = Union[str, os.PathLike]

# Phrases of torch's weights-only unpickler that mean "the pickle asked for a
# callable or class we do not allow", as opposed to "the bytes are not a pickle".
_UNSAFE_MARKERS = ("GLOBAL", "global", "add_safe_globals", "safe_globals", "blocked")


def _is_unsafe(exc: BaseException) -> bool:
    text = str(exc)
    if "Weights only load failed" not in text:
        return False
    return any(marker in text for marker in _UNSAFE_MARKERS) and "Unsupported operand" not in text


_SCAN_LIMIT = 64 * 2**20
"""Bytes of pickle we parse (never execute) to name the globals of a refused file."""
_ALLOWED_GLOBALS = {"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset",
                    "builtins.bytearray", "builtins.slice", "builtins.complex"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}


def _pickle_bytes(path: str) -> bytes:
    """The (first ``_SCAN_LIMIT`` bytes of the) pickle stream of a ``.bin`` file, zip or legacy."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if not members:
                return b""
            with archive.open(members[0]) as member:
                return member.read(_SCAN_LIMIT)
    with open(path, "rb") as file:
        return file.read(_SCAN_LIMIT)


def _referenced_globals(path: str) -> list[str]:
    """``module.name`` of the globals a pickle imports, found by parsing its opcodes.

    ``pickletools.genops`` only decodes; nothing is imported or called. Legacy
    files hold several pickles in a row; parsing stops at the first bad byte.
    """
    try:
        stream = io.BytesIO(_pickle_bytes(path))
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    strings: list[str] = []  # string arguments seen, in order: STACK_GLOBAL takes the last two
    memo: dict = {}
    last = None  # the value the previous opcode pushed, when it was a string
    try:
        while stream.tell() < len(stream.getbuffer()):
            for opcode, arg, _ in pickletools.genops(stream):
                name, pushed = opcode.name, None
                if name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "<unknown>")
                elif name in _STRING_OPS:
                    pushed = arg if isinstance(arg, str) else arg.decode("latin-1")
                elif name in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
                    pushed = memo[arg]
                elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"):
                    if name != "FRAME":
                        memo[len(memo) if name == "MEMOIZE" else arg] = last
                    continue  # these leave the stack as it was
                if pushed is not None:
                    strings.append(pushed)
                last = pushed
    except Exception:  # garbage or truncated: keep what was decoded so far
        pass
    return found


def _allowed_globals() -> Optional[set]:
    """``module.name`` of every global torch's weights-only unpickler accepts (``None`` if unknown)."""
    try:
        from torch import _weights_only_unpickler as unpickler

        return (set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
                | _ALLOWED_GLOBALS)
    except Exception:  # a private API: fall back to the coarse rule below
        return None


def _unsafe_global(path: str) -> Optional[str]:
    """The first global the pickle would import that torch's weights-only allow-list lacks
    (``torch.hub.load`` is as unsafe as ``os.system``)."""
    allowed = _allowed_globals()
    for name in _referenced_globals(path):
        if allowed is not None:
            if name not in allowed:
                return name
        elif not (name.startswith("torch.") or name in _ALLOWED_GLOBALS):
            return name
    return None


def _first_bytes(path: str, count: int) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(count)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(f"weights file {path} does not exist") from exc


def _check_state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    for name, value in obj.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: state dict key {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                "only flat name -> tensor state dicts are supported"
            )
    return dict(obj)


def load_pickle(path: PathLike, *, fd: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Load a ``.bin`` state dict onto the CPU without running any code from it.

    Args:
        path: a file written by ``torch.save`` (zip or legacy format).
        fd: an open descriptor of the file to read instead of opening ``path``
            again (``path`` then only names the file in messages).

    Returns:
        name -> tensor, in the file's order.

    Raises:
        UnsafeCheckpointError: the pickle references a callable or class outside
            torch's weights-only allow-list (it would run code); nothing was executed.
        CheckpointError: the file is truncated, not a pickle, a git-lfs pointer,
            or not a flat name -> tensor mapping.
        CheckpointNotFoundError: when the file does not exist.
    """
    path = os.fspath(path)
    source = path if fd is None else fd_path(fd, path)  # the file we read; `path` names it in messages
    if _first_bytes(source, len(LFS_PREFIX)) == LFS_PREFIX:
        raise CheckpointError(lfs_pointer_message(path))
    use_mmap = _first_bytes(source, 4) == b"PK\x03\x04"  # a torch.save zip (is_zipfile also says yes to a
    # pickle that merely embeds a zip near its end)
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True, mmap=use_mmap)
    except _pickle.UnpicklingError as exc:
        if _is_unsafe(exc):
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle references code outside torch's weights-only "
                f"allow-list, so loading it could execute arbitrary code ({_last_line(exc)}). "
                "Convert it to safetensors from a trusted environment."
            ) from exc
        offender = _unsafe_global(source)
        if offender is not None:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle imports {offender}, so loading it could execute "
                f"arbitrary code; torch's weights-only loader stopped at: {_last_line(exc)}"
            ) from exc
        raise CheckpointError(
            f"{path} is not a PyTorch weights file that torch's weights-only loader can read "
            f"({_last_line(exc)}); it is corrupt, or a pickle of a newer protocol: re-save it with torch.save"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError,
            AttributeError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        offender = _unsafe_global(source)
        if offender is not None:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle imports {offender}, so loading it could execute "
                f"arbitrary code; torch's weights-only loader stopped at: {type(exc).__name__}: {_last_line(exc)}"
            ) from exc
        raise CheckpointError(f"{path} is truncated or not a PyTorch weights file: "
                              f"{type(exc).__name__}: {_last_line(exc) or 'unexpected end of file'}") from exc
    return _check_state_dict(obj, path)


def _last_line(exc: BaseException) -> str:
    """The most specific line of torch's long unpickling messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (specific or lines or [""])[0][:300]


def save_pickle(
    state_dict: Mapping[str, torch.Tensor],
    path: PathLike,
    save_function: Callable = torch.save,
) -> None:
    """Write a state dict as a ``.bin`` file with ``save_function(state_dict, path)``.

    Args:
        state_dict: name -> tensor.
        path: destination file.
        save_function: replacement for ``torch.save`` (e.g. an accelerator-aware saver).

    Raises:
        TypeError: when ``state_dict`` is not a mapping of str -> Tensor.
        OSError: when writing fails.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> Tensor, got {type(state_dict).__name__}")
    for name, value in state_dict.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict must map str -> Tensor, got {name!r}: {type(value).__name__}")
    save_function(dict(state_dict), os.fspath(path))


__all__ = ["load_pickle", "save_pickle"]
