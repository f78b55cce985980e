"""The phases of ``from_pretrained``, each a function over a :class:`LoadRequest`.

``PreTrainedModel.from_pretrained`` composes them in this order:

1. :func:`resolve_config`: the config object, and the keywords left for the model;
2. :func:`open_weights`: the checkpoint (or ``state_dict=``) held open, with the
   config of the folder the weights were opened from;
3. :func:`build_model`: the dtype, the skeleton, quantized linears and tensor
   parallelism (the source they read through);
4. :func:`plan_model_placement`: where each tensor goes — a placement object
   always, :class:`NoPlacement` when no ``device_map`` was given;
5. :func:`load_model_weights`: tensors in, what is missing initialised, ties,
   quantization and tensor parallelism finished, the placement applied;
6. :func:`finish_loading`: eval mode, adapter, generation config, the report.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

from ..configuration import PretrainedConfig
from ..distributed.tensor_parallel import maybe_tensor_parallel
from ..loading import LoadReport, StateDictSource, build_skeleton, initialize_missing, load_weights
from ..logging import get_logger
from ..quantization import quantizer_for_load
from ..utils import dtype_name, parse_dtype
from .load_config import adopt_config, check_loadable_class
from .load_request import LoadRequest, check_model_kwargs

__all__ = ["Built", "NoPlacement", "Weights", "build_model", "config_matching_weights", "finish_loading",
           "load_model_weights", "open_weights", "plan_model_placement", "resolve_config", "resolve_dtype"]

logger = get_logger(__name__)


# --------------------------------------------------------------------------- 1. config


def resolve_config(cls: type, request: LoadRequest) -> Tuple[PretrainedConfig, Dict[str, Any], Any]:
    """The config to build with (a copy when an object was given), the model's ``__init__`` keywords,
    and ``(config.json content, overrides)`` when the config was read where the weights are (else None).

    Raises:
        ValueError: no path and no ``config=``; ``from_pretrained`` on the bare base class.
        TypeError: an unusable ``config=``, or a keyword nothing takes.
        CheckpointNotFoundError: no ``config.json`` where asked.
    """
    config = adopt_config(request.config, cls.config_class, owner=cls.__name__)
    check_loadable_class(cls, request.name_or_path, config, dict(request.hub))
    config_read = request.config_read
    if isinstance(config, PretrainedConfig):
        config, model_kwargs = copy.deepcopy(config), dict(request.extra)
    else:
        source = config if config is not None else request.name_or_path
        if source is None:
            raise ValueError("from_pretrained needs a path or repo id, or both config= and state_dict=")
        config_class = cls.config_class or PretrainedConfig
        config, model_kwargs, raw = config_class._load_pretrained(source, **request.hub, **request.extra)
        if request.config is None:  # read beside the weights: checked against the folder held open
            config_read = (raw, {k: v for k, v in request.extra.items() if k not in model_kwargs})
    check_model_kwargs(cls, model_kwargs, type(config).__name__)
    if request.name_or_path is not None:
        config.name_or_path = os.fspath(request.name_or_path)
    if request.attn_implementation is not None:
        config._attn_implementation = request.attn_implementation
    return config, model_kwargs, config_read


# --------------------------------------------------------------------------- 2. weights


@dataclasses.dataclass
class Weights:
    """The tensors a load reads, held open for the duration of the load.

    Attributes:
        config: the config matching these weights (see :func:`config_matching_weights`).
        source: what :func:`~pretrained.loading.load_weights` reads (a
            ``Checkpoint``, a state dict, or either wrapped by quantization / tensor parallelism).
        checkpoint: the checkpoint files, or ``None`` for ``state_dict=``.
    """

    config: PretrainedConfig
    source: Any
    checkpoint: Any = None

    @property
    def folder(self) -> Optional[str]:
        """The folder the weights came from (``None`` for ``state_dict=``)."""
        return self.checkpoint.resolved.folder if self.checkpoint is not None else None


@contextlib.contextmanager
def open_weights(request: LoadRequest, config: PretrainedConfig, config_read=None) -> Iterator[Weights]:
    """Open ``state_dict=`` or the checkpoint files (closed when the block ends).

    Raises:
        ValueError: neither a path nor ``state_dict=``.
        CheckpointNotFoundError / CheckpointError: no or malformed weight files.
    """
    if request.state_dict is not None:
        yield Weights(config, StateDictSource(request.state_dict))
        return
    if request.name_or_path is None:
        raise ValueError("from_pretrained needs a path or repo id when no state_dict= is given")
    from ..storage.checkpoint import Checkpoint
    from ..storage.resolve import resolve_checkpoint

    resolved = resolve_checkpoint(request.name_or_path, variant=request.variant,
                                  use_safetensors=request.use_safetensors, **request.hub)
    checkpoint = Checkpoint(resolved, verify=request.verify)
    try:
        yield Weights(config_matching_weights(config, checkpoint, config_read), checkpoint, checkpoint)
    finally:
        checkpoint.close()


def config_matching_weights(config: PretrainedConfig, checkpoint, config_read) -> PretrainedConfig:
    """The config of the folder the weights were opened from.

    ``config.json`` is read before the weights; a save that swapped the folder
    in between would pair one version's config with another's weights. When the
    held folder's ``config.json`` differs from the one read (``config_read``: its
    content and the overrides; None for a config the caller chose), it is
    rebuilt from the held folder with the same overrides.
    """
    if config_read is None:
        return config
    read, overrides = config_read
    current = checkpoint.read_config()
    if current is None or current == read:
        return config
    logger.info("config.json of %s changed while loading; using the one beside the weights", config.name_or_path)
    rebuilt, _ = type(config)._from_file_dict(current, checkpoint.resolved.folder, **overrides)
    rebuilt.name_or_path = config.name_or_path
    rebuilt._attn_implementation = config._attn_implementation
    return rebuilt


# --------------------------------------------------------------------------- 3. skeleton


@dataclasses.dataclass
class Built:
    """The skeleton and what loading it needs: the quantizer and tensor-parallel state, if any."""

    model: Any
    dtype: Optional[torch.dtype]
    quantizer: Any = None
    tp: Any = None


def build_model(cls: type, request: LoadRequest, weights: Weights, model_kwargs: Dict[str, Any]) -> Built:
    """The model on the meta device in its dtype; ``weights.source`` is wrapped for
    quantization / tensor parallelism when they apply.

    Raises:
        ValueError: quantization combined with ``tp_plan``/``device_mesh``, or a
            quantization request we do not implement.
    """
    config = weights.config
    target_dtype = resolve_dtype(request.dtype, config, weights.source)
    if target_dtype is not None:
        config.torch_dtype = dtype_name(target_dtype)
    model = build_skeleton(cls, config, *request.model_args, dtype=target_dtype or torch.float32, **model_kwargs)
    quantizer = quantizer_for_load(dict(request.quantization), config, target_dtype)
    if quantizer is not None:  # quantized linears in the skeleton; tensors quantized as they stream in
        quantizer.prepare(model, weights.source)
        weights.source = quantizer.wrap(weights.source)
    if quantizer is not None and (request.tp_plan is not None or request.device_mesh is not None):
        raise ValueError("quantization_config cannot be combined with tp_plan/device_mesh yet: "
                         "load the quantized model in one process, or the full-precision one with tp_plan")
    tp, weights.source = maybe_tensor_parallel(model, weights.source, tp_plan=request.tp_plan,
                                               device_mesh=request.device_mesh, device_map=request.device_map)
    return Built(model, target_dtype, quantizer, tp)


def resolve_dtype(requested, config: PretrainedConfig, source) -> Optional[torch.dtype]:
    """float32 by default; ``"auto"``: the config's dtype, else the checkpoint's first floating tensor."""
    if requested is None:
        return torch.float32
    if requested != "auto":
        return requested
    if config.torch_dtype is not None:
        try:
            return parse_dtype(config.torch_dtype, name="config.torch_dtype", allow_auto=False)
        except ValueError:
            logger.warning("config dtype %r is not a floating dtype; reading it from the weights", config.torch_dtype)
    metadata = getattr(source, "metadata", None) or {}
    if isinstance(metadata, dict) and isinstance(metadata.get("dtype"), str):
        try:
            return parse_dtype(metadata["dtype"], allow_auto=False)
        except ValueError:
            pass
    first = None
    for name in source.keys():
        tensor_dtype, _ = source.dtype_shape(name)
        first = first or tensor_dtype
        if tensor_dtype.is_floating_point and tensor_dtype.itemsize >= 2:
            return tensor_dtype
    return first if first is not None and first.is_floating_point else torch.float32


# --------------------------------------------------------------------------- 4. placement


class NoPlacement:
    """The placement of a load without ``device_map``: every tensor on the CPU (or
    on this rank's device under tensor parallelism), nothing offloaded, nothing to place.

    Args:
        device_for: where tensor ``name`` goes (tensor parallelism), default the CPU.
    """

    offload = None  # nothing goes to disk

    def __init__(self, device_for: Optional[Callable[[str], Any]] = None) -> None:
        self._device_for = device_for

    def device_for(self, name: str) -> Any:
        """Where :func:`~pretrained.loading.load_weights` puts tensor ``name``."""
        return self._device_for(name) if self._device_for is not None else torch.device("cpu")

    def place(self, model, source: Any = None) -> None:
        """Nothing to move, no hooks."""


def plan_model_placement(request: LoadRequest, weights: Weights, built: Built):
    """The placement for ``request``'s ``device_map`` (see :func:`pretrained.placement.plan_placement`),
    or a :class:`NoPlacement` without one.

    Raises:
        DeviceMapError: a malformed map or budget, or ``max_memory`` without ``device_map``.
    """
    from ..placement import plan_placement

    placement = plan_placement(
        built.model, device_map=request.device_map, max_memory=request.max_memory,
        offload_folder=request.offload_folder, offload_state_dict=request.offload_state_dict, dtype=built.dtype,
        checkpoint=weights.checkpoint, offload_buffers=request.offload_buffers,
    )
    return placement if placement is not None else NoPlacement(getattr(built.tp, "device_for", None))


# --------------------------------------------------------------------------- 5. load


def load_model_weights(request: LoadRequest, weights: Weights, built: Built, placement) -> LoadReport:
    """Fill the skeleton, initialise only what is missing, tie, then finish
    quantization, tensor parallelism and the placement.

    Raises:
        WeightsMismatchError: shapes differ and ``ignore_mismatched_sizes`` is False.
    """
    model = built.model
    report = load_weights(model, weights.source, ignore_mismatched_sizes=request.ignore_mismatched_sizes,
                          device_for=placement.device_for, offload=placement.offload)
    _warn_untied(model, report)
    initialize_missing(model, report)
    model._mark_initialized()  # loaded or just initialised: a later post_init() keeps them
    model.tie_weights()
    if built.quantizer is not None:
        built.quantizer.finalize(model)
    if built.tp is not None:
        built.tp.finish(model)
    placement.place(model, weights.source)
    return report


def _warn_untied(model, report: LoadReport) -> None:
    for names in report.untied_keys:
        logger.warning(
            "The checkpoint holds different values for the tied weights %s; loading them as they are, untied "
            "(config.tie_word_embeddings set to False).", ", ".join(names),
        )
        model.config.tie_word_embeddings = False


# --------------------------------------------------------------------------- 6. finish


def finish_loading(request: LoadRequest, model, report: LoadReport, folder: Optional[str]):
    """Eval mode, the adapter, ``generation_config.json``, the load report; what ``from_pretrained`` returns."""
    model.eval()
    if request.adapter_path is not None:
        model.load_adapter(request.adapter_path, **request.adapter_args)
    if model.can_generate():
        from .generation_files import load_generation_config

        model.generation_config = load_generation_config(model.config, request.name_or_path, folder,
                                                         dict(request.hub))
    _log_report(model, report, request.name_or_path)
    return (model, report.as_dict()) if request.output_loading_info else model


def _log_report(model, report: LoadReport, where) -> None:
    name = type(model).__name__
    if report.unexpected_keys:
        logger.warning(
            "Some weights of the model checkpoint at %s were not used when initializing %s: %s",
            where, name, sorted(report.unexpected_keys),
        )
    if report.missing_keys:
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
            "initialized: %s\nYou should probably TRAIN this model on a down-stream task to be able to use it "
            "for predictions and inference.", name, where, sorted(report.missing_keys),
        )
    if report.mismatched_keys:
        details = "\n".join(f"- {k}: found shape {a} in the checkpoint and {b} in the model instantiated"
                            for k, a, b in report.mismatched_keys)
        logger.warning("Some weights of %s were not initialized from the model checkpoint at %s and are newly "
                       "initialized because the shapes did not match:\n%s", name, where, details)
