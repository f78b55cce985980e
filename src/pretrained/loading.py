"""Tensors into modules: the model skeleton, key matching and the load report.

Loading a checkpoint is three small steps, each usable alone:

1. :func:`build_skeleton` constructs the model in the target dtype without
   initialising a single parameter (no random fills, no touched pages: the
   parameter memory is reserved but never written, so it costs no RSS).
2. :func:`load_weights` matches model names to checkpoint names (adding or
   stripping ``base_model_prefix``), checks shapes, and assigns each
   checkpoint tensor to its parameter — zero-copy when the dtype already
   matches (the tensor is a copy-on-write view of the memory-mapped file),
   otherwise converted (or moved) once, straight from the page cache into its
   destination, 16 MiB of the source mapped at a time.
3. :func:`initialize_missing` runs the model's ``_init_weights`` on modules
   that own a missing or mismatched tensor, under a guard that makes every
   in-place write to a loaded tensor a no-op (so an ``_init_weights`` that
   writes ``.data`` in place cannot clobber loaded weights).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import WeightsMismatchError
from .legacy_keys import legacy_aliases
from .logging import get_logger
from .progress import progress

logger = get_logger(__name__)

# --------------------------------------------------------------------------- init guards

_INIT_FUNCTIONS = tuple(
    getattr(nn.init, name)
    for name in (
        "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
        "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
    )
    if hasattr(nn.init, name)
)
_INPLACE_FILLS = tuple(
    getattr(torch.Tensor, name)
    for name in (
        "uniform_", "normal_", "fill_", "zero_", "random_", "exponential_", "bernoulli_",
        "cauchy_", "log_normal_", "geometric_", "copy_", "erfinv_", "clamp_", "mul_", "add_", "fill_diagonal_",
    )
)
_RANDOM_FILLS = frozenset(
    getattr(torch.Tensor, name)
    for name in ("uniform_", "normal_", "fill_", "zero_", "random_", "exponential_", "bernoulli_",
                 "cauchy_", "log_normal_", "geometric_")
)
_CONSTRUCTION_SKIPPABLE = frozenset(_INIT_FUNCTIONS) | _RANDOM_FILLS
_GUARD_SKIPPABLE = frozenset(_INIT_FUNCTIONS + _INPLACE_FILLS)


class _SkipWrites(TorchFunctionMode):
    """Turns initialisation calls into no-ops for the tensors ``should_skip`` selects.

    A torch-function mode is thread-local and scoped to a ``with`` block: nothing
    process-wide is patched.
    """

    def __init__(self, should_skip: Callable[[torch.Tensor], bool], functions: frozenset):
        super().__init__()
        self._should_skip = should_skip
        self._functions = functions

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._functions:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and self._should_skip(target):
                return target
        return func(*args, **kwargs)


def skip_parameter_init():
    """Context in which ``nn.Parameter`` tensors are never initialised (buffers are).

    Used while building a skeleton whose parameters will all be replaced by
    checkpoint tensors: ``torch.empty`` reserves memory without touching it, and
    the random fills that module constructors run are skipped.
    """
    return _SkipWrites(lambda t: isinstance(t, nn.Parameter), _CONSTRUCTION_SKIPPABLE)


def guard_loaded(loaded_storages: Set[int]):
    """Context in which in-place writes to tensors whose storage is in
    ``loaded_storages`` (data pointers) are no-ops — views and ``.data`` included."""

    def is_loaded(t: torch.Tensor) -> bool:
        if t.device.type == "meta":
            return False
        return t.untyped_storage().data_ptr() in loaded_storages

    return _SkipWrites(is_loaded, _GUARD_SKIPPABLE)


_INIT_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("pretrained_init_enabled", default=True)


def init_enabled() -> bool:
    """False inside :func:`no_init_weights`: ``post_init`` then skips ``_init_weights``."""
    return _INIT_ENABLED.get()


@contextlib.contextmanager
def no_init_weights():
    """Build models without running ``_init_weights`` (their weights come from a checkpoint)."""
    token = _INIT_ENABLED.set(False)
    try:
        yield
    finally:
        _INIT_ENABLED.reset(token)


@contextlib.contextmanager
def default_dtype(dtype: Optional[torch.dtype]):
    """Temporarily set ``torch.get_default_dtype()``; restored on error too."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_skeleton(model_class, config, *model_args, dtype: Optional[torch.dtype] = None, **model_kwargs):
    """Construct ``model_class(config, ...)`` in ``dtype`` with no weight initialised.

    Parameters hold reserved-but-untouched memory until :func:`load_weights`
    replaces them; buffers are computed normally.
    """
    with default_dtype(dtype), no_init_weights(), skip_parameter_init():
        model = model_class(config, *model_args, **model_kwargs)
        # Tie by sharing now (even under torchscript, which clones after loading),
        # so tied names form one slot and load from whichever name the file has.
        torchscript, config.torchscript = config.torchscript, False
        try:
            if hasattr(model, "tie_weights"):
                model.tie_weights()
        finally:
            config.torchscript = torchscript
    keep_fp32 = getattr(model, "_keep_in_fp32_modules", None)
    if keep_fp32 and dtype == torch.float16:
        for name, param in model.named_parameters():
            if any(seg in keep_fp32 for seg in name.split(".")):
                param.data = param.data.to(torch.float32)
    return model


# --------------------------------------------------------------------------- the report


class KeyList(list):
    """A list of key names that also compares equal to a set of the same names
    (Transformers 4.37 reports lists, 5.x reports sets)."""

    def __eq__(self, other):
        if isinstance(other, (set, frozenset)):
            return set(self) == other
        return list.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    __hash__ = None


@dataclass
class LoadReport:
    """What :func:`load_weights` did.  Names are relative to the loaded model,
    except ``unexpected_keys`` which are checkpoint names."""

    missing_keys: KeyList = field(default_factory=KeyList)
    unexpected_keys: KeyList = field(default_factory=KeyList)
    mismatched_keys: KeyList = field(default_factory=KeyList)  # (name, checkpoint shape, model shape)
    error_msgs: KeyList = field(default_factory=KeyList)
    loaded_keys: List[str] = field(default_factory=list)
    untied_keys: List[Tuple[str, ...]] = field(default_factory=list)

    def as_dict(self) -> Dict[str, KeyList]:
        return {
            "missing_keys": self.missing_keys,
            "unexpected_keys": self.unexpected_keys,
            "mismatched_keys": self.mismatched_keys,
            "error_msgs": self.error_msgs,
        }


# --------------------------------------------------------------------------- key matching


@dataclass
class _Slot:
    """One tensor object of the model and every name that reaches it (tied names share a slot)."""

    names: List[str]
    owners: List[Tuple[nn.Module, str, bool]]  # (module, attribute, is_parameter)
    tensor: torch.Tensor


def model_slots(model: nn.Module) -> List[_Slot]:
    """Persistent parameters and buffers of ``model``, grouped by tensor identity."""
    slots: Dict[int, _Slot] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for attr, tensor in module._parameters.items():
            if tensor is None:
                continue
            slot = slots.setdefault(id(tensor), _Slot([], [], tensor))
            if prefix + attr not in slot.names:
                slot.names.append(prefix + attr)
                slot.owners.append((module, attr, True))
        for attr, tensor in module._buffers.items():
            if tensor is None or attr in module._non_persistent_buffers_set:
                continue
            slot = slots.setdefault(id(tensor), _Slot([], [], tensor))
            if prefix + attr not in slot.names:
                slot.names.append(prefix + attr)
                slot.owners.append((module, attr, False))
    return list(slots.values())


def checkpoint_name_for(name: str, checkpoint_keys: Set[str], prefix: str, model_has_prefix: bool) -> Optional[str]:
    """The checkpoint key that fills model parameter ``name``, if any.

    A head model (which owns ``model.<prefix>``) accepts a base checkpoint by
    stripping the prefix; a base model accepts a head checkpoint by adding it.
    """
    if name in checkpoint_keys:
        return name
    if prefix:
        if model_has_prefix and name.startswith(prefix + "."):
            stripped = name[len(prefix) + 1:]
            if stripped in checkpoint_keys:
                return stripped
        elif not model_has_prefix:
            added = f"{prefix}.{name}"
            if added in checkpoint_keys:
                return added
    return None


def _matches_any(name: str, patterns: Optional[Iterable[str]]) -> bool:
    return bool(patterns) and any(re.search(p, name) for p in patterns)


# --------------------------------------------------------------------------- loading


class TensorSource:
    """What :func:`load_weights` reads from: a checkpoint or a plain state dict."""

    def keys(self) -> List[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def dtype_shape(self, name: str) -> Tuple[torch.dtype, Tuple[int, ...]]:  # pragma: no cover
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class StateDictSource(TensorSource):
    """A ``{name: tensor}`` mapping seen as a :class:`TensorSource`."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self._sd = state_dict

    def keys(self):
        return list(self._sd.keys())

    def dtype_shape(self, name):
        t = self._sd[name]
        return t.dtype, tuple(t.shape)

    def get(self, name):
        return self._sd[name]


def _target_dtype(model_tensor: torch.Tensor, source_dtype: torch.dtype) -> torch.dtype:
    if model_tensor.is_floating_point() and source_dtype.is_floating_point:
        return model_tensor.dtype
    return model_tensor.dtype if model_tensor.dtype != source_dtype else source_dtype


def materialize(tensor: torch.Tensor, dtype: torch.dtype, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """``tensor`` in ``dtype`` on ``device``; the tensor itself when nothing changes.

    Moving to another device, the conversion runs on whichever side moves
    fewer bytes: a widening cast (bf16 -> fp32) after the copy, on the device;
    a narrowing one before it. (``Tensor.to(device, dtype)`` would convert on
    the CPU and copy the wide tensor.)
    """
    device = torch.device(device)
    if tensor.dtype == dtype and tensor.device == device:
        return tensor
    if tensor.device == device or tensor.dtype == dtype:
        return tensor.to(device=device, dtype=dtype)
    if dtype.itemsize > tensor.dtype.itemsize:
        return tensor.to(device).to(dtype)
    return tensor.to(dtype).to(device)


def load_weights(
    model: nn.Module,
    source: TensorSource,
    *,
    ignore_mismatched_sizes: bool = False,
    device: Union[str, torch.device] = "cpu",
    device_for: Optional[Callable[[str], Union[str, torch.device]]] = None,
    offload: Optional[Callable[[List[str], str, "TensorSource", torch.dtype], None]] = None,
) -> LoadReport:
    """Fill ``model``'s parameters and persistent buffers from ``source``.

    Args:
        model: a skeleton from :func:`build_skeleton` (or any module).
        source: the checkpoint tensors.
        ignore_mismatched_sizes: keep the model's tensor where shapes differ and
            report it, instead of raising.
        device / device_for: where each tensor goes (``device_for(name)`` wins).
        offload: called as ``offload(names, checkpoint_key, source, dtype)`` for
            each tensor whose device is ``"disk"``; that tensor is not read here
            and the model gets a ``meta`` tensor in its place (see
            :mod:`pretrained.placement`).

    Returns:
        A :class:`LoadReport`; names relative to ``model``.

    Raises:
        WeightsMismatchError: shapes differ and ``ignore_mismatched_sizes`` is False.
    """
    report = LoadReport()
    aliases = legacy_aliases(source.keys())  # LayerNorm gamma/beta and the like, as Transformers renames them
    checkpoint_keys = set(source.keys()) | set(aliases)
    prefix = getattr(model, "base_model_prefix", "") or ""
    model_has_prefix = bool(prefix) and hasattr(model, prefix) and isinstance(getattr(model, prefix), nn.Module)
    used: Set[str] = set()
    mismatches: List[str] = []

    for slot in progress(model_slots(model), desc="Loading weights", unit="tensor", min_total=64):
        found = [(n, checkpoint_name_for(n, checkpoint_keys, prefix, model_has_prefix)) for n in slot.names]
        found = [(n, aliases.get(key, key)) for n, key in found if key is not None]
        if not found:
            tied = getattr(model, "_tied_weight_patterns", lambda: [])()
            report.missing_keys.extend([n for n in slot.names if not _matches_any(n, tied)] or slot.names[:1])
            continue
        used.update(key for _, key in found)
        groups = _split_differing(found, source) if len(found) > 1 else [found]
        if len(groups) > 1:
            report.untied_keys.append(tuple(n for n, _ in found))
        for group in groups:
            names = [n for n, _ in group] if len(groups) > 1 else slot.names
            key = group[0][1]
            src_dtype, src_shape = source.dtype_shape(key)
            if tuple(src_shape) != tuple(slot.tensor.shape):
                if ignore_mismatched_sizes:
                    report.mismatched_keys.extend((n, tuple(src_shape), tuple(slot.tensor.shape)) for n in names)
                    continue
                mismatches.append(
                    f"size mismatch for {names[0]}: copying a param with shape {torch.Size(src_shape)} from "
                    f"checkpoint, the shape in current model is {slot.tensor.shape}."
                )
                continue
            target_device = device_for(names[0]) if device_for is not None else device
            target_dtype = _target_dtype(slot.tensor, src_dtype)
            if isinstance(target_device, str) and target_device == "disk":
                if offload is None:
                    raise ValueError(f"{names[0]} is mapped to 'disk' but load_weights got no offload callback")
                offload(names, key, source, target_dtype)
                value = torch.empty(slot.tensor.shape, dtype=target_dtype, device="meta")
            else:
                value = _fetch(source, key, target_dtype, target_device)
            _assign(slot, names, value)
            report.loaded_keys.extend(names)

    if mismatches:
        raise WeightsMismatchError(
            f"Error(s) in loading state_dict for {type(model).__name__}:\n\t"
            + "\n\t".join(mismatches)
            + "\n\tYou may consider adding `ignore_mismatched_sizes=True` in the model `from_pretrained` method."
        )

    ignore_missing = getattr(model, "_keys_to_ignore_on_load_missing", None)
    ignore_unexpected = getattr(model, "_keys_to_ignore_on_load_unexpected", None)
    report.missing_keys = KeyList(k for k in report.missing_keys if not _matches_any(k, ignore_missing))
    report.unexpected_keys = KeyList(
        k for k in source.keys() if k not in used and not _matches_any(k, ignore_unexpected)
    )
    return report


def _fetch(source: TensorSource, key: str, dtype: torch.dtype, device: Union[str, torch.device]) -> torch.Tensor:
    """``key`` as ``dtype`` on ``device``.

    The same dtype on the CPU is the checkpoint's own (mapped) tensor. Anything
    converted or moved is written into its destination piece by piece from
    :meth:`~pretrained.storage.checkpoint.Checkpoint.chunks`, so the file's pages
    never pile up in RSS beside the copies and no whole staging copy is made.
    Towards a device, a widening cast runs there after the copy and a narrowing
    one before it, so the fewest bytes cross.
    """
    src_dtype, shape = source.dtype_shape(key)
    device = torch.device(device)
    if (dtype == src_dtype and device.type == "cpu") or not hasattr(source, "chunks"):
        return materialize(source.get(key), dtype, device)
    out = torch.empty(shape, dtype=dtype, device=device)
    flat, done = out.view(-1), 0
    for piece in source.chunks(key):
        if device.type != "cpu" and piece.dtype != dtype:
            piece = piece.to(device) if dtype.itemsize > piece.dtype.itemsize else piece.to(dtype)
        flat[done:done + piece.numel()].copy_(piece)
        done += piece.numel()
    return out


def _split_differing(found: List[Tuple[str, str]], source: TensorSource) -> List[List[Tuple[str, str]]]:
    """Tied names whose checkpoint entries differ in value are loaded apart."""
    distinct_keys = list(dict.fromkeys(key for _, key in found))
    if len(distinct_keys) == 1:
        return [found]
    first = source.get(distinct_keys[0])
    for key in distinct_keys[1:]:
        other = source.get(key)
        if other.shape != first.shape or not torch.equal(other.to(first.dtype), first):
            return [[item for item in found if item[1] == k] for k in distinct_keys]
    return [found]


def _assign(slot: _Slot, names: List[str], value: torch.Tensor) -> None:
    old = slot.tensor
    new = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
    for (module, attr, is_param), name in zip(slot.owners, slot.names):
        if name not in names:
            continue
        if is_param:
            module._parameters[attr] = new
        else:
            module._buffers[attr] = new


def initialize_missing(model: nn.Module, report: LoadReport) -> None:
    """Initialise every tensor the checkpoint did not provide, never a loaded one.

    Each module that directly owns a missing or mismatched tensor is reset
    (``reset_parameters`` if it has one, then the model's ``_init_weights``)
    under :func:`guard_loaded`.
    """
    fresh = set(report.missing_keys) | {k for k, *_ in report.mismatched_keys}
    # Names the ignore-lists hid are still uninitialised memory: include them.
    state_names = set(model.state_dict(keep_vars=True).keys())
    loaded = set(report.loaded_keys)
    fresh |= state_names - loaded
    if not fresh:
        return
    owners: Dict[int, nn.Module] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        own = [prefix + a for a in list(module._parameters) + list(module._buffers)]
        if any(name in fresh for name in own):
            owners[id(module)] = module
    loaded_ptrs = {
        t.untyped_storage().data_ptr()
        for n, t in model.state_dict(keep_vars=True).items()
        if n in loaded and t.device.type != "meta"
    }
    init_fn = getattr(model, "_init_weights", None)
    with torch.no_grad(), guard_loaded(loaded_ptrs):
        for module in owners.values():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
            if init_fn is not None:
                init_fn(module)
