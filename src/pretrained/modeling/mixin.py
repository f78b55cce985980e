"""`ModuleUtilsMixin`: counting, attention-mask and head-mask helpers, memory hooks.

These are the helpers the Transformers 4.37 ``PreTrainedModel`` page documents
(5.x removed most of them); every architecture here uses them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..logging import get_logger, warning_once

logger = get_logger(__name__)


class ModuleUtilsMixin:
    """Mixed into :class:`~pretrained.PreTrainedModel`; needs ``self.config`` and ``nn.Module``.

    Class attributes (as Transformers 4.37): ``is_parallelizable`` (False; True
    for GPT-2 and T5, whose 4.37 classes had the naive ``parallelize()``; a flag
    only, read by trainers) and ``model_tags`` (None until :meth:`add_model_tags`).
    """

    is_parallelizable = False
    model_tags: Optional[List[str]] = None

    @property
    def framework(self) -> str:
        """``"pt"``: this is a PyTorch model."""
        return "pt"

    def add_model_tags(self, tags: Union[List[str], str]) -> None:
        """Add Hub tags to ``self.model_tags`` (created on first use), skipping ones already there.

        Args:
            tags: one tag or a list of tags; order is kept, duplicates are dropped.

        Raises:
            TypeError: a tag is not a string.
        """
        if isinstance(tags, str):
            tags = [tags]
        tags = list(tags)
        bad = [tag for tag in tags if not isinstance(tag, str)]
        if bad:
            raise TypeError(f"add_model_tags(tags): each tag must be a str, got {bad[0]!r}")
        if self.model_tags is None:
            self.model_tags = []
        for tag in tags:
            if tag not in self.model_tags:
                self.model_tags.append(tag)

    # ------------------------------------------------------------ device, dtype
    @property
    def device(self) -> torch.device:
        """Device of the first parameter (or buffer)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating-point parameter (else buffer), float32 if none."""
        last = None
        for tensor in self.parameters():
            last = tensor.dtype
            if tensor.is_floating_point():
                return tensor.dtype
        for tensor in self.buffers():
            if tensor.is_floating_point():
                return tensor.dtype
        return last or torch.float32

    # ----------------------------------------------------------------- counting
    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of (unique) parameters.

        Args:
            only_trainable: count only parameters with ``requires_grad``.
            exclude_embeddings: skip the weights of every ``nn.Embedding``.
        """
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        from ..quantization import packed_parameter_counts

        packed = packed_parameter_counts(self)  # 4-bit weights: two per stored byte, as Transformers counts
        return sum(
            p.numel() * packed.get(id(p), 1)
            for p in self.parameters()  # parameters() already yields tied tensors once
            if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    def estimate_tokens(self, input_dict: Dict[str, Any]) -> int:
        """Tokens in a batch: ``input_dict[main_input_name].numel()``; 0 (warned once) if absent."""
        name = getattr(self, "main_input_name", "input_ids")
        if name in input_dict and input_dict[name] is not None:
            return input_dict[name].numel()
        warnings_issued = self.__dict__.setdefault("warnings_issued", {})
        if not warnings_issued.get("estimate_tokens"):
            logger.warning(
                "Could not estimate the number of tokens of the input, floating-point operations will not be computed"
            )
            warnings_issued["estimate_tokens"] = True
        return 0

    def floating_point_ops(self, input_dict: Dict[str, Any], exclude_embeddings: bool = True) -> int:
        """Forward + backward FLOPs of a batch: ``6 × tokens × parameters`` (Kaplan et al., 2020)."""
        return 6 * self.estimate_tokens(input_dict) * self.num_parameters(exclude_embeddings=exclude_embeddings)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by parameters (tied ones once) and, optionally, buffers."""
        total = sum(p.numel() * p.element_size() for p in self.parameters())
        if return_buffers:
            total += sum(b.numel() * b.element_size() for b in self.buffers())
        return total

    # ------------------------------------------------------------ memory hooks
    @staticmethod
    def _hook_rss_pre_forward(module, *args, **kwargs):
        import psutil

        module.mem_rss_pre_forward = psutil.Process(os.getpid()).memory_info().rss
        return None

    @staticmethod
    def _hook_rss_post_forward(module, *args, **kwargs):
        import psutil

        module.mem_rss_post_forward = psutil.Process(os.getpid()).memory_info().rss
        module.mem_rss_diff = module.mem_rss_diff + (module.mem_rss_post_forward - module.mem_rss_pre_forward)
        return None

    def add_memory_hooks(self) -> None:
        """Record RSS before/after each module's forward in ``mem_rss_pre_forward``,
        ``mem_rss_post_forward`` and the running total ``mem_rss_diff`` (bytes)."""
        try:
            import psutil  # noqa: F401
        except ImportError as err:  # pragma: no cover - psutil is a dependency
            raise ImportError("You need to install psutil (pip install psutil) to use memory tracing.") from err
        for module in self.modules():
            module.register_forward_pre_hook(self._hook_rss_pre_forward)
            module.register_forward_hook(self._hook_rss_post_forward)
        self.reset_memory_hooks_state()

    def reset_memory_hooks_state(self) -> None:
        """Set ``mem_rss_diff``, ``mem_rss_pre_forward``, ``mem_rss_post_forward`` to 0 on every module."""
        for module in self.modules():
            module.mem_rss_diff = 0
            module.mem_rss_post_forward = 0
            module.mem_rss_pre_forward = 0

    # ------------------------------------------------------------------- inputs
    @staticmethod
    def _input_shape(input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor], *,
                     side: str = "") -> Tuple[int, ...]:
        """The leading shape (B, T) of the one input given: ``input_ids`` or ``inputs_embeds``
        (``side``: ``"decoder_"`` names the decoder's in the messages).

        Raises:
            ValueError: both or neither given.
        """
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError(f"You cannot specify both {side}input_ids and {side}inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError(f"You have to specify either {side}input_ids or {side}inputs_embeds")
        return input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]

    # ------------------------------------------------------ gradient checkpointing
    def _checkpointing(self, use_cache: bool, logger: Any) -> Tuple[bool, bool]:
        """Whether this forward recomputes activations in backward (``gradient_checkpointing``
        while training with gradients), and ``use_cache``, turned off then (warned once in
        ``logger``, the architecture's): a cache would keep what checkpointing frees."""
        checkpointing = bool(getattr(self, "gradient_checkpointing", False)) and self.training \
            and torch.is_grad_enabled()
        if checkpointing and use_cache:
            warning_once(logger, "`use_cache=True` is incompatible with gradient checkpointing. "
                                 "Setting `use_cache=False`.")
            use_cache = False
        return checkpointing, use_cache

    # ------------------------------------------------------------------- masks
    # Masks built from booleans (causal, padding, packed rows, a caller's 4-D bool
    # mask) are modeling/attention.py's (``additive_mask``, ``expanded_mask``).
    @staticmethod
    def create_extended_attention_mask_for_decoder(input_shape, attention_mask, device=None) -> torch.Tensor:
        """Causal × padding mask of 0/1 values, shape ``[b, 1, s_in, s_mask]``.

        When the mask is longer than the input (cached keys), the causal part is
        left-padded with ones.
        """
        if device is not None:
            warnings.warn("The `device` argument is deprecated.", FutureWarning)
        batch, seq = input_shape[0], input_shape[1]
        positions = torch.arange(seq, device=attention_mask.device)
        causal = (positions[None, :] <= positions[:, None]).to(attention_mask.dtype)  # (s, s)
        past = attention_mask.shape[1] - seq
        if past > 0:
            causal = torch.cat([torch.ones(seq, past, device=attention_mask.device, dtype=causal.dtype), causal], -1)
        return causal[None, None, :, :].expand(batch, 1, seq, -1) * attention_mask[:, None, None, :]

    def get_extended_attention_mask(
        self,
        attention_mask: torch.Tensor,
        input_shape: Tuple[int, ...],
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """An additive mask from a 0/1 mask: 0 where attended, ``finfo(dtype).min`` where masked.

        Shapes:
            attention_mask ``[b, s]`` -> ``[b, 1, 1, s]`` (encoder) or ``[b, 1, s, s]``
            causal (``config.is_decoder``); ``[b, f, t]`` -> ``[b, 1, f, t]``.

        Raises:
            ValueError: for any other rank.
        """
        if dtype is None:
            dtype = self.dtype
        if device is not None:
            warnings.warn("The `device` argument is deprecated.", FutureWarning)
        if attention_mask.dim() == 3:
            extended = attention_mask[:, None, :, :]
        elif attention_mask.dim() == 2:
            if getattr(self.config, "is_decoder", False):
                extended = self.create_extended_attention_mask_for_decoder(input_shape, attention_mask)
            else:
                extended = attention_mask[:, None, None, :]
        else:
            raise ValueError(
                f"Wrong shape for input_ids (shape {tuple(input_shape)}) or attention_mask "
                f"(shape {tuple(attention_mask.shape)})"
            )
        return _additive_from_01(extended, dtype)

    def invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        """0/1 mask ``[b, t]`` or ``[b, f, t]`` -> additive ``[b, 1, 1, t]`` / ``[b, 1, f, t]``."""
        if encoder_attention_mask.dim() == 3:
            extended = encoder_attention_mask[:, None, :, :]
        elif encoder_attention_mask.dim() == 2:
            extended = encoder_attention_mask[:, None, None, :]
        else:
            raise ValueError(
                f"invert_attention_mask takes a 2-D or 3-D mask, got shape {tuple(encoder_attention_mask.shape)}"
            )
        return _additive_from_01(extended, self.dtype)

    def get_head_mask(
        self, head_mask: Optional[torch.Tensor], num_hidden_layers: int, is_attention_chunked: bool = False
    ) -> Union[torch.Tensor, List[None]]:
        """Broadcastable per-layer head mask (1 keeps a head, 0 drops it).

        Shapes:
            ``None`` -> ``[None] * num_hidden_layers``; ``[heads]`` or ``[layers, heads]`` ->
            ``[layers, 1, heads, 1, 1]`` (one more trailing 1 when ``is_attention_chunked``).
        """
        if head_mask is None:
            return [None] * num_hidden_layers
        if head_mask.dim() == 1:
            head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
        elif head_mask.dim() == 2:
            head_mask = head_mask[:, None, :, None, None]
        else:
            raise ValueError(f"head_mask must be 1-D (heads) or 2-D (layers, heads), got {head_mask.dim()}-D")
        if head_mask.shape[0] != num_hidden_layers:
            raise ValueError(f"head_mask has {head_mask.shape[0]} layers, the model has {num_hidden_layers}")
        head_mask = head_mask.to(dtype=self.dtype)
        if is_attention_chunked:
            head_mask = head_mask.unsqueeze(-1)
        return head_mask


def _additive_from_01(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 (or float) mask -> ``(1 - mask) * finfo(dtype).min``: 0 where attended (Transformers' arithmetic)."""
    return (1.0 - mask.to(dtype=dtype)) * torch.finfo(dtype).min


def init_normal_(module: nn.Module, std: float) -> None:
    """``weight`` from N(0, ``std``), in place; a ``bias`` zeroed; an embedding's ``padding_idx`` row zeroed.

    The initialisation of Linear (and GPT-2's Conv1D) and Embedding layers that
    most architectures' ``_init_weights`` share.
    """
    module.weight.data.normal_(mean=0.0, std=std)
    if getattr(module, "bias", None) is not None:
        module.bias.data.zero_()
    if getattr(module, "padding_idx", None) is not None:
        module.weight.data[module.padding_idx].zero_()
