"""More than one process: tensor-parallel loading and FSDP2 shards, saved back in the HF layout.

- ``from_pretrained(..., tp_plan="auto")`` (or ``device_mesh=``) under torchrun:
  see :mod:`.tensor_parallel` and :mod:`.plan`.
- :func:`load_sharded` fills a ``fully_shard``-ed model: see :mod:`.fsdp`.
- ``save_pretrained`` of either: see :mod:`.save`.

Nothing here is imported until one of these is used.
"""

from .fsdp import load_sharded

__all__ = ["load_sharded"]
