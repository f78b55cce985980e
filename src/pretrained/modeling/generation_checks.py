"""Kept for imports of ``pretrained.modeling.generation_checks``: it now lives in
:mod:`pretrained.modeling.generation.checks`."""

from .generation.checks import (  # noqa: F401
    check_model_kwargs, as_generation_config_dict, check_new_options, generation_lengths, recorded_outputs,
    _parameters, _takes_var_keyword, _accepted,
)

__all__ = ["check_model_kwargs", "as_generation_config_dict", "check_new_options", "generation_lengths", "recorded_outputs"]
