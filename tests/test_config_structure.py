"""How configurations are put together (issue 14): aliases and field types derived once per
class, one internal loader instead of a side channel on the config, one tuple of hub keywords."""

from __future__ import annotations

import pytest

from pretrained import GPT2Config, PretrainedConfig, T5Config
from pretrained.configuration import _field_kinds


class Sized(PretrainedConfig):
    model_type = "sized"
    attribute_map = {"hidden_size": "width", "num_hidden_layers": "depth"}

    def __init__(self, width: int = 8, depth: int = 2, **kwargs):
        self.width = width
        self.depth = depth
        super().__init__(**kwargs)


class Child(Sized):
    """Inherits the aliases; a class attribute of an alias's name does not hide it."""

    hidden_size = "a class attribute"


def test_no_attribute_read_goes_through_an_override():
    assert PretrainedConfig.__getattribute__ is object.__getattribute__
    for cls in (PretrainedConfig, Sized, Child, GPT2Config, T5Config):
        assert cls.__getattribute__ is object.__getattribute__, cls


@pytest.mark.parametrize("cls", [Sized, Child])
def test_aliases_read_and_write_both_ways(cls):
    config = cls(hidden_size=32, num_hidden_layers=5)             # given under the alias
    assert (config.width, config.depth) == (32, 5)
    assert (config.hidden_size, config.num_hidden_layers) == (32, 5)
    config.hidden_size = 4                                        # written under the alias
    assert config.width == 4 and "hidden_size" not in vars(config)
    config.width = 6                                              # written under the real name
    assert config.hidden_size == 6
    setattr(config, "num_hidden_layers", 9)
    assert getattr(config, "depth") == 9 and hasattr(config, "num_hidden_layers")
    assert "hidden_size" not in config.to_dict() and config.to_dict()["width"] == 6
    assert cls.from_dict({"hidden_size": 3}).width == 3 and cls.from_dict({}, hidden_size=7).width == 7


def test_an_alias_whose_field_is_missing_is_an_attribute_error():
    config = Sized()
    del config.width
    assert not hasattr(config, "hidden_size")
    with pytest.raises(AttributeError, match="width"):
        config.hidden_size


def test_field_types_are_derived_once_per_class(monkeypatch):
    first = _field_kinds(GPT2Config)
    assert first is _field_kinds(GPT2Config) and GPT2Config.__dict__["_field_kinds_table"] is first
    assert first["n_embd"] == (int, False) and "_field_kinds_table" not in GPT2Config().to_dict()

    class Sub(GPT2Config):
        pass

    assert _field_kinds(Sub) is not first and _field_kinds(Sub) == first  # its own table, not its parent's


# ------------------------------------------------------------------ one loader, no side channel

TINY_GPT2 = dict(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)


@pytest.fixture()
def gpt2_folder(tmp_path):
    from pretrained import GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(**TINY_GPT2)).save_pretrained(tmp_path / "w")
    return tmp_path / "w"


def test_the_loader_returns_config_unused_and_the_file(gpt2_folder):
    import json

    from pretrained import AutoConfig

    for loaded in (GPT2Config._load_pretrained(gpt2_folder, resid_pdrop=0.3, not_a_field=1),
                   AutoConfig._load_pretrained(gpt2_folder, resid_pdrop=0.3, not_a_field=1)):
        config, unused, raw = loaded
        assert type(config) is GPT2Config and config.resid_pdrop == 0.3 and unused == {"not_a_field": 1}
        assert raw == json.loads((gpt2_folder / "config.json").read_text()) and raw["resid_pdrop"] == 0.1
        assert config.name_or_path == str(gpt2_folder)
    for config in (GPT2Config.from_pretrained(gpt2_folder), AutoConfig.from_pretrained(gpt2_folder)):
        assert not [key for key in vars(config) if key.startswith("_source")]  # nothing rides on the config


@pytest.mark.parametrize("auto", [False, True])
def test_a_config_changed_beside_the_weights_is_rebuilt_with_the_overrides(gpt2_folder, monkeypatch, auto):
    """The folder swapped between reading config.json and opening the weights: the config of the
    weights' folder wins, with the caller's overrides (directly and through AutoModel*)."""
    from pretrained import AutoModelForCausalLM, GPT2LMHeadModel
    from pretrained.storage.checkpoint import Checkpoint

    held = Checkpoint.read_config
    monkeypatch.setattr(Checkpoint, "read_config", lambda self: {**held(self), "marker": "held folder"})
    cls = AutoModelForCausalLM if auto else GPT2LMHeadModel
    model = cls.from_pretrained(gpt2_folder, resid_pdrop=0.25)
    assert model.config.marker == "held folder" and model.config.resid_pdrop == 0.25
    given = GPT2Config.from_pretrained(gpt2_folder)       # a config the caller chose is used as it is
    assert not hasattr(cls.from_pretrained(gpt2_folder, config=given).config, "marker")


@pytest.mark.parametrize("auto", [False, True])
def test_config_from_another_folder_is_used_as_transformers_does(gpt2_folder, tmp_path, auto):
    """``config=<folder>`` names the config to use; it used to be replaced by the weights' own
    config.json whenever the two differed."""
    transformers = pytest.importorskip("transformers")
    from pretrained import AutoModelForCausalLM, GPT2LMHeadModel

    GPT2Config(**TINY_GPT2, resid_pdrop=0.33).save_pretrained(tmp_path / "c")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder, config=str(tmp_path / "c"))
    ours = (AutoModelForCausalLM if auto else GPT2LMHeadModel).from_pretrained(gpt2_folder, config=tmp_path / "c")
    assert ours.config.resid_pdrop == theirs.config.resid_pdrop == 0.33


# ------------------------------------------------------------------ hub keywords, defined once

def test_hub_keywords_are_one_tuple():
    import pathlib
    import re

    import pretrained
    from pretrained.storage.resolve import HUB_KWARGS

    assert {"cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder"} <= set(HUB_KWARGS)
    root = pathlib.Path(pretrained.__file__).parent
    listing = re.compile(r"""["']force_download["']\s*,\s*["']local_files_only["']""")
    places = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if listing.search(p.read_text()))
    assert places == ["storage/resolve.py"], places
