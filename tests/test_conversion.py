"""convert_checkpoint reads through storage: one tensor mapped at a time (storage.slices.map_tensor)."""

import os

import pytest
import torch

from pretrained.conversion import convert_checkpoint
from pretrained.storage.checkpoint import Checkpoint
from pretrained.storage.resolve import resolve_checkpoint
from pretrained.storage.slices import map_tensor
from pretrained.storage.writer import save_checkpoint


def _tensors():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(8, 4), "b.weight": torch.randn(3), "steps": torch.arange(5)}


def test_convert_casts_floating_tensors_and_reads_back_equal(tmp_path):
    tensors = _tensors()
    save_checkpoint(tmp_path / "src", tensors, extra_files={"config.json": b'{"model_type": "x"}'})
    result = convert_checkpoint(tmp_path / "src", tmp_path / "dst", dtype="bfloat16", max_shard_size=100)
    assert result["tensors"] == 3 and len(result["files"]) > 1
    with Checkpoint(resolve_checkpoint(tmp_path / "dst")) as out:
        for name, tensor in tensors.items():
            expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
            torch.testing.assert_close(out.get(name), expected, rtol=0, atol=0)


def test_map_tensor_maps_one_tensor_and_refuses_a_short_file(tmp_path):
    save_checkpoint(tmp_path, _tensors())
    with Checkpoint(resolve_checkpoint(tmp_path)) as checkpoint:
        fd, info, file = checkpoint.locate("a.weight")
        view = map_tensor(fd, info, where=file)
        torch.testing.assert_close(view, _tensors()["a.weight"], rtol=0, atol=0)
        view.add_(1)  # copy-on-write: the file keeps its bytes
        torch.testing.assert_close(checkpoint.read("a.weight"), _tensors()["a.weight"], rtol=0, atol=0)
        empty = type(info)(info.dtype, (0,), info.start, info.start)
        assert map_tensor(fd, empty) is None
        misaligned = type(info)(info.dtype, (1,), info.start + 1, info.start + 5)
        assert map_tensor(fd, misaligned) is None
        beyond = type(info)(info.dtype, (4,), os.fstat(fd).st_size - 8, os.fstat(fd).st_size + 8)
        with pytest.raises(OSError, match="ended at byte"):
            map_tensor(fd, beyond, where=file)
