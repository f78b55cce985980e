"""`GenerationConfig`: the defaults of ``generate``, saved as ``generation_config.json``."""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Union

from ...configuration import load_config_dict

__all__ = ["GENERATION_CONFIG_NAME", "GenerationConfig"]

GENERATION_CONFIG_NAME = "generation_config.json"
# Generation-config options implemented here beyond the named arguments of generate (taken from its keywords).
_OPTIONS = ("no_repeat_ngram_size", "min_p", "return_dict_in_generate", "output_scores", "output_logits",
            "output_attentions", "output_hidden_states")
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


class GenerationConfig:
    """The defaults of :meth:`GenerationMixin.generate`, saved as ``generation_config.json``.

    Every key is an attribute.  The fields ``generate`` reads are
    ``max_new_tokens``, ``max_length``, ``min_new_tokens``, ``min_length``,
    ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
    ``repetition_penalty``, ``num_beams``, ``num_return_sequences``,
    ``length_penalty``, ``early_stopping``, ``bos_token_id``, ``eos_token_id``,
    ``pad_token_id`` and ``decoder_start_token_id``; one that was not set reads
    as None, and ``generate`` then uses its own default.  Any other key
    (``transformers_version``, ``use_cache``, ``num_beam_groups``, ...) is kept as
    an attribute and written back; ``generate`` refuses the options it does
    not implement when they are set to anything but their neutral value.

    ``_from_model_config`` marks a config that only repeats the model config's
    token ids (:meth:`from_model_config`, or a file that says so); setting any
    field clears it, so a modified config is saved without the mark and
    Transformers then keeps its values.

    Example:
        >>> from pretrained import GenerationConfig
        >>> config = GenerationConfig(max_new_tokens=32, repetition_penalty=1.2, eos_token_id=2)
        >>> config.max_new_tokens, config.top_k
        (32, None)
        >>> GenerationConfig.from_dict(config.to_dict()) == config
        True
    """

    max_new_tokens = max_length = min_new_tokens = min_length = None
    do_sample = temperature = top_k = top_p = repetition_penalty = None
    num_beams = num_return_sequences = length_penalty = early_stopping = None
    bos_token_id = eos_token_id = pad_token_id = decoder_start_token_id = None
    no_repeat_ngram_size = min_p = return_dict_in_generate = output_scores = output_logits = None
    output_attentions = output_hidden_states = None
    _FIELDS = _OPTIONS + ("max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature",
               "top_k", "top_p", "repetition_penalty", "num_beams", "num_return_sequences", "length_penalty",
               "early_stopping") + _TOKEN_IDS

    def __init__(self, **kwargs: Any) -> None:
        """Raises ValueError for a key that would hide a method (``to_dict``, ...)."""
        self.__dict__["_from_model_config"] = bool(kwargs.pop("_from_model_config", False))
        for key, value in kwargs.items():
            if key.startswith("_"):          # Transformers' bookkeeping (``_commit_hash``), never written back
                continue
            if hasattr(GenerationConfig, key) and key not in self._FIELDS:
                raise ValueError(f"generation config key {key!r} would hide GenerationConfig.{key}")
            self.__dict__[key] = value

    def __setattr__(self, key: str, value: Any) -> None:
        if not key.startswith("_"):
            self.__dict__["_from_model_config"] = False
        super().__setattr__(key, value)

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any], **kwargs: Any) -> "GenerationConfig":
        """A config holding ``config_dict`` (copied), with ``kwargs`` overriding its values."""
        if not isinstance(config_dict, dict):
            raise ValueError(f"a generation config must be a dict, got {type(config_dict).__name__}")
        return cls(**{**copy.deepcopy(config_dict), **kwargs})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike],
                        config_file_name: str = GENERATION_CONFIG_NAME, **kwargs: Any) -> "GenerationConfig":
        """Read ``generation_config.json`` of a folder or a Hub repo id.

        Args:
            pretrained_model_name_or_path: the folder (a file inside it works too) or repo id.
            config_file_name: the file to read.
            **kwargs: hub options (``cache_dir``, ``revision``, ``token``,
                ``local_files_only``, ``force_download``, ``subfolder``), then
                values that override the file's.

        Raises:
            CheckpointNotFoundError: there is no such file.
            CheckpointError: it is not a JSON object.
            ValueError: a key would hide a method.
        """
        from ...storage.resolve import HUB_KWARGS, resolve_file

        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        path = resolve_file(pretrained_model_name_or_path, config_file_name, **hub)
        return cls.from_dict(load_config_dict(path), **kwargs)

    @classmethod
    def from_model_config(cls, model_config: Any) -> "GenerationConfig":
        """The model config's ``bos``/``eos``/``pad``/``decoder_start`` token ids (those
        it sets), marked ``_from_model_config``."""
        ids = {name: copy.deepcopy(getattr(model_config, name, None)) for name in _TOKEN_IDS}
        return cls(_from_model_config=True, **{name: value for name, value in ids.items() if value is not None})

    def to_dict(self) -> Dict[str, Any]:
        """The keys that were set (a copy), and ``"_from_model_config": True`` when marked."""
        out: Dict[str, Any] = {"_from_model_config": True} if self._from_model_config else {}
        out.update(copy.deepcopy({key: value for key, value in self.__dict__.items() if not key.startswith("_")}))
        return out

    def to_json_string(self) -> str:
        """The ``generation_config.json`` text: sorted keys, two-space indent, trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

