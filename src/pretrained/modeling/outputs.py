"""What a model's ``forward`` returns: small dataclasses that also behave like tuples and dicts.

A :class:`ModelOutput` is an ordered dict of its fields that are not ``None``,
with attribute access besides, so all three ways of reading it found in
Transformers code work:

    >>> import torch
    >>> from pretrained.modeling.outputs import CausalLMOutputWithPast
    >>> out = CausalLMOutputWithPast(logits=torch.zeros(1, 2, 3))
    >>> out.logits.shape, out["logits"].shape, out[0].shape     # loss is None: skipped
    (torch.Size([1, 2, 3]), torch.Size([1, 2, 3]), torch.Size([1, 2, 3]))
    >>> (logits,) = out.to_tuple()
    >>> list(out.keys())
    ['logits']

As in Transformers, iterating over an output (``for k in out``, ``a, b = out``)
yields its *keys*; unpack values with ``out.to_tuple()`` or call the model with
``return_dict=False``.  ``past_key_values`` (the 4.x name) is also readable as
``cache`` (the 5.x name): ``out.cache``, ``out["cache"]``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Optional, Tuple

import torch

__all__ = [
    "ModelOutput",
    "BaseModelOutput",
    "BaseModelOutputWithPooling",
    "BaseModelOutputWithPast",
    "BaseModelOutputWithPastAndCrossAttentions",
    "BaseModelOutputWithPoolingAndCrossAttentions",
    "CausalLMOutputWithCrossAttentions",
    "CausalLMOutputWithPast",
    "MaskedLMOutput",
    "QuestionAnsweringModelOutput",
    "SequenceClassifierOutput",
    "SequenceClassifierOutputWithPast",
    "TokenClassifierOutput",
    "Seq2SeqLMOutput",
    "Seq2SeqModelOutput",
]

# Names a reader may use for a field that is called otherwise here.
_ALIASES = {"cache": "past_key_values"}


class ModelOutput(OrderedDict):
    """Base class of all outputs; subclasses are ``@dataclass``es whose fields default to ``None``.

    Indexing by int or slice reads ``to_tuple()`` (fields that are not ``None``,
    in field order); indexing by str reads the field.  ``pop``/``update``/``del``
    are refused, as in Transformers, because they would desynchronise the dict
    from the attributes.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    # dict and attribute views stay in step -------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        name = _ALIASES.get(name, name)
        if name in self.__dataclass_fields__:
            if value is None:
                if super().__contains__(name):
                    super().__delitem__(name)
            else:
                self._put(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        key = _ALIASES.get(key, key)
        self._put(key, value)
        super().__setattr__(key, value)

    def _put(self, key: str, value: Any) -> None:
        is_new = not super().__contains__(key)
        super().__setitem__(key, value)
        if is_new and key in self.__dataclass_fields__:  # keep field order for tuple indexing
            names = list(self.__dataclass_fields__)
            for later in names[names.index(key) + 1:]:
                if super().__contains__(later):
                    self.move_to_end(later)

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(_ALIASES.get(key, key))
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return super().__contains__(_ALIASES.get(key, key) if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(_ALIASES.get(key, key), default)

    @property
    def cache(self) -> Any:
        """The 5.x name of ``past_key_values``."""
        return getattr(self, "past_key_values", None)

    def to_tuple(self) -> Tuple[Any, ...]:
        """The fields that are not ``None``, in field order."""
        return tuple(self.values())

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} does not support this dict operation")

    __delitem__ = setdefault = pop = popitem = update = clear = _refuse


def _register_pytree(cls: type) -> None:
    """Let ``torch.utils._pytree`` (DDP static graph, torch.compile, export) see through outputs."""
    try:
        from torch.utils import _pytree
    except ImportError:  # pragma: no cover - very old torch
        return

    def flatten(output):
        return list(output.values()), list(output.keys())

    def unflatten(values, keys):
        return cls(**dict(zip(keys, values)))

    try:
        _pytree.register_pytree_node(
            cls, flatten, unflatten, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}"
        )
    except ValueError:  # already registered (module reloaded)
        pass


Tensor = torch.Tensor
Tensors = Tuple[torch.Tensor, ...]


@dataclass
class BaseModelOutput(ModelOutput):
    """Encoder output: ``last_hidden_state`` (B, S, C); ``hidden_states`` is a tuple of
    L+1 such tensors (embeddings first); ``attentions`` a tuple of L (B, H, S, S)."""

    last_hidden_state: Optional[Tensor] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """``pooler_output`` (B, C): the first token's state after the pooler."""

    last_hidden_state: Optional[Tensor] = None
    pooler_output: Optional[Tensor] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    """Decoder output with the key/value cache for the next step."""

    last_hidden_state: Optional[Tensor] = None
    past_key_values: Optional[Any] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class BaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: Optional[Tensor] = None
    past_key_values: Optional[Any] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None
    cross_attentions: Optional[Tensors] = None


@dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: Optional[Tensor] = None
    pooler_output: Optional[Tensor] = None
    hidden_states: Optional[Tensors] = None
    past_key_values: Optional[Any] = None
    attentions: Optional[Tensors] = None
    cross_attentions: Optional[Tensors] = None


@dataclass
class CausalLMOutputWithCrossAttentions(ModelOutput):
    """``logits`` (B, S, V); ``loss`` () when labels were given."""

    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    past_key_values: Optional[Any] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None
    cross_attentions: Optional[Tensors] = None


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    past_key_values: Optional[Any] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    past_key_values: Optional[Any] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Optional[Tensor] = None
    start_logits: Optional[Tensor] = None
    end_logits: Optional[Tensor] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class Seq2SeqModelOutput(ModelOutput):
    last_hidden_state: Optional[Tensor] = None
    past_key_values: Optional[Any] = None
    decoder_hidden_states: Optional[Tensors] = None
    decoder_attentions: Optional[Tensors] = None
    cross_attentions: Optional[Tensors] = None
    encoder_last_hidden_state: Optional[Tensor] = None
    encoder_hidden_states: Optional[Tensors] = None
    encoder_attentions: Optional[Tensors] = None


@dataclass
class Seq2SeqLMOutput(ModelOutput):
    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    past_key_values: Optional[Any] = None
    decoder_hidden_states: Optional[Tensors] = None
    decoder_attentions: Optional[Tensors] = None
    cross_attentions: Optional[Tensors] = None
    encoder_last_hidden_state: Optional[Tensor] = None
    encoder_hidden_states: Optional[Tensors] = None
    encoder_attentions: Optional[Tensors] = None
