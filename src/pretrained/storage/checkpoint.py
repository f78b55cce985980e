"""One lazy view over all the weight files of a resolved checkpoint.

For safetensors every header is read (and cross-checked against the index)
up front, which costs a few kilobytes per shard; tensor data is only touched
by :meth:`Checkpoint.get`, which returns zero-copy views of a copy-on-write
mapping. For ``.bin`` checkpoints a whole shard must be unpickled to reach any
of its tensors, so at most one shard is kept in memory at a time.

>>> with Checkpoint(resolve_checkpoint("path/to/folder")) as ckpt:   # doctest: +SKIP
...     for name in ckpt.keys():
...         dtype, shape = ckpt.dtype_shape(name)     # headers only
...         tensor = ckpt.get(name)                   # mmap view
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

from ..errors import CheckpointError
from .pickle import load_pickle
from .resolve import ResolvedCheckpoint
from .safetensors import SafetensorsHeader, SafetensorsReader, read_header

_PARALLEL_HEADERS = 16
"""Read headers with threads from this many shards on: on a local disk a header costs ~0.1 ms
and threads do not help (the GIL), on network file systems they hide the latency."""


class Checkpoint:
    """Tensors of a checkpoint by name, across all of its files.

    Args:
        resolved: the output of :func:`~pretrained.storage.resolve.resolve_checkpoint`.

    Raises:
        CheckpointError: a shard header is invalid, a tensor is in two shards,
            a tensor of a shard is missing from the index, or a tensor of the
            index is missing from its shard (for ``.bin`` shards the last two
            are detected when the shard is loaded).
    """

    def __init__(self, resolved: ResolvedCheckpoint) -> None:
        self.resolved = resolved
        self.format = resolved.format
        self.files: list[str] = list(resolved.files)
        self._headers: dict[str, SafetensorsHeader] = {}
        self._readers: dict[str, SafetensorsReader] = {}
        self._bin_file: Optional[str] = None
        self._bin_tensors: dict[str, torch.Tensor] = {}
        self._key_file: Optional[dict[str, str]] = None
        if self.format == "safetensors":
            self._read_headers()
        elif resolved.weight_map is not None:
            self._key_file = self._ordered(resolved.weight_map)

    # ----------------------------------------------------------------- construction

    def _where(self) -> str:
        return self.resolved.index_file or (self.files[0] if self.files else self.resolved.folder)

    def _ordered(self, key_file: dict[str, str]) -> dict[str, str]:
        """``key_file`` re-ordered by file, keeping each file's own order."""
        rank = {file: i for i, file in enumerate(self.files)}
        return dict(sorted(key_file.items(), key=lambda item: rank[item[1]]))

    def _read_headers(self) -> None:
        if len(self.files) >= _PARALLEL_HEADERS:
            with ThreadPoolExecutor(max_workers=_PARALLEL_HEADERS) as pool:
                headers = list(pool.map(read_header, self.files))
        else:
            headers = [read_header(file) for file in self.files]
        self._headers = dict(zip(self.files, headers))
        key_file: dict[str, str] = {}
        for file, header in self._headers.items():
            for name in header.tensors:
                if name in key_file:
                    raise CheckpointError(f"tensor {name!r} is stored twice: in {key_file[name]} and in {file}")
                key_file[name] = file
        if self.resolved.weight_map is not None:
            self._check_against_index(key_file, self.resolved.weight_map)
        self._key_file = key_file

    def _check_against_index(self, key_file: dict[str, str], weight_map: dict[str, str]) -> None:
        index = self.resolved.index_file or "the index"
        for name, file in key_file.items():
            if name not in weight_map:
                raise CheckpointError(f"tensor {name!r} is in shard {file} but not in the weight_map of {index}")
            if weight_map[name] != file:
                raise CheckpointError(
                    f"tensor {name!r} is in shard {file} but {index} maps it to {weight_map[name]}"
                )
        for name, file in weight_map.items():
            if name not in key_file:
                raise CheckpointError(f"tensor {name!r} is listed in {index} for shard {file} but missing from it")

    # ----------------------------------------------------------------- .bin shards

    def _load_bin(self, file: str) -> dict[str, torch.Tensor]:
        """Make ``file`` the one resident ``.bin`` shard."""
        if self._bin_file != file:
            self._bin_file, self._bin_tensors = None, {}
            tensors = load_pickle(file)
            weight_map = self.resolved.weight_map
            if weight_map is not None:
                self._check_bin_shard(file, tensors, weight_map)
            self._bin_file, self._bin_tensors = file, tensors
        return self._bin_tensors

    def _check_bin_shard(self, file: str, tensors: dict, weight_map: dict[str, str]) -> None:
        index = self.resolved.index_file or "the index"
        for name in tensors:
            if name not in weight_map:
                raise CheckpointError(f"tensor {name!r} is in shard {file} but not in the weight_map of {index}")
            if weight_map[name] != file:
                raise CheckpointError(f"tensor {name!r} is in shard {file} but {index} maps it to {weight_map[name]}")
        for name, mapped in weight_map.items():
            if mapped == file and name not in tensors:
                raise CheckpointError(f"tensor {name!r} is listed in {index} for shard {file} but missing from it")

    def _keys_map(self) -> dict[str, str]:
        if self._key_file is None:  # a single .bin file: its keys are only known once loaded
            (file,) = self.files
            self._key_file = dict.fromkeys(self._load_bin(file), file)
        return self._key_file

    # ----------------------------------------------------------------- public

    @property
    def metadata(self) -> Optional[dict]:
        """The index ``metadata`` when sharded, else the single safetensors file's ``__metadata__``."""
        if self.resolved.index is not None:
            return self.resolved.index.get("metadata")
        if self.format == "safetensors" and self.files:
            return self._headers[self.files[0]].metadata
        return None

    def keys(self) -> list[str]:
        """Tensor names, file by file, each file in its own order."""
        return list(self._keys_map())

    def __contains__(self, name: str) -> bool:
        return name in self._keys_map()

    def __len__(self) -> int:
        return len(self._keys_map())

    def file_of(self, name: str) -> str:
        """Path of the file (one of :attr:`files`) that holds ``name``.

        Raises:
            KeyError: for an unknown tensor name.
        """
        try:
            return self._keys_map()[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in the checkpoint at {self._where()}") from None

    def dtype_shape(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of ``name``; from the header for safetensors (no data read).

        Raises:
            KeyError: for an unknown tensor name.
        """
        file = self.file_of(name)
        if self.format == "safetensors":
            info = self._headers[file].tensors[name]
            return info.dtype, info.shape
        tensor = self._load_bin(file)[name]
        return tensor.dtype, tuple(tensor.shape)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` on the CPU (a copy-on-write mmap view for safetensors).

        Raises:
            KeyError: for an unknown tensor name.
            CheckpointError: the file holding it is corrupt or inconsistent with the index.
        """
        file = self.file_of(name)
        if self.format == "safetensors":
            reader = self._readers.get(file)
            if reader is None:
                reader = self._readers[file] = SafetensorsReader(file, header=self._headers[file])
            return reader.get(name)
        tensors = self._load_bin(file)
        if name not in tensors:
            raise CheckpointError(f"tensor {name!r} is missing from {file}")
        return tensors[name]

    def release(self, file: str) -> None:
        """Drop the mapping or loaded shard of ``file``; tensors already returned stay valid."""
        reader = self._readers.pop(file, None)
        if reader is not None:
            reader.close()
        if self._bin_file == file:
            self._bin_file, self._bin_tensors = None, {}

    def close(self) -> None:
        """Release every file."""
        for file in list(self._readers):
            self.release(file)
        self._bin_file, self._bin_tensors = None, {}

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.format}, {len(self.files)} file(s) in {self.resolved.folder})"


__all__ = ["Checkpoint"]
