"""`PretrainedConfig`: the attribute bag behind every model.

A config is built from keyword arguments or a ``config.json``.  Keys it does
not know are kept as attributes and written back, so a file from any
Transformers version (4.x or 5.x) round-trips.  Subclasses set ``model_type``,
their defaults in ``__init__``, and ``attribute_map`` for aliases
(GPT-2's ``hidden_size`` -> ``n_embd``).

Example:
    >>> from pretrained import GPT2Config
    >>> config = GPT2Config(n_layer=2)
    >>> config.num_hidden_layers, config.to_dict()["n_layer"]
    (2, 2)
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import typing
from typing import Any, ClassVar, Dict, NamedTuple, Optional, Tuple, Union

import torch

from .errors import CheckpointError, CheckpointNotFoundError
from .storage.resolve import HUB_KWARGS, resolve_file
from .utils import dtype_name

CONFIG_NAME = "config.json"


class LoadedConfig(NamedTuple):
    """What the internal loader returns: the config, the keyword arguments that are
    not config fields, and the ``config.json`` content it was built from (``raw``),
    so a caller can compare that file with another and rebuild the config."""

    config: "PretrainedConfig"
    unused: Dict[str, Any]
    raw: Dict[str, Any]


class PretrainedConfig:
    """Base class of all configurations.

    Args (all optional, keyword-only):
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads: sizes; most
            architectures rename some through ``attribute_map``.
        pad_token_id, bos_token_id, eos_token_id: special token ids.
        tie_word_embeddings (bool, True): tie the output layer to the input embedding.
        torchscript (bool, False): clone tied weights instead of sharing them.
        pruned_heads (dict[int, list[int]]): heads removed by ``prune_heads``.
        torch_dtype / dtype: the dtype the weights were saved in (both names work).
        attn_implementation: ``"eager"`` or ``"sdpa"`` (not saved).
        Any other key is kept as an attribute.
    """

    model_type: ClassVar[str] = ""
    attribute_map: ClassVar[Dict[str, str]] = {}
    is_composition: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        # Subclasses set their own fields first and pass the rest here; an alias
        # such as GPT-2's hidden_size reaches n_embd through __setattr__ below.
        self.return_dict = kwargs.pop("return_dict", True)
        self.output_hidden_states = kwargs.pop("output_hidden_states", False)
        self.output_attentions = kwargs.pop("output_attentions", False)
        self.torchscript = kwargs.pop("torchscript", False)
        self.tie_word_embeddings = kwargs.pop("tie_word_embeddings", True)
        self.is_encoder_decoder = kwargs.pop("is_encoder_decoder", False)
        self.is_decoder = kwargs.pop("is_decoder", False)
        self.add_cross_attention = kwargs.pop("add_cross_attention", False)
        self.pruned_heads = kwargs.pop("pruned_heads", {})
        self.architectures = kwargs.pop("architectures", None)
        self.pad_token_id = kwargs.pop("pad_token_id", None)
        self.bos_token_id = kwargs.pop("bos_token_id", None)
        self.eos_token_id = kwargs.pop("eos_token_id", None)
        self.sep_token_id = kwargs.pop("sep_token_id", None)
        self.decoder_start_token_id = kwargs.pop("decoder_start_token_id", None)
        _set_labels(self, kwargs)

        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        self.torch_dtype = dtype if dtype is not None else torch_dtype

        self._attn_implementation = kwargs.pop("attn_implementation", None) or kwargs.pop(
            "_attn_implementation", None
        )
        self._name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        self.transformers_version = kwargs.pop("transformers_version", None)
        kwargs.pop("model_type", None)  # a class attribute; the file's copy is informational
        for key in HUB_KWARGS:  # where a file came from, never a model field
            kwargs.pop(key, None)

        # Everything else: keep as it came, so the file round-trips.
        for key, value in kwargs.items():
            try:
                setattr(self, key, value)
            except AttributeError as err:  # a read-only property of a subclass
                raise ValueError(f"config key {key!r} cannot be set on {type(self).__name__}: {err}") from err

    # ------------------------------------------------------------------ aliases
    def __setattr__(self, key: str, value: Any) -> None:
        key = type(self).attribute_map.get(key, key)
        if key == "pruned_heads" and value:
            try:
                value = {int(layer): [int(head) for head in heads] for layer, heads in value.items()}
            except (TypeError, ValueError, AttributeError, OverflowError):
                raise ValueError(f"config key 'pruned_heads' must map layer -> list of head indices, "
                                 f"got {str(value)[:80]}") from None
        if key in ("torch_dtype", "dtype"):
            key = "torch_dtype"
            if isinstance(value, str) and value.startswith("torch."):
                value = value[len("torch."):]
        super().__setattr__(key, value)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Each alias of attribute_map becomes a property of the class, once, when the
        # class is made: reads of the real fields cost nothing extra. Set on every
        # subclass, so an alias wins over an attribute of the same name, as in Transformers.
        super().__init_subclass__(**kwargs)
        for alias, target in cls.attribute_map.items():
            setattr(cls, alias, _alias_property(alias, target))

    @property
    def dtype(self):
        return self.torch_dtype

    @dtype.setter
    def dtype(self, value) -> None:
        self.torch_dtype = value

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value) -> None:
        self._name_or_path = str(value)

    @property
    def attn_implementation(self) -> Optional[str]:
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: Optional[str]) -> None:
        self._attn_implementation = value

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict and not self.torchscript

    @property
    def num_labels(self) -> int:
        """``len(id2label)``; setting another count rebuilds ``id2label``/``label2id``
        as ``LABEL_0``, ``LABEL_1``... (Transformers 4.37)."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if getattr(self, "id2label", None) is None or len(self.id2label) != num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            self.label2id = dict(zip(self.id2label.values(), self.id2label.keys()))

    def get_text_config(self, decoder: bool = False) -> "PretrainedConfig":
        return self

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        """All fields as JSON-ready values, with ``model_type`` and both dtype keys."""
        out: Dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key.startswith("_"):  # runtime state: name_or_path, attn implementation
                continue
            out[key] = _jsonable(value)
        out["model_type"] = self.model_type
        dtype = out.pop("torch_dtype", None)
        if dtype is not None:
            out["torch_dtype"] = out["dtype"] = dtype
        if out.get("transformers_version") is None:
            out.pop("transformers_version", None)
        if self.pruned_heads:
            out["pruned_heads"] = {str(k): sorted(v) for k, v in self.pruned_heads.items()}
        return out

    def to_diff_dict(self) -> Dict[str, Any]:
        """:meth:`to_dict` without the keys a reader would get anyway, as Transformers 4.37.

        A key is kept when the base ``PretrainedConfig()`` lacks it (so every field
        an architecture adds stays, default or not), when its value differs from
        the base default or from this class's default, and always for
        ``transformers_version`` and ``quantization_config``.

        Returns:
            A JSON-ready dict.
        """
        base = PretrainedConfig().to_dict()
        own = type(self)().to_dict() if not self.is_composition else {}
        return {
            key: value for key, value in self.to_dict().items()
            if key in ("transformers_version", "quantization_config") or key not in base or value != base[key]
            or (key in own and value != own[key])
        }

    def to_json_string(self, use_diff: bool = False) -> str:
        """The ``config.json`` text: sorted keys, two-space indent, trailing newline.

        ``save_pretrained`` writes the full config (readers of every version then
        see explicit values); ``use_diff=True`` gives :meth:`to_diff_dict` instead.
        """
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs: Any) -> None:
        """Write ``config.json`` into ``save_directory`` (created if needed)."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory!r} is a file, not a folder")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, CONFIG_NAME))

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any], **kwargs: Any):
        """Build a config from a dict; ``kwargs`` override its values.

        With ``return_unused_kwargs=True`` returns ``(config, unused)`` where ``unused``
        holds the overrides that are not config attributes (so callers can pass them on).
        """
        return_unused = kwargs.pop("return_unused_kwargs", False)
        if not isinstance(config_dict, dict):
            raise CheckpointError(f"a config must be a JSON object, got {type(config_dict).__name__}")
        config = cls(**copy.deepcopy(config_dict))
        unused = {}
        for key, value in kwargs.items():
            if key in ("torch_dtype", "dtype"):
                unused[key] = value
            elif hasattr(config, key):
                setattr(config, key, value)
            else:
                unused[key] = value
        check_value_types(config, config_dict)
        return (config, unused) if return_unused else config

    @classmethod
    def _from_file_dict(cls, config_dict: Any, source, **kwargs: Any) -> Tuple["PretrainedConfig", Dict[str, Any]]:
        """``(config, unused)``: :meth:`from_dict` for the content of a ``config.json``;
        whatever is wrong with its values is a :class:`CheckpointError` naming
        ``source``, never a stray ``TypeError``/``AttributeError`` from a config's
        ``__init__``."""
        try:
            return cls.from_dict(config_dict, return_unused_kwargs=True, **kwargs)
        except CheckpointError as err:
            raise CheckpointError(f"config.json of {source}: {err}") from err
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError, RecursionError) as err:
            raise CheckpointError(
                f"config.json of {source} holds values {cls.__name__} cannot use: {type(err).__name__}: "
                f"{str(err)[:300]}"
            ) from err

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]):
        return cls._from_file_dict(load_config_dict(path), os.fspath(path))[0]

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Read ``config.json`` of a folder, file or Hub repo; returns ``(dict, remaining kwargs)``."""
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path) and path.endswith(".json"):
            config_path = path
        else:
            config_path = resolve_file(path, CONFIG_NAME, **hub)
        return load_config_dict(config_path), kwargs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any):
        """Load ``config.json`` from a local folder, a json file or a Hub repo id.

        Keyword arguments that name config attributes override the file's values;
        hub options (``cache_dir``, ``revision``, ``token``, ``local_files_only``,
        ``force_download``, ``subfolder``) choose where the file comes from.
        With ``return_unused_kwargs=True`` returns ``(config, unused)``.

        Raises:
            CheckpointNotFoundError: no ``config.json`` there.
            CheckpointError: the file is not a JSON object, or a value has the wrong
                type (see :func:`check_value_types`; the message names the key).
        """
        return_unused = kwargs.pop("return_unused_kwargs", False)
        config, unused, _ = cls._load_pretrained(pretrained_model_name_or_path, **kwargs)
        return (config, unused) if return_unused else config

    @classmethod
    def _load_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any) -> LoadedConfig:
        """:meth:`from_pretrained`, returning ``(config, unused, raw)`` (see :class:`LoadedConfig`)."""
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        declared = config_dict.get("model_type")
        if cls.model_type and declared and declared != cls.model_type:
            from .logging import get_logger

            get_logger(__name__).warning(
                "config.json of %s has model_type %r; reading it as %s (model_type %r)",
                pretrained_model_name_or_path, declared, cls.__name__, cls.model_type,
            )
        config, unused = cls._from_file_dict(config_dict, os.fspath(pretrained_model_name_or_path), **kwargs)
        config.name_or_path = os.fspath(pretrained_model_name_or_path)
        return LoadedConfig(config, unused, config_dict)

    # --------------------------------------------------------------------- misc
    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def update(self, values: Dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """Save this config class's source beside checkpoints (see ``PreTrainedModel``)."""
        if not isinstance(auto_class, str):
            auto_class = auto_class.__name__
        if auto_class != "AutoConfig":
            raise ValueError(f"{auto_class} is not a valid auto class for a config")
        cls._auto_class = auto_class


def _alias_property(alias: str, target: str) -> property:
    """``config.<alias>`` reads and writes ``config.<target>`` (an ``attribute_map`` entry)."""

    def get(self: "PretrainedConfig") -> Any:
        return getattr(self, target)

    def set(self: "PretrainedConfig", value: Any) -> None:
        setattr(self, target, value)

    return property(get, set, doc=f"``{alias}``: another name of ``{target}`` (``attribute_map``).")


_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def _set_labels(config: "PretrainedConfig", kwargs: Dict[str, Any]) -> None:
    """``id2label``/``label2id``/``num_labels``/``problem_type`` as Transformers 4.37
    sets them: ``id2label`` wins over ``num_labels`` (default 2 labels), its JSON
    string keys become ints again."""
    id2label, label2id = kwargs.pop("id2label", None), kwargs.pop("label2id", None)
    num_labels = kwargs.pop("num_labels", None)
    if label2id is not None and not isinstance(label2id, dict):
        raise ValueError(f"config key 'label2id' must be a dict, got {type(label2id).__name__}")
    if id2label is not None and not isinstance(id2label, dict):
        raise ValueError(f"config key 'id2label' must be a dict, got {type(id2label).__name__}")
    config.label2id = label2id
    if id2label is not None:
        try:
            config.id2label = {int(key): value for key, value in id2label.items()}
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"config key 'id2label' must map label ids to names, got {str(id2label)[:80]}") from None
        if num_labels is not None and num_labels != len(id2label):
            from .logging import get_logger

            get_logger(__name__).warning("num_labels=%s is not the length of id2label (%s): id2label wins",
                                         num_labels, len(id2label))
    else:
        config.id2label = None
        config.num_labels = 2 if num_labels is None else num_labels
    problem_type = kwargs.pop("problem_type", None)
    if problem_type is not None and problem_type not in _PROBLEM_TYPES:
        raise ValueError(f"config key 'problem_type' must be one of {_PROBLEM_TYPES} or None, got {problem_type!r}")
    config.problem_type = problem_type


_SCALARS = (bool, int, float, str)


def _kind_of_hint(hint: Any) -> Optional[Tuple[type, bool]]:
    """``(kind, optional)`` for ``int``, ``Optional[float]``, ...; ``None`` for anything richer."""
    if hint in _SCALARS:
        return hint, False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        if inner in _SCALARS:
            return inner, True
    return None


def _field_kinds(cls: type) -> Dict[str, Tuple[type, bool]]:
    """Field name -> ``(kind, optional)`` for the scalar fields of a config class.

    Derived once per class, on first use (not when the class is made: building
    ``cls()`` needs the class complete), and kept on the class itself. From the
    annotations of the ``__init__`` of ``cls`` and its bases where they are plain
    scalars (``int``, ``Optional[float]``...), else from the type of a non-``None``
    default; fields set by ``PretrainedConfig.__init__`` from its ``**kwargs``
    from the values of ``cls()``.
    """
    if "_field_kinds_table" in cls.__dict__:
        return cls.__dict__["_field_kinds_table"]
    kinds: Dict[str, Tuple[type, bool]] = {}
    try:
        defaults = dict(cls().__dict__)
    except Exception:  # a user config that cannot be built without arguments
        defaults = {}
    for key, default in defaults.items():
        kind = next((t for t in _SCALARS if isinstance(default, t)), None)
        if kind is not None:
            kinds[key] = (kind, False)
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
            parameters = inspect.signature(init).parameters.values()
        except Exception:  # unresolvable annotations: keep what the defaults say
            continue
        for param in parameters:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name == "self":
                continue
            kind = _kind_of_hint(hints.get(param.name))
            if kind is None and param.default is not None and param.default is not param.empty:
                kind = next(((t, False) for t in _SCALARS if isinstance(param.default, t)), None)
            if kind is not None:
                kinds[param.name] = kind
    setattr(cls, "_field_kinds_table", kinds)
    return kinds


def _fits(value: Any, kind: type, optional: bool) -> bool:
    if value is None:
        return optional or kind is bool  # a null flag reads as False everywhere
    if kind is bool:  # JSON true/false, and 0/1
        return isinstance(value, bool) or (type(value) is int and value in (0, 1))
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_value_types(config: "PretrainedConfig", given: Any = ()) -> None:
    """Refuse values whose JSON type cannot be what the field holds.

    A scalar field (declared ``int``, ``float``, ``bool``, ``str`` or
    ``Optional[...]`` of one in the config class's ``__init__``, or with such a
    default) must hold one: an int field takes no strings, floats, booleans or
    ``null`` (unless optional); a float field takes ints; a bool field takes
    ``null`` and 0/1. Token ids (an int or a list of ints in real configs) and
    richer fields are not checked. ``torch_dtype`` must be a string and
    ``architectures`` a list of strings.

    Args:
        config: the config built from ``given``.
        given: the dict it was built from (to name the key the file used for an alias).

    Raises:
        CheckpointError: naming the key, the expected type and the value.
    """
    cls = type(config)
    values = config.__dict__
    problems = []
    dtype = values.get("torch_dtype")
    if dtype is not None and not isinstance(dtype, (str, torch.dtype)):
        problems.append(("torch_dtype", "a dtype name such as 'float32'", dtype))
    architectures = values.get("architectures")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) for a in architectures)):
        problems.append(("architectures", "a list of class names", architectures))
    for key, (kind, optional) in _field_kinds(cls).items():
        if key.startswith("_") or key.endswith(("token_id", "token_ids")) or key not in values:
            continue
        if not _fits(values[key], kind, optional):
            article = "an" if kind is int else "a"
            problems.append((key, f"{article} {kind.__name__}{' or null' if optional else ''}", values[key]))
    if problems:
        key, expected, value = problems[0]
        aliases = [alias for alias, target in cls.attribute_map.items()
                   if target == key and isinstance(given, dict) and alias in given]
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise CheckpointError(f"config key {key!r}{f' (given as {aliases[0]!r})' if aliases else ''} must be "
                              f"{expected}, got {type(value).__name__} {shown}")


def load_config_dict(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read and parse a ``config.json``, with errors that name the file.

    A save that swaps the folder at the very moment the path is looked up can
    make the file seem missing for an instant: it is looked for again (twice).
    """
    for attempt in range(3):
        try:
            with open(path, "r", encoding="utf-8") as f:
                text = f.read()
            break
        except FileNotFoundError as err:
            if attempt == 2 or not os.path.isfile(path):
                raise CheckpointNotFoundError(f"config file {path} does not exist") from err
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"cannot read config file {path}: {err}") from err
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"config file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"config file {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return dtype_name(value)
    if isinstance(value, PretrainedConfig):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, set):
        return sorted(_jsonable(v) for v in value)
    return value
