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
from typing import Any, NamedTuple, Optional, Tuple

import torch

__all__ = [
    "ModelOutput",
    "OutputFlags",
    "output_flags",
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


class OutputFlags(NamedTuple):
    """What a ``forward`` returns besides its main output, each flag resolved (see :func:`output_flags`)."""

    output_attentions: bool
    output_hidden_states: bool
    use_cache: bool
    return_dict: bool


def output_flags(config: Any, output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                 use_cache: Optional[bool] = None, return_dict: Optional[bool] = None) -> OutputFlags:
    """A ``forward``'s output flags, each ``None`` read from ``config`` (``output_attentions``,
    ``output_hidden_states``, ``use_cache`` (False when the config has none), ``use_return_dict``).

    Example:
        >>> from pretrained import PretrainedConfig
        >>> output_flags(PretrainedConfig(output_attentions=True), return_dict=False)
        OutputFlags(output_attentions=True, output_hidden_states=False, use_cache=False, return_dict=False)
    """
    return OutputFlags(
        output_attentions if output_attentions is not None else config.output_attentions,
        output_hidden_states if output_hidden_states is not None else config.output_hidden_states,
        use_cache if use_cache is not None else getattr(config, "use_cache", False),
        return_dict if return_dict is not None else config.use_return_dict,
    )


# The outputs.  Field order is the tuple order (``to_tuple``, ``out[0]``), Transformers'.
# Each output is a head (its main fields) and a tail shared with others, both private
# bases.  A dataclass's fields come from its bases in reverse MRO order, so
# ``class X(Tail, Head)`` has Head's fields first, then Tail's, then X's own.
@dataclass
class _LastHiddenState(ModelOutput):
    last_hidden_state: Optional[Tensor] = None


@dataclass
class _Pooled(_LastHiddenState):
    pooler_output: Optional[Tensor] = None


@dataclass
class _Loss(ModelOutput):
    loss: Optional[Tensor] = None


@dataclass
class _LossAndLogits(_Loss):
    logits: Optional[Tensor] = None


@dataclass
class _States(ModelOutput):
    """Per-layer ``hidden_states`` (L+1, embeddings first) and ``attentions`` (L)."""

    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class _PastAndStates(ModelOutput):
    """The cache for the next step, then per-layer ``hidden_states`` and ``attentions``."""

    past_key_values: Optional[Any] = None
    hidden_states: Optional[Tensors] = None
    attentions: Optional[Tensors] = None


@dataclass
class _Seq2SeqStates(ModelOutput):
    """The cache, the decoder's per-layer states, then the encoder's."""

    past_key_values: Optional[Any] = None
    decoder_hidden_states: Optional[Tensors] = None
    decoder_attentions: Optional[Tensors] = None
    cross_attentions: Optional[Tensors] = None
    encoder_last_hidden_state: Optional[Tensor] = None
    encoder_hidden_states: Optional[Tensors] = None
    encoder_attentions: Optional[Tensors] = None


@dataclass
class BaseModelOutput(_States, _LastHiddenState):
    """Encoder output: ``last_hidden_state`` (B, S, C); ``hidden_states`` is a tuple of
    L+1 such tensors (embeddings first); ``attentions`` a tuple of L (B, H, S, S)."""


@dataclass
class BaseModelOutputWithPooling(_States, _Pooled):
    """``pooler_output`` (B, C): the first token's state after the pooler."""


@dataclass
class BaseModelOutputWithPast(_PastAndStates, _LastHiddenState):
    """Decoder output with the key/value cache for the next step."""


@dataclass
class BaseModelOutputWithPastAndCrossAttentions(_PastAndStates, _LastHiddenState):
    cross_attentions: Optional[Tensors] = None


@dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(_Pooled):
    hidden_states: Optional[Tensors] = None
    past_key_values: Optional[Any] = None
    attentions: Optional[Tensors] = None
    cross_attentions: Optional[Tensors] = None


@dataclass
class CausalLMOutputWithCrossAttentions(_PastAndStates, _LossAndLogits):
    """``logits`` (B, S, V); ``loss`` () when labels were given."""

    cross_attentions: Optional[Tensors] = None


@dataclass
class CausalLMOutputWithPast(_PastAndStates, _LossAndLogits):
    pass


@dataclass
class MaskedLMOutput(_States, _LossAndLogits):
    pass


@dataclass
class SequenceClassifierOutput(_States, _LossAndLogits):
    pass


@dataclass
class SequenceClassifierOutputWithPast(_PastAndStates, _LossAndLogits):
    pass


@dataclass
class TokenClassifierOutput(_States, _LossAndLogits):
    pass


@dataclass
class _Spans(_Loss):
    start_logits: Optional[Tensor] = None
    end_logits: Optional[Tensor] = None


@dataclass
class QuestionAnsweringModelOutput(_States, _Spans):
    pass


@dataclass
class Seq2SeqModelOutput(_Seq2SeqStates, _LastHiddenState):
    pass


@dataclass
class Seq2SeqLMOutput(_Seq2SeqStates, _LossAndLogits):
    pass
