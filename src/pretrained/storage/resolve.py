"""Where the weights come from: a local folder, one weights file, or a Hub repo id.

:func:`resolve_checkpoint` follows Transformers' order (variant applied to
every name)::

    model[.v].safetensors               single safetensors      (unless use_safetensors=False)
    model.safetensors.index[.v].json    sharded safetensors     (unless use_safetensors=False)
    pytorch_model[.v].bin               single pickle           (unless use_safetensors=True)
    pytorch_model.bin.index[.v].json    sharded pickle          (unless use_safetensors=True)

Index files are untrusted input: the shard names they list are checked
(relative, no ``..``, no backslash or drive letter, extension of the format)
before any shard is opened or downloaded.

Local folders are read through one directory descriptor
(:class:`~pretrained.storage.folder.FolderHandle`): the weights file, the
index and the shards it names are all looked up in the same directory, so a
save that swaps the folder meanwhile cannot make resolution mix two versions;
when the folder was swapped under a failed lookup, resolution starts again
(a bounded number of times). :class:`ResolvedCheckpoint` remembers how it was
asked for, so :class:`~pretrained.storage.checkpoint.Checkpoint` can resolve
again when the folder changes before it has opened every file.

Hub access goes through ``huggingface_hub.hf_hub_download`` (imported only
when a repo id is used), so its cache, ``HF_HUB_OFFLINE=1`` and
``HF_HUB_CACHE`` all work as they do for Transformers.

>>> resolved = resolve_checkpoint("path/to/folder", variant="fp16")
>>> resolved.format, [os.path.basename(f) for f in resolved.files]
('safetensors', ['model.fp16-00001-of-00002.safetensors', 'model.fp16-00002-of-00002.safetensors'])
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError
from ..logging import get_logger
from . import names
from .folder import FolderHandle

logger = get_logger(__name__)

PathLike = Union[str, os.PathLike]

HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
"""The keyword arguments every resolver accepts and forwards to the Hub client."""

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_SINGLE_FILE_FORMATS = {".safetensors": "safetensors", ".bin": "bin", ".pt": "bin", ".pth": "bin"}
_RESOLVE_ATTEMPTS = 5
"""How many times a local resolution starts again when the folder is swapped under it."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """The weight files of one checkpoint, all local.

    Attributes:
        folder: the local folder holding them (a Hub cache snapshot for repo ids).
        format: ``"safetensors"`` or ``"bin"``.
        files: absolute paths of the weight files: the single file, or the
            sorted unique shards of the index.
        weight_map: tensor name -> path (one of ``files``) when sharded, else ``None``.
        index: the parsed index JSON when sharded, else ``None``.
        index_file: path of the index file when sharded, else ``None``.
        request: the arguments of the :func:`resolve_checkpoint` call that
            produced it (to resolve again), or ``None``.
    """

    folder: str
    format: str
    files: list[str]
    weight_map: Optional[dict[str, str]]
    index: Optional[dict]
    index_file: Optional[str] = None
    request: Optional[dict] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_sharded(self) -> bool:
        return self.index is not None


# --------------------------------------------------------------------------- locating


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repo id (``"gpt2"``, ``"org/model-1.5"``)."""
    return (
        len(name) <= 96
        and _REPO_ID.match(name) is not None
        and "--" not in name
        and ".." not in name
        and not name.endswith((".", "-"))
    )


def _check_hub_kwargs(hub_kwargs: dict) -> dict:
    unknown = sorted(set(hub_kwargs) - set(HUB_KWARGS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; hub options are {list(HUB_KWARGS)}")
    return hub_kwargs


def _local_folder(path: str, subfolder: Optional[str]) -> Optional[str]:
    """The local folder to look in, or ``None`` when ``path`` is not local."""
    if os.path.isdir(path):
        return os.path.abspath(os.path.join(path, subfolder or ""))
    if os.path.isfile(path):
        return os.path.abspath(os.path.join(os.path.dirname(path), subfolder or ""))
    return None


def _not_local(path: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"{path!r} is not a local folder or file, and it does not look like a Hub repository id "
        "('name' or 'org/name')"
    )


def _hub_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.23 keeps them in utils
        from huggingface_hub import utils as errors
    return errors


def _hub_where(repo_id: str, revision: Optional[str], subfolder: Optional[str]) -> str:
    where = f"Hub repository {repo_id!r}"
    if revision:
        where += f" at revision {revision!r}"
    if subfolder:
        where += f" (subfolder {subfolder!r})"
    return where


def _hub_download(repo_id: str, filename: str, *, required: bool, **hub_kwargs: Any) -> Optional[str]:
    """``hf_hub_download`` with its errors turned into ours; ``None`` for a missing optional file."""
    from huggingface_hub import hf_hub_download

    errors = _hub_errors()
    where = _hub_where(repo_id, hub_kwargs.get("revision"), hub_kwargs.get("subfolder"))
    try:
        return hf_hub_download(
            repo_id,
            filename,
            subfolder=hub_kwargs.get("subfolder") or None,
            revision=hub_kwargs.get("revision"),
            cache_dir=hub_kwargs.get("cache_dir"),
            force_download=bool(hub_kwargs.get("force_download", False)),
            local_files_only=bool(hub_kwargs.get("local_files_only", False)),
            token=hub_kwargs.get("token"),
        )
    except errors.EntryNotFoundError as exc:
        if not required:
            return None
        raise CheckpointNotFoundError(
            f"{filename} not found in {where} (nor in the local cache when offline): {exc}"
        ) from exc
    except errors.RevisionNotFoundError as exc:
        raise CheckpointNotFoundError(f"revision not found in {where}: {exc}") from exc
    except errors.RepositoryNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{repo_id!r} is not a local folder and {where} does not exist or is private/gated "
            f"(pass token= for private repositories): {exc}"
        ) from exc
    except OSError as exc:  # HTTP and connection errors
        raise CheckpointNotFoundError(f"could not get {filename} from {where}: {exc}") from exc


def resolve_file(
    name_or_path: PathLike,
    filename: str,
    *,
    required: bool = True,
    **hub_kwargs: Any,
) -> Optional[str]:
    """The local path of ``filename`` in a folder or Hub repository.

    Args:
        name_or_path: a local folder, a file inside the folder (its folder is
            used), or a Hub repo id.
        filename: name of the file, relative to the folder (and ``subfolder``).
        required: raise when the file is missing instead of returning ``None``.
        **hub_kwargs: ``cache_dir``, ``force_download``, ``local_files_only``,
            ``token``, ``revision``, ``subfolder``.

    Returns:
        The absolute local path, or ``None`` when missing and not ``required``.

    Raises:
        CheckpointNotFoundError: a required file is missing, the path does not
            exist and is no repo id, or the Hub repository/revision is unknown.
        TypeError: for an unknown keyword argument.
    """
    _check_hub_kwargs(hub_kwargs)
    path = os.fspath(name_or_path)
    folder = _local_folder(path, hub_kwargs.get("subfolder"))
    if folder is not None:
        def find(handle: Optional[FolderHandle]) -> Optional[str]:
            if handle is not None and handle.isfile(filename):
                return handle.join(filename)
            if required:
                raise CheckpointNotFoundError(f"{filename} not found in folder {folder}")
            return None

        return _in_local_folder(folder, find)
    if not looks_like_repo_id(path):
        raise _not_local(path)
    return _hub_download(path, filename, required=required, **hub_kwargs)


# --------------------------------------------------------------------------- index files


def _check_shard_name(shard: str, fmt: str, index_file: str) -> str:
    """Refuse shard names that could leave the folder or that have the wrong extension."""
    problem = None
    if not shard:
        problem = "is empty"
    elif shard.startswith("/") or os.path.isabs(shard):
        problem = "is an absolute path"
    elif "\\" in shard or re.match(r"^[A-Za-z]:", shard):
        problem = "contains a backslash or drive letter"
    elif "\0" in shard:
        problem = "contains a NUL byte"
    elif ".." in shard.split("/"):
        problem = "contains a '..' component"
    elif not shard.endswith(names.extension(fmt)):
        problem = f"does not end in {names.extension(fmt)!r} as {fmt} shards must"
    if problem:
        raise UnsafeCheckpointError(f"{index_file}: refusing shard name {shard!r}: it {problem}")
    return shard


def read_index(index_file: str, fmt: str) -> dict:
    """Parse and validate an index file; shard names are checked, not opened.

    Args:
        index_file: path of ``model.safetensors.index[.v].json`` or its pickle twin.
        fmt: the format its shards must have.

    Returns:
        The index dict (``weight_map`` guaranteed to be a dict of str -> str).

    Raises:
        CheckpointError: malformed JSON or schema.
        UnsafeCheckpointError: a shard name that escapes the folder or has the wrong extension.
    """
    with open(index_file, "rb") as file:
        return parse_index(file.read(), index_file, fmt)


def parse_index(raw: bytes, index_file: str, fmt: str) -> dict:
    """:func:`read_index` on the bytes of the file; ``index_file`` names it in messages."""
    try:
        index = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, too many digits
        raise CheckpointError(f"{index_file} is not a valid JSON index file: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
    if not isinstance(index, dict):
        raise CheckpointError(f"{index_file}: an index must be a JSON object, got {type(index).__name__}")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_file}: 'weight_map' must be an object of tensor name -> shard file")
    metadata = index.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"{index_file}: 'metadata' must be an object, got {type(metadata).__name__}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_file}: weight_map[{name!r}] must be a file name, got {shard!r}"[:500])
    for shard in sorted(set(weight_map.values())):
        _check_shard_name(shard, fmt, index_file)
    return index


def _resolve_shards(
    index_file: str, index: dict, location: str, *, folder: Optional[FolderHandle], hub_kwargs: dict
) -> tuple[list[str], dict[str, str]]:
    """Local paths of every shard named by ``index`` and the tensor -> path map.

    ``folder`` is the opened local folder of the index, or ``None`` for a Hub repository.
    """
    weight_map: dict[str, str] = index["weight_map"]
    paths: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        if folder is not None:
            path = folder.join(shard)
            if not folder.isfile(shard):
                raise CheckpointNotFoundError(f"shard {shard} named by {index_file} not found in {folder.path}")
        else:
            subfolder = hub_kwargs.get("subfolder")
            try:
                path = _hub_download(location, shard, required=True, **hub_kwargs)
            except CheckpointNotFoundError as exc:
                raise CheckpointNotFoundError(
                    f"shard {shard} named by {index_file} not found in "
                    f"{_hub_where(location, hub_kwargs.get('revision'), subfolder)}: {exc}"
                ) from exc
        paths[shard] = path
    return [paths[shard] for shard in sorted(paths)], {name: paths[shard] for name, shard in weight_map.items()}


# --------------------------------------------------------------------------- checkpoints


def _candidates(variant: Optional[str], use_safetensors: Optional[bool]) -> list[tuple[str, str, bool]]:
    """(format, filename, is_index) in resolution order."""
    order = []
    if use_safetensors is not False:
        order += [("safetensors", names.weights_name("safetensors", variant), False),
                  ("safetensors", names.index_name("safetensors", variant), True)]
    if use_safetensors is not True:
        order += [("bin", names.weights_name("bin", variant), False),
                  ("bin", names.index_name("bin", variant), True)]
    return order


def _single_file(path: str, use_safetensors: Optional[bool]) -> "ResolvedCheckpoint":
    """A weights file or index given by path: its extension decides the format."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    is_index = path.endswith(".json")
    if is_index:
        fmt = "safetensors" if ".safetensors.index" in os.path.basename(path) else "bin"
    else:
        fmt = _SINGLE_FILE_FORMATS.get(os.path.splitext(path)[1])
    if fmt is None:
        raise CheckpointError(f"{path}: unknown weights file type; expected .safetensors, .bin, .pt, .pth "
                              "or an index .json")
    if (use_safetensors is True and fmt != "safetensors") or (use_safetensors is False and fmt == "safetensors"):
        raise CheckpointNotFoundError(f"use_safetensors={use_safetensors} but {path} is a {fmt} file")
    if is_index:
        return _in_local_folder(folder, lambda handle: _from_local_index(handle, os.path.basename(path), fmt))
    return ResolvedCheckpoint(folder, fmt, [path], None, None)


def _from_local_index(folder: Optional[FolderHandle], filename: str, fmt: str) -> ResolvedCheckpoint:
    if folder is None:
        raise CheckpointNotFoundError(f"the folder of index file {filename} cannot be opened")
    index_file = folder.join(filename)
    try:
        raw = folder.read_bytes(filename)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"index file {index_file} does not exist") from None
    index = parse_index(raw, index_file, fmt)
    files, weight_map = _resolve_shards(index_file, index, "", folder=folder, hub_kwargs={})
    return ResolvedCheckpoint(folder.path, fmt, files, weight_map, index, index_file)


def _from_hub_index(index_file: str, fmt: str, location: str, hub_kwargs: dict) -> ResolvedCheckpoint:
    index = read_index(index_file, fmt)
    files, weight_map = _resolve_shards(index_file, index, location, folder=None, hub_kwargs=hub_kwargs)
    return ResolvedCheckpoint(os.path.dirname(index_file), fmt, files, weight_map, index, index_file)


def _in_local_folder(path: str, resolve):
    """``resolve(handle)`` on the opened folder ``path``; start again (a few times) when a file
    was missing because a save swapped the folder meanwhile."""
    for attempt in range(_RESOLVE_ATTEMPTS):
        try:
            handle = FolderHandle(path)
        except OSError:
            handle = None
        try:
            return resolve(handle)
        except CheckpointNotFoundError:
            if handle is None or attempt + 1 == _RESOLVE_ATTEMPTS or not handle.replaced():
                raise
            logger.info("%s was replaced while it was being resolved; resolving again", path)
        finally:
            if handle is not None:
                handle.close()
    raise AssertionError("unreachable")


def _resolve_local(folder: Optional[FolderHandle], location: str, variant: Optional[str],
                   use_safetensors: Optional[bool], hub_kwargs: dict) -> ResolvedCheckpoint:
    tried = []
    for fmt, filename, is_index in _candidates(variant, use_safetensors):
        tried.append(filename)
        if folder is None or not folder.isfile(filename):
            continue
        logger.debug("resolved %s weights of %s to %s", fmt, location, folder.join(filename))
        if is_index:
            return _from_local_index(folder, filename, fmt)
        return ResolvedCheckpoint(folder.path, fmt, [folder.join(filename)], None, None)
    path = folder.path if folder is not None else os.path.abspath(
        os.path.join(location, hub_kwargs.get("subfolder") or ""))
    raise _not_found(location, path, tried, variant, use_safetensors, hub_kwargs)


def _exists_without_fetch(location: str, filename: str, folder: Optional[str], hub_kwargs: dict) -> bool:
    """Whether ``filename`` is present, without downloading (Hub: only the local cache is consulted)."""
    if folder is not None:
        return os.path.isfile(os.path.join(folder, filename))
    try:
        from huggingface_hub import try_to_load_from_cache

        subfolder = hub_kwargs.get("subfolder")
        found = try_to_load_from_cache(
            location, f"{subfolder}/{filename}" if subfolder else filename,
            cache_dir=hub_kwargs.get("cache_dir"), revision=hub_kwargs.get("revision"),
        )
    except Exception:  # a hint only; never let it hide the real error
        return False
    return isinstance(found, str)


def _variants_there(folder: Optional[str], variant: Optional[str]) -> list:
    """Variants of the weights files in a local ``folder`` other than ``variant``."""
    try:
        return [v for v in names.variants_in(os.listdir(folder)) if v != variant] if folder else []
    except OSError:
        return []


def _not_found(location: str, folder: Optional[str], tried: list[str], variant: Optional[str],
               use_safetensors: Optional[bool], hub_kwargs: dict) -> CheckpointNotFoundError:
    where = f"folder {folder}" if folder is not None else _hub_where(
        location, hub_kwargs.get("revision"), hub_kwargs.get("subfolder"))
    message = f"no weights found in {where}: tried {', '.join(tried)}"
    if variant:
        message += f" (variant {variant!r})"
        plain = [name for fmt, name, _ in _candidates(None, use_safetensors)
                 if _exists_without_fetch(location, name, folder, hub_kwargs)]
        if plain:
            message += (f"; there is a file without the variant {variant!r} ({plain[0]}): "
                        "pass variant=None to load it")
    others_variants = _variants_there(folder, variant)
    if others_variants:
        message += (f"; the folder holds weights of variant(s) {', '.join(map(repr, others_variants))}: "
                    f"pass variant={others_variants[0]!r} to load them")
    if use_safetensors is True:
        others = [name for fmt, name, _ in _candidates(variant, False)
                  if _exists_without_fetch(location, name, folder, hub_kwargs)]
        if others:
            message += f"; {others[0]} exists: pass use_safetensors=None or False to load pickle weights"
    return CheckpointNotFoundError(message)


def resolve_checkpoint(
    name_or_path: PathLike,
    *,
    variant: Optional[str] = None,
    use_safetensors: Optional[bool] = None,
    **hub_kwargs: Any,
) -> ResolvedCheckpoint:
    """Find the weight files of a checkpoint.

    Args:
        name_or_path: a local folder, a weights file (``.safetensors``, ``.bin``,
            ``.pt``, ``.pth``, or an index ``.json``), or a Hub repo id.
        variant: weights variant such as ``"fp16"`` (applies to every name).
        use_safetensors: ``None`` prefers safetensors and falls back to
            ``.bin``; ``True`` requires safetensors; ``False`` skips them.
        **hub_kwargs: ``cache_dir``, ``force_download``, ``local_files_only``,
            ``token``, ``revision``, ``subfolder``.

    Returns:
        A :class:`ResolvedCheckpoint` whose files all exist locally.

    Raises:
        CheckpointNotFoundError: no weights file (the message lists the names
            tried and the folder), a shard named by the index is missing, or the
            path/repository does not exist.
        UnsafeCheckpointError: the index names a shard outside the folder or
            with the wrong extension (raised before any shard is read).
        CheckpointError: a malformed index.
        TypeError: for an unknown keyword argument.
    """
    _check_hub_kwargs(hub_kwargs)
    request = dict(name_or_path=name_or_path, variant=variant, use_safetensors=use_safetensors, **hub_kwargs)
    return dataclasses.replace(_resolve(os.fspath(name_or_path), variant, use_safetensors, hub_kwargs),
                               request=request)


def _resolve(path: str, variant: Optional[str], use_safetensors: Optional[bool], hub_kwargs: dict
             ) -> ResolvedCheckpoint:
    if os.path.isfile(path):
        return _single_file(path, use_safetensors)
    folder = _local_folder(path, hub_kwargs.get("subfolder"))
    if folder is not None:
        return _in_local_folder(
            folder, lambda handle: _resolve_local(handle, path, variant, use_safetensors, hub_kwargs))
    if not looks_like_repo_id(path):
        raise _not_local(path)
    tried = []
    for fmt, filename, is_index in _candidates(variant, use_safetensors):
        tried.append(filename)
        found = _hub_download(path, filename, required=False, **hub_kwargs)
        if found is None:
            continue
        logger.debug("resolved %s weights of %s to %s", fmt, path, found)
        if is_index:
            return _from_hub_index(found, fmt, path, hub_kwargs)
        return ResolvedCheckpoint(os.path.dirname(found), fmt, [found], None, None)
    raise _not_found(path, None, tried, variant, use_safetensors, hub_kwargs)


__all__ = [
    "HUB_KWARGS",
    "ResolvedCheckpoint",
    "looks_like_repo_id",
    "resolve_file",
    "read_index",
    "parse_index",
    "resolve_checkpoint",
]
