"""Custom code: ``register_for_auto_class``, ``auto_map`` and ``trust_remote_code``.

A small model package is written into ``tmp_path`` (config, model, and a
layers file the model imports relatively), imported, registered and saved.
A fresh interpreter, which cannot import that package, must load the
checkpoint through the auto classes from the code saved beside the weights —
and only with ``trust_remote_code=True``.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import run_python

from pretrained import AutoConfig, AutoModel, AutoModelForCausalLM, RemoteCodeError

PACKAGE = "tiny_custom_pkg"

FILES = {
    "__init__.py": "",
    "configuration_tiny.py": '''
        from pretrained import PretrainedConfig


        class TinyConfig(PretrainedConfig):
            model_type = "tiny-custom"

            def __init__(self, vocab=17, hidden=8, **kwargs):
                self.vocab = vocab
                self.hidden = hidden
                super().__init__(**kwargs)
    ''',
    "layers_tiny.py": '''
        import torch
        from torch import nn


        class TinyBlock(nn.Module):
            def __init__(self, hidden):
                super().__init__()
                self.proj = nn.Linear(hidden, hidden)

            def forward(self, x):
                return torch.tanh(self.proj(x)) + x
    ''',
    "modeling_tiny.py": '''
        from torch import nn

        from pretrained import PreTrainedModel

        from .configuration_tiny import TinyConfig
        from .layers_tiny import TinyBlock


        class TinyPreTrainedModel(PreTrainedModel):
            config_class = TinyConfig
            base_model_prefix = "tiny"


        class TinyModel(TinyPreTrainedModel):
            def __init__(self, config):
                super().__init__(config)
                self.embed = nn.Embedding(config.vocab, config.hidden)
                self.block = TinyBlock(config.hidden)
                self.post_init()

            def get_input_embeddings(self):
                return self.embed

            def set_input_embeddings(self, value):
                self.embed = value

            def forward(self, input_ids):
                return self.block(self.embed(input_ids))


        class TinyForCausalLM(TinyPreTrainedModel):
            _tied_weights_keys = ["lm_head.weight"]

            def __init__(self, config):
                super().__init__(config)
                self.tiny = TinyModel(config)
                self.lm_head = nn.Linear(config.hidden, config.vocab, bias=False)
                self.post_init()

            def get_output_embeddings(self):
                return self.lm_head

            def forward(self, input_ids):
                return self.lm_head(self.tiny(input_ids))
    ''',
}
IDS = [[1, 5, 9, 16], [0, 2, 3, 4]]


@pytest.fixture
def tiny_package(tmp_path, monkeypatch):
    """The package written under ``tmp_path/code`` and imported; removed from sys.modules afterwards."""
    root = tmp_path / "code" / PACKAGE
    root.mkdir(parents=True)
    for name, source in FILES.items():
        (root / name).write_text(textwrap.dedent(source).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    importlib.invalidate_caches()
    modeling = importlib.import_module(f"{PACKAGE}.modeling_tiny")
    yield modeling
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def test_save_writes_sources_and_auto_map(tiny_package, tmp_path):
    tiny_package.TinyConfig.register_for_auto_class()
    tiny_package.TinyModel.register_for_auto_class("AutoModel")
    tiny_package.TinyForCausalLM.register_for_auto_class(AutoModelForCausalLM)  # a class works too

    torch.manual_seed(0)
    base = tiny_package.TinyModel(tiny_package.TinyConfig())
    base.save_pretrained(tmp_path / "base")
    saved = sorted(p.name for p in (tmp_path / "base").glob("*.py"))
    assert saved == ["configuration_tiny.py", "layers_tiny.py", "modeling_tiny.py"]  # the relative import too
    assert (tmp_path / "base" / "layers_tiny.py").read_text() == textwrap.dedent(FILES["layers_tiny.py"]).lstrip()
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"}
    assert config["architectures"] == ["TinyModel"] and config["model_type"] == "tiny-custom"

    lm = tiny_package.TinyForCausalLM(tiny_package.TinyConfig())
    lm.save_pretrained(tmp_path / "lm")
    auto_map = json.loads((tmp_path / "lm" / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_tiny.TinyConfig",
                        "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}

    with pytest.raises(ValueError, match="is not a valid auto class"):
        tiny_package.TinyModel.register_for_auto_class("AutoNothing")


def test_refused_without_trust_remote_code(tiny_package, tmp_path):
    tiny_package.TinyConfig.register_for_auto_class()
    tiny_package.TinyModel.register_for_auto_class()
    tiny_package.TinyModel(tiny_package.TinyConfig()).save_pretrained(tmp_path / "m")
    for call in (lambda: AutoModel.from_pretrained(tmp_path / "m"),
                 lambda: AutoConfig.from_pretrained(tmp_path / "m")):
        with pytest.raises(RemoteCodeError, match="contains custom code.*trust_remote_code=True") as err:
            call()
        assert str(tmp_path / "m") in str(err.value)
    assert isinstance(err.value, ValueError)


def test_fresh_process_loads_the_saved_code_only_when_trusted(tiny_package, tmp_path):
    tiny_package.TinyConfig.register_for_auto_class()
    tiny_package.TinyModel.register_for_auto_class()
    tiny_package.TinyForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    torch.manual_seed(0)
    base = tiny_package.TinyModel(tiny_package.TinyConfig(hidden=6)).eval()
    lm = tiny_package.TinyForCausalLM(tiny_package.TinyConfig(hidden=6)).eval()
    base_dir, lm_dir = tmp_path / "custom.out.4", tmp_path / "lm"  # dots in a folder name are fine
    base.save_pretrained(base_dir)
    lm.save_pretrained(lm_dir)
    with torch.no_grad():
        expected_base = base(torch.tensor(IDS)).tolist()
        expected_lm = lm(torch.tensor(IDS)).tolist()

    proc = run_python(f"""
        import importlib.util, json, torch
        from pretrained import AutoModel, AutoModelForCausalLM, RemoteCodeError

        assert importlib.util.find_spec({PACKAGE!r}) is None  # only the saved copy can be used
        try:
            AutoModel.from_pretrained({str(base_dir)!r})
            refused = None
        except RemoteCodeError as err:
            refused = str(err)
        model = AutoModel.from_pretrained({str(base_dir)!r}, trust_remote_code=True)
        lm = AutoModelForCausalLM.from_pretrained({str(lm_dir)!r}, trust_remote_code=True)
        with torch.no_grad():
            out = model(torch.tensor({IDS})).tolist()
            lm_out = lm(torch.tensor({IDS})).tolist()
        print(json.dumps({{
            "refused": refused, "base": out, "lm": lm_out,
            "classes": [type(model).__name__, type(lm).__name__, type(model.config).__name__],
            "module": type(model).__module__, "tied": lm.lm_head.weight is lm.tiny.embed.weight,
            "hidden": model.config.hidden,
        }}))
    """, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["refused"] and "trust_remote_code=True" in result["refused"]
    assert result["classes"] == ["TinyModel", "TinyForCausalLM", "TinyConfig"]
    assert not result["module"].startswith(PACKAGE) and result["module"].endswith("modeling_tiny")
    assert result["tied"] and result["hidden"] == 6
    torch.testing.assert_close(torch.tensor(result["base"]), torch.tensor(expected_base), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(result["lm"]), torch.tensor(expected_lm), rtol=0, atol=1e-6)
