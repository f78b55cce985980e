"""Crash safety of ``save_pretrained`` over an existing checkpoint.

Kills: a child process builds a GPT-2 model and saves version after version
of it over the checkpoint (every tensor filled with the version number, the
config carrying it too, the layout cycling between sharded and single-file so
stale files must go); the test SIGKILLs it at a random moment and then loads
the folder with ``GPT2LMHeadModel.from_pretrained``: every tensor must hold
one version, the config the same one, and that version must be the last one
saved or the one being saved (never a mix, never a missing file). The default
run does 8 trials on ~20 MB; ``-m slow`` does 100 on ~315 MB and records the
figures in ``benchmarks/results/reliability.json``.

Full disks: a child saving under ``RLIMIT_FSIZE`` (``EFBIG``) or onto a small
tmpfs in a private mount namespace (``ENOSPC``) gets a ``SaveError``, and the
old checkpoint is untouched, byte for byte, and still loads.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from pretrained import GPT2Config, GPT2LMHeadModel
from pretrained.storage import resolve_checkpoint
from reliability_support import child_env, record, require_folder_exchange, run_child, spawn, temp_leftovers

SMALL = dict(n_embd=256, n_layer=6, shard="4MB", shard2="7MB")      # ~20 MB
LARGE = dict(n_embd=768, n_layer=11, shard="64MB", shard2="100MB")  # ~315 MB


def gpt2(n_embd: int, n_layer: int, version: int) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=8, vocab_size=1000, n_positions=64))
    fill(model, version)
    return model


def fill(model, version: int) -> None:
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.fill_(version)
    model.config.ckpt_version = version


SAVER = """
    import json, sys, torch
    from pretrained import GPT2Config, GPT2LMHeadModel
    torch.set_num_threads(1)
    folder, n_embd, n_layer, shard, shard2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=8, vocab_size=1000, n_positions=64))
    with open(f"{folder}/config.json") as f:
        version = json.load(f)["ckpt_version"]
    layouts = [dict(max_shard_size=shard), dict(), dict(max_shard_size=shard2)]
    print("ready", flush=True)
    while True:
        version += 1
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.fill_(version)
        model.config.ckpt_version = version
        print("start", version, flush=True)
        model.save_pretrained(folder, **layouts[version % 3])
        print("saved", version, flush=True)
"""


def loaded_version(folder) -> int:
    """Load through from_pretrained; the one version every tensor (and the config) holds."""
    model = GPT2LMHeadModel.from_pretrained(folder)
    values = set()
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            values.update(torch.unique(tensor).tolist())
    assert len(values) == 1, f"tensors of several versions: {sorted(values)}"
    version = int(values.pop())
    assert model.config.ckpt_version == version, "config.json and weights from different versions"
    resolved = resolve_checkpoint(folder)
    weights = sorted(name for name in os.listdir(folder) if name.startswith("model"))
    expected = sorted(os.path.basename(f) for f in resolved.files)
    expected += [os.path.basename(resolved.index_file)] if resolved.index_file else []
    assert weights == sorted(expected), f"stray weights files: {weights} vs {expected}"
    return version


def kill_trials(tmp_path, size: dict, trials: int, seed: int) -> dict:
    require_folder_exchange(tmp_path)
    folder = tmp_path / "ckpt"
    start = time.perf_counter()
    gpt2(size["n_embd"], size["n_layer"], 1).save_pretrained(folder, max_shard_size=size["shard"])
    save_seconds = time.perf_counter() - start
    rng = random.Random(seed)
    counts = collections.Counter()
    version = 1
    leftovers_seen = 0
    for _ in range(trials):
        child = spawn(SAVER, str(folder), str(size["n_embd"]), str(size["n_layer"]), size["shard"], size["shard2"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
            time.sleep(rng.uniform(0.0, 2.5 * save_seconds + 0.05))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
            lines = child.stdout.read().split("\n")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        started = [int(line.split()[1]) for line in lines if line.startswith("start")]
        saved = [int(line.split()[1]) for line in lines if line.startswith("saved")]
        now = loaded_version(folder)
        last_saved = saved[-1] if saved else version
        last_started = started[-1] if started else version
        assert now in (last_saved, last_started), f"loaded {now}; saved {saved}, started {started}"
        mid_save = bool(started) and (not saved or started[-1] > saved[-1])
        if mid_save:
            counts["killed mid-save: loaded the previous version" if now == last_saved
                   else "killed mid-save: loaded the version being saved"] += 1
        else:
            counts["killed between saves"] += 1
        counts["saves completed by the children"] += len(saved)
        leftovers_seen += bool(temp_leftovers(tmp_path))
        version = now
    fill_model = gpt2(size["n_embd"], size["n_layer"], version + 1)
    fill_model.save_pretrained(folder)  # the next save clears what killed saves left behind
    assert temp_leftovers(tmp_path) == []
    assert loaded_version(folder) == version + 1
    return {"trials": trials, "checkpoint_mb": round(sum(f.stat().st_size for f in folder.iterdir()) / 1e6, 1),
            "save_s": round(save_seconds, 2), "loads_all_one_version": trials, **counts,
            "trials_leaving_a_temp_folder": leftovers_seen}


MID_SAVE = ("killed mid-save: loaded the previous version", "killed mid-save: loaded the version being saved")


def test_sigkill_during_save_pretrained_leaves_old_or_new(tmp_path):
    figures = kill_trials(tmp_path, SMALL, trials=8, seed=2024)
    record("crash.sigkill", figures)
    assert sum(figures.get(key, 0) for key in MID_SAVE) >= 4, figures  # most kills land inside a save


@pytest.mark.slow
def test_sigkill_during_save_pretrained_leaves_old_or_new_long(tmp_path):
    figures = kill_trials(tmp_path, LARGE, trials=100, seed=7)
    record("crash.sigkill.long", figures, long_form=True)
    assert sum(figures.get(key, 0) for key in MID_SAVE) >= 50, figures
    assert all(figures.get(key, 0) > 0 for key in MID_SAVE), figures  # both sides of the swap were hit


# --------------------------------------------------------------------------- full disks

FULL_DISK = """
    import json, resource, signal, sys, torch
    from pretrained import GPT2Config, GPT2LMHeadModel
    from pretrained.errors import SaveError
    folder, limit, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    model = GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=256, n_head=8, vocab_size=1000, n_positions=64))
    with torch.no_grad():
        for t in model.parameters():
            t.fill_(2.0)
    model.config.ckpt_version = 2
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        model.save_pretrained(folder, **options)
        print(json.dumps({"result": "saved"}))
    except SaveError as exc:
        cause = exc.__cause__
        print(json.dumps({"result": "SaveError", "cause": type(cause).__name__, "errno": getattr(cause, "errno", None),
                          "message": str(exc)[:500]}))
"""


def snapshot(folder) -> dict:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("limit,options", [
    (1_000_000, {}),                               # the single file cannot be written
    (1_000_000, {"max_shard_size": "4MB"}),        # no shard fits
    (2_500_000, {"max_shard_size": "4MB"}),        # the first shards fit, a later one does not
    (900_000, {"max_shard_size": "500KB"}),        # small shards fit, a 1 MB tensor (own shard) does not
], ids=["single", "no-shard-fits", "later-shard-fails", "oversized-tensor"])
def test_file_size_limit_gives_save_error_and_keeps_the_old_checkpoint(tmp_path, limit, options):
    folder = tmp_path / "ckpt"
    gpt2(256, 6, 1).save_pretrained(folder, max_shard_size="4MB")
    before = snapshot(folder)
    result = run_child(FULL_DISK, str(folder), str(limit), json.dumps(options))
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["result"] == "SaveError", outcome
    assert outcome["errno"] == errno.EFBIG and str(folder) in outcome["message"]
    assert snapshot(folder) == before
    assert loaded_version(folder) == 1
    assert temp_leftovers(tmp_path) == []


TMPFS_CHILD = """
    import json, os, sys, torch
    from pretrained import GPT2Config, GPT2LMHeadModel
    from pretrained.errors import SaveError
    folder = sys.argv[1]
    def model(version):
        m = GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=256, n_head=8, vocab_size=1000, n_positions=64))
        with torch.no_grad():
            for t in m.parameters():
                t.fill_(version)
        return m
    model(1).save_pretrained(folder, max_shard_size="4MB")
    before = sorted(os.listdir(folder))
    try:
        model(2).save_pretrained(folder, max_shard_size="4MB")
        out = {"result": "saved"}
    except SaveError as exc:
        out = {"result": "SaveError", "errno": getattr(exc.__cause__, "errno", None)}
    loaded = GPT2LMHeadModel.from_pretrained(folder)
    out["versions"] = sorted({v for t in loaded.state_dict().values() for v in torch.unique(t).tolist()})
    out["same_files"] = sorted(os.listdir(folder)) == before
    out["entries_in_parent"] = sorted(os.listdir(os.path.dirname(folder)))
    print(json.dumps(out))
"""


def test_disk_full_gives_save_error_and_keeps_the_old_checkpoint(tmp_path):
    """ENOSPC for real: a 30 MB tmpfs in a private mount namespace (skipped where unshare is not allowed)."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user and mount namespaces are not available here")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(TMPFS_CHILD))
    command = f"mount -t tmpfs -o size=30m tmpfs {mount} && cd {mount} && {sys.executable} {script} {mount}/ckpt"
    result = subprocess.run([unshare, "-Urm", "sh", "-c", command], capture_output=True, text=True,
                            env=child_env(), timeout=300)
    if result.returncode != 0 and "mount" in result.stderr and "ckpt" not in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"result": "SaveError", "errno": errno.ENOSPC, "versions": [1.0], "same_files": True,
                       "entries_in_parent": ["ckpt"]}, outcome
