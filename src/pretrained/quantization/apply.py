"""Quantize while loading: swap linears in the skeleton, quantize each tensor as it streams in.

:class:`Quantizer` is what ``from_pretrained`` calls: ``prepare`` replaces the
skeleton's linears (so the placement planner sees quantized sizes),
``wrap`` turns the checkpoint into a :class:`QuantizingSource` (full-precision
weights are read one tensor at a time from the mapped file and quantized;
pre-quantized tensors pass through under their module names) and
``finalize`` records the config on the model.
"""

from __future__ import annotations

import json
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from ..loading import TensorSource
from ..logging import get_logger
from . import formats
from .config import BitsAndBytesConfig, Int4Config, QuantizationConfigBase
from .modules import Int4Linear, Int8Linear, Linear4bit, QuantizedLinear

logger = get_logger(__name__)
_QS_PREFIX = "weight.quant_state.bitsandbytes__"


def default_skip_modules(model: nn.Module) -> List[str]:
    """Transformers' defaults: tied modules, the output embeddings and the last parameter's module."""
    names: List[str] = []
    seen: Dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            names += [seen[id(param)].removesuffix(".weight"), name.removesuffix(".weight")]
        seen.setdefault(id(param), name)
    params = list(model.named_parameters())
    if params:
        names.append(params[-1][0].removesuffix(".weight"))
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names += [n for n, m in model.named_modules() if out is not None and m is out]
    return list(dict.fromkeys(names))


def should_convert(name: str, patterns: Optional[List[str]]) -> bool:
    """False when a pattern skips ``name``: Transformers 4.37's rule (``p + "."`` inside the name, or
    equal) or 5.x's (a prefix or regex ending at a module boundary, or a suffix)."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return not any(p + "." in name or p == name or re.match(rf"(?:{p}){boundary}", name) or name.endswith(p)
                   for p in patterns or ())


def linear_shape(module: nn.Module) -> Optional[Tuple[int, int, bool, bool]]:
    """``(in, out, has_bias, stored_transposed)`` for ``nn.Linear`` and GPT-2's ``Conv1D``; else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.bias is not None, False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nx") and hasattr(module, "nf"):
        return module.nx, module.nf, getattr(module, "bias", None) is not None, True
    return None


class Quantizer:
    """Quantization of one ``from_pretrained`` call.

    Args:
        config: the quantization config.
        dtype: the model's dtype (int8/int4 compute in it; biases are kept in it).
    """

    def __init__(self, config: QuantizationConfigBase, dtype: torch.dtype):
        self.config = config
        self.dtype = dtype
        self.targets: Dict[str, Tuple[QuantizedLinear, bool]] = {}

    def _new_module(self, shape, state: Optional[dict]) -> Optional[QuantizedLinear]:
        in_f, out_f, bias, _ = shape
        cfg = self.config
        if isinstance(cfg, Int4Config):
            if in_f % cfg.group_size or out_f % 16:
                return None
            return Int4Linear(in_f, out_f, bias, self.dtype, group_size=cfg.group_size)
        if cfg.load_in_8bit:
            return Int8Linear(in_f, out_f, bias, self.dtype)
        state = state or {}
        module = Linear4bit(in_f, out_f, bias, cfg.bnb_4bit_compute_dtype,
                            quant_type=state.get("quant_type", cfg.bnb_4bit_quant_type),
                            double_quant="nested_blocksize" in state if state else cfg.bnb_4bit_use_double_quant,
                            blocksize=int(state.get("blocksize", 64)), storage_dtype=cfg.bnb_4bit_quant_storage)
        if state:
            module.nested_offset = float(state.get("nested_offset", 0.0))
            module.nested_blocksize = int(state.get("nested_blocksize", formats.NESTED_BLOCKSIZE))
            module.weight_dtype = getattr(torch, state.get("dtype", "float32"))
        return module

    def prepare(self, model: nn.Module, source: TensorSource) -> None:
        """Replace every convertible linear of the skeleton ``model`` by its quantized module."""
        patterns = self.config.llm_int8_skip_modules
        if patterns is None:
            patterns = default_skip_modules(model)
        states = _read_quant_states(source)
        for name, module in list(model.named_modules()):
            shape = linear_shape(module)
            if shape is None or not name or not should_convert(name, patterns):
                continue
            new = self._new_module(shape, states.get(_checkpoint_prefix(name, source, model)))
            if new is None:
                logger.warning(f"{name}: shape {shape[:2]} does not fit {self.config.quant_method}; kept as is")
                continue
            if new.bias is not None:
                new.bias = nn.Parameter(torch.empty(shape[1], dtype=self.dtype), requires_grad=False)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
            self.targets[name] = (new, shape[3])

    def wrap(self, source: TensorSource) -> "QuantizingSource":
        """``source`` seen through the quantization (see :class:`QuantizingSource`)."""
        return QuantizingSource(source, self.targets)

    def finalize(self, model: nn.Module) -> None:
        """Record the config on the model and in ``model.config.quantization_config``."""
        model.__dict__["_quantization_config"] = self.config
        if getattr(model, "config", None) is not None:
            model.config.quantization_config = self.config.to_dict()


def _checkpoint_prefix(name: str, source: TensorSource, model: nn.Module) -> str:
    keys = source.keys()
    if any(k.startswith(name + ".") for k in keys):
        return name
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and name.startswith(prefix + "."):
        return name[len(prefix) + 1:]
    return f"{prefix}.{name}" if prefix else name


def _read_quant_states(source: TensorSource) -> Dict[str, dict]:
    """``{module name: bitsandbytes quant_state dict}`` of a pre-quantized 4-bit checkpoint."""
    states = {}
    for key in source.keys():
        head, sep, qtype = key.rpartition("." + _QS_PREFIX)
        if sep:
            state = json.loads(bytes(source.get(key).tolist()).decode("utf-8"))
            if state.get("quant_type") != qtype:
                raise CheckpointError(f"{key}: quant_type {state.get('quant_type')!r} differs from its name")
            states[head] = state
    return states


def _state_names(module: QuantizedLinear) -> List[str]:
    """Module-relative names of the quantized tensors (weight first)."""
    return ["weight"] + [n for n in module._buffers if module._buffers[n] is not None]


def _file_name(attr: str) -> str:
    """Module tensor name -> checkpoint name (``weight_absmax`` -> ``weight.absmax`` for 4-bit)."""
    for name in Linear4bit._STATE_NAMES:
        if attr == "weight_" + name:
            return "weight." + name
    return attr


class QuantizingSource(TensorSource):
    """A checkpoint seen as the quantized model's tensors.

    For each quantized module (checkpoint prefix ``p``): a full-precision
    ``p.weight`` becomes the module's quantized tensors, computed together on
    first request and handed out one by one (one module's worth is cached);
    a pre-quantized one is passed through under the module's names, and a
    missing scale tensor is a :class:`~pretrained.errors.CheckpointError`.
    """

    def __init__(self, source: TensorSource, targets: Dict[str, Tuple[QuantizedLinear, bool]], model=None):
        self.source = source
        self._keys = set(source.keys())
        self._virtual: Dict[str, Tuple[str, str]] = {}  # our key -> (checkpoint prefix, module attr)
        self._modules: Dict[str, Tuple[QuantizedLinear, bool]] = {}
        self._passthrough: Dict[str, str] = {}  # our key -> checkpoint key
        hidden = set()
        for name, (module, transposed) in targets.items():
            prefix = self._prefix_for(name)
            weight = f"{prefix}.weight"
            if weight not in self._keys:
                continue  # reported missing by load_weights as usual
            self._modules[prefix] = (module, transposed)
            quantized = not source.dtype_shape(weight)[0].is_floating_point
            for attr in _state_names(module):
                ours = f"{prefix}.{attr}"
                if not quantized:
                    self._virtual[ours] = (prefix, attr)
                    continue
                theirs = f"{prefix}.{_file_name(attr)}"
                if theirs not in self._keys:
                    raise CheckpointError(f"quantized checkpoint lacks {theirs!r} (needed by {weight!r} in "
                                          f"{self._file(weight)})")
                if theirs != ours:
                    self._passthrough[ours] = theirs
                    hidden.add(theirs)
            hidden |= {k for k in self._keys if k.startswith(prefix + ".weight_format")
                       or k.startswith(f"{prefix}.{_QS_PREFIX}")}
        self._order = [k for k in source.keys() if k not in hidden]
        self._order += [k for k in list(self._virtual) + list(self._passthrough) if k not in self._keys]
        self._cache: Tuple[Optional[str], Dict[str, torch.Tensor]] = (None, {})

    def _prefix_for(self, name: str) -> str:
        if any(k.startswith(name + ".") for k in self._keys):
            return name
        head, _, rest = name.partition(".")
        if rest and any(k.startswith(rest + ".") for k in self._keys):
            return rest
        for key in self._keys:
            if key.endswith("." + name + ".weight"):
                return key[: -len(".weight")]
        return name

    def _file(self, key: str) -> str:
        file_of = getattr(self.source, "file_of", None)
        return file_of(key) if file_of is not None else "the state dict"

    def keys(self) -> List[str]:
        return list(self._order)

    def dtype_shape(self, name: str):
        if name in self._virtual:
            prefix, attr = self._virtual[name]
            module = self._modules[prefix][0]
            tensor = module.weight if attr == "weight" else module._buffers[attr]
            return tensor.dtype, tuple(tensor.shape)
        return self.source.dtype_shape(self._passthrough.get(name, name))

    def get(self, name: str) -> torch.Tensor:
        if name in self._passthrough:
            return self.source.get(self._passthrough[name])
        if name not in self._virtual:
            return self.source.get(name)
        prefix, attr = self._virtual[name]
        if self._cache[0] != prefix:
            self._cache = (prefix, self._quantize(prefix))
        return self._cache[1][attr]

    def _quantize(self, prefix: str) -> Dict[str, torch.Tensor]:
        module, transposed = self._modules[prefix]
        # Read into fresh memory where the source can (a Checkpoint): a mapped view would leave the
        # full-precision file pages resident beside the quantized model until the load ends.
        read = getattr(self.source, "read", self.source.get)
        weight = read(prefix + ".weight")
        if transposed:  # GPT-2's Conv1D stores [in, out]; bitsandbytes' layout is [out, in]
            weight = weight.t()
        if tuple(weight.shape) != (module.out_features, module.in_features):
            raise CheckpointError(f"{prefix}.weight in {self._file(prefix + '.weight')} has shape "
                                  f"{tuple(weight.shape)}, expected {(module.out_features, module.in_features)}")
        if isinstance(module, Int8Linear):
            q, scb = formats.quantize_int8_rows(weight)
            return {"weight": q.contiguous(), "SCB": scb}
        if isinstance(module, Int4Linear):
            return formats.quantize_int4_groups(weight, module.group_size, module.weight_scale.dtype)
        parts = formats.quantize_4bit(weight, quant_type=module.quant_type, blocksize=module.blocksize,
                                      double_quant=module.double_quant)
        module.weight_dtype = weight.dtype
        if module.double_quant:
            module.nested_offset = float(parts.pop("nested_offset"))
        packed = parts.pop("weight")
        if module.storage_dtype != torch.uint8:
            packed = packed.reshape(-1).view(module.storage_dtype).unsqueeze(1)
        return {"weight": packed, **{"weight_" + k: v for k, v in parts.items()}}
