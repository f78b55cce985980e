"""Our safetensors reader/writer against the reference package and hostile headers."""

import json
import os
import struct
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from pretrained.errors import CheckpointError
from pretrained.storage.safetensors import (
    DTYPES,
    MAX_HEADER_SIZE,
    LazyTensor,
    SafetensorsReader,
    read_header,
    save_safetensors,
)

GOLDEN = (
    b'\xc8\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{"format":"pt"},'
    b'"a":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},'
    b'"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},'
    b'"m":{"dtype":"BOOL","shape":[],"data_offsets":[12,13]}}    '
    b"\x01\x00\x00\x00\x02\x00\x00\x00\x00<\x00\xc0\x01"
)


def golden_tensors():
    return {
        "b": torch.tensor([1.0, -2.0], dtype=torch.float16),
        "a": torch.tensor([[1, 2]], dtype=torch.int32),
        "m": torch.tensor(True),
    }


def all_dtype_tensors():
    torch.manual_seed(0)
    tensors = {}
    for i, (code, dtype) in enumerate(DTYPES.items()):
        base = torch.randn(3, 5) * 10
        if dtype == torch.bool:
            tensors[f"t{i % 3}.{code}"] = base > 0
        elif not dtype.is_floating_point and not dtype.is_complex:
            tensors[f"t{i % 3}.{code}"] = base.abs().to(dtype)
        else:
            tensors[f"t{i % 3}.{code}"] = (base.abs() if code == "F8_E8M0" else base).to(dtype)
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty"] = torch.zeros(0, 4, dtype=torch.float16)
    tensors["empty2"] = torch.zeros(2, 0, dtype=torch.float16)
    tensors["é/ünï.çödé"] = torch.arange(7, dtype=torch.int64)
    tensors["\u2028\x7f\x1f\"\\"] = torch.arange(3, dtype=torch.float32)
    return tensors


def raw_bytes(tensor):
    return tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)


def assert_same_tensor(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(raw_bytes(actual.contiguous()), raw_bytes(expected.contiguous()))


# ----------------------------------------------------------------------------- writer


def test_golden_bytes(tmp_path):
    save_safetensors(golden_tensors(), tmp_path / "ours.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == GOLDEN
    save_file(golden_tensors(), str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "ref.safetensors").read_bytes() == GOLDEN


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"key": "välue\n\x00\"\\"}])
def test_byte_identical_to_reference_for_every_dtype(tmp_path, metadata):
    tensors = all_dtype_tensors()
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata=metadata)
    save_safetensors(tensors, tmp_path / "ours.safetensors", metadata=metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_empty_metadata_with_tensors_matches_reference(tmp_path):
    tensors = {"a": torch.ones(2)}
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={})
    save_safetensors(tensors, tmp_path / "ours.safetensors", metadata={})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_empty_state_dict(tmp_path):
    save_file({}, str(tmp_path / "ref.safetensors"))
    save_safetensors({}, tmp_path / "ours.safetensors")
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert read_header(tmp_path / "ours.safetensors").tensors == {}


def test_several_metadata_keys_are_sorted_and_equivalent(tmp_path):
    # The reference orders several metadata keys by a randomised hash map; we sort them.
    tensors = {"w": torch.ones(3)}
    metadata = {"format": "pt", "b": "2", "a": "1"}
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata=metadata)
    save_safetensors(tensors, tmp_path / "ours.safetensors", metadata=metadata)
    ours, ref = (tmp_path / "ours.safetensors").read_bytes(), (tmp_path / "ref.safetensors").read_bytes()
    assert len(ours) == len(ref) and ours[:8] == ref[:8]
    n = struct.unpack("<Q", ours[:8])[0]
    assert json.loads(ours[8:8 + n]) == json.loads(ref[8:8 + n])
    assert list(json.loads(ours[8:8 + n])["__metadata__"]) == ["a", "b", "format"]
    assert ours[8 + n:] == ref[8 + n:]


def test_views_and_strided_tensors_are_written_contiguous(tmp_path):
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    tensors = {
        "transposed": base.t(),
        "column": base[:, 3],
        "slice": base[2:4],
        "stepped": base[::2, ::3],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "scalar_view": base[1, 1],
        "conj": torch.tensor([1 + 2j], dtype=torch.complex64).conj(),
    }
    save_safetensors(tensors, tmp_path / "ours.safetensors")
    contiguous = {k: v.resolve_conj().contiguous() for k, v in tensors.items()}
    save_file(contiguous, str(tmp_path / "ref.safetensors"))
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    loaded = load_file(str(tmp_path / "ours.safetensors"))
    for name, tensor in contiguous.items():
        assert_same_tensor(loaded[name], tensor)


def test_writer_rejects_bad_input(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError):
        save_safetensors({"a": [1, 2]}, path)
    with pytest.raises(TypeError):
        save_safetensors({1: torch.ones(1)}, path)
    with pytest.raises(ValueError, match="meta"):
        save_safetensors({"a": torch.empty(2, device="meta")}, path)
    with pytest.raises(ValueError, match="dtype"):
        save_safetensors({"a": torch.ones(2, dtype=torch.complex128)}, path)
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors({"__metadata__": torch.ones(2)}, path)
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors({"a": torch.ones(2)}, path, metadata={"a": 1})


def test_lazy_tensors_are_written_like_eager_ones_each_loaded_only_when_its_turn_comes(tmp_path):
    import weakref

    eager = {"w": torch.randn(3, 4), "ids": torch.arange(6), "half": torch.ones(2, dtype=torch.float16),
             "empty": torch.zeros(0, 3)}
    produced = []

    def producer(name):
        def load():
            assert all(ref() is None for ref in produced), "the previous lazy tensor is still alive"
            tensor = eager[name].clone()
            produced.append(weakref.ref(tensor))
            return tensor
        return load

    lazy = {name: LazyTensor(t.dtype, tuple(t.shape), producer(name)) for name, t in eager.items() if name != "ids"}
    lazy["ids"] = eager["ids"]  # lazy and eager entries mix
    save_safetensors(lazy, tmp_path / "lazy.safetensors", metadata={"format": "pt"})
    save_file(eager, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "lazy.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert len(produced) == 3


def test_a_lazy_tensor_must_produce_what_it_promised(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="promised"):
        save_safetensors({"a": LazyTensor(torch.float32, (2,), lambda: torch.ones(3))}, path)
    assert not path.exists()
    with pytest.raises(ValueError, match="dtype"):
        save_safetensors({"a": LazyTensor(torch.complex128, (2,), lambda: torch.ones(2))}, path)


_dtype_names = sorted(DTYPES)
_tensor_strategy = st.tuples(
    st.sampled_from(_dtype_names),
    st.lists(st.integers(0, 4), min_size=0, max_size=3),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"
                                                              and s.encode("utf-8", "ignore").decode() == s),
                       _tensor_strategy, max_size=6))
def test_random_state_dicts_match_reference_bytes(tmp_path, spec):
    tensors = {}
    for name, (code, shape, seed) in spec.items():
        generator = torch.Generator().manual_seed(seed)
        data = torch.randint(0, 256, (max(1, int(torch.tensor(shape).prod()) if shape else 1)
                                      * DTYPES[code].itemsize,), dtype=torch.uint8, generator=generator)
        numel = int(torch.tensor(shape, dtype=torch.int64).prod()) if shape else 1
        tensors[name] = data[: numel * DTYPES[code].itemsize].view(DTYPES[code]).reshape(shape)
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    save_safetensors(tensors, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    with SafetensorsReader(tmp_path / "ref.safetensors") as reader:
        for name, tensor in tensors.items():
            assert_same_tensor(reader.get(name), tensor)


# ----------------------------------------------------------------------------- reader


def test_reader_roundtrip_every_dtype(tmp_path):
    tensors = all_dtype_tensors()
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    header = read_header(tmp_path / "ref.safetensors")
    assert header.metadata == {"format": "pt"}
    starts = [info.start for info in header.tensors.values()]
    assert starts == sorted(starts)
    with SafetensorsReader(tmp_path / "ref.safetensors") as reader:
        assert set(reader.keys()) == set(tensors)
        for name, tensor in tensors.items():
            assert_same_tensor(reader.get(name), tensor)
        assert reader.get("scalar").shape == () and reader.get("scalar").item() == 3.5
        assert reader.get("empty").shape == (0, 4)


def test_reader_views_are_zero_copy_and_copy_on_write(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.arange(4.0), "b": torch.ones(2, 2)}, path)
    before = path.read_bytes()
    reader = SafetensorsReader(path)
    first, again = reader.get("a"), reader.get("a")
    assert first.data_ptr() == again.data_ptr()  # both views of the same mapping
    first.add_(100)  # writable, private
    assert again[0].item() == 100
    assert path.read_bytes() == before
    reader.close()
    assert first.sum().item() == 406  # views outlive close()
    with pytest.raises(ValueError, match="closed"):
        reader.get("b")


def test_reader_unknown_name(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.ones(1)}, path)
    with SafetensorsReader(path) as reader, pytest.raises(KeyError, match="nope"):
        reader.get("nope")


def test_reader_get_is_a_view_of_the_mapping_and_reads_nothing(tmp_path, monkeypatch):
    """get() costs no I/O and no copy: each tensor sits at its header offset inside the one mapping."""
    path = tmp_path / "w.safetensors"
    save_safetensors({f"t{i}": torch.full((8, 8), float(i)) for i in range(100)}, path)

    def no_read(*args, **kwargs):
        raise AssertionError("get() read from the file instead of viewing the mapping")

    with SafetensorsReader(path) as reader:
        for name in ("read", "pread", "preadv", "readv"):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, no_read)
        names = reader.keys()
        first = reader.get(names[0])
        for name in names:
            tensor = reader.get(name)
            info = reader.header.tensors[name]
            assert tensor.data_ptr() - first.data_ptr() == info.start - reader.header.tensors[names[0]].start
            assert tensor[0, 0].item() == float(name[1:])


def test_reader_reads_unaligned_data(tmp_path):
    # A hand-written file whose F32 tensor starts at an odd offset still reads correctly.
    header = json.dumps({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}).encode()
    header += b" " * (-len(header) % 8)
    data = b"\x07" + torch.tensor([1.5, -2.0]).numpy().tobytes()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    with SafetensorsReader(path) as reader:
        assert reader.get("b").tolist() == [1.5, -2.0]
        assert reader.get("a").tolist() == [7]


# ----------------------------------------------------------------------------- validation


def write_raw(path, header, data=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD_HEADERS = [
    ("not utf8", b'{"a": "\xff\xfe"}', b"", "UTF-8"),
    ("not json", b"{not json", b"", "JSON"),
    ("array", b"[1, 2]", b"", "JSON object"),
    ("nan", b'{"a": NaN}', b"", "constant"),
    ("duplicate", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                  b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"\x00", "duplicate"),
    ("entry not dict", {"a": [1, 2]}, b"", "entry must be an object"),
    ("missing field", {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "missing field"),
    ("unknown dtype", {"a": entry(dtype="F128")}, b"\0" * 8, "unknown dtype"),
    ("dtype not str", {"a": entry(dtype=3)}, b"\0" * 8, "unknown dtype"),
    ("negative dim", {"a": entry(shape=(-2,))}, b"\0" * 8, "non-negative"),
    ("float dim", {"a": entry(shape=(2.0,))}, b"\0" * 8, "non-negative"),
    ("bool dim", {"a": entry(shape=(True, 2))}, b"\0" * 8, "non-negative"),
    ("shape not list", {"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
    ("three offsets", {"a": entry(offsets=(0, 4, 8))}, b"\0" * 8, "two ints"),
    ("float offsets", {"a": entry(offsets=(0.0, 8))}, b"\0" * 8, "two ints"),
    ("begin after end", {"a": entry(offsets=(8, 0))}, b"\0" * 8, "begin <= end"),
    ("negative begin", {"a": entry(offsets=(-4, 4))}, b"\0" * 8, "begin <= end"),
    ("size mismatch", {"a": entry(shape=(3,))}, b"\0" * 8, "span 8"),
    ("huge shape", {"a": entry(shape=(2**62, 2**62, 2**62))}, b"\0" * 8, "span 8"),
    ("past end", {"a": entry(offsets=(0, 8))}, b"\0" * 4, "past the end"),
    ("overlap", {"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, b"\0" * 12, "overlaps"),
    ("hole", {"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}, b"\0" * 20, "hole"),
    ("hole at start", {"a": entry(offsets=(4, 12))}, b"\0" * 12, "hole"),
    ("trailing bytes", {"a": entry()}, b"\0" * 9, "trailing"),
    ("metadata value", {"__metadata__": {"format": 1}}, b"", "__metadata__"),
    ("metadata list", {"__metadata__": ["pt"]}, b"", "__metadata__"),
]


@pytest.mark.parametrize("label, header, data, problem", BAD_HEADERS, ids=[case[0] for case in BAD_HEADERS])
def test_invalid_headers_raise_checkpoint_error(tmp_path, label, header, data, problem):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)
    with pytest.raises(CheckpointError):
        SafetensorsReader(path)


def test_short_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match="shorter than"):
        read_header(path)


def test_header_length_larger_than_file(tmp_path):
    path = tmp_path / "trunc.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match="larger than the file"):
        read_header(path)


def test_header_length_over_limit_allocates_nothing(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="exceeds"):
        read_header(path)
    # a header claiming just under the limit but with a tiny file must not be read either
    path.write_bytes(struct.pack("<Q", MAX_HEADER_SIZE - 8) + b"{}")
    with pytest.raises(CheckpointError, match="larger than the file"):
        read_header(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000


def test_git_lfs_pointer(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n")
    with pytest.raises(CheckpointError, match="git-lfs"):
        read_header(path)


def test_file_accepted_by_reference_is_accepted(tmp_path):
    # leading whitespace and extra entry fields are legal for the reference reader too
    header = b' {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}'
    path = write_raw(tmp_path / "ok.safetensors", header, b"\0\0\x80?")
    assert load_file(str(path))["a"].item() == 1.0
    with SafetensorsReader(path) as reader:
        assert reader.get("a").item() == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_write_the_same_bytes(tmp_path):
    tensors = all_dtype_tensors()
    save_safetensors(tensors, tmp_path / "cpu.safetensors")
    save_safetensors({k: v.cuda() for k, v in tensors.items()}, tmp_path / "cuda.safetensors")
    assert (tmp_path / "cuda.safetensors").read_bytes() == (tmp_path / "cpu.safetensors").read_bytes()
