"""Code execution: pickles are read only through ``weights_only=True``; custom code only with trust.

Every pickle payload below would create a marker file if it ran. Each is
written in several containers (raw pickle of every protocol, ``torch.save``
zip, ``torch.save`` legacy, a zip whose ``data.pkl`` was swapped, nested in a
tensor's rebuild arguments) and loaded through ``load_pickle`` and through
``from_pretrained``: it must be refused with ``UnsafeCheckpointError`` and the
marker must never appear. A spy on ``torch.load`` proves there is exactly one
call, with ``weights_only=True``, and no fallback.

Custom modelling code: a checkpoint whose ``auto_map`` names a module that
writes a marker when imported raises ``RemoteCodeError`` before importing it,
through every entry point, unless ``trust_remote_code=True``.
"""

from __future__ import annotations

import collections
import io
import json
import operator
import os
import pathlib
import pickle
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

from pretrained import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
)
from pretrained.errors import RemoteCodeError, UnsafeCheckpointError
from pretrained.storage.pickle import load_pickle
from reliability_support import record

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


# --------------------------------------------------------------------------- payloads


class _Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: pathlib.Path) -> dict:
    """name -> an object whose unpickling would create ``marker``."""
    target = str(marker)
    Reduce = _Reduce
    return {
        "os.system": Reduce(os.system, (f"touch {target}",)),
        "builtins.exec": Reduce(exec, (f"open({target!r}, 'w').close()",)),
        "builtins.eval": Reduce(eval, (f"open({target!r}, 'w')",)),
        "builtins.open": Reduce(open, (target, "w")),
        "subprocess.Popen": Reduce(subprocess.Popen, (["touch", target],)),
        "pathlib.touch": Reduce(operator.methodcaller("touch"), (pathlib.Path(target),)),
        "torch.hub.load": Reduce(torch.hub.load, (str(marker.parent), "model")),
        "nested in a list": [1, Reduce(os.system, (f"touch {target}",))],
        "tensor rebuild hooks": Reduce(torch._utils._rebuild_tensor_v2, (
            _typed_storage(), 0, (2,), (1,), False,
            collections.OrderedDict(hook=Reduce(os.system, (f"touch {target}",))))),
        "parameter rebuild": Reduce(torch._utils._rebuild_parameter, (
            torch.ones(2), False, collections.OrderedDict(hook=Reduce(open, (target, "w"))))),
    }


def _typed_storage():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, and exactly what torch.save pickles
        return torch.ones(2).storage()


def _protocol0_inst(marker: pathlib.Path) -> bytes:
    """A hand-written protocol-0 pickle using the INST opcode (no __reduce__ at all)."""
    return b"(dp0\nS'w'\np1\n(S'touch " + str(marker).encode() + b"'\np2\nios\nsystem\np3\ns."


def _swap_data_pkl(path: pathlib.Path, pickle_bytes: bytes) -> None:
    """Rewrite a torch.save zip with its data.pkl replaced."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, pickle_bytes if name.endswith("data.pkl") else data)


def _containers(path: pathlib.Path, payload) -> dict:
    """container name -> writer of ``{"weight": tensor, "x": payload}`` to ``path``."""
    state = {"weight": torch.ones(2), "x": payload}

    def raw(protocol):
        return lambda: path.write_bytes(pickle.dumps(state, protocol=protocol))

    def swapped():
        torch.save({"weight": torch.ones(2)}, path)
        _swap_data_pkl(path, pickle.dumps(state, protocol=2))

    containers = {f"pickle protocol {p}": raw(p) for p in range(pickle.HIGHEST_PROTOCOL + 1)}
    containers["torch zip"] = lambda: torch.save(state, path)
    containers["torch legacy"] = lambda: torch.save(state, path, _use_new_zipfile_serialization=False)
    containers["zip with swapped data.pkl"] = swapped
    return containers


@pytest.fixture(scope="module")
def tally():
    counts = collections.Counter()
    yield counts
    payloads = sorted({key.split(" / ")[0] for key in counts})
    containers = sorted({key.split(" / ")[1] for key in counts})
    record("security.pickle", {"refused_and_never_ran": sum(counts.values()), "payloads": payloads,
                               "containers": containers})


@pytest.mark.parametrize("payload", sorted(_payloads(pathlib.Path("/x"))))
def test_pickle_payloads_are_refused_and_never_run(tmp_path, payload, tally, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    for container, write in _containers(path, _payloads(marker)[payload]).items():
        try:
            write()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # some objects refuse some protocols
            pytest.fail(f"{container}: could not write the payload: {exc}")
        calls.clear()
        with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
            load_pickle(path)
        assert calls == [True], f"{container}: torch.load calls {calls} (expected one, weights_only=True)"
        assert not marker.exists(), f"{payload} in {container} ran"
        tally[f"{payload} / {container}"] += 1


def test_plain_pickle_of_a_tensor_is_unsafe(tmp_path):
    """``pickle.dumps(tensor)`` imports torch.storage._load_from_bytes, which calls
    ``torch.load(weights_only=False)`` on nested bytes: refused as unsafe, like os.system."""
    marker = tmp_path / "pwned"
    nested = io.BytesIO()
    torch.save(_payloads(marker)["os.system"], nested)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"w": torch.ones(2), "x": _Reduce(torch.storage._load_from_bytes,
                                                                   (nested.getvalue(),))}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="_load_from_bytes"):
        load_pickle(path)
    assert not marker.exists()


def test_inst_opcode_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(_protocol0_inst(marker))
    with pytest.raises(UnsafeCheckpointError, match="os.system|posix.system|GLOBAL"):
        load_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("sharded", [False, True])
def test_pickle_payload_through_from_pretrained(tmp_path, sharded):
    """The whole public path: a config plus a poisoned (sharded) .bin checkpoint."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=False,
                                            max_shard_size=1000 if sharded else "5GB")
    victim = sorted(folder.glob("pytorch_model*.bin"))[-1]
    state = torch.load(victim, weights_only=True)
    state[next(iter(state))] = _payloads(marker)["os.system"]
    torch.save(state, victim)
    for loader in (GPT2LMHeadModel.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(UnsafeCheckpointError, match=victim.name):
            loader(folder)
    assert not marker.exists()


# --------------------------------------------------------------------------- trust_remote_code

EVIL_CODE = '''
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("custom code ran")
from pretrained import PretrainedConfig, PreTrainedModel
import torch

class EvilConfig(PretrainedConfig):
    model_type = "evil"

class EvilModel(PreTrainedModel):
    config_class = EvilConfig
    def __init__(self, config):
        super().__init__(config)
        self.w = torch.nn.Linear(2, 2)
        self.post_init()
'''


@pytest.fixture
def remote_code_folder(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "evil.py").write_text(EVIL_CODE)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                     "AutoModelForCausalLM": "evil.EvilModel"},
    }))
    return folder


def _imported(folder) -> bool:
    loaded = [name for name, module in list(sys.modules.items())
              if getattr(module, "__file__", None) and str(folder) in str(module.__file__)]
    return (folder / "IMPORTED").exists() or bool(loaded)


@pytest.mark.parametrize("entry", ["AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoConfig(trust=False)"])
def test_auto_map_without_trust_raises_before_importing(remote_code_folder, entry):
    call = {
        "AutoConfig": lambda: AutoConfig.from_pretrained(remote_code_folder),
        "AutoModel": lambda: AutoModel.from_pretrained(remote_code_folder),
        "AutoModelForCausalLM": lambda: AutoModelForCausalLM.from_pretrained(remote_code_folder),
        "AutoConfig(trust=False)": lambda: AutoConfig.from_pretrained(remote_code_folder, trust_remote_code=False),
    }[entry]
    with pytest.raises(RemoteCodeError, match="trust_remote_code=True"):
        call()
    assert not _imported(remote_code_folder)


def test_model_auto_map_on_a_known_model_type_needs_trust(remote_code_folder):
    """model_type gpt2 (config loads without code) but the model class is custom: still refused."""
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8).to_dict()
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (remote_code_folder / "config.json").write_text(json.dumps(config))
    loaded = AutoConfig.from_pretrained(remote_code_folder)
    assert loaded.model_type == "gpt2"
    with pytest.raises(RemoteCodeError):
        AutoModelForCausalLM.from_pretrained(remote_code_folder)
    with pytest.raises(RemoteCodeError):
        AutoModelForCausalLM.from_config(loaded)
    assert not _imported(remote_code_folder)


def test_code_in_another_repo_is_refused_before_any_download(remote_code_folder, monkeypatch):
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download custom code")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    (remote_code_folder / "config.json").write_text(json.dumps(
        {"model_type": "evil", "auto_map": {"AutoConfig": "someone/else--evil.EvilConfig"}}))
    with pytest.raises(RemoteCodeError):
        AutoConfig.from_pretrained(remote_code_folder)
    assert not _imported(remote_code_folder)


def test_with_trust_the_code_runs(remote_code_folder):
    """The positive control: the marker module does run once trusted."""
    config = AutoConfig.from_pretrained(remote_code_folder, trust_remote_code=True)
    assert type(config).__name__ == "EvilConfig"
    assert (remote_code_folder / "IMPORTED").exists()
