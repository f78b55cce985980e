"""The shard planner: a pure function of tensor names, byte sizes and a limit.

Order-preserving greedy, as Transformers 4.37 does it: walk the tensors in
order, close the current shard when adding the next tensor would take it past
the limit (and it is not empty), so a tensor larger than the limit ends up in
a shard of its own. No reordering, no bin packing.

>>> plan = plan_shards([("a", 6), ("b", 5), ("c", 4)], 10)
>>> plan.shards, plan.files, plan.total_size
([['a'], ['b', 'c']], ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'], 15)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ..utils import parse_size
from .names import shard_names


@dataclass(frozen=True)
class ShardPlan:
    """Which tensor goes to which file.

    Attributes:
        files: the file names, in shard order (one name without suffix when unsharded).
        weight_map: tensor name -> file name.
        shards: tensor names of each file, parallel to ``files``.
        total_size: sum of all tensor sizes in bytes.
    """

    files: list[str]
    weight_map: dict[str, str]
    shards: list[list[str]]
    total_size: int

    @property
    def is_sharded(self) -> bool:
        return len(self.files) > 1


def plan_shards(
    entries: Sequence[tuple[str, int]],
    max_shard_size: Union[int, str],
    *,
    fmt: str = "safetensors",
    variant: Optional[str] = None,
) -> ShardPlan:
    """Split tensors into shards of at most ``max_shard_size`` bytes (single oversized tensors excepted).

    Args:
        entries: ``(name, size_in_bytes)`` in the order they should be stored.
        max_shard_size: the limit: bytes as an int or a size string (``"5GB"``, ``"500MiB"``).
        fmt: ``"safetensors"`` or ``"bin"`` (for the file names).
        variant: variant tag for the file names.

    Returns:
        A :class:`ShardPlan`. An empty ``entries`` gives one empty file.

    Raises:
        ValueError: for a duplicate name, a negative or non-int size, or a bad limit.
    """
    limit = parse_size(max_shard_size, name="max_shard_size")
    shards: list[list[str]] = [[]]
    current = 0
    total = 0
    seen: set[str] = set()
    for name, size in entries:
        if name in seen:
            raise ValueError(f"tensor name {name!r} appears twice in the shard plan")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size of {name!r} must be a non-negative int of bytes, got {size!r}")
        seen.add(name)
        if shards[-1] and current + size > limit:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += size
        total += size
    files = shard_names(fmt, variant, len(shards))
    weight_map = {name: file for file, names in zip(files, shards) for name in names}
    return ShardPlan(files, weight_map, shards, total)


__all__ = ["ShardPlan", "plan_shards"]
