"""`PreTrainedModel`: the base class every architecture derives from.

``from_pretrained`` composes named phases over a parsed request
(:mod:`.load_request`, :mod:`.loader`: resolve config, open weights, build the
skeleton, plan placement, load, finish); ``save_pretrained`` lives in
:mod:`.saving`, the surgery in :mod:`.surgery`, custom code in
:mod:`.custom_code`.  This file holds the class people subclass and call.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..adapters.mixin import AdapterMixin
from ..configuration import PretrainedConfig
from ..loading import init_enabled
from ..logging import get_logger
from ..quantization import dequantize_model, quantization_of
from .checkpointing import GradientCheckpointingMixin, checkpoint_block
from .custom_code import auto_class_name
from .generation import GenerationConfig
from .load_request import LoadRequest, pick_dtype
from .loader import build_model, finish_loading, load_model_weights, open_weights, plan_model_placement, resolve_config
from .mixin import ModuleUtilsMixin
from .norms import is_rms_norm
from .saving import deduplicate_shared_tensors, push_folder, save_model
from .surgery import heads_to_prune_are_new, is_dispatched, refuse_if_dispatched, resize_token_embeddings, tie_would_change

__all__ = ["ATTN_IMPLEMENTATIONS", "PreTrainedModel", "checkpoint_block", "deduplicate_shared_tensors"]

logger = get_logger(__name__)

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


class PreTrainedModel(nn.Module, ModuleUtilsMixin, AdapterMixin, GradientCheckpointingMixin):
    """Base class of all models: loading, saving, surgery and accounting.

    Subclasses set ``config_class``, ``base_model_prefix`` and, where they apply,
    ``_no_split_modules``, ``_tied_weights_keys``, ``_keep_in_fp32_modules``,
    ``supports_gradient_checkpointing`` and ``_supports_sdpa``; they call
    ``super().__init__(config)`` first and ``self.post_init()`` last.
    """

    _abstract_base = True  # only in this class's own __dict__: from_pretrained refuses the bare base class
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
        elif isinstance(module, nn.LayerNorm) or is_rms_norm(module):
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
        cls._auto_class = auto_class_name(auto_class)

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

        dtype = pick_dtype(kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None))
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
            device_map / max_memory / offload_folder: placement (see :mod:`pretrained.placement`).
            offload_buffers (kwarg): offload the persistent buffers of offloaded
                modules with them, as Accelerate does (default: buffers stay where
                their module runs).
            offload_state_dict / low_cpu_mem_usage: accepted, no effect (the load
                is always low-memory; see ``docs/placement.md``).
            attn_implementation: ``"eager"`` or ``"sdpa"``.
            trust_remote_code: accepted; a concrete class runs no remote code.
            verify (kwarg): check the SHA-256 checksums saved with ``checksums=True``
                before reading any tensor; a corrupt file is a ``CheckpointError``
                naming it; a checkpoint without checksums loads with a warning.
            state_dict / quantization_config / load_in_8bit / load_in_4bit / tp_plan /
                device_mesh / subfolder / adapter_name / adapter_kwargs (kwargs): see
                :class:`~pretrained.modeling.load_request.LoadRequest`.
            **kwargs: config overrides (when ``config`` is not an object), then
                arguments of the model's ``__init__``; any other keyword is a ``TypeError``.

        Raises:
            CheckpointNotFoundError: no config or weights where asked.
            CheckpointError / UnsafeCheckpointError: a malformed or hostile file.
            WeightsMismatchError: shapes differ and ``ignore_mismatched_sizes`` is False.
            ValueError: on the bare ``PreTrainedModel`` (use the concrete class or an auto class).
            TypeError: a keyword nothing takes, or a ``config=`` of another model type.
        """
        named = dict(config=config, cache_dir=cache_dir, ignore_mismatched_sizes=ignore_mismatched_sizes,
                     force_download=force_download, local_files_only=local_files_only, token=token, revision=revision,
                     use_safetensors=use_safetensors, torch_dtype=torch_dtype, dtype=dtype, device_map=device_map,
                     max_memory=max_memory, offload_folder=offload_folder, offload_state_dict=offload_state_dict,
                     low_cpu_mem_usage=low_cpu_mem_usage, variant=variant, output_loading_info=output_loading_info,
                     trust_remote_code=trust_remote_code, attn_implementation=attn_implementation)
        request = LoadRequest.parse(pretrained_model_name_or_path, model_args, named, kwargs)
        config, model_kwargs, config_read = resolve_config(cls, request)
        with open_weights(request, config, config_read) as weights:
            built = build_model(cls, request, weights, model_kwargs)
            placement = plan_model_placement(request, weights, built)
            report = load_model_weights(request, weights, built, placement)
        return finish_loading(request, built.model, report, weights.folder)

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

        ``self.config`` is left as it is: ``config.json`` is written from a copy.

        Raises:
            TypeError: a keyword other than those above and ``push_to_hub``'s
                (``repo_id``, ``commit_message``, ``private``, ``create_pr``, ``revision``).
            ValueError: ``save_directory`` is a file; a malformed ``max_shard_size``.
        """
        return save_model(self, save_directory, is_main_process=is_main_process, state_dict=state_dict,
                          save_function=save_function, push_to_hub=push_to_hub, max_shard_size=max_shard_size,
                          safe_serialization=safe_serialization, variant=variant, token=token,
                          save_peft_format=save_peft_format, **kwargs)

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
    def _push_folder(folder, **kwargs: Any):
        return push_folder(folder, **kwargs)


# ---------------------------------------------------------------------------- helpers


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def _is_fx_proxy(value: Any) -> bool:
    """True for a ``torch.fx`` proxy (symbolic tracing), without importing torch.fx."""
    fx = sys.modules.get("torch.fx")
    return fx is not None and isinstance(value, fx.Proxy)
