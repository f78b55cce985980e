"""Resolution of local folders, single files and (cached, offline) Hub repos."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pretrained.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError
from pretrained.storage.resolve import looks_like_repo_id, resolve_checkpoint, resolve_file
from pretrained.storage.safetensors import save_safetensors

SHA = "0123456789abcdef0123456789abcdef01234567"


def write_weights(folder, name, tensors=None):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else {"w": torch.ones(2)}
    if name.endswith(".safetensors"):
        save_safetensors(tensors, folder / name, metadata={"format": "pt"})
    else:
        torch.save(tensors, folder / name)
    return folder / name


def write_index(folder, name, weight_map, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"metadata": {"total_size": 8}, "weight_map": weight_map, **extra}))
    return folder / name


def write_sharded(folder, fmt="safetensors", variant=None):
    ext = ".safetensors" if fmt == "safetensors" else ".bin"
    stem = ("model" if fmt == "safetensors" else "pytorch_model") + (f".{variant}" if variant else "")
    shards = [f"{stem}-00001-of-00002{ext}", f"{stem}-00002-of-00002{ext}"]
    write_weights(folder, shards[0], {"a": torch.ones(1)})
    write_weights(folder, shards[1], {"b": torch.ones(1), "c": torch.ones(1)})
    index = ("model.safetensors.index" if fmt == "safetensors" else "pytorch_model.bin.index")
    index += f".{variant}.json" if variant else ".json"
    write_index(folder, index, {"c": shards[1], "a": shards[0], "b": shards[1]})
    return shards


# ----------------------------------------------------------------------------- local folders


def test_single_safetensors(tmp_path):
    path = write_weights(tmp_path, "model.safetensors")
    resolved = resolve_checkpoint(tmp_path)
    assert resolved.format == "safetensors"
    assert resolved.files == [str(path)]
    assert resolved.folder == str(tmp_path)
    assert resolved.weight_map is None and resolved.index is None


def test_sharded_safetensors(tmp_path):
    shards = write_sharded(tmp_path)
    resolved = resolve_checkpoint(tmp_path)
    assert resolved.format == "safetensors"
    assert resolved.files == [str(tmp_path / s) for s in shards]
    assert resolved.weight_map == {"c": str(tmp_path / shards[1]), "a": str(tmp_path / shards[0]),
                                   "b": str(tmp_path / shards[1])}
    assert resolved.index["metadata"] == {"total_size": 8}
    assert resolved.index_file == str(tmp_path / "model.safetensors.index.json")


def test_variant_names(tmp_path):
    write_weights(tmp_path, "model.safetensors")
    write_sharded(tmp_path, variant="fp16")
    resolved = resolve_checkpoint(tmp_path, variant="fp16")
    assert [os.path.basename(f) for f in resolved.files] == [
        "model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors"]
    assert resolve_checkpoint(tmp_path).files == [str(tmp_path / "model.safetensors")]


def test_resolution_order(tmp_path):
    write_weights(tmp_path, "pytorch_model.bin")
    write_sharded(tmp_path, fmt="bin")
    assert resolve_checkpoint(tmp_path).files == [str(tmp_path / "pytorch_model.bin")]
    write_sharded(tmp_path)
    resolved = resolve_checkpoint(tmp_path)
    assert resolved.format == "safetensors" and resolved.index is not None
    write_weights(tmp_path, "model.safetensors")
    assert resolve_checkpoint(tmp_path).files == [str(tmp_path / "model.safetensors")]
    resolved = resolve_checkpoint(tmp_path, use_safetensors=False)
    assert resolved.format == "bin" and resolved.files == [str(tmp_path / "pytorch_model.bin")]
    (tmp_path / "pytorch_model.bin").unlink()
    resolved = resolve_checkpoint(tmp_path, use_safetensors=False)
    assert resolved.format == "bin" and len(resolved.files) == 2


def test_use_safetensors_true_without_safetensors_raises(tmp_path):
    write_weights(tmp_path, "pytorch_model.bin")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint(tmp_path, use_safetensors=True)
    message = str(info.value)
    assert "model.safetensors" in message and str(tmp_path) in message
    assert "pytorch_model.bin exists" in message


def test_nothing_found_lists_names_and_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint(tmp_path)
    message = str(info.value)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", str(tmp_path)):
        assert name in message


def test_variant_requested_but_only_plain_file(tmp_path):
    write_weights(tmp_path, "model.safetensors")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint(tmp_path, variant="fp16")
    message = str(info.value)
    assert "model.fp16.safetensors" in message and "'fp16'" in message
    assert "without the variant" in message and "variant=None" in message


def test_only_variant_files_need_the_variant(tmp_path):
    write_weights(tmp_path, "model.fp16.safetensors")
    with pytest.raises(CheckpointNotFoundError):
        resolve_checkpoint(tmp_path)


def test_subfolder(tmp_path):
    write_weights(tmp_path / "text_encoder", "model.safetensors")
    resolved = resolve_checkpoint(tmp_path, subfolder="text_encoder")
    assert resolved.files == [str(tmp_path / "text_encoder" / "model.safetensors")]
    (tmp_path / "text_encoder" / "config.json").write_text("{}")
    assert resolve_file(tmp_path, "config.json", subfolder="text_encoder").endswith("text_encoder/config.json")


def test_single_file_paths(tmp_path):
    st_path = write_weights(tmp_path, "weights.safetensors")
    bin_path = write_weights(tmp_path, "weights.pt")
    assert resolve_checkpoint(st_path).files == [str(st_path)]
    resolved = resolve_checkpoint(bin_path)
    assert resolved.format == "bin" and resolved.files == [str(bin_path)]
    with pytest.raises(CheckpointNotFoundError):
        resolve_checkpoint(bin_path, use_safetensors=True)
    with pytest.raises(CheckpointNotFoundError):
        resolve_checkpoint(st_path, use_safetensors=False)
    write_sharded(tmp_path / "sharded")
    resolved = resolve_checkpoint(tmp_path / "sharded" / "model.safetensors.index.json")
    assert resolved.format == "safetensors" and len(resolved.files) == 2
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="unknown weights file"):
        resolve_checkpoint(tmp_path / "notes.txt")


def test_nonexistent_local_path(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(CheckpointNotFoundError, match=str(missing)):
        resolve_checkpoint(missing)
    with pytest.raises(CheckpointNotFoundError, match="does not look like a Hub"):
        resolve_file(missing, "config.json")


def test_resolve_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_file(tmp_path, "config.json") == str(tmp_path / "config.json")
    assert resolve_file(tmp_path, "missing.json", required=False) is None
    with pytest.raises(CheckpointNotFoundError, match="missing.json"):
        resolve_file(tmp_path, "missing.json")
    with pytest.raises(TypeError, match="proxies"):
        resolve_file(tmp_path, "config.json", proxies={})


@pytest.mark.parametrize("name, expected", [
    ("gpt2", True), ("openai-community/gpt2", True), ("org/model-1.5_b", True),
    ("/abs/path", False), ("./rel", False), ("a/b/c", False), ("../x", False),
    ("org/a--b", False), ("org/a..b", False), ("", False), ("x" * 97, False), ("org/name.", False),
])
def test_looks_like_repo_id(name, expected):
    assert looks_like_repo_id(name) is expected


# ----------------------------------------------------------------------------- untrusted index files


@pytest.mark.parametrize("shard, fragment", [
    ("/etc/passwd.safetensors", "absolute"),
    ("../outside.safetensors", "'..'"),
    ("sub/../../outside.safetensors", "'..'"),
    ("..\\outside.safetensors", "backslash"),
    ("C:/Windows/x.safetensors", "drive letter"),
    ("model-00001-of-00002.bin", "does not end in '.safetensors'"),
    ("model-00001-of-00002.safetensors.py", "does not end in"),
    ("", "empty"),
])
def test_index_shard_names_are_checked_before_reading(tmp_path, shard, fragment):
    folder = tmp_path / "ckpt"
    write_weights(tmp_path, "outside.safetensors")  # exists, so only the name check can refuse it
    write_index(folder, "model.safetensors.index.json", {"a": "model-00001-of-00001.safetensors", "b": shard})
    with pytest.raises(UnsafeCheckpointError) as info:
        resolve_checkpoint(folder)
    assert fragment in str(info.value)
    assert "model.safetensors.index.json" in str(info.value)


def test_index_extension_must_match_format_for_bin(tmp_path):
    write_index(tmp_path, "pytorch_model.bin.index.json", {"a": "model-00001-of-00002.safetensors"})
    with pytest.raises(UnsafeCheckpointError, match="'.bin'"):
        resolve_checkpoint(tmp_path)


@pytest.mark.parametrize("content, fragment", [
    ("not json", "not a valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"weight_map": []}', "weight_map"),
    ('{"metadata": {}}', "weight_map"),
    ('{"weight_map": {"a": 3}}', "weight_map['a']"),
    ('{"weight_map": {"a": ["x.safetensors"]}}', "weight_map['a']"),
    ('{"metadata": [], "weight_map": {}}', "metadata"),
])
def test_malformed_index(tmp_path, content, fragment):
    (tmp_path / "model.safetensors.index.json").write_text(content)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(tmp_path)
    assert fragment in str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_missing_shard_names_shard_and_index(tmp_path):
    write_weights(tmp_path, "model-00001-of-00002.safetensors")
    write_index(tmp_path, "model.safetensors.index.json",
                {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint(tmp_path)
    assert "model-00002-of-00002.safetensors" in str(info.value)
    assert "model.safetensors.index.json" in str(info.value)


def test_shards_in_subfolders_of_the_checkpoint_are_allowed(tmp_path):
    write_weights(tmp_path / "parts", "a.safetensors")
    write_index(tmp_path, "model.safetensors.index.json", {"w": "parts/a.safetensors"})
    assert resolve_checkpoint(tmp_path).files == [str(tmp_path / "parts" / "a.safetensors")]


# ----------------------------------------------------------------------------- Hub cache (no network)


def make_cache(cache, repo="org/name", files=(), sha=SHA):
    """A huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<sha>/...}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    snapshot = root / "snapshots" / sha
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_cache_single_file(tmp_path, offline):
    snapshot = make_cache(tmp_path / "cache")
    write_weights(snapshot, "model.safetensors")
    (snapshot / "config.json").write_text("{}")
    resolved = resolve_checkpoint("org/name", cache_dir=tmp_path / "cache")
    assert resolved.files == [str(snapshot / "model.safetensors")]
    assert resolved.folder == str(snapshot)
    assert resolve_file("org/name", "config.json", cache_dir=tmp_path / "cache") == str(snapshot / "config.json")
    assert resolve_file("org/name", "nope.json", cache_dir=tmp_path / "cache", required=False) is None
    assert resolve_checkpoint("org/name", cache_dir=tmp_path / "cache", revision=SHA).files == resolved.files


def test_hub_cache_sharded_with_subfolder_and_variant(tmp_path, offline):
    snapshot = make_cache(tmp_path / "cache")
    shards = write_sharded(snapshot / "unet", variant="fp16")
    resolved = resolve_checkpoint("org/name", variant="fp16", subfolder="unet", cache_dir=tmp_path / "cache")
    assert resolved.files == [str(snapshot / "unet" / s) for s in shards]
    assert resolved.weight_map["a"] == str(snapshot / "unet" / shards[0])


def test_hub_cache_local_files_only_without_offline_mode(tmp_path):
    snapshot = make_cache(tmp_path / "cache")
    write_weights(snapshot, "pytorch_model.bin")
    resolved = resolve_checkpoint("org/name", cache_dir=tmp_path / "cache", local_files_only=True)
    assert resolved.format == "bin" and resolved.files == [str(snapshot / "pytorch_model.bin")]


def test_hub_cache_missing_shard(tmp_path, offline):
    snapshot = make_cache(tmp_path / "cache")
    write_weights(snapshot, "model-00001-of-00002.safetensors")
    write_index(snapshot, "model.safetensors.index.json",
                {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint("org/name", cache_dir=tmp_path / "cache")
    assert "model-00002-of-00002.safetensors" in str(info.value) and "index" in str(info.value)


def test_hub_index_is_checked_before_downloading_shards(tmp_path, offline, monkeypatch):
    snapshot = make_cache(tmp_path / "cache")
    write_index(snapshot, "model.safetensors.index.json", {"a": "../../../../evil.safetensors"})
    import huggingface_hub

    real = huggingface_hub.hf_hub_download
    requested = []

    def spy(repo_id, filename, **kwargs):
        requested.append(filename)
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(UnsafeCheckpointError):
        resolve_checkpoint("org/name", cache_dir=tmp_path / "cache")
    assert requested == ["model.safetensors", "model.safetensors.index.json"]


def test_hub_nothing_cached(tmp_path, offline):
    snapshot = make_cache(tmp_path / "cache")
    write_weights(snapshot, "model.safetensors")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint("org/name", cache_dir=tmp_path / "cache", variant="fp16")
    message = str(info.value)
    assert "org/name" in message and "model.fp16.safetensors" in message
    assert "without the variant" in message
    with pytest.raises(CheckpointNotFoundError, match="other/repo"):
        resolve_checkpoint("other/repo", cache_dir=tmp_path / "cache")


def test_hf_hub_offline_environment_variable(tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE, read by huggingface_hub at import, in a fresh process."""
    snapshot = make_cache(tmp_path / "cache")
    write_sharded(snapshot)
    script = textwrap.dedent("""
        import os
        from pretrained.storage import resolve_checkpoint, Checkpoint
        resolved = resolve_checkpoint("org/name")
        with Checkpoint(resolved) as ckpt:
            print(sorted(ckpt.keys()), [os.path.basename(f) for f in resolved.files])
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "['a', 'b', 'c'] ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']" in result.stdout
