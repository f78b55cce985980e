"""Checkpoint: one lazy view over all weight files."""

import json

import pytest
import torch

import pretrained.storage.checkpoint as checkpoint_module
from pretrained.errors import CheckpointError
from pretrained.storage import Checkpoint, resolve_checkpoint, save_checkpoint
from pretrained.storage.safetensors import save_safetensors


def state(n=6):
    torch.manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(4, 4) * (i + 1) for i in range(n)}


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("shard_size", [10**9, 150])
def test_roundtrip_keys_and_values(tmp_path, safe, shard_size):
    sd = state()
    save_checkpoint(tmp_path, sd, max_shard_size=shard_size, safe_serialization=safe)
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        assert ckpt.format == ("safetensors" if safe else "bin")
        assert ckpt.keys() == list(sd)
        assert len(ckpt) == len(sd) and "layer.0.weight" in ckpt
        for name, tensor in sd.items():
            assert ckpt.dtype_shape(name) == (torch.float32, (4, 4))
            torch.testing.assert_close(ckpt.get(name), tensor)
            assert ckpt.file_of(name) in ckpt.files
        with pytest.raises(KeyError, match="nope"):
            ckpt.get("nope")


def test_keys_follow_file_order(tmp_path):
    save_safetensors({"z": torch.ones(1), "a": torch.ones(2, dtype=torch.float64)}, tmp_path / "s1.safetensors")
    save_safetensors({"m": torch.ones(1)}, tmp_path / "s2.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 24}, "weight_map": {"m": "s2.safetensors", "z": "s1.safetensors",
                                                       "a": "s1.safetensors"}}))
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        assert ckpt.keys() == ["a", "z", "m"]  # s1 (in its data order: F64 first) then s2
        assert ckpt.metadata == {"total_size": 24}


def test_dtype_shape_reads_headers_only(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"a": torch.ones(3, dtype=torch.bfloat16), "b": torch.zeros(())},
                    max_shard_size=4)

    def no_mapping(*args, **kwargs):
        raise AssertionError("tensor data was mapped")

    monkeypatch.setattr(checkpoint_module, "SafetensorsReader", no_mapping)
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        assert ckpt.dtype_shape("a") == (torch.bfloat16, (3,))
        assert ckpt.dtype_shape("b") == (torch.float32, ())


def test_get_returns_mmap_views_and_release(tmp_path):
    save_checkpoint(tmp_path, state(4), max_shard_size=150)
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        first = ckpt.get("layer.0.weight")
        assert ckpt.get("layer.0.weight").data_ptr() == first.data_ptr()
        file = ckpt.file_of("layer.0.weight")
        ckpt.release(file)
        torch.testing.assert_close(first, state(4)["layer.0.weight"])  # still valid
        assert ckpt.get("layer.0.weight").data_ptr() != first.data_ptr()  # a new mapping
    torch.testing.assert_close(first, state(4)["layer.0.weight"])


def test_metadata_of_single_file(tmp_path):
    save_checkpoint(tmp_path, state(1), metadata={"quant": "none"})
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        assert ckpt.metadata == {"format": "pt", "quant": "none"}


def test_bin_keeps_one_shard_resident(tmp_path, monkeypatch):
    sd = state(6)
    save_checkpoint(tmp_path, sd, max_shard_size=150, safe_serialization=False)
    loads = []
    real = checkpoint_module.load_pickle

    def counting(path, **kwargs):
        loads.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "load_pickle", counting)
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        assert ckpt.keys() == list(sd) and loads == []  # sharded: keys come from the index
        for name in sd:
            ckpt.get(name)
            ckpt.dtype_shape(name)
        assert loads == ckpt.files  # each shard loaded once, in order
        last = ckpt.files[-1]
        assert ckpt._bin_file == last
        assert set(ckpt._bin_tensors) == {n for n, f in ckpt.resolved.weight_map.items() if f == last}
        ckpt.get("layer.0.weight")
        assert loads[-1] == ckpt.files[0] and len(ckpt._bin_tensors) == 2


def test_single_bin_keys(tmp_path):
    sd = state(3)
    save_checkpoint(tmp_path, sd, safe_serialization=False)
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        assert ckpt.keys() == list(sd)
        assert ckpt.metadata is None


def test_many_shards_parallel_headers(tmp_path):
    sd = state(20)
    save_checkpoint(tmp_path, sd, max_shard_size=64)
    assert len(sd) >= checkpoint_module._PARALLEL_HEADERS
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        assert len(ckpt.files) == 20 and ckpt.keys() == list(sd)


# ----------------------------------------------------------------------------- inconsistent checkpoints


def sharded_by_hand(folder, shards, weight_map, fmt="safetensors"):
    for name, tensors in shards.items():
        if fmt == "safetensors":
            save_safetensors(tensors, folder / name)
        else:
            torch.save(tensors, folder / name)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_key_in_index_missing_from_shard(tmp_path, fmt):
    ext = ".safetensors" if fmt == "safetensors" else ".bin"
    sharded_by_hand(tmp_path, {f"s1{ext}": {"a": torch.ones(1)}}, {"a": f"s1{ext}", "ghost": f"s1{ext}"}, fmt)
    with pytest.raises(CheckpointError, match="'ghost'.*missing"):
        with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
            ckpt.get("a")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_key_in_shard_missing_from_index(tmp_path, fmt):
    ext = ".safetensors" if fmt == "safetensors" else ".bin"
    sharded_by_hand(tmp_path, {f"s1{ext}": {"a": torch.ones(1), "extra": torch.ones(1)}}, {"a": f"s1{ext}"}, fmt)
    with pytest.raises(CheckpointError, match="'extra'.*not in the weight_map"):
        with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
            ckpt.get("a")


def test_key_in_two_shards(tmp_path):
    sharded_by_hand(tmp_path, {"s1.safetensors": {"a": torch.ones(1)}, "s2.safetensors": {"a": torch.zeros(1)}},
                    {"a": "s1.safetensors", "b": "s2.safetensors"})
    with pytest.raises(CheckpointError, match="'a' is stored twice"):
        Checkpoint(resolve_checkpoint(tmp_path))


def test_key_in_two_bin_shards(tmp_path):
    sharded_by_hand(tmp_path, {"s1.bin": {"a": torch.ones(1)}, "s2.bin": {"a": torch.zeros(1), "b": torch.ones(1)}},
                    {"a": "s1.bin", "b": "s2.bin"}, fmt="bin")
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        ckpt.get("a")
        with pytest.raises(CheckpointError, match="'a' is in shard .*s2.bin"):
            ckpt.get("b")


def test_corrupt_shard_header(tmp_path):
    sharded_by_hand(tmp_path, {"s1.safetensors": {"a": torch.ones(1)}}, {"a": "s1.safetensors"})
    path = tmp_path / "s1.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="s1.safetensors"):
        Checkpoint(resolve_checkpoint(tmp_path))


def rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("chunk_bytes", [1, 4096, 10_000, 1 << 30])
def test_chunks_cover_each_tensor_in_order(tmp_path, safe, chunk_bytes):
    sd = {"odd": torch.arange(3, dtype=torch.int8), "big": torch.randn(3000, 7, dtype=torch.float64),
          "half": torch.randn(5001).to(torch.bfloat16), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    save_checkpoint(tmp_path, sd, max_shard_size=30_000, safe_serialization=safe)
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        for name, tensor in sd.items():
            pieces = list(piece.clone() for piece in ckpt.chunks(name, chunk_bytes=chunk_bytes))
            assert all(p.dim() == 1 and p.dtype == tensor.dtype for p in pieces)
            assert torch.equal(torch.cat(pieces), tensor.reshape(-1)), name
            if safe and chunk_bytes == 4096 and tensor.nbytes > 3 * 4096:
                assert len(pieces) >= tensor.nbytes // 4096  # really in pieces
                assert max(p.nbytes for p in pieces) <= 4096


def test_chunks_drop_the_pages_they_are_done_with(tmp_path):
    """Converting a 64 MiB tensor through chunks() keeps at most about one piece of it mapped."""
    save_checkpoint(tmp_path, {"w": torch.ones(16 << 20)}, max_shard_size="1GB")
    with Checkpoint(resolve_checkpoint(tmp_path)) as ckpt:
        out, done, peak, before = torch.empty(16 << 20, dtype=torch.float64), 0, 0, rss_file_kib()
        for piece in ckpt.chunks("w", chunk_bytes=4 << 20):
            out[done:done + piece.numel()].copy_(piece)
            done += piece.numel()
            peak = max(peak, rss_file_kib() - before)
        assert done == out.numel() and bool((out == 1).all())
        assert peak < 12 << 10, f"{peak} KiB of the file were resident at once"  # one 4 MiB piece + slack
        assert rss_file_kib() - before < 4 << 10  # and nothing is left mapped afterwards
