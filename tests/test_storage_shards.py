"""The pure shard planner, with fake sizes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pretrained.storage.shards import plan_shards


def test_empty_state_dict_gives_one_empty_file():
    plan = plan_shards([], 100)
    assert plan.files == ["model.safetensors"]
    assert plan.shards == [[]]
    assert plan.weight_map == {}
    assert plan.total_size == 0
    assert not plan.is_sharded


def test_everything_fits_in_one_file():
    plan = plan_shards([("a", 10), ("b", 20)], 30)
    assert plan.files == ["model.safetensors"]
    assert plan.weight_map == {"a": "model.safetensors", "b": "model.safetensors"}


def test_exact_fit_stays_in_the_shard():
    plan = plan_shards([("a", 5), ("b", 5), ("c", 5), ("d", 5)], 10)
    assert plan.shards == [["a", "b"], ["c", "d"]]
    assert plan.files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert plan.total_size == 20


def test_one_byte_over_closes_the_shard():
    plan = plan_shards([("a", 5), ("b", 6)], 10)
    assert plan.shards == [["a"], ["b"]]


def test_first_tensor_larger_than_limit():
    plan = plan_shards([("big", 50), ("a", 4), ("b", 4)], 10)
    assert plan.shards == [["big"], ["a", "b"]]


def test_oversized_tensor_in_the_middle_gets_its_own_shard():
    plan = plan_shards([("a", 4), ("big", 50), ("b", 4), ("c", 4)], 10)
    assert plan.shards == [["a"], ["big"], ["b", "c"]]
    assert plan.weight_map["big"] == "model-00002-of-00003.safetensors"


def test_zero_sized_tensors_and_zero_limit():
    assert plan_shards([("a", 0), ("b", 0)], 0).shards == [["a", "b"]]
    assert plan_shards([("a", 1), ("b", 1)], 0).shards == [["a"], ["b"]]


def test_order_is_preserved_no_bin_packing():
    plan = plan_shards([("a", 6), ("b", 6), ("c", 4)], 10)
    assert plan.shards == [["a"], ["b", "c"]]
    assert list(plan.weight_map) == ["a", "b", "c"]


def test_names_follow_format_and_variant():
    plan = plan_shards([("a", 6), ("b", 6)], 10, fmt="bin", variant="fp16")
    assert plan.files == ["pytorch_model.fp16-00001-of-00002.bin", "pytorch_model.fp16-00002-of-00002.bin"]
    single = plan_shards([("a", 6)], 10, fmt="bin", variant="fp16")
    assert single.files == ["pytorch_model.fp16.bin"]


def test_size_strings():
    plan = plan_shards([("a", 600), ("b", 600)], "1KB")
    assert len(plan.files) == 2
    plan = plan_shards([("a", 600), ("b", 424)], "1KiB")
    assert len(plan.files) == 1


@pytest.mark.parametrize("entries", [[("a", -1)], [("a", 1.5)], [("a", 1), ("a", 2)], [("a", True)]])
def test_bad_entries(entries):
    with pytest.raises(ValueError):
        plan_shards(entries, 10)


def test_bad_limit():
    with pytest.raises(ValueError, match="max_shard_size"):
        plan_shards([("a", 1)], "lots")


@given(st.lists(st.integers(0, 100), max_size=30), st.integers(0, 150))
def test_plan_invariants(sizes, limit):
    entries = [(f"t{i}", size) for i, size in enumerate(sizes)]
    plan = plan_shards(entries, limit)
    assert [name for shard in plan.shards for name in shard] == [name for name, _ in entries]
    assert plan.total_size == sum(sizes)
    assert len(plan.files) == len(plan.shards)
    size_of = dict(entries)
    for i, shard in enumerate(plan.shards):
        total = sum(size_of[name] for name in shard)
        assert total <= limit or len(shard) == 1 or all(size_of[n] == 0 for n in shard[1:])
        if i + 1 < len(plan.shards):  # greedy: the next tensor did not fit
            assert shard and total + size_of[plan.shards[i + 1][0]] > limit
