"""Loading while another process saves over the checkpoint: every load sees one complete version.

How the loader makes that true (``pretrained.storage.folder`` / ``resolve`` / ``checkpoint``):
the folder is opened once (``O_DIRECTORY``) and the index and every weights
file are opened relative to that descriptor, so they all come from one
directory, i.e. one version (saves swap whole directories); descriptors are
held until the tensors are mapped, and mappings outlive the writer deleting
the files. If the folder changed between resolution and opening (the index
differs, a file is gone), resolution starts again, a bounded number of times.

The unit tests force each race at the exact moment it matters; the process
test runs 4 loader processes in a loop against a saver process that writes a
new version (every tensor = the version number, layouts alternating between
sharded and single-file) as fast as it can. Default: ~4 s of contention;
``-m slow``: 60 s, recorded in ``benchmarks/results/reliability.json``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time

import pytest
import torch

import pretrained.storage.checkpoint as checkpoint_module
import pretrained.storage.resolve as resolve_module
from pretrained import GPT2Config, GPT2LMHeadModel
from pretrained.errors import PretrainedError
from pretrained.storage import Checkpoint, resolve_checkpoint, save_checkpoint
from reliability_support import record, require_folder_exchange, spawn

LAYOUTS = [dict(max_shard_size=600), dict(), dict(max_shard_size=1000)]


def version_state(version: int) -> dict:
    return {f"layer.{i}.weight": torch.full((8, 8), float(version)) for i in range(6)}


def save_version(folder, version: int, layout: int) -> None:
    save_checkpoint(folder, version_state(version), extra_files={"config.json": json.dumps({"v": version})},
                    **LAYOUTS[layout % len(LAYOUTS)])


def versions_in(checkpoint: Checkpoint) -> set:
    assert sorted(checkpoint.keys()) == sorted(version_state(0))
    return {v for name in checkpoint.keys() for v in torch.unique(checkpoint.get(name)).tolist()}


def test_an_open_checkpoint_keeps_its_version_after_a_save(tmp_path):
    save_version(tmp_path / "ck", 1, 0)
    with Checkpoint(resolve_checkpoint(tmp_path / "ck")) as checkpoint:
        save_version(tmp_path / "ck", 2, 1)  # swaps the folder and deletes the old files
        save_version(tmp_path / "ck", 3, 2)
        assert versions_in(checkpoint) == {1.0}
    with Checkpoint(resolve_checkpoint(tmp_path / "ck")) as checkpoint:
        assert versions_in(checkpoint) == {3.0}


@pytest.mark.parametrize("layout", [0, 1, 2], ids=["same-layout", "single-file", "other-shards"])
def test_a_save_between_resolving_and_opening_is_resolved_again(tmp_path, layout):
    save_version(tmp_path / "ck", 1, 0)
    resolved = resolve_checkpoint(tmp_path / "ck")
    save_version(tmp_path / "ck", 2, layout)
    with Checkpoint(resolved) as checkpoint:
        assert versions_in(checkpoint) == {2.0}
        assert checkpoint.resolved.is_sharded == (layout != 1)


def test_without_the_request_a_vanished_file_is_a_documented_error(tmp_path):
    save_version(tmp_path / "ck", 1, 0)
    resolved = dataclasses.replace(resolve_checkpoint(tmp_path / "ck"), request=None)
    save_version(tmp_path / "ck", 2, 1)
    with pytest.raises(PretrainedError, match="disappeared|changing"):
        Checkpoint(resolved)


def test_a_save_in_the_middle_of_resolution_restarts_it(tmp_path, monkeypatch):
    """The folder is swapped (and the old one deleted) right after the index was parsed."""
    save_version(tmp_path / "ck", 1, 0)
    real_parse = resolve_module.parse_index
    saves = []

    def parse_then_save(*args, **kwargs):
        index = real_parse(*args, **kwargs)
        if not saves:
            saves.append(2)
            save_version(tmp_path / "ck", 2, 1)  # the single-file layout: the parsed shards are gone
        return index

    monkeypatch.setattr(resolve_module, "parse_index", parse_then_save)
    resolved = resolve_checkpoint(tmp_path / "ck")
    assert not resolved.is_sharded and saves == [2]
    with Checkpoint(resolved) as checkpoint:
        assert versions_in(checkpoint) == {2.0}


@pytest.mark.parametrize("where", ["index re-read", "header reads"])
def test_a_save_while_the_checkpoint_opens_gives_one_version(tmp_path, monkeypatch, where):
    save_version(tmp_path / "ck", 1, 0)
    resolved = resolve_checkpoint(tmp_path / "ck")
    name = "parse_index" if where == "index re-read" else "read_header"
    real = getattr(checkpoint_module, name)
    saves = []

    def then_save(*args, **kwargs):
        result = real(*args, **kwargs)
        if not saves:
            saves.append(2)
            save_version(tmp_path / "ck", 2, 0)
        return result

    monkeypatch.setattr(checkpoint_module, name, then_save)
    with Checkpoint(resolved) as checkpoint:
        seen = versions_in(checkpoint)
    # the index re-read sees v1, its shards are deleted before they are opened: resolved again -> v2;
    # during the header reads every file is already open: v1 throughout
    assert seen == ({2.0} if where == "index re-read" else {1.0}) and saves == [2]


def test_a_folder_that_keeps_changing_gives_up_with_a_documented_error(tmp_path, monkeypatch):
    save_version(tmp_path / "ck", 1, 0)
    real = checkpoint_module.parse_index
    versions = iter(range(2, 100))

    def always_save(*args, **kwargs):
        result = real(*args, **kwargs)
        save_version(tmp_path / "ck", next(versions), 0)
        return result

    monkeypatch.setattr(checkpoint_module, "parse_index", always_save)
    with pytest.raises(PretrainedError, match="disappeared|changing"):
        Checkpoint(resolve_checkpoint(tmp_path / "ck"))
    assert next(versions) == 2 + checkpoint_module._OPEN_ATTEMPTS


# --------------------------------------------------------------------------- processes

TINY = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=32)

CONCURRENT_SAVER = """
    import json, sys, time, torch
    from pretrained import GPT2Config, GPT2LMHeadModel
    torch.set_num_threads(1)
    folder, seconds, config = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
    model = GPT2LMHeadModel(GPT2Config(**config))
    layouts = [dict(max_shard_size=200_000), dict(), dict(max_shard_size=350_000)]
    print("ready", flush=True)
    sys.stdin.readline()
    version, end = 1, time.time() + seconds
    while time.time() < end:
        version += 1
        with torch.no_grad():
            for t in model.parameters():
                t.fill_(version)
        model.config.ckpt_version = version
        model.save_pretrained(folder, **layouts[version % 3])
    print(json.dumps({"saves": version - 1}), flush=True)
"""

CONCURRENT_LOADER = """
    import collections, json, logging, sys, time, torch
    from pretrained import GPT2LMHeadModel
    from pretrained.errors import PretrainedError
    torch.set_num_threads(1)
    folder, seconds = sys.argv[1], float(sys.argv[2])
    retries = [0]

    class CountRetries(logging.Handler):
        def emit(self, record):
            if "again" in record.getMessage():
                retries[0] += 1

    library = logging.getLogger("pretrained")
    library.handlers = [CountRetries()]
    library.setLevel(logging.INFO)
    print("ready", flush=True)
    sys.stdin.readline()
    loads, mixed, config_other, errors = 0, 0, 0, []
    versions = collections.Counter()
    end = time.time() + seconds
    while time.time() < end:
        try:
            model = GPT2LMHeadModel.from_pretrained(folder)
        except PretrainedError as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:400])
            continue
        values = set()
        for tensor in model.state_dict().values():
            values.update(torch.unique(tensor).tolist())
        loads += 1
        if len(values) != 1:
            mixed += 1
            continue
        version = int(values.pop())
        versions[version] += 1
        config_other += model.config.ckpt_version != version
    print(json.dumps({"loads": loads, "mixed": mixed, "errors": errors, "versions": len(versions),
                      "retries": retries[0], "config_from_another_version": config_other}), flush=True)
"""


def run_contention(tmp_path, seconds: float, loaders: int = 4) -> dict:
    require_folder_exchange(tmp_path)
    folder = tmp_path / "ckpt"
    model = GPT2LMHeadModel(GPT2Config(**TINY))
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.fill_(1.0)
    model.config.ckpt_version = 1
    model.save_pretrained(folder, max_shard_size=200_000)
    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    children = [spawn(CONCURRENT_LOADER, str(folder), str(seconds), stderr=open(tmp_path / f"loader{i}.err", "w"),
                      **pipes) for i in range(loaders)]
    children.append(spawn(CONCURRENT_SAVER, str(folder), str(seconds), json.dumps(TINY),
                          stderr=open(tmp_path / "saver.err", "w"), **pipes))
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # go, all at once
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for i, child in enumerate(children):
            out, _ = child.communicate(timeout=seconds + 120)
            name = "saver" if i == loaders else f"loader{i}"
            assert child.returncode == 0, (tmp_path / f"{name}.err").read_text()[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    *loads, saver = results
    total = {key: sum(r[key] for r in loads) for key in ("loads", "mixed", "retries", "config_from_another_version")}
    return {"loader_processes": loaders, "seconds": seconds, "saves": saver["saves"], **total,
            "loads_per_process": [r["loads"] for r in loads], "distinct_versions_per_process": [r["versions"] for r in loads],
            "errors": [e for r in loads for e in r["errors"]]}


def check_contention(figures: dict) -> None:
    assert figures["mixed"] == 0, figures
    assert figures["config_from_another_version"] == 0, figures  # config.json comes from the weights' folder
    assert figures["errors"] == [], figures["errors"][:5]
    assert figures["saves"] >= 10 and all(n >= 5 for n in figures["loads_per_process"]), figures
    assert max(figures["distinct_versions_per_process"]) > 1, figures  # loads really overlapped saves


def test_four_loaders_and_a_saver(tmp_path):
    figures = run_contention(tmp_path, seconds=4)
    record("concurrency", figures)
    check_contention(figures)


@pytest.mark.slow
def test_four_loaders_and_a_saver_long(tmp_path):
    figures = run_contention(tmp_path, seconds=60)
    record("concurrency.long", figures, long_form=True)
    check_contention(figures)
