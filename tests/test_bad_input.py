"""Bad input gets a clear exception naming the file or key — through from_pretrained."""

import json
import os
import pickle
import shutil
import struct

import pytest
import torch

from pretrained import AutoModelForCausalLM, AutoModelForMaskedLM, GPT2LMHeadModel
from pretrained.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    PretrainedError,
    UnsafeCheckpointError,
    WeightsMismatchError,
)


@pytest.fixture
def gpt2_copy(hf_gpt2_dirs, tmp_path):
    def copy(layout="single"):
        dst = tmp_path / layout
        shutil.copytree(hf_gpt2_dirs[layout], dst)
        return dst

    return copy


def test_missing_folder_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointNotFoundError, match="nope"):
        AutoModelForCausalLM.from_pretrained(missing)
    with pytest.raises(FileNotFoundError):  # also the builtin a caller would catch
        GPT2LMHeadModel.from_pretrained(str(missing))


def test_missing_weights_file_names_the_folder_and_the_names_tried(gpt2_copy):
    folder = gpt2_copy()
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(folder) in str(err.value) and "model.safetensors" in str(err.value)


def test_truncated_safetensors_names_the_file(gpt2_copy):
    folder = gpt2_copy()
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("payload", [b"", b"garbage", b"\x00" * 3, struct.pack("<Q", 10**15) + b"{}",
                                     struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 4) + b"\xff\xfe{}"])
def test_garbage_safetensors_names_the_file(gpt2_copy, payload):
    folder = gpt2_copy()
    (folder / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_index_naming_a_missing_shard(gpt2_copy):
    folder = gpt2_copy("sharded")
    victim = sorted(folder.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointNotFoundError, match=victim.name):
        AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", "model.bin"])
def test_index_with_path_outside_the_folder_or_wrong_extension_is_refused(gpt2_copy, bad, tmp_path):
    folder = gpt2_copy("sharded")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = bad
    index_path.write_text(json.dumps(index))
    with pytest.raises(UnsafeCheckpointError) as err:
        AutoModelForCausalLM.from_pretrained(folder)
    assert bad in str(err.value)


def test_shape_mismatch_names_the_key(gpt2_copy, tiny_gpt2_config_kwargs):
    folder = gpt2_copy()
    with pytest.raises(WeightsMismatchError, match="wte.weight"):
        AutoModelForCausalLM.from_pretrained(folder, vocab_size=50)


def test_malicious_pickle_does_not_run(tmp_path, hf_gpt2_dirs):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(hf_gpt2_dirs["bin"] / "config.json", folder / "config.json")
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": Evil()}, f)
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        AutoModelForCausalLM.from_pretrained(folder)
    assert not marker.exists()
    # the torch zip format too
    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        AutoModelForCausalLM.from_pretrained(folder)
    assert not marker.exists()


def test_bad_config_json_names_the_file(gpt2_copy):
    folder = gpt2_copy()
    (folder / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_all_errors_share_the_base_class():
    for cls in (CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError, WeightsMismatchError):
        assert issubclass(cls, PretrainedError)
