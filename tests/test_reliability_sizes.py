"""Sizes at the edges: every awkward tensor round-trips byte for byte.

Zero-sized tensors, scalars, non-contiguous and strided views (transposed,
stepped, expanded, disjoint views of one buffer), every dtype safetensors
stores (bool, int8/16/32/64, uint8, float8 e4m3fn and e5m2, bf16, fp16, fp32,
fp64, ...), a tensor larger than ``max_shard_size``, and 10,000 tiny tensors:
through the storage writer and reader (safetensors and ``.bin``, one file and
sharded), through the reference ``safetensors`` reader, and through
``save_pretrained``/``from_pretrained`` of a small ``PreTrainedModel`` that
holds them as parameters and buffers. Values are random bytes (NaN payloads
included), compared as bytes.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from pretrained import PretrainedConfig, PreTrainedModel
from pretrained.storage import Checkpoint, resolve_checkpoint, save_checkpoint
from pretrained.storage.safetensors import DTYPES
from reliability_support import record

BIG_SHARD = 64 * 1024  # bytes; "big" below is four times that


def random_tensor(shape, dtype, generator) -> torch.Tensor:
    """A tensor of ``shape`` whose bytes are random (bool: random 0/1)."""
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) > 0.5
    count = math.prod(shape) * dtype.itemsize
    return torch.randint(0, 256, (count,), dtype=torch.uint8, generator=generator).view(dtype).reshape(shape)


def edge_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = random_tensor((8, 6), torch.float32, g)
    tensors = {
        "zero.1d": random_tensor((0,), torch.float32, g),
        "zero.2d": random_tensor((0, 4), torch.float16, g),
        "zero.middle": random_tensor((3, 0, 2), torch.bfloat16, g),
        "scalar.f32": random_tensor((), torch.float32, g),
        "scalar.i64": random_tensor((), torch.int64, g),
        "scalar.bool": torch.tensor(True),
        "view.transposed": random_tensor((6, 4), torch.float32, g).t(),
        "view.stepped": random_tensor((10,), torch.float16, g)[::3],
        "view.expanded": random_tensor((1, 5), torch.float32, g).expand(4, 5),
        "view.rows_0_3": base[:4, 1:5],
        "view.rows_4_7": base[4:, ::2],
        "big": random_tensor((4 * BIG_SHARD,), torch.uint8, g),
    }
    for code, dtype in sorted(DTYPES.items()):
        tensors[f"dtype.{code}"] = random_tensor((3, 5), dtype, g)
    return tensors


def raw_bytes(tensor: torch.Tensor) -> bytes:
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return data.view(torch.uint8).numpy().tobytes() if data.numel() else b""


def assert_same_bytes(loaded: dict, expected: dict) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype, name
        assert tuple(got.shape) == tuple(tensor.shape), name
        assert raw_bytes(got) == raw_bytes(tensor), name


def load_all(folder) -> dict:
    with Checkpoint(resolve_checkpoint(folder)) as checkpoint:
        return {name: checkpoint.get(name).clone() for name in checkpoint.keys()}


def test_every_safetensors_dtype_is_covered():
    names = {str(dtype).replace("torch.", "") for dtype in DTYPES.values()}
    assert {"bool", "int8", "float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "int64"} <= names


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("max_shard_size", [10**9, BIG_SHARD], ids=["single", "sharded"])
def test_edge_tensors_round_trip_through_storage(tmp_path, safe, max_shard_size):
    tensors = edge_tensors()
    written = save_checkpoint(tmp_path, tensors, max_shard_size=max_shard_size, safe_serialization=safe)
    assert_same_bytes(load_all(tmp_path), tensors)
    if max_shard_size == BIG_SHARD:
        with Checkpoint(resolve_checkpoint(tmp_path)) as checkpoint:
            big_file = checkpoint.file_of("big")
            assert [n for n in checkpoint.keys() if checkpoint.file_of(n) == big_file] == ["big"]
            assert len(checkpoint.files) >= 2
    if safe:
        from safetensors.torch import load_file

        reference = {}
        for name in written:
            if name.endswith(".safetensors"):
                reference.update(load_file(tmp_path / name))
        assert_same_bytes(reference, tensors)


@pytest.mark.parametrize("max_shard_size", [10**9, 2_000], ids=["single", "sharded"])
def test_ten_thousand_tiny_tensors(tmp_path, max_shard_size):
    g = torch.Generator().manual_seed(1)
    dtypes = [torch.float32, torch.bfloat16, torch.int8, torch.bool, torch.float8_e5m2]
    tensors = {f"t.{i:05d}": random_tensor((i % 3,) if i % 7 else (), dtypes[i % len(dtypes)], g)
               for i in range(10_000)}
    start = time.perf_counter()
    save_checkpoint(tmp_path, tensors, max_shard_size=max_shard_size)
    saved = time.perf_counter()
    loaded = load_all(tmp_path)
    done = time.perf_counter()
    assert_same_bytes(loaded, tensors)
    files = len(list(tmp_path.glob("*.safetensors")))
    assert files > 1 if max_shard_size < 10**9 else files == 1
    record(f"sizes.10k_tensors.{'sharded' if max_shard_size < 10**9 else 'single'}",
           {"tensors": len(tensors), "files": files, "save_s": round(saved - start, 2),
            "load_s": round(done - saved, 2)})


# --------------------------------------------------------------------------- through a model


class EdgeConfig(PretrainedConfig):
    model_type = "reliability-edge-sizes"


class EdgeModel(PreTrainedModel):
    """Parameters and buffers of every awkward kind (values: random bytes, seeded)."""

    config_class = EdgeConfig

    def __init__(self, config: EdgeConfig) -> None:
        super().__init__(config)
        g = torch.Generator().manual_seed(2)
        frozen = dict(requires_grad=False)
        self.scalar = nn.Parameter(random_tensor((), torch.float32, g))
        self.empty = nn.Parameter(random_tensor((0, 4), torch.float32, g))
        self.transposed = nn.Parameter(random_tensor((6, 4), torch.float32, g).t())
        self.big = nn.Parameter(random_tensor((BIG_SHARD,), torch.float32, g))  # 4x the shard limit
        for code, dtype in sorted(DTYPES.items()):
            name = f"p_{code.lower()}"
            if dtype.is_floating_point or dtype.is_complex:
                setattr(self, name, nn.Parameter(random_tensor((3, 5), dtype, g), **frozen))
            else:
                self.register_buffer(name, random_tensor((3, 5), dtype, g))
        self.register_buffer("b_scalar_bool", torch.tensor(True))
        self.register_buffer("b_zero_int", random_tensor((2, 0), torch.int64, g))
        self.register_buffer("b_strided", random_tensor((12,), torch.int16, g)[1::4])
        self.tiny = nn.ParameterList([nn.Parameter(random_tensor((1,), torch.float16, g)) for _ in range(300)])
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # the constructor already set every value
        pass


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_edge_tensors_round_trip_through_a_model(tmp_path, safe):
    model = EdgeModel(EdgeConfig())
    expected = model.state_dict()
    model.save_pretrained(tmp_path, max_shard_size=BIG_SHARD, safe_serialization=safe)
    assert len(list(tmp_path.glob("*.safetensors" if safe else "*.bin"))) >= 2
    loaded, info = EdgeModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    assert_same_bytes(loaded.state_dict(), expected)
