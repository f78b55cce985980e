"""The device-map planner: pure functions over names, sizes and budgets.

Every test here uses fake sizes (a ``{tensor name: bytes}`` dict or a model
built on the ``meta`` device) and fake GPUs (budgets in bytes): no tensor
data, no CUDA needed.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import psutil
import pytest
import torch
from torch import nn

from pretrained.errors import DeviceMapError
from pretrained.placement import (
    ModelSizes,
    get_balanced_memory,
    infer_device_map,
    largest_layer,
    lookup,
    model_sizes,
    module_sizes,
    parse_max_memory,
    resolve_device_map,
)
from pretrained.placement.plan import available_memory, offload_reserve

MB = 10**6


def stack_sizes(*, layers: int = 8, layer: int = 10 * MB, embed: int = 20 * MB, head: int = 20 * MB,
                parts: int = 4) -> dict:
    """``{name: bytes}`` of a decoder: embed, ``layers`` blocks of ``parts`` tensors, norm, head."""
    sizes = {"embed.weight": embed}
    for i in range(layers):
        for p in range(parts):
            sizes[f"layers.{i}.p{p}.weight"] = layer // parts
    sizes["norm.weight"] = 1000
    sizes["head.weight"] = head
    return sizes


def block_classes(layers: int = 8) -> dict:
    return {f"layers.{i}": "Block" for i in range(layers)}


def devices_of(device_map: dict, prefix: str, layers: int) -> list:
    """The device of each ``{prefix}.{i}`` under ``device_map`` (deepest key wins)."""
    return [device_map[lookup(device_map, f"{prefix}.{i}.p0.weight")] for i in range(layers)]


# --------------------------------------------------------------------------- max_memory


def test_max_memory_parses_sizes_and_orders_devices():
    parsed = parse_max_memory({"cpu": "2GiB", "disk": 10, "cuda:1": "500MB", 0: 1234, "mps": "1.5 KB"})
    assert parsed == {0: 1234, 1: 500 * MB, "mps": 1500, "cpu": 2 * 2**30, "disk": 10}
    assert list(parsed) == [0, 1, "mps", "cpu", "disk"]
    assert parse_max_memory({"0": "1GB", torch.device("cuda", 2): 5}) == {0: 10**9, 2: 5}


def test_max_memory_rejects_unknown_keys_naming_them():
    with pytest.raises(DeviceMapError, match=r"'gpu0'.*'cuda'|'cuda'.*'gpu0'") as info:
        parse_max_memory({"cpu": 10, "gpu0": 5, "cuda": 3})
    assert isinstance(info.value, ValueError)
    with pytest.raises(DeviceMapError, match="-1"):
        parse_max_memory({-1: 5})


def test_max_memory_rejects_bad_sizes_and_duplicates():
    with pytest.raises(DeviceMapError, match="2 gigs"):
        parse_max_memory({"cpu": "2 gigs"})
    with pytest.raises(DeviceMapError, match="twice"):
        parse_max_memory({0: 5, "cuda:0": 6})


def test_default_budgets_keep_a_documented_reserve(monkeypatch):
    class VM:
        available = 10 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: VM)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((i + 1) * 10**9, 80 * 10**9))
    budgets = available_memory()
    assert budgets[0] == int(0.9 * 10**9) and budgets[1] == int(0.9 * 2 * 10**9)
    assert budgets["cpu"] == int(0.9 * 10 * 2**30)


# --------------------------------------------------------------------------- sizes


def test_module_sizes_sum_every_prefix():
    sizes = ModelSizes.from_dict({"a.x.w": 4, "a.x.b": 2, "a.y": 3, "c": 1})
    totals = module_sizes(sizes)
    assert totals[""] == 10 and totals["a"] == 9 and totals["a.x"] == 6 and totals["c"] == 1


def test_model_sizes_read_meta_models_count_ties_once_and_apply_dtype():
    with torch.device("meta"):
        model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    model.head.weight = model.emb.weight
    sizes = model_sizes(model)
    assert sizes.tensors == {"emb.weight": 160, "head.weight": 0}
    assert sizes.tied == (("emb.weight", "head.weight"),)
    assert model_sizes(model, dtype=torch.float16).total == 80
    assert model_sizes(model, dtype=torch.float16, special_dtypes={"emb.weight": torch.float64}).total == 320


def test_largest_layer_respects_no_split_classes():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes())
    assert largest_layer(sizes, no_split_module_classes=["Block"]) == ("embed", 20 * MB)
    big = ModelSizes.from_dict(stack_sizes(layer=40 * MB), classes=block_classes())
    assert largest_layer(big, no_split_module_classes=["Block"]) == ("layers.0", 40 * MB)
    assert largest_layer(big)[1] == 20 * MB  # without no-split: embed / head beat a 10 MB part


# --------------------------------------------------------------------------- strategies


def test_everything_fits_on_one_device():
    plan = infer_device_map(stack_sizes(), {"cpu": 10**12})
    assert plan.device_map == {"": "cpu"} and plan.reserved == {}


def test_sequential_fills_gpu0_first():
    budgets = {0: 60 * MB, 1: 200 * MB, "cpu": 10**12}
    plan = infer_device_map(stack_sizes(), budgets, no_split_module_classes=["Block"], strategy="sequential")
    # embed (20) + 4 layers (40) fill GPU 0 exactly; the rest goes to GPU 1
    assert devices_of(plan.device_map, "layers", 8) == [0] * 4 + [1] * 4
    assert plan.device_map["embed"] == 0 and plan.device_map["head"] == 1
    assert plan.used == {0: 60 * MB, 1: 60 * MB + 1000}
    balanced = infer_device_map(stack_sizes(), budgets, no_split_module_classes=["Block"], strategy="balanced")
    assert balanced.used[0] < plan.used[0] or balanced.device_map == plan.device_map


def test_balanced_spreads_blocks_evenly_over_gpus():
    sizes = ModelSizes.from_dict(stack_sizes(layers=32, layer=4 * MB, embed=8 * MB, head=8 * MB),
                                 classes=block_classes(32))
    plan = infer_device_map(sizes, {g: 10**9 for g in range(4)}, no_split_module_classes=["Block"],
                            strategy="balanced")
    layer_devices = devices_of(plan.device_map, "layers", 32)
    counts = [layer_devices.count(g) for g in range(4)]
    assert all(counts), counts  # every GPU gets blocks
    assert max(counts) - min(counts) <= 4, counts
    assert layer_devices == sorted(layer_devices)  # contiguous, in order
    assert set(plan.device_map.values()) == {0, 1, 2, 3}
    assert plan.reserved == {}  # nothing offloaded: no reserve taken
    # auto is balanced
    assert infer_device_map(sizes, {g: 10**9 for g in range(4)}, no_split_module_classes=["Block"],
                            strategy="auto").device_map == plan.device_map


def test_balanced_memory_finds_the_most_even_cap_when_the_gpus_hold_the_model():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes())  # 20 | 8 x 10 | 0.001 + 20 (MB)
    budgets = get_balanced_memory(sizes, {0: 10**9, 1: 10**9, 2: 10**9, "cpu": 5},
                                  no_split_module_classes=["Block"])
    # best in-order split into 3: [embed + 2 layers | 4 layers | 2 layers + norm + head] -> 40 | 40 | 40.001
    assert budgets == {0: 40 * MB + 1000, 1: 40 * MB + 1000, 2: 40 * MB + 1000, "cpu": 5}
    # a GPU with less than the even share keeps its budget; the others share the rest evenly
    budgets = get_balanced_memory(sizes, {0: 10**9, 1: 10**9, 2: 10 * MB}, no_split_module_classes=["Block"])
    assert budgets == {0: 60 * MB + 1000, 1: 60 * MB + 1000, 2: 10 * MB}
    # a single GPU (or none) is left alone
    assert get_balanced_memory(sizes, {0: 7, "cpu": 5}) == {0: 7, "cpu": 5}


def test_balanced_memory_falls_back_to_accelerates_rule_when_offloading():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes())  # 120.001 MB, largest unit 20 MB
    budgets = get_balanced_memory(sizes, {0: 40 * MB, 1: 50 * MB, 2: 25 * MB, "cpu": 5},
                                  no_split_module_classes=["Block"])
    per_gpu = -(-sizes.total // 3) + int(1.25 * 20 * MB)  # > every budget: they stay
    assert budgets == {0: 40 * MB, 1: 50 * MB, 2: 25 * MB, "cpu": 5}
    budgets = get_balanced_memory(sizes, {0: 100 * MB, 1: 10 * MB, 2: 5 * MB, "cpu": 5},
                                  no_split_module_classes=["Block"])
    assert budgets == {0: per_gpu, 1: 10 * MB, 2: 5 * MB, "cpu": 5}


def test_balanced_low_0_keeps_gpu0_free_when_the_others_suffice():
    sizes = ModelSizes.from_dict(stack_sizes(layers=16, layer=4 * MB), classes=block_classes(16))
    budgets = {0: 10**9, 1: 10**9, 2: 10**9}
    plan = infer_device_map(sizes, budgets, no_split_module_classes=["Block"], strategy="balanced_low_0")
    assert plan.budgets[0] == 0
    assert 0 not in plan.device_map.values()
    assert set(plan.device_map.values()) == {1, 2}
    assert plan.main_device == 1


def test_balanced_low_0_gives_gpu0_only_what_the_others_cannot_hold():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes())
    budgets = get_balanced_memory(sizes, {0: 10**9, 1: 50 * MB, 2: 50 * MB}, no_split_module_classes=["Block"],
                                  low_zero=True)
    assert budgets[0] == sizes.total - 100 * MB


def test_no_split_blocks_stay_whole_and_others_split():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes())
    budgets = {0: 45 * MB, "cpu": 10**12}
    whole = infer_device_map(sizes, budgets, no_split_module_classes=["Block"], strategy="sequential")
    assert all(key.count(".") <= 1 for key in whole.device_map)  # never below layers.i
    split = infer_device_map(sizes, budgets, no_split_module_classes=[], strategy="sequential")
    assert any(key.count(".") == 2 for key in split.device_map), split.device_map  # a block was cut


def test_a_module_larger_than_any_device_goes_to_the_next_one_that_holds_it():
    sizes = ModelSizes.from_dict(stack_sizes(layers=3, layer=80 * MB), classes=block_classes(3))
    plan = infer_device_map(sizes, {0: 50 * MB, 1: 50 * MB, "cpu": 120 * MB},
                            no_split_module_classes=["Block"], strategy="sequential")
    assert plan.device_map["embed"] == 0
    # each 80 MB block fits no GPU; the first lands on the CPU, the rest on disk (the walk never goes back)
    assert devices_of(plan.device_map, "layers", 3) == ["cpu", "disk", "disk"]
    assert plan.device_map["head"] == "disk"


def test_a_limited_disk_that_cannot_hold_the_rest_is_an_error():
    with pytest.raises(DeviceMapError, match="does not fit"):
        infer_device_map(stack_sizes(), {"cpu": 10 * MB, "disk": 20 * MB})


def test_reserve_only_when_something_is_offloaded():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes())  # 120.001 MB
    fits = infer_device_map(sizes, {0: 61 * MB, 1: 61 * MB}, no_split_module_classes=["Block"],
                            strategy="sequential")
    assert fits.reserved == {} and set(fits.device_map.values()) == {0, 1}
    spills = infer_device_map(sizes, {0: 50 * MB, 1: 50 * MB, "cpu": 10**12},
                              no_split_module_classes=["Block"], strategy="sequential")
    assert spills.reserved == {0: offload_reserve(sizes)} == {0: 20 * MB}
    assert spills.used[0] <= 50 * MB - 20 * MB
    assert "cpu" in spills.device_map.values()


def test_cpu_keeps_room_for_disk_layers():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes())
    plan = infer_device_map(sizes, {"cpu": 60 * MB}, no_split_module_classes=["Block"])
    assert plan.reserved == {"cpu": 20 * MB}
    assert plan.used["cpu"] <= 40 * MB and plan.used["disk"] == sizes.total - plan.used["cpu"]


def test_the_reserve_counts_only_what_is_offloaded():
    # the 20 MB embedding stays resident, so only a 2.5 MB part of a disk layer is ever fetched
    sizes = ModelSizes.from_dict(stack_sizes(head=1 * MB), classes=block_classes())
    plan = infer_device_map(sizes, {"cpu": 30 * MB}, no_split_module_classes=["Block"])
    assert plan.device_map["embed"] == "cpu"
    assert plan.reserved == {"cpu": 2_500_000}
    assert plan.used["cpu"] + plan.reserved["cpu"] <= 30 * MB
    assert offload_reserve(sizes) == 20 * MB  # reserving for any module (Accelerate-like) would leave the CPU empty


def test_tied_tensors_pull_their_modules_onto_one_device():
    sizes = ModelSizes.from_dict(stack_sizes(), classes=block_classes(),
                                 tied=[("embed.weight", "head.weight")])
    assert sizes.total == 100 * MB + 1000  # the head weighs nothing: it is the embedding
    plan = infer_device_map(sizes, {0: 45 * MB, "cpu": 10**12}, no_split_module_classes=["Block"],
                            strategy="sequential")
    assert plan.device_map["embed"] == plan.device_map["head"] == 0
    assert list(plan.device_map)[:2] == ["embed", "head"]  # placed together, right away


def test_plans_for_meta_models_without_no_split_modules_split_freely():
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 100)) for _ in range(4)])
    block = 2 * (100 * 100 + 100) * 4
    plan = infer_device_map(model, {0: 2 * block, "cpu": 10**9}, strategy="sequential")
    # GPU 0 keeps room for one offloaded Linear (block / 2): block 0 and half of block 1 fit
    assert plan.reserved == {0: block // 2}
    assert plan.device_map["0"] == 0 and plan.device_map["1.0"] == 0  # block 1 split across devices
    assert plan.device_map["1.1"] == "cpu"


def test_strategy_must_be_known():
    with pytest.raises(DeviceMapError, match="strategy"):
        infer_device_map(stack_sizes(), {"cpu": 1}, strategy="greedy")


# --------------------------------------------------------------------------- explicit maps


def test_dict_map_prefixes_match_at_dot_boundaries_and_the_deepest_wins():
    names = ["layers.1.w", "layers.10.w", "layers.1x.w", "layers.2.w", "head.w"]
    resolved = resolve_device_map({"layers.1": 0, "layers": 1, "": "disk"}, names)
    assert resolved == {"layers.1.w": 0, "layers.10.w": 1, "layers.1x.w": 1, "layers.2.w": 1, "head.w": "disk"}
    assert resolve_device_map({"layers.1.w": "cpu", "layers.1": 0, "": 1}, ["layers.1.w"]) == {"layers.1.w": "cpu"}


def test_dict_map_lists_uncovered_tensors():
    with pytest.raises(DeviceMapError, match=r"head\.w.*norm\.w|norm\.w.*head\.w") as info:
        resolve_device_map({"layers": 0}, ["layers.0.w", "head.w", "norm.w"])
    assert isinstance(info.value, ValueError)


def test_dict_map_values_are_checked():
    assert resolve_device_map({"": "cuda:1"}, ["a"]) == {"a": 1}
    with pytest.raises(DeviceMapError, match="gpu"):
        resolve_device_map({"": "gpu"}, ["a"])


# --------------------------------------------------------------------------- a 70B model on meta


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        head_dim = hidden // heads
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)


class _MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)


class _RMSNorm(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.self_attn = _Attention(hidden, heads, kv_heads)
        self.mlp = _MLP(hidden, intermediate)
        self.input_layernorm = _RMSNorm(hidden)
        self.post_attention_layernorm = _RMSNorm(hidden)


class _Body(nn.Module):
    def __init__(self, vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(LlamaDecoderLayer(hidden, intermediate, heads, kv_heads) for _ in range(layers))
        self.norm = _RMSNorm(hidden)


class Llama70B(nn.Module):
    """Llama-3-70B shapes from plain modules (names as in the Hugging Face checkpoint)."""

    _no_split_modules = ["LlamaDecoderLayer"]

    def __init__(self, layers: int = 80) -> None:
        super().__init__()
        self.model = _Body(vocab=128256, hidden=8192, intermediate=28672, layers=layers, heads=64, kv_heads=8)
        self.lm_head = nn.Linear(8192, 128256, bias=False)


def _work(fn):
    """(result, Python function calls made, peak bytes Python allocated) of ``fn()``: counts, not clocks."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    gc.collect()
    tracemalloc.start()
    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, calls, peak


def _plan_work(model, budgets):
    return _work(lambda: infer_device_map(model, budgets, dtype=torch.bfloat16))


def test_a_70b_plan_is_linear_in_layers_and_allocates_no_tensors():
    """Planning work grows linearly with the layer count, and allocates only bookkeeping, never tensor data."""
    budgets = {0: "40GiB", 1: "40GiB", 2: "40GiB", "cpu": "30GiB"}
    with torch.device("meta"):
        model, small = Llama70B(), Llama70B(layers=20)
    plan, calls, peak = _plan_work(model, budgets)
    _, small_calls, _ = _plan_work(small, budgets)
    assert calls <= 4.6 * small_calls, f"4x the layers made {calls / small_calls:.1f}x the calls"
    assert peak < 16 * 2**20, f"planning allocated {peak / 2**20:.1f} MiB of Python objects"

    sizes = model_sizes(model, dtype=torch.bfloat16)
    assert 140e9 < sizes.total < 142e9  # 70.6B parameters in bf16
    layers = devices_of(plan.device_map, "model.layers", 80)
    assert layers == sorted(layers, key=lambda d: (isinstance(d, str), d))  # contiguous, in order
    assert {0, 1, 2} <= set(layers) and "cpu" in set(plan.device_map.values())
    assert plan.reserved[0] > 0  # something is offloaded, so GPU 0 keeps room to run it
    assert all(key.count(".") <= 2 for key in plan.device_map), "a decoder layer was split"


def test_a_70b_llama_config_plans_on_meta():
    from pretrained.models.llama import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    plan, _, peak = _plan_work(model, {0: "80GiB", 1: "80GiB", "cpu": "10GiB"})
    assert peak < 16 * 2**20, f"planning allocated {peak / 2**20:.1f} MiB of Python objects"
    assert set(plan.device_map.values()) <= {0, 1, "cpu", "disk"}
    assert all(not key.startswith("model.layers.0.") for key in plan.device_map)  # no-split honoured
