"""``generation_config.json`` for a model ``from_pretrained`` loaded."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ..configuration import PretrainedConfig
from ..errors import CheckpointNotFoundError
from ..logging import get_logger
from .generation import GENERATION_CONFIG_NAME, GenerationConfig

__all__ = ["load_generation_config"]

logger = get_logger(__name__)


def load_generation_config(config: PretrainedConfig, name_or_path, folder: Optional[str],
                           hub: Dict[str, Any]) -> GenerationConfig:
    """``generation_config.json`` of ``folder`` (where the weights came from) or, when that
    has none, of ``name_or_path`` (a Hub repo id); else the config's token ids.

    A missing file is normal; an unreadable one is logged and skipped.
    """
    if name_or_path is not None:
        local = folder is not None and os.path.isfile(os.path.join(folder, GENERATION_CONFIG_NAME))
        try:
            if local:
                return GenerationConfig.from_pretrained(folder)
            return GenerationConfig.from_pretrained(name_or_path, **hub)
        except CheckpointNotFoundError:
            pass
        except ValueError as err:  # CheckpointError too
            logger.warning("Ignoring the generation_config.json of %s (%s); generate() uses the token ids of "
                           "config.json", name_or_path, err)
    return GenerationConfig.from_model_config(config)
