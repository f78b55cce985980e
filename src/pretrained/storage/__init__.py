"""Files only: names, safetensors and pickle I/O, resolution, lazy reading, atomic saving.

Nothing here knows about ``nn.Module``; ``loading.py`` and ``modeling/`` build on it.

>>> from pretrained.storage import resolve_checkpoint, Checkpoint, save_checkpoint
>>> save_checkpoint("out", {"w": torch.ones(2)}, extra_files={"config.json": "{}"})
['model.safetensors', 'config.json']
>>> with Checkpoint(resolve_checkpoint("out")) as ckpt:
...     ckpt.get("w")
tensor([1., 1.])
"""

from .checkpoint import Checkpoint
from .names import add_variant, index_name, is_family_file, shard_names, weights_name
from .pickle import load_pickle, save_pickle
from .resolve import HUB_KWARGS, ResolvedCheckpoint, resolve_checkpoint, resolve_file
from .safetensors import SafetensorsHeader, SafetensorsReader, TensorInfo, read_header, save_safetensors
from .shards import ShardPlan, plan_shards
from .writer import save_checkpoint

__all__ = [
    "add_variant",
    "weights_name",
    "index_name",
    "shard_names",
    "is_family_file",
    "TensorInfo",
    "SafetensorsHeader",
    "read_header",
    "SafetensorsReader",
    "save_safetensors",
    "load_pickle",
    "save_pickle",
    "HUB_KWARGS",
    "resolve_file",
    "resolve_checkpoint",
    "ResolvedCheckpoint",
    "Checkpoint",
    "ShardPlan",
    "plan_shards",
    "save_checkpoint",
]
