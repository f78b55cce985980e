"""Single-process parts of the distributed loading (issue 18): slice reads by byte range, plans."""

from __future__ import annotations

import os

import pytest
import torch

from pretrained import LlamaConfig, LlamaForCausalLM, T5Config, T5Model
from pretrained.distributed.plan import (ParamCut, check_divisible, divide_heads, heads_to_divide, plan_cuts,
                                         resolve_plan)
from pretrained.storage.safetensors import read_header, save_safetensors
from pretrained.storage.slices import READ_COUNTER, read_slice, slice_runs


@pytest.fixture
def stored(tmp_path):
    tensors = {"a": torch.arange(4 * 6 * 5, dtype=torch.float32).reshape(4, 6, 5),
               "b": torch.arange(12, dtype=torch.bfloat16)}
    path = str(tmp_path / "t.safetensors")
    save_safetensors(tensors, path)
    fd = os.open(path, os.O_RDONLY)
    yield tensors, read_header(path), fd
    os.close(fd)


@pytest.mark.parametrize("dim,ranges", [(0, [(1, 3)]), (1, [(2, 5)]), (2, [(0, 2), (3, 5)]), (1, [(0, 1), (4, 6)])])
def test_read_slice_reads_exactly_the_slice(stored, dim, ranges):
    tensors, header, fd = stored
    info = header.tensors["a"]
    READ_COUNTER.reset()
    got = read_slice(fd, info, dim, ranges)
    want = torch.cat([tensors["a"].narrow(dim, a, b - a) for a, b in ranges], dim=dim)
    assert torch.equal(got, want)
    assert READ_COUNTER.bytes == want.numel() * 4                   # only the slice's bytes
    assert sum(n for _, n in slice_runs(info, dim, ranges)) == want.numel() * 4


def test_row_slices_are_one_contiguous_run_and_columns_are_strided(stored):
    _, header, _ = stored
    info = header.tensors["a"]
    assert slice_runs(info, 0, [(1, 3)]) == [(info.start + 1 * 30 * 4, 2 * 30 * 4)]
    assert len(slice_runs(info, 1, [(2, 5)])) == 4                  # one run per row of dim 0
    with pytest.raises(ValueError, match="out of bounds"):
        slice_runs(info, 1, [(5, 7)])


def test_read_slice_whole_and_1d(stored):
    tensors, header, fd = stored
    assert torch.equal(read_slice(fd, header.tensors["b"]), tensors["b"])
    assert torch.equal(read_slice(fd, header.tensors["b"], 0, [(0, 2), (6, 8)]), tensors["b"][[0, 1, 6, 7]])


def _llama():
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def test_auto_plan_is_prefixed_and_cuts_linear_weights():
    model = _llama()
    plan = resolve_plan(model, "auto")
    assert plan["model.layers.*.self_attn.q_proj"] == "colwise"
    cuts = plan_cuts(model, plan)
    assert cuts["model.layers.1.self_attn.q_proj.weight"] == ("model.layers.1.self_attn.q_proj", ParamCut(0, 1, "colwise"))
    assert cuts["model.layers.0.mlp.down_proj.weight"][1] == ParamCut(1, 1, "rowwise")
    assert len(cuts) == 14
    heads = heads_to_divide(model, cuts)
    assert heads == {f"model.layers.{i}.self_attn": ["num_heads", "num_key_value_heads"] for i in range(2)}
    with pytest.raises(ValueError, match=r"num_key_value_heads = 2 is not divisible by the world size 4"):
        divide_heads(model, heads, 4)
    divide_heads(model, heads, 2)
    assert model.model.layers[0].self_attn.num_heads == 2
    check_divisible(model, cuts, 2)
    with pytest.raises(ValueError, match="does not divide"):
        check_divisible(model, cuts, 3)


def test_packed_ranges_take_each_block_apart():
    assert ParamCut(1, 3, "packed_colwise").ranges(12, 1, 2) == [(2, 4), (6, 8), (10, 12)]


def test_bad_plans_name_the_problem():
    model = _llama()
    with pytest.raises(ValueError, match="names no module"):
        plan_cuts(model, {"model.layers.*.attn.qkv": "colwise"})
    with pytest.raises(ValueError, match="unknown style 'diagonal'"):
        resolve_plan(model, {"lm_head": "diagonal"})
    with pytest.raises(ValueError, match="only nn.Linear and Conv1D"):
        plan_cuts(model, {"model.norm": "colwise"})
    with pytest.raises(ValueError, match='must be "auto"'):
        resolve_plan(model, "manual")
    t5 = T5Model(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="T5Config declares no base_model_tp_plan"):
        resolve_plan(t5, "auto")


def test_tp_plan_without_a_process_group_is_a_clear_error(tmp_path, monkeypatch):
    _llama().save_pretrained(tmp_path)
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="tp_plan= needs torch.distributed"):
        LlamaForCausalLM.from_pretrained(tmp_path, tp_plan="auto")
    with pytest.raises(ValueError, match="cannot be combined"):
        LlamaForCausalLM.from_pretrained(tmp_path, tp_plan="auto", device_map="cpu")
