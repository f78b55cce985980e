"""`PreTrainedModel`: the base class every architecture derives from.

``from_pretrained`` composes public phases — resolve files, build a skeleton,
load tensors, initialise what is missing, tie, place — each of which lives in
its own module (:mod:`pretrained.storage`, :mod:`pretrained.loading`,
:mod:`pretrained.placement`).  This file holds the orchestration and the model
surgery people call on a loaded model.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import re
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..adapters.mixin import AdapterMixin
from ..configuration import PretrainedConfig
from ..distributed.tensor_parallel import maybe_tensor_parallel
from ..errors import CheckpointNotFoundError
from ..loading import (
    LoadReport,
    StateDictSource,
    build_skeleton,
    init_enabled,
    initialize_missing,
    load_weights,
)
from ..logging import get_logger
from ..quantization import check_saveable, dequantize_model, quantization_of, quantizer_for_load
from ..utils import dtype_name, parse_dtype, parse_size
from .generation import GENERATION_CONFIG_NAME, GenerationConfig
from .mixin import ModuleUtilsMixin
from .surgery import heads_to_prune_are_new, is_dispatched, refuse_if_dispatched, resize_token_embeddings, tie_would_change

logger = get_logger(__name__)

_HUB_KEYS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
_IGNORED_LOAD_KWARGS = ("_fast_init", "proxies", "mirror", "resume_download", "_commit_hash", "use_auth_token",
                        "offload_buffers", "low_cpu_mem_usage")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


class PreTrainedModel(nn.Module, ModuleUtilsMixin, AdapterMixin):
    """Base class of all models: loading, saving, surgery and accounting.

    Subclasses set ``config_class``, ``base_model_prefix`` and, where they apply,
    ``_no_split_modules``, ``_tied_weights_keys``, ``_keep_in_fp32_modules``,
    ``supports_gradient_checkpointing`` and ``_supports_sdpa``; they call
    ``super().__init__(config)`` first and ``self.post_init()`` last.
    """

    config_class = None
    base_model_prefix = ""
    main_input_name = "input_ids"
    _no_split_modules: Optional[List[str]] = None
    _tied_weights_keys: Optional[Union[List[str], Dict[str, str]]] = None
    _keep_in_fp32_modules: Optional[List[str]] = None
    _keys_to_ignore_on_load_missing: Optional[List[str]] = None
    _keys_to_ignore_on_load_unexpected: Optional[List[str]] = None
    _keys_to_ignore_on_save: Optional[List[str]] = None
    supports_gradient_checkpointing = False
    _supports_sdpa = False
    _auto_class: Optional[str] = None

    def __init__(self, config: PretrainedConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(config, PretrainedConfig):
            raise TypeError(
                f"Parameter config in `{type(self).__name__}(config)` should be an instance of PretrainedConfig. "
                f"To create a model from a pretrained checkpoint use "
                f"`model = {type(self).__name__}.from_pretrained(PRETRAINED_MODEL_NAME)`"
            )
        config._attn_implementation = self._resolve_attn_implementation(config._attn_implementation)
        self.config = config
        self.name_or_path = config.name_or_path
        self.warnings_issued: Dict[str, bool] = {}
        # generate()'s defaults; from_pretrained replaces them with the checkpoint's generation_config.json
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None

    # ------------------------------------------------------------ attention
    @classmethod
    def _resolve_attn_implementation(cls, requested: Optional[str]) -> str:
        if requested is None:
            return "sdpa" if cls._supports_sdpa else "eager"
        if requested not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={requested!r} is not supported; use one of {list(ATTN_IMPLEMENTATIONS)}"
            )
        if requested == "sdpa" and not cls._supports_sdpa:
            raise ValueError(f"{cls.__name__} does not support attn_implementation='sdpa'; use 'eager'")
        return requested

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch between ``"eager"`` and ``"sdpa"`` attention on a built model."""
        self.config._attn_implementation = self._resolve_attn_implementation(attn_implementation)
        for module in self.modules():
            if isinstance(module, PreTrainedModel) and module is not self:
                module.config._attn_implementation = self.config._attn_implementation

    def to_bettertransformer(self) -> "PreTrainedModel":
        """Run attention through PyTorch's fused ``scaled_dot_product_attention``
        (the in-tree replacement for Optimum's BetterTransformer); returns ``self``."""
        self._bettertransformer_previous = self.config._attn_implementation
        self.set_attn_implementation("sdpa")
        self._set_unpad_inputs(True)
        self.use_bettertransformer = True
        return self

    def _set_unpad_inputs(self, enable: bool) -> None:
        """Encoders with a padding-free SDPA path (BERT) expose ``unpad_inputs``."""
        for module in self.modules():
            if hasattr(module, "unpad_inputs"):
                module.unpad_inputs = enable

    def reverse_bettertransformer(self) -> "PreTrainedModel":
        """Undo :meth:`to_bettertransformer`; returns ``self``."""
        self.set_attn_implementation(getattr(self, "_bettertransformer_previous", "eager"))
        self._set_unpad_inputs(False)
        self.use_bettertransformer = False
        return self

    # ------------------------------------------------------------ lifecycle
    def post_init(self) -> None:
        """Initialise weights and apply final processing; call at the end of ``__init__``."""
        self.init_weights()
        if getattr(self.config, "gradient_checkpointing", False) and self.supports_gradient_checkpointing:
            self.gradient_checkpointing_enable()
            delattr(self.config, "gradient_checkpointing")

    def init_weights(self) -> None:
        """Re-apply pruning from ``config.pruned_heads``, initialise every module
        not yet initialised (skipped while loading a checkpoint) and tie weights.

        Modules are initialised once: construction and ``from_pretrained`` mark
        every module done (loaded ones included), so calling ``init_weights()``
        or ``post_init()`` again never resets a trained or loaded weight.
        """
        if self.config.pruned_heads:
            self._apply_head_pruning(self.config.pruned_heads)
        if init_enabled():
            self.apply(self._initialize_weights)
            self.tie_weights()

    def _initialize_weights(self, module: nn.Module) -> None:
        if getattr(module, "_is_hf_initialized", False):
            return
        self._init_weights(module)
        module._is_hf_initialized = True

    def _mark_initialized(self, modules: Optional[Iterable[nn.Module]] = None) -> None:
        """Flag ``modules`` (default: all) as holding real values, so
        ``init_weights`` leaves them alone."""
        for module in self.modules() if modules is None else modules:
            module._is_hf_initialized = True

    def _init_weights(self, module: nn.Module) -> None:
        """Per-module initialiser; architectures override it.  The default draws
        Linear/Embedding weights from N(0, ``initializer_range``), zeroes biases
        and the padding row, and resets norms to 1/0."""
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm) or "RMSNorm" in type(module).__name__:
            if getattr(module, "weight", None) is not None:
                module.weight.data.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self) if self.base_model_prefix else self

    @classmethod
    def can_generate(cls) -> bool:
        return callable(getattr(cls, "prepare_inputs_for_generation", None)) or "generate" in cls.__dict__

    @property
    def hf_device_map(self) -> Dict[str, Any]:
        try:
            return self.__dict__["_hf_device_map"]
        except KeyError:
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute 'hf_device_map' (it is set only when the "
                "model was loaded with a device_map)"
            ) from None

    @hf_device_map.setter
    def hf_device_map(self, value) -> None:
        self.__dict__["_hf_device_map"] = value

    def _apply(self, fn, *args: Any, **kwargs: Any):
        """``nn.Module._apply`` (behind ``.to()``, ``.cuda()``, ``.half()``, ...), refused with a
        clear ``RuntimeError`` while a device_map's hooks spread the weights (offloaded or multi-device)."""
        placement = self.__dict__.get("_placement")
        if placement is not None:
            placement.check_movable()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------ embeddings and ties
    def get_input_embeddings(self) -> nn.Module:
        base = self.base_model
        if base is not self:
            return base.get_input_embeddings()
        raise NotImplementedError(f"{type(self).__name__} must implement get_input_embeddings")

    def set_input_embeddings(self, value: nn.Module) -> None:
        base = self.base_model
        if base is not self:
            return base.set_input_embeddings(value)
        raise NotImplementedError(f"{type(self).__name__} must implement set_input_embeddings")

    def get_output_embeddings(self) -> Optional[nn.Module]:
        return None

    def tie_weights(self) -> None:
        """Tie the output embeddings to the input embeddings when
        ``config.tie_word_embeddings`` (a clone instead when ``config.torchscript``),
        then run every submodule's own ``_tie_weights``.

        Raises:
            RuntimeError: the tie would replace a weight of a model loaded with a
                device_map that offloads or spreads it (already tied: a no-op).
        """
        if getattr(self.config.get_text_config(), "tie_word_embeddings", True):
            output = self.get_output_embeddings()
            if output is not None:
                input = self.get_input_embeddings()
                if is_dispatched(self) and tie_would_change(output, input, torchscript=self.config.torchscript):
                    refuse_if_dispatched(self, "tie_weights")
                self._tie_or_clone_weights(output, input)
        for module in self.modules():
            if hasattr(module, "_tie_weights") and module is not self:
                module._tie_weights()

    def _tie_or_clone_weights(self, output: nn.Module, input: nn.Module) -> None:
        if self.config.torchscript:
            if output.weight is input.weight or output.weight.shape != input.weight.shape or \
                    output.weight.device.type == "meta" or not torch.equal(output.weight, input.weight):
                output.weight = nn.Parameter(input.weight.detach().clone())
        else:
            output.weight = input.weight
        bias = getattr(output, "bias", None)
        if bias is not None and bias.shape[0] != output.weight.shape[0]:
            new_rows = output.weight.shape[0] - bias.shape[0]
            data = bias.data[: output.weight.shape[0]] if new_rows < 0 else torch.cat(
                [bias.data, bias.data.new_zeros(new_rows)]
            )
            output.bias = nn.Parameter(data, requires_grad=bias.requires_grad)
        if hasattr(output, "out_features") and hasattr(input, "num_embeddings"):
            output.out_features = input.num_embeddings

    def _tied_weight_patterns(self) -> List[str]:
        keys = self._tied_weights_keys or []
        return list(keys.keys()) if isinstance(keys, dict) else list(keys)

    # ------------------------------------------------------------ resizing
    def resize_token_embeddings(
        self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary of the input (and tied or untied output) embeddings.

        The embedding module (and its ``padding_idx``) is kept; only its weight
        and ``num_embeddings`` change.  Shrinking drops the last rows.  New rows
        are drawn from N(mean, 1e-9 * covariance) of the old rows (exactly the
        mean when that covariance is not positive definite), so added tokens
        start as an average token.  A tied output layer follows (and its bias,
        zero-padded or cut); an untied one is resized the same way as the
        input.  ``config.vocab_size`` becomes the new (padded) size.

        Args:
            new_num_tokens: the new vocabulary size (``None``: keep, but pad).
            pad_to_multiple_of: round the size up to a multiple of this int.
            mean_resizing: ``False`` draws new rows from N(0, ``initializer_range``)
                instead (Transformers 4.37's behaviour).

        Returns:
            The input embedding module.

        Raises:
            ValueError: a size or multiple that is not a positive int.
            TypeError: the embeddings are not ``nn.Embedding`` / ``nn.Linear``.
            RuntimeError: the model was loaded with a device_map that offloads or
                spreads it (load it whole, resize, save, load the saved folder placed).

        Example:
            >>> model.resize_token_embeddings(50260, pad_to_multiple_of=64).num_embeddings
            50304
        """
        return resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)

    # ------------------------------------------------------------ pruning
    def prune_heads(self, heads_to_prune: Dict[int, List[int]]) -> None:
        """Remove attention heads: ``{layer: [head, ...]}`` in the original numbering.

        The union with earlier pruning is recorded in ``config.pruned_heads`` so a
        saved checkpoint re-applies it when loaded.

        Raises:
            RuntimeError: new heads to prune on a model loaded with a device_map that
                offloads or spreads it (prune it loaded whole, save, load placed).
        """
        if heads_to_prune_are_new(heads_to_prune, self.config.pruned_heads):
            refuse_if_dispatched(self, "prune_heads")
        before = set(self.modules())  # the objects themselves: ids of dropped modules get reused
        self._apply_head_pruning(heads_to_prune)
        # The new, smaller projections hold the kept rows of the old weights.
        self._mark_initialized([m for m in self.modules() if m not in before])

    def _apply_head_pruning(self, heads_to_prune: Dict[int, List[int]]) -> None:
        """Record the union in ``config.pruned_heads`` and let the body prune."""
        base = self.base_model
        if not hasattr(base, "_prune_heads"):
            raise NotImplementedError(f"{type(base).__name__} does not support head pruning")
        request = {int(layer): sorted({int(h) for h in heads}) for layer, heads in heads_to_prune.items()}
        for layer, heads in request.items():
            if heads:
                union = set(self.config.pruned_heads.get(layer, [])) | set(heads)
                self.config.pruned_heads[layer] = sorted(union)
        base._prune_heads({layer: heads for layer, heads in request.items() if heads})

    # ------------------------------------------------------------ gradient checkpointing
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[Dict[str, Any]] = None) -> None:
        """Recompute each block's activations in the backward pass instead of storing them.

        Blocks are checkpointed through their ``__call__`` and recomputed to the
        end (forward hooks fire again during the recompute; see
        :func:`checkpoint_block`) with ``use_reentrant=False`` unless
        ``gradient_checkpointing_kwargs`` says otherwise.  It is active only in
        training mode with gradients enabled; GPT-2 then turns ``use_cache`` off.
        With ``use_reentrant=True`` the input embeddings' output is made to
        require grad, so frozen embeddings still let gradients reach the blocks.

        Example:
            >>> model.gradient_checkpointing_enable()
            >>> model.is_gradient_checkpointing
            True
        """
        if not self.supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing.")
        kwargs = {"use_reentrant": False}
        kwargs.update(gradient_checkpointing_kwargs or {})
        checkpoint = functools.partial(checkpoint_block, **kwargs)
        self._set_gradient_checkpointing(True, checkpoint)
        if kwargs.get("use_reentrant") or self._hf_peft_config_loaded:  # frozen embeddings under an adapter
            self.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        if self.supports_gradient_checkpointing:
            self._set_gradient_checkpointing(False, None)
        if getattr(self, "_require_grads_hook", None) is not None:
            self.disable_input_require_grads()

    def _set_gradient_checkpointing(self, enable: bool, checkpoint_fn) -> None:
        found = False
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enable
                if checkpoint_fn is not None:
                    module._gradient_checkpointing_func = checkpoint_fn
                found = True
        if not found:
            raise ValueError(
                f"{type(self).__name__} is not compatible with gradient checkpointing: no module has a "
                "`gradient_checkpointing` attribute"
            )

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require grad (needed by reentrant checkpointing
        when the embeddings are frozen)."""

        def hook(module, inputs, output):
            if torch.is_grad_enabled() and not output.requires_grad:
                output.requires_grad_(True)

        self.disable_input_require_grads()
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(hook)

    def disable_input_require_grads(self) -> None:
        handle = getattr(self, "_require_grads_hook", None)
        if handle is not None:
            handle.remove()
            self._require_grads_hook = None

    # ------------------------------------------------------------ padding warning
    def warn_if_padding_and_no_attention_mask(self, input_ids: Optional[torch.Tensor], attention_mask) -> None:
        """Warn once per model when ``input_ids`` look padded and no ``attention_mask`` was given.

        "Look padded": ``config.pad_token_id`` is set and appears in the first or
        last column (interior positions are not checked).  Nothing is said while
        tracing or compiling.  Every forward that takes ``input_ids`` calls it.
        """
        if attention_mask is not None or input_ids is None or self.warnings_issued.get("padding"):
            return
        pad = getattr(self.config, "pad_token_id", None)
        if pad is None or torch.jit.is_tracing() or _is_compiling() or _is_fx_proxy(input_ids):
            return
        if input_ids.dim() < 2 or input_ids.shape[-1] == 0:
            return
        if not bool((input_ids[:, [-1, 0]] == pad).any()):
            return
        message = (
            "We strongly recommend passing in an `attention_mask` since your input_ids may be padded. See "
            "https://huggingface.co/docs/transformers/troubleshooting#incorrect-output-when-padding-tokens-arent-masked."
        )
        if pad in (getattr(self.config, "bos_token_id", None), getattr(self.config, "eos_token_id", None),
                   getattr(self.config, "sep_token_id", None)):
            message += (
                f"\nYou may ignore this warning if your `pad_token_id` ({pad}) is identical to the `bos_token_id` "
                f"({self.config.bos_token_id}), `eos_token_id` ({self.config.eos_token_id}), or the "
                f"`sep_token_id` ({getattr(self.config, 'sep_token_id', None)}), and your input is not padded."
            )
        logger.warning(message)
        self.warnings_issued["padding"] = True

    # ------------------------------------------------------------ custom code
    @classmethod
    def register_for_auto_class(cls, auto_class: Union[str, type] = "AutoModel") -> None:
        """Save this class's source file beside checkpoints and record it in
        ``config.auto_map[auto_class]`` so ``AutoModel...from_pretrained(...,
        trust_remote_code=True)`` can load it.

        ``save_pretrained`` then writes the file defining the class, every
        sibling file it imports relatively (``from .layers import Block``), and
        the config class's file when that is custom too; ``config.json`` gains
        ``"auto_map": {"AutoConfig": "configuration_x.XConfig", auto_class:
        "modeling_x.XModel"}``.  Loading that folder through an auto class
        without ``trust_remote_code=True`` raises :class:`~pretrained.errors.RemoteCodeError`.

        Args:
            auto_class: the auto class name or class: ``"AutoModel"``,
                ``"AutoModelForCausalLM"``, ``"AutoModelForMaskedLM"``, ``"AutoModelForSeq2SeqLM"``.

        Raises:
            ValueError: not an auto model class.
        """
        from .. import auto as auto_module

        if not isinstance(auto_class, str):
            auto_class = auto_class.__name__
        if not hasattr(auto_module, auto_class) or not auto_class.startswith("AutoModel"):
            raise ValueError(f"{auto_class} is not a valid auto class.")
        cls._auto_class = auto_class

    # ------------------------------------------------------------ quantization
    @property
    def is_quantized(self) -> bool:
        """True for a model loaded with a quantization config (or from a quantized checkpoint)."""
        return quantization_of(self) is not None

    @property
    def quantization_method(self) -> Optional[str]:
        """``"bitsandbytes"`` or ``"pretrained_int4"`` (the config's ``quant_method``); None when not quantized."""
        config = quantization_of(self)
        return None if config is None else config.quant_method

    @property
    def is_loaded_in_8bit(self) -> bool:
        return getattr(quantization_of(self), "load_in_8bit", False)

    @property
    def is_loaded_in_4bit(self) -> bool:
        return getattr(quantization_of(self), "load_in_4bit", False)

    def dequantize(self) -> "PreTrainedModel":
        """Turn every quantized linear back into a plain ``nn.Linear`` in its compute dtype.

        Returns:
            ``self``, no longer quantized (``config.quantization_config`` removed).
        """
        return dequantize_model(self)

    # ------------------------------------------------------------ construction
    @classmethod
    def _from_config(cls, config: PretrainedConfig, **kwargs: Any) -> "PreTrainedModel":
        """A freshly initialised model from ``config`` (``torch_dtype``/``dtype`` and
        ``attn_implementation`` accepted)."""
        from ..loading import default_dtype

        dtype = _pick_dtype(kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None))
        dtype = None if dtype == "auto" else dtype
        attn = kwargs.pop("attn_implementation", None)
        config = copy.deepcopy(config)
        if attn is not None:
            config._attn_implementation = attn
        with default_dtype(dtype):
            model = cls(config, **kwargs)
        return model

    # ------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Optional[Union[str, os.PathLike]],
        *model_args: Any,
        config: Optional[Union[PretrainedConfig, str, os.PathLike]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        ignore_mismatched_sizes: bool = False,
        force_download: bool = False,
        local_files_only: bool = False,
        token: Optional[Union[str, bool]] = None,
        revision: str = "main",
        use_safetensors: Optional[bool] = None,
        torch_dtype=None,
        dtype=None,
        device_map=None,
        max_memory: Optional[Dict] = None,
        offload_folder: Optional[Union[str, os.PathLike]] = None,
        offload_state_dict: Optional[bool] = None,
        low_cpu_mem_usage: Optional[bool] = None,
        variant: Optional[str] = None,
        output_loading_info: bool = False,
        trust_remote_code: bool = False,
        attn_implementation: Optional[str] = None,
        **kwargs: Any,
    ):
        """Load a model from a folder, a weights file or a Hub repo id.

        The model is built without initialising anything, every checkpoint
        tensor is assigned once (zero-copy from the memory-mapped file when the
        dtype matches), and only tensors the checkpoint lacks are initialised.
        Peak memory stays near one model size whatever ``low_cpu_mem_usage`` says.
        A model that generates gets ``model.generation_config`` from the
        checkpoint's ``generation_config.json`` (else from the config's token ids).

        Args:
            pretrained_model_name_or_path: folder, weights file, or Hub repo id
                (``None`` with ``config=`` and ``state_dict=``).
            config: a config object or where to read one (default: the same place).
            torch_dtype / dtype: ``torch.dtype``, a name (``"bfloat16"``) or
                ``"auto"`` (the config's dtype, else the checkpoint's). Default float32.
            variant: load ``model.<variant>.safetensors`` and friends.
            output_loading_info: also return ``{"missing_keys", "unexpected_keys",
                "mismatched_keys", "error_msgs"}``.
            ignore_mismatched_sizes: keep fresh weights where shapes differ.
            device_map / max_memory / offload_folder / offload_state_dict: placement
                (see :mod:`pretrained.placement`).
            attn_implementation: ``"eager"`` or ``"sdpa"``.
            verify (kwarg): check the SHA-256 checksums saved with ``checksums=True``
                before reading any tensor; a corrupt file is a ``CheckpointError``
                naming it; a checkpoint without checksums loads with a warning.
            **kwargs: config overrides (when ``config`` is not an object), then
                arguments of the model's ``__init__``; ``state_dict=`` loads from a dict.

        Raises:
            CheckpointNotFoundError: no config or weights where asked.
            CheckpointError / UnsafeCheckpointError: a malformed or hostile file.
            WeightsMismatchError: shapes differ and ``ignore_mismatched_sizes`` is False.
        """
        if kwargs.pop("from_tf", False) or kwargs.pop("from_flax", False):
            raise ValueError("TensorFlow and Flax checkpoints are not supported; convert them to safetensors first")
        for key in _IGNORED_LOAD_KWARGS:
            kwargs.pop(key, None)
        state_dict = kwargs.pop("state_dict", None)
        verify = kwargs.pop("verify", False)
        quant_kwargs = {k: kwargs.pop(k) for k in ("quantization_config", "load_in_8bit", "load_in_4bit") if k in kwargs}
        tp_plan, device_mesh = kwargs.pop("tp_plan", None), kwargs.pop("device_mesh", None)
        subfolder = kwargs.pop("subfolder", "")
        hub = dict(cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only,
                   token=token, revision=revision, subfolder=subfolder)
        requested_dtype = _pick_dtype(torch_dtype, dtype)
        from ..adapters.entry import split_adapter_path  # an adapter folder: its base model, then the adapter

        adapter_path, pretrained_model_name_or_path, adapter_args = split_adapter_path(
            pretrained_model_name_or_path, kwargs, hub)
        from .load_config import adopt_config, check_loadable_class

        config = adopt_config(config, cls.config_class, owner=cls.__name__)
        check_loadable_class(cls, pretrained_model_name_or_path, config, hub)

        # 1. config
        if not isinstance(config, PretrainedConfig):
            source = config if config is not None else pretrained_model_name_or_path
            if source is None:
                raise ValueError("from_pretrained needs a path or repo id, or both config= and state_dict=")
            config_class = cls.config_class or PretrainedConfig
            config, model_kwargs = config_class.from_pretrained(
                source, return_unused_kwargs=True, **{k: v for k, v in hub.items()}, **kwargs
            )
        else:
            config = copy.deepcopy(config)
            model_kwargs = kwargs
        if pretrained_model_name_or_path is not None:
            config.name_or_path = os.fspath(pretrained_model_name_or_path)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation

        # 2. weights
        if state_dict is not None:
            checkpoint = None
            source = StateDictSource(state_dict)
        else:
            if pretrained_model_name_or_path is None:
                raise ValueError("from_pretrained needs a path or repo id when no state_dict= is given")
            from ..storage.checkpoint import Checkpoint
            from ..storage.resolve import resolve_checkpoint

            resolved = resolve_checkpoint(
                pretrained_model_name_or_path, variant=variant, use_safetensors=use_safetensors, **hub
            )
            checkpoint = Checkpoint(resolved, verify=verify)
            source = checkpoint
            config = _config_matching_weights(config, checkpoint)

        try:
            # 3. dtype and skeleton
            target_dtype = _resolve_dtype(requested_dtype, config, source)
            if target_dtype is not None:
                config.torch_dtype = dtype_name(target_dtype)
            model = build_skeleton(cls, config, *model_args, dtype=target_dtype or torch.float32, **model_kwargs)
            quantizer = quantizer_for_load(quant_kwargs, config, target_dtype)
            if quantizer is not None:  # quantized linears in the skeleton; tensors quantized as they stream in
                quantizer.prepare(model, source)
                source = quantizer.wrap(source)
            if quantizer is not None and (tp_plan is not None or device_mesh is not None):
                raise ValueError("quantization_config cannot be combined with tp_plan/device_mesh yet: "
                                 "load the quantized model in one process, or the full-precision one with tp_plan")
            tp, source = maybe_tensor_parallel(model, source, tp_plan=tp_plan, device_mesh=device_mesh,
                                               device_map=device_map)  # (None, source) unless tp_plan/device_mesh

            # 4. load, initialise what is missing, tie
            from ..placement import plan_placement

            placement = plan_placement(
                model, device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                offload_state_dict=offload_state_dict, dtype=target_dtype, checkpoint=checkpoint,
            )
            report = load_weights(
                model, source, ignore_mismatched_sizes=ignore_mismatched_sizes,
                device_for=placement.device_for if placement is not None else getattr(tp, "device_for", None),
                offload=getattr(placement, "offload", None),
            )
            _warn_untied(model, report)
            initialize_missing(model, report)
            model._mark_initialized()  # loaded or just initialised: a later post_init() keeps them
            model.tie_weights()
            if quantizer is not None:
                quantizer.finalize(model)
            if tp is not None:
                tp.finish(model)
            if placement is not None:
                placement.place(model, source)
        finally:
            if checkpoint is not None:
                checkpoint.close()

        model.eval()
        if adapter_path is not None:
            model.load_adapter(adapter_path, **adapter_args)
        if model.can_generate():
            model.generation_config = _load_generation_config(
                config, pretrained_model_name_or_path, checkpoint.resolved.folder if checkpoint else None, hub)
        _log_report(model, report, pretrained_model_name_or_path)
        if output_loading_info:
            return model, report.as_dict()
        return model

    # ------------------------------------------------------------ saving
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        is_main_process: bool = True,
        state_dict: Optional[Dict[str, torch.Tensor]] = None,
        save_function=torch.save,
        push_to_hub: bool = False,
        max_shard_size: Union[int, str] = "5GB",
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        token: Optional[Union[str, bool]] = None,
        save_peft_format: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` (and ``generation_config.json`` from ``self.generation_config``
        for a model that generates) and the weights in the Hugging Face layout, atomically.

        Declared tied weights are stored once; shards follow ``max_shard_size``
        (``"5GB"`` = 5·10⁹ bytes, ``"5GiB"`` = 5·2³⁰); stale weight files of the
        same format and variant are removed; a save that fails part way leaves
        the previous checkpoint in the folder loadable.

        Args:
            save_directory: the folder (created if needed).
            is_main_process: ``False`` writes nothing.
            state_dict: tensors to save instead of ``self.state_dict()``.
            save_function: used for ``.bin`` files (``safe_serialization=False``).
            max_shard_size: int bytes or a size string.
            variant: ``model.<variant>.safetensors`` naming.
            push_to_hub: upload the folder afterwards (``repo_id=`` kwarg, default the folder name).
            checksums (kwarg): record a SHA-256 per weights file in the index.
            durable (kwarg): fsync every file and folder before the swap, so the save
                also survives a power loss (slower: it waits for the disk). Without it
                the save is still atomic for readers and for a killed process.
        """
        from ..storage.writer import save_checkpoint

        checksums = kwargs.pop("checksums", False)
        durable = kwargs.pop("durable", False)
        check_saveable(self, safe_serialization=safe_serialization)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {os.fspath(save_directory)!r} is a file, not a folder")
        if state_dict is None and any(type(p).__name__ == "DTensor" for p in self.parameters()):
            from ..distributed.save import save_distributed  # tensor-parallel / FSDP2: gathered tensor by tensor

            return save_distributed(self, save_directory, is_main_process=is_main_process, save_function=save_function,
                                    push_to_hub=push_to_hub, max_shard_size=max_shard_size,
                                    safe_serialization=safe_serialization, variant=variant, token=token,
                                    checksums=checksums, durable=durable, **kwargs)
        if not is_main_process:
            return
        limit = parse_size(max_shard_size, name="max_shard_size")

        config = self.config
        config.torch_dtype = dtype_name(self.dtype)
        config.architectures = [type(self).__name__]
        extra_files: Dict[str, Union[str, bytes]] = {}
        if self._hf_peft_config_loaded:  # only the adapter is saved, in PEFT's layout (as Transformers does)
            extra_files.update(self._adapter_save_files(save_peft_format=save_peft_format, save_function=save_function,
                                                        safe_serialization=safe_serialization))
        if self._auto_class is not None:
            extra_files.update(_custom_code_files(self, config))
        if not self._hf_peft_config_loaded:
            extra_files["config.json"] = config.to_json_string()
        if self.can_generate() and self.generation_config is not None:
            extra_files[GENERATION_CONFIG_NAME] = self.generation_config.to_json_string()
        if self._hf_peft_config_loaded:
            save_checkpoint(save_directory, None, extra_files=extra_files, durable=durable)
            return self._push_folder(save_directory, token=token, **kwargs) if push_to_hub else None

        if state_dict is None:
            state_dict = self.state_dict()
            placement = self.__dict__.get("_placement")
            if placement is not None:  # offloaded weights are read back one at a time while writing
                state_dict = placement.offloaded_state_dict(state_dict, self._tied_weight_patterns())
        for key in self._keys_to_ignore_on_save or []:
            state_dict.pop(key, None)
        state_dict = deduplicate_shared_tensors(state_dict, self._tied_weight_patterns())

        save_checkpoint(
            save_directory, state_dict, max_shard_size=limit, safe_serialization=safe_serialization,
            variant=variant, save_function=save_function, extra_files=extra_files,
            index_metadata={"total_parameters": self.num_parameters()}, checksums=checksums, durable=durable,
        )
        if push_to_hub:
            self._push_folder(save_directory, token=token, **kwargs)

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload model", private: Optional[bool] = None,
                    token=None, max_shard_size: Union[int, str] = "5GB", safe_serialization: bool = True,
                    variant: Optional[str] = None, create_pr: bool = False, revision: Optional[str] = None) -> Any:
        """Save into a temporary folder and upload it to ``repo_id`` with ``huggingface_hub``."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=safe_serialization,
                                 variant=variant)
            return self._push_folder(tmp, repo_id=repo_id, commit_message=commit_message, private=private,
                                     token=token, create_pr=create_pr, revision=revision)

    @staticmethod
    def _push_folder(folder, *, repo_id: Optional[str] = None, token=None, commit_message: str = "Upload model",
                     private: Optional[bool] = None, create_pr: bool = False, revision: Optional[str] = None,
                     **_: Any):
        from huggingface_hub import HfApi

        repo_id = repo_id or os.path.basename(os.path.normpath(os.fspath(folder)))
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), commit_message=commit_message,
                                 create_pr=create_pr, revision=revision)


# ---------------------------------------------------------------------------- helpers


def checkpoint_block(function, *args, use_reentrant: bool = False, **kwargs):
    """:func:`torch.utils.checkpoint.checkpoint` that recomputes the whole block.

    Non-reentrant checkpointing stops a recompute as soon as the tensors the
    backward needs are back ("early stop"), so a block's forward hooks — the
    ones that offload weights again after a forward, or that users register —
    would never run during the recompute.  Blocks are passed as their
    ``__call__``; recomputing them to the end keeps every hook balanced.
    ``early_stop=`` in ``gradient_checkpointing_kwargs`` overrides this.
    """
    from torch.utils import checkpoint as torch_checkpoint

    if not use_reentrant and _has_early_stop():
        kwargs.setdefault("early_stop", False)
    return torch_checkpoint.checkpoint(function, *args, use_reentrant=use_reentrant, **kwargs)


@functools.lru_cache(maxsize=None)
def _has_early_stop() -> bool:
    from torch.utils import checkpoint as torch_checkpoint

    return "early_stop" in inspect.signature(torch_checkpoint.checkpoint).parameters


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def _is_fx_proxy(value: Any) -> bool:
    """True for a ``torch.fx`` proxy (symbolic tracing), without importing torch.fx."""
    fx = sys.modules.get("torch.fx")
    return fx is not None and isinstance(value, fx.Proxy)


def _config_matching_weights(config: PretrainedConfig, checkpoint) -> PretrainedConfig:
    """The config of the folder the weights were opened from.

    ``config.json`` is read before the weights; a save that swapped the folder
    in between would pair one version's config with another's weights. When the
    held folder's ``config.json`` differs from the one read, it is rebuilt from
    the held folder with the same overrides.
    """
    read = getattr(config, "_source_dict", None)
    if read is None:
        return config
    current = checkpoint.read_config()
    if current is None or current == read:
        return config
    logger.info("config.json of %s changed while loading; using the one beside the weights", config.name_or_path)
    rebuilt = type(config)._from_file_dict(current, checkpoint.resolved.folder,
                                           **getattr(config, "_source_overrides", {}))
    rebuilt = rebuilt[0] if isinstance(rebuilt, tuple) else rebuilt
    rebuilt.name_or_path = config.name_or_path
    rebuilt._attn_implementation = config._attn_implementation
    return rebuilt


def _pick_dtype(torch_dtype, dtype):
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"torch_dtype={torch_dtype!r} and dtype={dtype!r} disagree; pass one of them")
    chosen = dtype if dtype is not None else torch_dtype
    return parse_dtype(chosen, name="torch_dtype") if chosen is not None else None


def _resolve_dtype(requested, config: PretrainedConfig, source) -> Optional[torch.dtype]:
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


def _warn_untied(model: PreTrainedModel, report: LoadReport) -> None:
    for names in report.untied_keys:
        logger.warning(
            "The checkpoint holds different values for the tied weights %s; loading them as they are, untied "
            "(config.tie_word_embeddings set to False).", ", ".join(names),
        )
        model.config.tie_word_embeddings = False


def _log_report(model: PreTrainedModel, report: LoadReport, where) -> None:
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


def deduplicate_shared_tensors(state_dict: Dict[str, torch.Tensor], tied_patterns: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Make a state dict storable in safetensors (which forbids aliasing).

    Declared ties (names matching ``tied_patterns``) are stored once; any other
    tensors that share memory — disjoint views of one buffer, or undeclared
    aliases — are saved as separate copies, never dropped.
    """
    groups: Dict[Tuple, List[str]] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        storage = tensor.untyped_storage()
        groups.setdefault((tensor.device, storage.data_ptr(), storage.nbytes()), []).append(name)
    result = dict(state_dict)
    for names in groups.values():
        if len(names) < 2:
            continue
        views: Dict[Tuple, List[str]] = {}
        for name in names:
            t = state_dict[name]
            views.setdefault((t.storage_offset(), tuple(t.shape), t.stride(), t.dtype), []).append(name)
        first_view = True
        for same in views.values():
            declared = [n for n in sorted(same) if any(re.search(p, n) for p in tied_patterns)]
            keep = [n for n in same if n not in declared] or [same[0]]
            for n in same:
                if n not in keep:
                    del result[n]
            for i, n in enumerate(keep):
                if not (first_view and i == 0):
                    result[n] = state_dict[n].detach().clone()
            first_view = False
    return result


def _load_generation_config(config: PretrainedConfig, name_or_path, folder: Optional[str],
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


def _custom_code_files(model: PreTrainedModel, config: PretrainedConfig) -> Dict[str, str]:
    """Source files of a registered custom model (and config) class, the files
    they import relatively (``from .layers import X``), and the ``auto_map`` entry.

    Returns:
        ``{file name: source}`` to write beside the checkpoint; ``config.auto_map``
        is updated in place (``{"AutoConfig": "module.Class", "AutoModel...": ...}``).
    """
    files: Dict[str, str] = {}
    auto_map = dict(getattr(config, "auto_map", None) or {})
    library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    entries = [(type(model), type(model)._auto_class)]
    config_auto = getattr(type(config), "_auto_class", None)
    config_path = inspect.getsourcefile(type(config))
    if config_auto is None and "AutoConfig" not in auto_map and config_path and \
            not os.path.abspath(config_path).startswith(library + os.sep):
        config_auto = "AutoConfig"  # a custom config must travel with a custom model
    entries.insert(0, (type(config), config_auto))
    for obj, auto_name in entries:
        if auto_name is None:
            continue
        path = inspect.getsourcefile(obj)
        if path is None:
            raise ValueError(f"cannot find the source file of {obj.__name__} to save beside the checkpoint")
        for name, source in _module_files(path).items():
            files[name] = source
        stem = os.path.splitext(os.path.basename(path))[0]
        auto_map[auto_name] = f"{stem}.{obj.__name__}"
    config.auto_map = auto_map
    return files


def _module_files(path: str) -> Dict[str, str]:
    """``path``'s source and, recursively, the sibling files it imports relatively."""
    import ast

    files: Dict[str, str] = {}
    pending = [os.path.abspath(path)]
    while pending:
        current = pending.pop()
        name = os.path.basename(current)
        if name in files:
            continue
        with open(current, "r", encoding="utf-8") as f:
            files[name] = f.read()
        folder = os.path.dirname(current)
        for node in ast.walk(ast.parse(files[name], filename=current)):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            modules = [node.module] if node.module else [alias.name for alias in node.names]
            for module in modules:
                candidate = os.path.join(folder, module.split(".")[0] + ".py")
                if os.path.isfile(candidate):
                    pending.append(candidate)
    return files
