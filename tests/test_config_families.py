"""The decoder family configs field by field against Transformers 5: defaults, given values,
and files written by either side read back by the other (and by ourselves).

Compared are the fields a family adds to the base config (the keys of its Transformers
``to_dict()`` that a bare ``PretrainedConfig`` lacks). Ours also write ``rope_theta`` and
``rope_scaling`` (the 4.x spelling, for 4.x readers) and Qwen2 a ``head_dim``; nothing else.
Where Transformers keeps a legacy ``"type"`` beside ``"rope_type"`` in ``rope_parameters``
(given 4.x ``rope_scaling``), ours hold the standard keys only: that copy is not compared.
"""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402

COMMON = dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, hidden_act="gelu_new", max_position_embeddings=77, initializer_range=0.05,
              rms_norm_eps=1e-5, use_cache=False, pad_token_id=3, bos_token_id=4, eos_token_id=[5, 6],
              attention_dropout=0.1, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0})
FAMILIES = {
    "Llama": dict(tie_word_embeddings=True, pretraining_tp=2, attention_bias=True, mlp_bias=True, head_dim=16),
    "Mistral": dict(tie_word_embeddings=True, head_dim=16, sliding_window=7),
    "Qwen2": dict(tie_word_embeddings=True, use_sliding_window=True, sliding_window=7, max_window_layers=1),
    "Qwen3": dict(tie_word_embeddings=True, head_dim=16, attention_bias=True, use_sliding_window=True,
                  sliding_window=7, max_window_layers=2),
    "Gemma": dict(tie_word_embeddings=False, head_dim=16, attention_bias=True, use_bidirectional_attention=False),
}
VALUES = {
    "defaults": lambda name: {},
    "given": lambda name: {**COMMON, **FAMILIES[name]},
    "fallbacks": lambda name: dict(num_attention_heads=8, hidden_size=64,  # 5.x refuses a null here:
                                   **({} if name in ("Mistral", "Gemma") else {"num_key_value_heads": None})),
    "4.x rope": lambda name: dict(rope_theta=1e6, rope_scaling={"type": "dynamic", "factor": 3.0}),
    "layer types": lambda name: dict(num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"],
                                     use_sliding_window=True) if name.startswith("Qwen") else dict(num_hidden_layers=2),
}
OURS_ONLY = {"rope_theta", "rope_scaling"}


def family_fields(theirs) -> set:
    return set(theirs.to_dict()) - set(transformers.PretrainedConfig().to_dict())


def build(name: str, values: str):
    kwargs = VALUES[values](name)
    transformers.utils.logging.set_verbosity_error()
    return getattr(pretrained, f"{name}Config")(**kwargs), getattr(transformers, f"{name}Config")(**kwargs)


def standard_rope(values: dict) -> dict:
    rope = values.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("type") == rope.get("rope_type"):
        values = {**values, "rope_parameters": {k: v for k, v in rope.items() if k != "type"}}
    return values


def assert_same_fields(ours: dict, theirs, name: str) -> None:
    fields = family_fields(theirs)
    expected = standard_rope({key: value for key, value in theirs.to_dict().items() if key in fields})
    assert {key: ours.get(key, "<missing>") for key in fields} == expected
    extra = set(ours) - set(theirs.to_dict()) - set(pretrained.PretrainedConfig().to_dict())
    assert extra == OURS_ONLY | ({"head_dim"} if name == "Qwen2" and "head_dim" not in fields else set())


@pytest.mark.parametrize("values", list(VALUES))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_to_dict_equals_transformers(name, values):
    ours, theirs = build(name, values)
    assert_same_fields(ours.to_dict(), theirs, name)
    assert json.loads(ours.to_json_string()) == ours.to_dict()


@pytest.mark.parametrize("values", ["defaults", "given"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_files_round_trip_both_ways(name, values, tmp_path):
    ours, theirs = build(name, values)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    read_by_them = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    assert standard_rope({key: read_by_them.to_dict().get(key) for key in family_fields(theirs)}) == \
        standard_rope({key: theirs.to_dict()[key] for key in family_fields(theirs)})
    read_by_us = pretrained.AutoConfig.from_pretrained(tmp_path / "theirs")
    assert type(read_by_us) is type(ours)
    assert_same_fields(read_by_us.to_dict(), theirs, name)
    again = pretrained.AutoConfig.from_pretrained(tmp_path / "ours")
    assert again.to_dict() == ours.to_dict() and again.to_json_string() == ours.to_json_string()


@pytest.mark.parametrize("name", ["Mistral", "Qwen2", "Qwen3", "Gemma"])
def test_family_configs_state_only_what_differs(name):
    """Each family config's own keywords are those whose default is not the decoder's, or its own keys."""
    import inspect

    from pretrained.modeling.decoder import DecoderConfig

    shared = inspect.signature(DecoderConfig.__init__).parameters
    own = inspect.signature(getattr(pretrained, f"{name}Config").__init__).parameters
    restated = [key for key, p in own.items() if key in shared and p.default == shared[key].default
                and key not in ("self", "kwargs")]
    assert restated == []


def test_llama_takes_the_4_37_positional_order_and_the_families_keywords_only():
    values = (99, 32, 40, 3, 4, 2, "gelu_new", 77, 0.05, 1e-5, False, 3, 4, 5)
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
             "use_cache", "pad_token_id", "bos_token_id", "eos_token_id")  # LlamaConfig's first fourteen in 4.37
    config = pretrained.LlamaConfig(*values)
    assert tuple(getattr(config, name) for name in names) == values
    assert config.to_dict() == pretrained.LlamaConfig(**dict(zip(names, values))).to_dict()
    for name in ("Mistral", "Qwen2", "Qwen3", "Gemma"):  # as in Transformers 5
        with pytest.raises(TypeError):
            getattr(pretrained, f"{name}Config")(99)
        with pytest.raises((TypeError, ValueError)):  # 5.25: a ValueError
            getattr(transformers, f"{name}Config")(99)


@pytest.mark.parametrize("name,key,value", [("Mistral", "vocab_size", "x"), ("Mistral", "sliding_window", "7"),
                                            ("Mistral", "num_key_value_heads", 1.5), ("Qwen2", "max_window_layers", None),
                                            ("Qwen3", "head_dim", None), ("Gemma", "head_dim", None),
                                            ("Gemma", "rms_norm_eps", "1e-6"), ("Llama", "mlp_bias", "yes")])
def test_shared_and_own_keys_keep_their_types(name, key, value):
    """A wrong-typed value in config.json is refused naming the key, for the keys the decoder
    config declares as for a family's own (Qwen3's and Gemma's head_dim is never null)."""
    from pretrained.errors import CheckpointError

    with pytest.raises(CheckpointError, match=repr(key)):
        getattr(pretrained, f"{name}Config").from_dict({key: value})
    assert getattr(pretrained, f"{name}Config").from_dict({"head_dim": 8}).head_dim == 8
