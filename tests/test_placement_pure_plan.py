"""The planner is pure: sizes and budgets in, a plan out, and only placement/machine.py asks the machine.

Fake sizes (``{tensor name: bytes}``) and fake budgets throughout; no CUDA needed.
The edge cases (a first unit larger than every device, tied weights, no-split
modules) pin the fill's exact answer, worked out by hand in each comment.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn

from pretrained.errors import DeviceMapError
from pretrained.placement import dispatch, machine, plan
from pretrained.placement.plan import (
    GreedyResult,
    ModelSizes,
    get_balanced_memory,
    infer_device_map,
    plan_device_map,
)

PLACEMENT = Path(plan.__file__).parent


def sizes(tensors: dict, **kwargs) -> ModelSizes:
    return ModelSizes.from_dict(tensors, **kwargs)


@pytest.fixture
def no_machine(monkeypatch):
    """Every way placement reads the machine fails the test."""

    def asked(*args, **kwargs):
        raise AssertionError("the planner asked the machine")

    monkeypatch.setattr(torch.cuda, "is_available", asked)
    monkeypatch.setattr(torch.cuda, "device_count", asked)
    monkeypatch.setattr(torch.cuda, "mem_get_info", asked)
    monkeypatch.setattr(psutil, "virtual_memory", asked)
    monkeypatch.setattr(machine, "available_memory", asked)


# --------------------------------------------------------------------------- purity


def test_the_pure_planner_requires_budgets():
    parameter = inspect.signature(plan_device_map).parameters["budgets"]
    assert parameter.default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        plan_device_map(sizes({"a.w": 1}))


def test_planning_with_budgets_never_asks_the_machine(no_machine):
    model_sizes = sizes({"a.w": 60, "b.w": 60})
    assert plan_device_map(model_sizes, {0: 200, 1: 200}).device_map == {"a": 0, "b": 1}
    assert infer_device_map(model_sizes, {0: 100, 1: 100}, strategy="sequential").device_map == {"a": 0, "b": 1}
    assert get_balanced_memory(model_sizes, {0: 200, 1: 200}) == {0: 60, 1: 60}
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    assert infer_device_map(model, {"cpu": 10**6}).device_map == {"": "cpu"}


def test_omitted_budgets_come_from_the_one_machine_function(monkeypatch):
    monkeypatch.setattr(machine, "available_memory", lambda: {0: 100, 1: 100, "cpu": 10**6})
    assert machine.memory_budgets(None) == {0: 100, 1: 100, "cpu": 10**6}
    assert machine.memory_budgets({"cuda:1": "1KB"}) == {1: 1000}  # given budgets are only parsed
    model_sizes = sizes({"a.w": 60, "b.w": 60})
    assert infer_device_map(model_sizes, strategy="sequential").device_map == {"a": 0, "b": 1}
    assert get_balanced_memory(model_sizes) == {0: 60, 1: 60, "cpu": 10**6}


def test_dispatch_plans_with_the_budgets_of_memory_budgets(monkeypatch):
    seen = []

    def budgets(max_memory=None):
        seen.append(max_memory)
        return {"cpu": 10**9}

    monkeypatch.setattr(dispatch, "memory_budgets", budgets)
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    placement = dispatch.plan_placement(model, device_map="auto")
    assert placement.hf_device_map == {"": "cpu"}
    dispatch.plan_placement(model, device_map="sequential", max_memory={"cpu": "1GB"})
    assert seen == [None, {"cpu": "1GB"}]


def _machine_reads(path: Path) -> list:
    """``psutil`` imports and ``torch.cuda`` / ``torch.backends`` references in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [name for name in names if name.split(".")[0] == "psutil"]
        if isinstance(node, ast.Attribute) and node.attr in ("cuda", "backends"):
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                found.append(f"torch.{node.attr}")
    return found


@pytest.mark.parametrize("name", ["plan.py", "sizes.py", "devices.py"])
def test_planner_files_do_not_read_the_machine(name):
    assert _machine_reads(PLACEMENT / name) == []
    assert _machine_reads(PLACEMENT / "machine.py")  # the check sees what it looks for


# --------------------------------------------------------------------------- the fill's named result


def test_greedy_returns_a_named_result():
    model_sizes = sizes({"a.w": 60, "b.w": 60})
    root = plan._build_tree(model_sizes)
    result = plan._greedy(root, [0, 1, "disk"], {0: 100, 1: 100, "disk": -1}, {}, frozenset(),
                          plan._index_ties(root, model_sizes.tied))
    assert isinstance(result, GreedyResult)
    # b (60) does not fit GPU 0 after a: it is split, and its tensor goes to GPU 1 (the plan's cleaning
    # then writes "b"; the fill's own result names what it placed)
    assert result.assigned == {"a": 0, "b.w": 1}
    assert result.order == ["a", "b.w"]
    assert result.used == {0: 60, 1: 60, "disk": 0}


def _calls(fn) -> int:
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def _many_ties(n: int) -> ModelSizes:
    """``n`` top-level modules, each tied to one of ``n`` more (a scan of the work list per unit is n^2)."""
    tensors = {f"b{i}.w": 10 for i in range(n)}
    tensors.update({f"h{i}.w": 10 for i in range(n)})
    return sizes(tensors, tied=[(f"b{i}.w", f"h{i}.w") for i in range(n)])


def test_the_fill_is_linear_in_units_with_many_ties():
    def work(n):
        return _calls(lambda: plan_device_map(_many_ties(n), {0: 6 * n, "cpu": 10**9}, strategy="sequential"))

    small, large = work(100), work(400)
    assert large <= 4.6 * small, f"4x the tied units made {large / small:.1f}x the calls"
    result = plan_device_map(_many_ties(4), {0: 35, "cpu": 10**9}, strategy="sequential")
    # each b_i pulls its h_i (weighing 0, the tie) right away. GPU 0 keeps 10 free to bring in what lands
    # on the CPU, so 25 are left: b0 h0 b1 h1 (20) there, b2 h2 b3 h3 on the CPU
    assert list(result.device_map.items()) == [("b0", 0), ("h0", 0), ("b1", 0), ("h1", 0), ("b2", "cpu"),
                                               ("h2", "cpu"), ("b3", "cpu"), ("h3", "cpu")]
    assert result.reserved == {0: 10}


# --------------------------------------------------------------------------- edge cases, by hand


def test_a_first_unit_larger_than_every_gpu_goes_on_and_the_walk_never_goes_back():
    # big.w (500) fits neither GPU: the CPU takes it, and small.w (10) follows it there;
    # GPU 0 keeps room for the largest module brought in from the CPU (500), so nothing is left for it
    result = plan_device_map(sizes({"big.w": 500, "small.w": 10}), {0: 100, 1: 200, "cpu": 1000},
                             strategy="sequential")
    assert result.device_map == {"": "cpu"}
    assert result.main_device == 0 and result.reserved == {0: 500} and result.used == {"cpu": 510}


def test_a_first_unit_larger_than_every_device_and_a_limited_disk_is_an_error_naming_it():
    with pytest.raises(DeviceMapError, match=r"big\.w \(500 bytes\) has no room left even on disk"):
        plan_device_map(sizes({"big.w": 500, "small.w": 10}), {0: 100, "cpu": 300, "disk": 400})


def test_a_no_split_unit_larger_than_every_gpu_stays_whole_on_the_cpu():
    model_sizes = sizes({"big.a": 300, "big.b": 300, "tail.w": 10}, classes={"big": "Block"})
    result = plan_device_map(model_sizes, {0: 100, 1: 100, "cpu": 2000}, no_split_module_classes=["Block"])
    assert result.device_map == {"": "cpu"} and result.reserved == {0: 600}


def test_a_tied_partner_that_does_not_fit_is_split_so_its_tied_tensor_comes_along():
    # embed.w ~ head.w. embed (40) + head (40 + 70, the tied 40 counted once: 70) = 110 > 100, so head is
    # split: embed + head.w (0) go to GPU 0, then mid (50) fits there too, and head.big (70) goes to GPU 1
    tensors = {"embed.w": 40, "mid.w": 50, "head.w": 40, "head.big": 70}
    result = plan_device_map(sizes(tensors, tied=[("embed.w", "head.w")]), {0: 100, 1: 1000}, strategy="sequential")
    assert list(result.device_map.items()) == [("embed", 0), ("head.w", 0), ("mid", 0), ("head.big", 1)]
    assert result.used == {0: 90, 1: 70} and result.reserved == {}


def test_a_no_split_tied_partner_pulls_the_unit_to_the_next_device():
    # as above, but head is no-split: embed + head (110) fit GPU 0 in no way, so both go to GPU 1 together
    tensors = {"embed.w": 40, "mid.w": 50, "head.w": 40, "head.big": 70}
    model_sizes = sizes(tensors, classes={"head": "Block"}, tied=[("embed.w", "head.w")])
    result = plan_device_map(model_sizes, {0: 100, 1: 1000}, no_split_module_classes=["Block"], strategy="sequential")
    assert result.device_map == {"": 1} and result.used == {1: 160}


def test_ties_pull_transitively():
    # a.w ~ c.w and c.x ~ e.w: placing a brings c (10: c.w weighs 0), which brings e (0); b and d then spill
    tensors = {"a.w": 30, "b.w": 30, "c.w": 10, "c.x": 10, "d.w": 30, "e.w": 10}
    result = plan_device_map(sizes(tensors, tied=[("a.w", "c.w"), ("c.x", "e.w")]), {0: 45, 1: 1000},
                             strategy="sequential")
    assert list(result.device_map.items()) == [("a", 0), ("c", 0), ("e", 0), ("b", 1), ("d", 1)]
    assert result.used == {0: 40, 1: 60}
