"""Gradient checkpointing for :class:`~pretrained.PreTrainedModel`: the methods and the checkpoint function."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, Optional

import torch

__all__ = ["GradientCheckpointingMixin", "checkpoint_block"]


class GradientCheckpointingMixin:
    """``gradient_checkpointing_enable`` / ``_disable`` and the input-grad hook; mixed into ``PreTrainedModel``
    (which provides ``supports_gradient_checkpointing``, ``get_input_embeddings`` and ``_hf_peft_config_loaded``)."""

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
