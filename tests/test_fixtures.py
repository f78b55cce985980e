"""The fixtures in conftest.py are what they claim to be.

These tests use only torch, safetensors and Transformers, never ``pretrained``,
so a failure here points at the fixtures, not at the library.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open

from helpers import assert_close, make_padding_mask, run_python, tensor_bytes_equal

# fixture name -> attribute prefix of the base model inside the head model
ARCHS = {"hf_gpt2_dirs": "transformer.", "hf_bert_dirs": "bert."}


@pytest.fixture(params=list(ARCHS), ids=["gpt2", "bert"])
def dirs(request) -> dict:
    """The session's checkpoint dict (a shallow copy) plus its base "prefix"."""
    return {**request.getfixturevalue(request.param), "prefix": ARCHS[request.param]}


def _safetensors_tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        assert (f.metadata() or {}).get("format") == "pt"
        return {name: f.get_tensor(name) for name in f.keys()}


def _assert_matches_model(tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every saved tensor equals the model's, byte for byte; nothing but tied copies is left out."""
    state = model.state_dict()
    assert set(tensors) <= set(state), set(tensors) - set(state)
    for name, tensor in tensors.items():
        assert tensor_bytes_equal(tensor, state[name]), name
    saved_ptrs = {state[name].data_ptr() for name in tensors}
    for name in set(state) - set(tensors):  # only tied aliases may be dropped
        assert state[name].data_ptr() in saved_ptrs, f"{name} missing and not tied"


def test_single_file(dirs):
    folder = dirs["single"]
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    assert (folder / "config.json").is_file()
    _assert_matches_model(_safetensors_tensors(folder / "model.safetensors"), dirs["model"])


def test_sharded_safetensors(dirs):
    folder = dirs["sharded"]
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    assert not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    tensors = {}
    for shard in shards:
        part = _safetensors_tensors(folder / shard)
        assert {n for n, f in index["weight_map"].items() if f == shard} == set(part)
        tensors.update(part)
    _assert_matches_model(tensors, dirs["model"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_variant_name_only(dirs):
    folder = dirs["variant"]
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.fp16.safetensors"]
    tensors = _safetensors_tensors(folder / "model.fp16.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    _assert_matches_model(tensors, dirs["model"])


def test_single_bin(dirs):
    folder = dirs["bin"]
    assert (folder / "config.json").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert list(state) == list(dirs["model"].state_dict())  # tied copies included, in order
    _assert_matches_model(state, dirs["model"])


def test_sharded_bin_index_layout(dirs):
    folder = dirs["bin_sharded"]
    shards = sorted(p.name for p in folder.glob("pytorch_model-*.bin"))
    assert len(shards) >= 3
    assert all(re.fullmatch(rf"pytorch_model-\d{{5}}-of-{len(shards):05d}\.bin", s) for s in shards)
    text = (folder / "pytorch_model.bin.index.json").read_text()
    index = json.loads(text)
    assert text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    assert set(index) == {"metadata", "weight_map"} and set(index["metadata"]) == {"total_size"}
    assert sorted(set(index["weight_map"].values())) == shards

    state = {}
    for shard in shards:
        part = torch.load(folder / shard, weights_only=True)
        assert {n for n, f in index["weight_map"].items() if f == shard} == set(part)
        state.update(part)
    assert set(state) == set(dirs["model"].state_dict())
    _assert_matches_model(state, dirs["model"])
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in dirs["model"].state_dict().values()}
    assert index["metadata"]["total_size"] == sum(unique.values())


def test_base_checkpoint_has_no_head_prefix(dirs):
    prefix = dirs["prefix"]
    tensors = _safetensors_tensors(dirs["base"] / "model.safetensors")
    assert not any(name.startswith(prefix) for name in tensors)
    _assert_matches_model(tensors, dirs["base_model"])
    head_state = dirs["model"].state_dict()
    shared = [name for name in tensors if prefix + name in head_state]
    assert shared and all(tensor_bytes_equal(tensors[n], head_state[prefix + n]) for n in shared)


@pytest.mark.parametrize("layout", ["single", "sharded", "variant"])
def test_transformers_reads_back_same_logits(dirs, layout, input_ids, attention_mask_right):
    model = dirs["model"]
    kwargs = {"variant": "fp16"} if layout == "variant" else {}
    reloaded = type(model).from_pretrained(dirs[layout], **kwargs).eval()
    with torch.no_grad():
        expected = model(input_ids, attention_mask=attention_mask_right).logits
        actual = reloaded(input_ids, attention_mask=attention_mask_right).logits
    assert_close(actual, expected, atol=0)


def test_models_are_seeded_and_in_eval_mode(hf_gpt2_dirs, tiny_gpt2_config_kwargs):
    """Rebuilding with seed 0 gives the fixture's weights again."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = hf_gpt2_dirs["model"]
    assert not model.training and not hf_gpt2_dirs["base_model"].training
    torch.manual_seed(0)
    again = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs))
    for name, tensor in model.state_dict().items():
        assert tensor_bytes_equal(tensor, again.state_dict()[name]), name


def test_minilm_dir(minilm_dir):
    config = json.loads((minilm_dir / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    with safe_open(str(minilm_dir / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert any(n.endswith("embeddings.word_embeddings.weight") for n in names)


def test_inputs(input_ids, attention_mask_left, attention_mask_right):
    assert input_ids.shape == (2, 7) and input_ids.dtype == torch.long
    assert 0 <= int(input_ids.min()) and int(input_ids.max()) < 99
    assert attention_mask_left.tolist() == [[1] * 7, [0, 0, 0, 1, 1, 1, 1]]
    assert attention_mask_right.tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    with pytest.raises(ValueError):
        make_padding_mask(side="middle")


def test_assert_close_message():
    assert_close(torch.zeros(3), torch.full((3,), 5e-5))
    with pytest.raises(AssertionError, match=r"max abs diff 1\.000e-03 > atol 1\.0e-04 at index \(1,\)"):
        assert_close(torch.zeros(3), torch.tensor([0.0, 1e-3, 0.0]))
    with pytest.raises(AssertionError, match="shape mismatch"):
        assert_close(torch.zeros(3), torch.zeros(4))


def test_tensor_bytes_equal():
    a = torch.tensor([0.0, 1.0])
    assert tensor_bytes_equal(a, a.clone())
    assert not tensor_bytes_equal(a, torch.tensor([-0.0, 1.0]))
    assert not tensor_bytes_equal(a, a.double())
    assert not tensor_bytes_equal(a, a[:1])


def test_run_python_is_offline_and_fresh():
    proc = run_python(
        """
        import os, sys
        print(os.environ["HF_HUB_OFFLINE"], os.environ["EXTRA"], "torch" in sys.modules)
        """,
        env={"EXTRA": "x"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "x", "False"]
