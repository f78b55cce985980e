"""save_checkpoint: layout, index bytes, stale files, atomicity under kills and full disks."""

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

import pretrained.storage.atomic as atomic
import pretrained.storage.writer as writer
from pretrained.errors import SaveError
from pretrained.storage import Checkpoint, resolve_checkpoint, save_checkpoint
from pretrained.storage.safetensors import read_header

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def state(n=6, value=None, shape=(4, 4)):
    torch.manual_seed(0)
    return {f"layer.{i}.weight": (torch.full(shape, float(value)) if value is not None else torch.randn(*shape))
            for i in range(n)}


def listing(folder):
    return sorted(os.listdir(folder))


def load_all(folder, **kwargs):
    with Checkpoint(resolve_checkpoint(folder, **kwargs)) as ckpt:
        return {name: ckpt.get(name).clone() for name in ckpt.keys()}


def temp_leftovers(parent):
    return [name for name in os.listdir(parent) if ".pretrained-tmp-" in name]


@pytest.fixture(params=["exchange", "fallback"])
def swap_mode(request, monkeypatch):
    """Run a test with renameat2(RENAME_EXCHANGE) and with the one-by-one fallback."""
    if request.param == "fallback":
        def unsupported(first, second):
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE not supported (simulated)")

        monkeypatch.setattr(atomic, "_exchange", unsupported)
    return request.param


def exchange_supported(folder):
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        writer._exchange(str(a), str(b))
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- layout and contents


def test_single_file_loads_in_reference_library(tmp_path):
    sd = state()
    written = save_checkpoint(tmp_path / "ck", sd, metadata={"producer": "test"})
    assert written == ["model.safetensors"]
    assert listing(tmp_path / "ck") == ["model.safetensors"]
    loaded = load_file(str(tmp_path / "ck" / "model.safetensors"))
    for name in sd:
        torch.testing.assert_close(loaded[name], sd[name])
    assert read_header(tmp_path / "ck" / "model.safetensors").metadata == {"format": "pt", "producer": "test"}


def test_sharded_index_bytes(tmp_path):
    sd = state(5)  # 64 bytes each
    written = save_checkpoint(tmp_path, sd, max_shard_size=130, index_metadata={"total_parameters": 80})
    files = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert written == files + ["model.safetensors.index.json"]
    expected = {
        "metadata": {"total_parameters": 80, "total_size": 320},
        "weight_map": {
            "layer.0.weight": files[0], "layer.1.weight": files[0],
            "layer.2.weight": files[1], "layer.3.weight": files[1],
            "layer.4.weight": files[2],
        },
    }
    text = (tmp_path / "model.safetensors.index.json").read_text()
    assert text == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    for file in files:
        assert read_header(tmp_path / file).metadata == {"format": "pt"}
        load_file(str(tmp_path / file))


def test_checksums_only_for_sharded(tmp_path):
    save_checkpoint(tmp_path / "a", state(4), max_shard_size=64, checksums=True)
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    sums = index["metadata"]["checksums"]
    assert sorted(sums) == sorted(set(index["weight_map"].values()))
    for file, digest in sums.items():
        assert hashlib.sha256((tmp_path / "a" / file).read_bytes()).hexdigest() == digest
    save_checkpoint(tmp_path / "b", state(4), checksums=True)
    assert listing(tmp_path / "b") == ["model.safetensors"]


def test_bin_with_variant_and_save_function(tmp_path):
    calls = []

    def saver(obj, path):
        calls.append(os.path.basename(path))
        torch.save(obj, path)

    sd = state(4)
    written = save_checkpoint(tmp_path, sd, safe_serialization=False, variant="fp16", max_shard_size=128,
                              save_function=saver)
    assert calls == ["pytorch_model.fp16-00001-of-00002.bin", "pytorch_model.fp16-00002-of-00002.bin"]
    assert written == calls + ["pytorch_model.bin.index.fp16.json"]
    loaded = load_all(tmp_path, variant="fp16")
    for name in sd:
        torch.testing.assert_close(loaded[name], sd[name])


def test_extra_files(tmp_path):
    written = save_checkpoint(tmp_path / "ck", state(1), extra_files={
        "config.json": '{"a": 1}\n', "custom_code.py": b"X = 1\n", "nested/dir/file.txt": "deep"})
    assert written == ["model.safetensors", "config.json", "custom_code.py", "nested/dir/file.txt"]
    assert (tmp_path / "ck" / "config.json").read_text() == '{"a": 1}\n'
    assert (tmp_path / "ck" / "custom_code.py").read_bytes() == b"X = 1\n"
    assert (tmp_path / "ck" / "nested" / "dir" / "file.txt").read_text() == "deep"


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../b", "a\\b", "", "model.safetensors",
                                  "model-00001-of-00002.safetensors", "model.safetensors.index.json"])
def test_bad_extra_file_names(tmp_path, name):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "ck", state(1), extra_files={name: "x"})
    assert not (tmp_path / "ck").exists()


def test_empty_state_dict(tmp_path):
    assert save_checkpoint(tmp_path, {}) == ["model.safetensors"]
    assert load_file(str(tmp_path / "model.safetensors")) == {}


def test_non_contiguous_and_disjoint_views_are_saved(tmp_path):
    base = torch.arange(20.0)
    sd = {"first": base[:10], "second": base[10:], "t": torch.arange(6.0).reshape(2, 3).t()}
    save_checkpoint(tmp_path, sd)
    loaded = load_file(str(tmp_path / "model.safetensors"))
    for name, tensor in sd.items():
        torch.testing.assert_close(loaded[name], tensor.contiguous())


def test_aliasing_tensors_are_refused(tmp_path):
    weight = torch.randn(4, 4)
    with pytest.raises(ValueError, match="share memory"):
        save_checkpoint(tmp_path / "a", {"embed.weight": weight, "lm_head.weight": weight})
    base = torch.arange(10.0)
    with pytest.raises(ValueError, match="'x' and 'y'"):
        save_checkpoint(tmp_path / "b", {"x": base[:6], "y": base[4:]})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # pickle keeps the sharing, so .bin may alias
    save_checkpoint(tmp_path / "c", {"embed.weight": weight, "lm_head.weight": weight}, safe_serialization=False)


def test_bad_state_dicts(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, {"a": 3})
    with pytest.raises(ValueError, match="meta"):
        save_checkpoint(tmp_path, {"a": torch.empty(2, device="meta")})
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(tmp_path, {"a": torch.ones(1)}, metadata={"n": 1})


def test_target_is_a_file(tmp_path):
    path = tmp_path / "model"
    path.write_text("not a folder")
    with pytest.raises(SaveError, match=str(path)):
        save_checkpoint(path, state(1))
    assert path.read_text() == "not a folder"


def test_symlinked_folder_stays_a_symlink(tmp_path):
    real = tmp_path / "real"
    save_checkpoint(real, state(2, value=1))
    link = tmp_path / "link"
    link.symlink_to(real)
    save_checkpoint(link, state(2, value=2))
    assert link.is_symlink()
    assert load_all(real)["layer.0.weight"][0, 0].item() == 2


def test_saving_into_the_working_directory(tmp_path, monkeypatch, swap_mode):
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(1, value=1), extra_files={"config.json": "old"})
    monkeypatch.chdir(folder)
    save_checkpoint(".", state(1, value=2), extra_files={"config.json": "new"})
    assert os.getcwd() == str(folder)
    assert open("config.json").read() == "new"
    assert load_all(".")["layer.0.weight"][0, 0].item() == 2


def test_folder_permissions_are_kept(tmp_path):
    save_checkpoint(tmp_path / "ck", state(1))
    os.chmod(tmp_path / "ck", 0o750)
    save_checkpoint(tmp_path / "ck", state(1))
    assert oct(os.stat(tmp_path / "ck").st_mode & 0o777) == oct(0o750)


# ----------------------------------------------------------------------------- stale files


def test_exchange_is_used_and_unrelated_files_are_linked(tmp_path, monkeypatch):
    if not exchange_supported(tmp_path):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(2))
    (folder / "tokenizer.json").write_text("tok")
    inode = os.stat(folder / "tokenizer.json").st_ino
    calls = []
    real = atomic._exchange
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: (calls.append((a, b)), real(a, b)))
    save_checkpoint(folder, state(2))
    assert len(calls) == 1 and calls[0][1] == str(folder)
    assert os.stat(folder / "tokenizer.json").st_ino == inode  # hard link, not a copy
    assert temp_leftovers(tmp_path) == []


def test_single_to_sharded_and_back(tmp_path, swap_mode):
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(4, value=1), extra_files={"config.json": "{}"})
    (folder / "tokenizer.json").write_text("tok")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("keep")
    # the other format in another variant (the other format of the same variant is replaced:
    # tests/test_storage_other_format.py)
    save_checkpoint(folder, state(4, value=2), safe_serialization=False, variant="v2")
    save_checkpoint(folder, state(4, value=3), variant="fp16")  # another variant
    save_checkpoint(folder, state(4, value=4), max_shard_size=64)  # single -> 4 shards
    assert listing(folder) == [
        "config.json",
        "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
        "model.fp16.safetensors", "model.safetensors.index.json",
        "pytorch_model.v2.bin", "sub", "tokenizer.json",
    ]
    assert load_all(folder)["layer.0.weight"][0, 0].item() == 4
    save_checkpoint(folder, state(4, value=5), max_shard_size=128)  # 4 shards -> 2 shards
    assert [f for f in listing(folder) if f.startswith("model-")] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_checkpoint(folder, state(4, value=6))  # sharded -> single: shards and index removed
    assert listing(folder) == ["config.json", "model.fp16.safetensors", "model.safetensors",
                               "pytorch_model.v2.bin", "sub", "tokenizer.json"]
    assert load_all(folder)["layer.0.weight"][0, 0].item() == 6
    assert load_all(folder, variant="fp16")["layer.0.weight"][0, 0].item() == 3
    assert load_all(folder, variant="v2", use_safetensors=False)["layer.0.weight"][0, 0].item() == 2
    assert (folder / "sub" / "notes.txt").read_text() == "keep"
    assert (folder / "tokenizer.json").read_text() == "tok"
    assert temp_leftovers(tmp_path) == []


def test_extra_files_replace_old_ones_without_touching_the_old_inode(tmp_path, swap_mode):
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(1), extra_files={"config.json": "old", "code/a.py": "old a", "code/b.py": "b"})
    old_config = open(folder / "config.json")  # an open handle on the old file keeps its content
    save_checkpoint(folder, state(1), extra_files={"config.json": "new", "code/a.py": "new a"})
    assert old_config.read() == "old"
    old_config.close()
    assert (folder / "config.json").read_text() == "new"
    assert (folder / "code" / "a.py").read_text() == "new a"
    assert (folder / "code" / "b.py").read_text() == "b"


def test_fallback_writes_the_commit_file_last(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    moved = []
    real = atomic._move_into
    monkeypatch.setattr(atomic, "_move_into",
                        lambda src, dst, sync: (moved.append(os.path.basename(dst)), real(src, dst, sync)))
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(4))  # new folder: plain rename, nothing moved
    assert moved == []
    save_checkpoint(folder, state(4), max_shard_size=64, extra_files={"config.json": "{}"})
    assert moved[-1] == "model.safetensors.index.json" and len(moved) == 6
    moved.clear()
    save_checkpoint(folder, state(4))
    assert moved == ["model.safetensors"]
    assert listing(folder) == ["config.json", "model.safetensors"]


# ----------------------------------------------------------------------------- failures


def test_failure_leaves_old_checkpoint_and_no_temp(tmp_path, swap_mode):
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(4, value=1), max_shard_size=64, extra_files={"config.json": "old"})
    before = {name: (folder / name).read_bytes() for name in listing(folder)}

    def exploding(obj, path):
        if "00002" in path:
            raise RuntimeError("disk on fire")
        torch.save(obj, path)

    with pytest.raises(SaveError, match="disk on fire") as info:
        save_checkpoint(folder, state(4, value=2), max_shard_size=64, safe_serialization=False,
                        save_function=exploding, extra_files={"config.json": "new"})
    assert isinstance(info.value.__cause__, RuntimeError)
    assert {name: (folder / name).read_bytes() for name in listing(folder)} == before
    assert temp_leftovers(tmp_path) == []


def test_keyboard_interrupt_cleans_up_and_propagates(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(2, value=1))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "save_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, state(2, value=2))
    assert temp_leftovers(tmp_path) == []
    assert load_all(folder)["layer.0.weight"][0, 0].item() == 1


def test_leftovers_of_dead_saves_are_removed(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(folder, state(1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ck.pretrained-tmp-{dead.pid}-0000abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    alive = tmp_path / f".ck.pretrained-tmp-{os.getppid()}-0000abcd"  # a live process: maybe saving now
    alive.mkdir()
    other = tmp_path / f".other.pretrained-tmp-{dead.pid}-0000abcd"  # another folder's save
    other.mkdir()
    save_checkpoint(folder, state(1))
    assert not stale.exists()
    assert alive.exists() and other.exists()


def run_child(script, timeout=120):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_file_size_limit_gives_save_error_and_keeps_old(tmp_path):
    folder = tmp_path / "ck"
    old = state(4, value=1, shape=(256, 256))  # 256 KiB per tensor
    save_checkpoint(folder, old, max_shard_size="300KB", extra_files={"config.json": "old"})
    before = {name: (folder / name).read_bytes() for name in listing(folder)}
    result = run_child(f"""
        import resource, signal, torch
        from pretrained.errors import SaveError
        from pretrained.storage import save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        sd = {{f"layer.{{i}}.weight": torch.full((256, 256), 2.0) for i in range(4)}}
        try:
            save_checkpoint({str(folder)!r}, sd, extra_files={{"config.json": "new"}})
        except SaveError as exc:
            print("SaveError", type(exc.__cause__).__name__, getattr(exc.__cause__, "errno", None))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SaveError", "OSError", str(errno.EFBIG)]
    assert {name: (folder / name).read_bytes() for name in listing(folder)} == before
    assert temp_leftovers(tmp_path) == []


KILL_CHILD = """
    import json, sys, torch
    from pretrained.storage import save_checkpoint
    folder = sys.argv[1]
    layouts = [dict(max_shard_size="4MB"), dict(), dict(max_shard_size="9MB")]
    print("ready", flush=True)
    version = 1
    while True:
        version += 1
        sd = {f"layer.{i}.weight": torch.full((512, 1024), float(version)) for i in range(6)}
        save_checkpoint(folder, sd, extra_files={"config.json": json.dumps({"version": version})},
                        **layouts[version % 3])
"""


def check_one_version(folder):
    tensors = load_all(folder)
    assert sorted(tensors) == [f"layer.{i}.weight" for i in range(6)]
    versions = {tensor.unique().tolist()[0] for tensor in tensors.values()}
    assert all(tensor.unique().numel() == 1 for tensor in tensors.values())
    assert len(versions) == 1, f"mixed versions {versions}"
    config = json.loads((folder / "config.json").read_text())
    assert config["version"] == versions.pop()


def test_sigkill_at_random_moments_leaves_old_or_new(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("this file system has no RENAME_EXCHANGE; the fallback is not atomic")
    folder = tmp_path / "ck"
    save_checkpoint(folder, {f"layer.{i}.weight": torch.full((512, 1024), 1.0) for i in range(6)},
                    extra_files={"config.json": json.dumps({"version": 1})})
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(1234)
    seen_versions = set()
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILL_CHILD), str(folder)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.8))
        child.send_signal(signal.SIGKILL)
        child.wait()
        check_one_version(folder)
        seen_versions.add(json.loads((folder / "config.json").read_text())["version"])
        child.stdout.close(), child.stderr.close()
    assert seen_versions != {1}, "the child never completed a save; slow machine?"
    save_checkpoint(folder, state(1))
    assert temp_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- parity with Transformers


@pytest.fixture(scope="module")
def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("max_shard_size", ["20KB", "50GB"])
def test_layout_matches_transformers(tmp_path, tiny_gpt2, max_shard_size):
    ref, ours = tmp_path / "ref", tmp_path / "ours"
    tiny_gpt2.save_pretrained(ref, max_shard_size=max_shard_size)
    sd = {k: v for k, v in tiny_gpt2.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    extra = {"config.json": (ref / "config.json").read_text()}
    save_checkpoint(ours, sd, max_shard_size=max_shard_size, extra_files=extra,
                    index_metadata={"total_parameters": tiny_gpt2.num_parameters()})
    weights = [name for name in listing(ref) if name.startswith("model")]
    assert [name for name in listing(ours) if name.startswith("model")] == weights
    if max_shard_size == "20KB":
        assert len(weights) >= 4  # >= 3 shards + index
    for name in weights:
        assert (ours / name).read_bytes() == (ref / name).read_bytes(), name


def test_transformers_loads_ours_and_we_load_theirs(tmp_path, tiny_gpt2):
    transformers = pytest.importorskip("transformers")
    ref, ours = tmp_path / "ref", tmp_path / "ours"
    tiny_gpt2.save_pretrained(ref, max_shard_size="30KB")
    sd = {k: v for k, v in tiny_gpt2.state_dict().items() if k != "lm_head.weight"}
    save_checkpoint(ours, sd, max_shard_size="30KB", extra_files={"config.json": (ref / "config.json").read_text()})
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(ours).eval()
    ids = torch.tensor([[1, 5, 9, 42]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, tiny_gpt2(ids).logits)
    theirs = load_all(ref)
    for name, tensor in sd.items():
        torch.testing.assert_close(theirs[name], tensor)


def fsync_spy(monkeypatch):
    """Record the path of every fsync'ed descriptor; fail those whose path is in ``spy.fail``."""
    synced, real_fsync = [], os.fsync

    def spy(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if any(path.endswith(name) for name in spy.fail):
            raise OSError(errno.EIO, "Input/output error", path)
        synced.append(path)
        real_fsync(fd)

    spy.fail, spy.synced = (), synced
    monkeypatch.setattr(os, "fsync", spy)
    return spy


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_durable_save_fsyncs_every_file_and_folder_and_a_plain_one_none(tmp_path, monkeypatch):
    spy = fsync_spy(monkeypatch)
    save_checkpoint(tmp_path / "plain", state(), max_shard_size=150, extra_files={"config.json": "{}"})
    assert spy.synced == []
    written = save_checkpoint(tmp_path / "durable", state(), max_shard_size=150, extra_files={"config.json": "{}"},
                              durable=True)
    synced_names = {os.path.basename(p.split(".pretrained-tmp-")[-1]) if "/." in p else os.path.basename(p)
                    for p in spy.synced}
    assert len(written) > 4 and set(written) <= synced_names  # shards, index, config.json
    assert str(tmp_path) in spy.synced  # the parent folder, after the new one was renamed in
    assert load_all(tmp_path / "durable").keys() == state().keys()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_failed_fsync_fails_the_durable_save_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, state(value=1), max_shard_size=150)
    spy = fsync_spy(monkeypatch)
    spy.fail = ("model-00002-of-00003.safetensors",)
    with pytest.raises(SaveError, match="Input/output error"):
        save_checkpoint(tmp_path, state(value=2), max_shard_size=150, durable=True)
    assert all(bool((t == 1).all()) for t in load_all(tmp_path).values())
    assert not [n for n in os.listdir(tmp_path.parent) if ".pretrained-tmp-" in n]
