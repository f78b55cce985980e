"""Hostile files: fuzzed safetensors headers, index files and config.json files.

Every generated or mutated input goes through the public loading path and
must either load or raise a documented error (a ``PretrainedError``
subclass): no other exception type, no crash, no hang (``deadline=None`` but
the whole module runs in seconds), and no allocation of a size the file
merely claims (the fuzz loops run under an address-space cap of the
process's current size + 1 GiB, so such an allocation would fail loudly).

Inputs start from real files written by the library and are mutated: bit
flips, truncations, header-length changes, JSON value swaps (wrong types,
huge shapes and offsets, hostile shard names), deleted and added keys, deep
nesting, oversized number literals. Runs are derandomized, so CI sees the
same ~20,000 inputs every time (``-m slow`` runs ten times more, recorded
in ``benchmarks/results/reliability.json``).
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import os
import random
import struct
import sys
import time
import tracemalloc

import psutil
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pretrained import AutoConfig, GPT2Config, GPT2LMHeadModel
from pretrained.configuration import _field_kinds, _fits
from pretrained.errors import PretrainedError, UnsafeCheckpointError
from pretrained.storage import Checkpoint, read_header, resolve_checkpoint, save_checkpoint
from pretrained.storage.safetensors import MAX_HEADER_SIZE, save_safetensors
from reliability_support import address_space_headroom, record

# Hypothesis examples per test in the default run; each example loads its structured input plus
# BATCH inputs mutated by a seeded mutator (cheap to generate), so the default run tries
# ~20k inputs in ~15 s on 2 cores. -m slow runs SLOW_FACTOR times more and records the figures.
EXAMPLES = {"safetensors": 2000, "index": 1000, "config": 1000, "model": 300}
BATCH = 4
SLOW_FACTOR = 10

OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
SECONDS: dict[str, float] = collections.defaultdict(float)


_SUFFIX = [""]  # ".long" while a slow form runs: its figures are kept apart


def fuzz(section: str, strategies: list, body, *, slow: bool = False) -> None:
    """Run ``body(*drawn)`` on ``EXAMPLES[section]`` (x SLOW_FACTOR when ``slow``) derandomized examples."""
    _SUFFIX[0] = ".long" if slow else ""
    start = time.perf_counter()
    try:
        settings(max_examples=EXAMPLES[section] * (SLOW_FACTOR if slow else 1), deadline=None, derandomize=True,
                 database=None, print_blob=True, suppress_health_check=list(HealthCheck))(given(*strategies)(body))()
    finally:
        _SUFFIX[0] = ""
        SECONDS[section + (".long" if slow else "")] += time.perf_counter() - start


def outcome(section: str, load) -> str:
    """Run ``load``; the name of the documented error it raised, or ``"loaded"``. Anything else propagates."""
    try:
        load()
        result = "loaded"
    except PretrainedError as exc:
        result = type(exc).__name__
    OUTCOMES[section + _SUFFIX[0]][result] += 1
    return result


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    for section, counts in sorted(OUTCOMES.items()):
        record(f"fuzz.{section}", {"inputs": sum(counts.values()), "outcomes": dict(counts),
                                   "seconds": round(SECONDS[section], 1)},
               long_form=section.endswith(".long"))
    OUTCOMES.clear()
    SECONDS.clear()


@pytest.fixture
def capped():
    """The fuzz loop runs with at most 1 GiB of address space to spare, and without log noise."""
    logger = logging.getLogger("pretrained")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with address_space_headroom():
            yield
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------- shared value pools

HUGE = [2**31 - 1, 2**31, 2**32, 2**53 + 1, 10**12, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
INTERESTING_INTS = [-(2**63), -1, 0, 1, 2, 3, 4, 7, 8, 16, 255] + HUGE
scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(INTERESTING_INTS), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.sampled_from(["F32", "BF16", "F8_E4M3", "F8_E5M2", "I64", "BOOL", "U8", "f32", "", "x", "__metadata__",
                     "gpt2", "bert", "llama", "t5", "float16", "auto", "torch.float32"]),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
dims = st.one_of(st.integers(0, 9), st.sampled_from(INTERESTING_INTS))
shapes = st.one_of(st.lists(dims, max_size=4), json_values)
offset_pairs = st.one_of(st.lists(st.one_of(st.integers(0, 400), st.sampled_from(INTERESTING_INTS)),
                                  min_size=0, max_size=3), json_values)


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


RAW_JSON_TEXTS = [
    deep(100_000), deep(5_000), b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"x": ' + b"9" * 5000 + b"}", b'{"x": 1e999999}', b'{"x": NaN}', b'{"x": -Infinity}',
    b'{"a": 1, "a": 2}', b"\xff\xfe{}", b"{}", b"[]", b"null", b'"text"', b"", b" ", b"{", b"}",
    b'{"__metadata__": {"format": "pt"}}', "{\"\u00e9\u0301\": {}}".encode(), b'{"\\ud800": 1}',
]


def json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def flip_bits(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        if out:
            out[position % len(out)] ^= 1 << bit
    return bytes(out)


class Mutator:
    """Cheap seeded mutations of JSON documents and byte strings (the bulk of the inputs)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0):
        rng = self.rng
        pick = rng.randrange(10 if depth < 2 else 7)
        if pick == 0:
            return rng.choice(INTERESTING_INTS)
        if pick == 1:
            return rng.randint(-(2**70), 2**70)
        if pick == 2:
            return rng.choice([None, True, False, 0.5, -1.0, 1e308, 3.0])
        if pick == 3:
            return rng.choice(["", "x", "F32", "BF16", "I64", "U8", "gpt2", "t5", "../x", "\u0000", "\ud800"])
        if pick == 4:
            return [rng.choice(INTERESTING_INTS) for _ in range(rng.randrange(4))]
        if pick == 5:
            return [rng.randrange(10) for _ in range(rng.randrange(4))]
        if pick == 6:
            return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(8)))
        if pick in (7, 8):
            return [self.value(depth + 1) for _ in range(rng.randrange(3))]
        return {str(rng.randrange(100)): self.value(depth + 1)
                for _ in range(rng.randrange(3))}

    def _paths(self, obj, path=()):
        yield path
        if isinstance(obj, dict):
            for key, item in obj.items():
                yield from self._paths(item, path + (key,))
        elif isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from self._paths(item, path + (i,))

    def json(self, obj):
        """``obj`` (deep-copied) with 1-3 random set/delete/rename edits anywhere in it."""
        obj = copy.deepcopy(obj)
        for _ in range(self.rng.randint(1, 3)):
            paths = list(self._paths(obj))
            path = self.rng.choice(paths)
            if not path:
                if self.rng.random() < 0.1:
                    return self.value()
                continue
            *parents, last = path
            container = obj
            for step in parents:
                container = container[step]
            action = self.rng.randrange(4)
            if action == 0 and isinstance(container, dict):
                del container[last]
            elif action == 1 and isinstance(container, dict):
                container[self.rng.choice(["x", "", last + "_", "__metadata__", "weight_map", "model_type"])] = \
                    container.pop(last)
            else:
                container[last] = self.value()
        return obj

    def bytes(self, data: bytes, hot_end: int) -> bytes:
        """1-8 bit flips (mostly before ``hot_end``), a truncation, a splice or a duplication."""
        rng = self.rng
        action = rng.randrange(5)
        if action <= 1:
            out = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                position = rng.randrange(min(hot_end, len(out))) if rng.random() < 0.8 else rng.randrange(len(out))
                out[position] ^= 1 << rng.randrange(8)
            return bytes(out)
        if action == 2:
            return data[:rng.randrange(len(data))]
        if action == 3:
            at = rng.randrange(len(data))
            return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[at:]
        at, width = rng.randrange(len(data)), rng.randint(1, 16)
        return data[:at] + data[at:at + width] * 2 + data[at + width:]


# --------------------------------------------------------------------------- safetensors headers


def _base_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "w": torch.randn(2, 3), "h": torch.randn(4).to(torch.bfloat16), "i": torch.tensor(7, dtype=torch.int64),
        "b": torch.tensor([True, False, True]), "f8": torch.randn(2, 2).to(torch.float8_e4m3fn),
        "empty": torch.zeros(0, 4), "u": torch.arange(5, dtype=torch.uint8),
    }


@pytest.fixture(scope="module")
def safetensors_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_st")
    save_safetensors(_base_tensors(), folder / "base.safetensors", metadata={"format": "pt"})
    data = (folder / "base.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    return {"path": folder / "model.safetensors", "bytes": data, "header": header,
            "data": data[8 + length:], "header_end": 8 + length}


JSON_FIELDS = ["dtype", "shape", "data_offsets", "extra"]


@st.composite
def header_edits(draw, header: dict):
    """The header dict with 1-3 JSON-level edits applied."""
    obj = copy.deepcopy(header)
    names = [name for name in obj if name != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "set", "shape", "offsets", "delete_field", "delete", "rename",
                                   "entry", "metadata", "add", "top"]))
        name = draw(st.sampled_from(names))
        entry = obj.get(name)
        if op == "set" and isinstance(entry, dict):
            entry[draw(st.sampled_from(JSON_FIELDS))] = draw(json_values)
        elif op == "shape" and isinstance(entry, dict):
            entry["shape"] = draw(shapes)
        elif op == "offsets" and isinstance(entry, dict):
            entry["data_offsets"] = draw(offset_pairs)
        elif op == "delete_field" and isinstance(entry, dict):
            entry.pop(draw(st.sampled_from(JSON_FIELDS)), None)
        elif op == "delete":
            obj.pop(name, None)
        elif op == "rename" and name in obj:
            obj[draw(st.text(max_size=8))] = obj.pop(name)
        elif op == "entry":
            obj[name] = draw(json_values)
        elif op == "metadata":
            obj["__metadata__"] = draw(json_values)
        elif op == "add":
            obj[draw(st.text(max_size=8))] = {"dtype": draw(st.sampled_from(["F32", "U8", "BOOL", "F64"])),
                                              "shape": draw(shapes), "data_offsets": draw(offset_pairs)}
        elif op == "top":
            return draw(json_values)
    return obj


@st.composite
def safetensors_files(draw, base: dict) -> bytes:
    kind = draw(st.sampled_from(["json", "json", "json", "flip", "flip", "truncate", "length", "raw", "append",
                                 "json+flip"]))
    data = base["bytes"]
    if kind.startswith("json"):
        raw = json_bytes(draw(header_edits(base["header"])))
        raw += b" " * draw(st.sampled_from([0, -len(raw) % 8]))
        data = struct.pack("<Q", len(raw)) + raw + base["data"]
    if kind.endswith("flip"):
        header_end = base["header_end"] if kind == "flip" else 8
        position = st.one_of(st.integers(0, header_end + 16), st.integers(0, len(data) - 1))
        data = flip_bits(data, draw(st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=8)))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "length":
        length = len(data) - 8
        value = draw(st.one_of(st.sampled_from([0, 1, 2, 7, 8, 9, base["header_end"] - 9, base["header_end"] - 7,
                                                length, length + 1, MAX_HEADER_SIZE, MAX_HEADER_SIZE + 1,
                                                2**63, 2**64 - 1, 10**12]),
                               st.integers(0, 2**64 - 1)))
        data = struct.pack("<Q", value) + data[8:]
    elif kind == "raw":
        raw = draw(st.one_of(st.sampled_from(RAW_JSON_TEXTS), st.binary(max_size=64)))
        data = struct.pack("<Q", len(raw)) + raw + draw(st.sampled_from([b"", base["data"]]))
    elif kind == "append":
        data = data + draw(st.binary(min_size=1, max_size=32))
    return data


def load_safetensors(path) -> None:
    header = read_header(path)
    with Checkpoint(resolve_checkpoint(path)) as checkpoint:
        assert checkpoint.keys() == list(header.tensors)
        for name in checkpoint.keys():
            tensor = checkpoint.get(name)
            assert (tensor.dtype, tuple(tensor.shape)) == checkpoint.dtype_shape(name)
            tensor.clone()  # touch every byte


def write(path, data: bytes) -> None:
    """Replace ``path`` by a new file (no in-place truncation: ext4 flushes those to disk)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    with open(path, "wb") as file:
        file.write(data)


def mutated_safetensors(mutator: Mutator, base: dict) -> bytes:
    pick = mutator.rng.randrange(5)
    if pick == 4:  # benign: shuffled entries, other metadata, other padding -- must still load
        header = dict(base["header"])
        items = list(header.items())
        mutator.rng.shuffle(items)
        header = dict(items)
        header["__metadata__"] = {str(mutator.rng.randrange(9)): "v" * mutator.rng.randrange(5)
                                  for _ in range(mutator.rng.randrange(3))}
        raw = json_bytes(header) + b" " * mutator.rng.randrange(16)
        return struct.pack("<Q", len(raw)) + raw + base["data"]
    if pick <= 1:
        raw = json_bytes(mutator.json(base["header"]))
        return struct.pack("<Q", len(raw)) + raw + base["data"]
    if pick == 2:
        return mutator.bytes(base["bytes"], base["header_end"])
    return struct.pack("<Q", mutator.rng.choice([0, 7, 8, 10**12, 2**63, MAX_HEADER_SIZE + 1,
                                                  base["header_end"] - 8 + mutator.rng.randint(-9, 9)])) \
        + base["bytes"][8:]


def _safetensors_fuzz(base, data, seed):
    mutator = Mutator(seed)
    for item in [data] + [mutated_safetensors(mutator, base) for _ in range(BATCH)]:
        write(base["path"], item)
        outcome("safetensors", lambda: load_safetensors(base["path"]))


def test_fuzz_safetensors_headers(safetensors_base, capped):
    fuzz("safetensors", [safetensors_files(safetensors_base), st.integers(0, 2**32)],
         lambda data, seed: _safetensors_fuzz(safetensors_base, data, seed))
    assert OUTCOMES["safetensors"]["loaded"] > 0 and OUTCOMES["safetensors"]["CheckpointError"] > 0


@pytest.mark.slow
def test_fuzz_safetensors_headers_long(safetensors_base, capped):
    fuzz("safetensors", [safetensors_files(safetensors_base), st.integers(0, 2**32)],
         lambda data, seed: _safetensors_fuzz(safetensors_base, data, seed), slow=True)


# --------------------------------------------------------------------------- index files

HOSTILE_SHARD_NAMES = [
    "/etc/passwd", "/tmp/x.safetensors", "../outside.safetensors", "sub/../../x.safetensors", "..", "../",
    "a/..", "model.bin", "model.safetensors.index.json", "", "\x00.safetensors", "x\x00/../y.safetensors",
    "C:\\x.safetensors", "C:x.safetensors", "sub\\..\\x.safetensors", "x" * 300 + ".safetensors",
    "nope.safetensors", "./model-00001-of-00003.safetensors", "model-00001-of-00003.safetensors/", "sub/",
    "model-00002-of-00003.safetensors", "~/.ssh/id_rsa", "\ud800.safetensors", "%2e%2e/x.safetensors",
    "....safetensors", "/", "//server/share/x.safetensors", "sub/x.safetensors", ".safetensors",
    "model-00001-of-00003.SAFETENSORS", "model-00001-of-00003.safetensors ",
]


@pytest.fixture(scope="module")
def index_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_index") / "ckpt"
    state = {f"layer.{i}.weight": torch.full((8,), float(i)) for i in range(6)}
    save_checkpoint(folder, state, max_shard_size=70, checksums=True)
    index_path = folder / "model.safetensors.index.json"
    assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) == 3
    (folder / "sub").mkdir()
    (folder / "dir.safetensors").mkdir()
    return {"folder": folder, "index_path": index_path, "index": json.loads(index_path.read_text()),
            "bytes": index_path.read_bytes()}


@st.composite
def index_files(draw, base: dict) -> bytes:
    kind = draw(st.sampled_from(["json", "json", "json", "json", "flip", "truncate", "raw"]))
    if kind == "flip":
        return flip_bits(base["bytes"], draw(st.lists(st.tuples(st.integers(0, len(base["bytes"]) - 1),
                                                                st.integers(0, 7)), min_size=1, max_size=6)))
    if kind == "truncate":
        return base["bytes"][:draw(st.integers(0, len(base["bytes"]) - 1))]
    if kind == "raw":
        return draw(st.one_of(st.sampled_from(RAW_JSON_TEXTS), st.binary(max_size=64)))
    index = copy.deepcopy(base["index"])
    names = sorted(index["weight_map"])
    shard_names = st.one_of(st.sampled_from(HOSTILE_SHARD_NAMES + ["dir.safetensors"]), st.text(max_size=12))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["shard", "shard", "shard", "rename", "delete", "add", "weight_map", "metadata",
                                   "checksum", "checksums", "top", "total_size"]))
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            weight_map = index["weight_map"] = {}
        if op == "shard" and weight_map:
            weight_map[draw(st.sampled_from(sorted(weight_map)))] = draw(st.one_of(shard_names, json_values))
        elif op == "rename" and weight_map:
            weight_map[draw(st.text(max_size=8))] = weight_map.pop(draw(st.sampled_from(sorted(weight_map))))
        elif op == "delete" and weight_map:
            weight_map.pop(draw(st.sampled_from(sorted(weight_map))))
        elif op == "add":
            weight_map[draw(st.sampled_from(names + ["extra"]))] = draw(shard_names)
        elif op == "weight_map":
            index["weight_map"] = draw(json_values)
        elif op == "metadata":
            index["metadata"] = draw(json_values)
        elif op in ("checksum", "checksums", "total_size"):
            metadata = index.get("metadata")
            if not isinstance(metadata, dict):
                metadata = index["metadata"] = {}
            if op == "total_size":
                metadata["total_size"] = draw(st.sampled_from(INTERESTING_INTS))
            elif op == "checksums":
                metadata["checksums"] = draw(json_values)
            elif isinstance(metadata.get("checksums"), dict) and metadata["checksums"]:
                sums = metadata["checksums"]
                sums[draw(st.sampled_from(sorted(sums)))] = draw(st.one_of(
                    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), json_values))
        elif op == "top":
            return json_bytes(draw(json_values))
    return json.dumps(index).encode()


class OpenSpy:
    """Records the path of every file opened (``open`` audit event) while ``active``."""

    def __init__(self):
        self.active = False
        self.opened: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event, args):
        if self.active and event == "open" and args and isinstance(args[0], (str, bytes)):
            self.opened.append(os.fsdecode(args[0]))


@pytest.fixture(scope="module")
def open_spy():
    return OpenSpy()


def load_folder(folder, verify: bool) -> None:
    with Checkpoint(resolve_checkpoint(folder), verify=verify) as checkpoint:
        for name in checkpoint.keys():
            checkpoint.get(name).clone()


def mutated_index(mutator: Mutator, base: dict) -> bytes:
    pick = mutator.rng.randrange(5)
    if pick <= 2:
        index = mutator.json(base["index"])
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if pick == 2 and isinstance(weight_map, dict) and weight_map:
            weight_map[mutator.rng.choice(sorted(weight_map))] = mutator.rng.choice(HOSTILE_SHARD_NAMES)
        return json.dumps(index).encode()
    return mutator.bytes(base["bytes"], len(base["bytes"]))


def _index_fuzz(base, spy, data, verify, seed):
    mutator = Mutator(seed)
    for item in [data] + [mutated_index(mutator, base) for _ in range(BATCH)]:
        write(base["index_path"], item)
        spy.opened.clear()
        spy.active = True
        try:
            result = outcome("index", lambda: load_folder(base["folder"], verify))
        finally:
            spy.active = False
        if result == UnsafeCheckpointError.__name__:  # refused before any shard (or other file) was opened
            opened = [path for path in spy.opened if not path.endswith(".json") and path != str(base["folder"])]
            assert opened == [], f"a refused index still opened {opened}"


def test_fuzz_index_files(index_base, open_spy, capped):
    fuzz("index", [index_files(index_base), st.booleans(), st.integers(0, 2**32)],
         lambda data, verify, seed: _index_fuzz(index_base, open_spy, data, verify, seed))
    counts = OUTCOMES["index"]
    assert counts["loaded"] > 0 and counts["UnsafeCheckpointError"] > 0 and counts["CheckpointError"] > 0


@pytest.mark.slow
def test_fuzz_index_files_long(index_base, open_spy, capped):
    fuzz("index", [index_files(index_base), st.booleans(), st.integers(0, 2**32)],
         lambda data, verify, seed: _index_fuzz(index_base, open_spy, data, verify, seed), slow=True)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                                   "model.bin", "C:\\x.safetensors", "\x00.safetensors"])
def test_refused_index_opens_no_shard(index_base, open_spy, tmp_path, shard):
    """The spy sees the index being read and nothing else: no shard, no outside file."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in os.listdir(index_base["folder"]):
        if name.endswith(".safetensors") and os.path.isfile(index_base["folder"] / name):
            os.link(index_base["folder"] / name, folder / name)
    index = copy.deepcopy(index_base["index"])
    index["weight_map"]["layer.0.weight"] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    open_spy.opened.clear()
    open_spy.active = True
    try:
        with pytest.raises(UnsafeCheckpointError, match="refusing shard name"):
            GPT2LMHeadModel.from_pretrained(folder, config=GPT2Config(n_layer=1, n_embd=8, n_head=2))
    finally:
        open_spy.active = False
    assert [path for path in open_spy.opened if not path.endswith(".json") and path != str(folder)] == []
    assert any(path.endswith("model.safetensors.index.json") for path in open_spy.opened)


# --------------------------------------------------------------------------- config.json

CONFIG_KEYS_EXTRA = ["model_type", "auto_map", "architectures", "torch_dtype", "dtype", "pruned_heads",
                     "num_labels", "use_return_dict", "name_or_path", "_name_or_path", "attribute_map",
                     "__class__", "__dict__", "id2label", "tie_word_embeddings", "attn_implementation",
                     "_attn_implementation", "return_unused_kwargs", "transformers_version", "num_hidden_layers",
                     "hidden_size", "num_attention_heads", "cache_dir", "revision", "rope_scaling",
                     "rope_parameters", "eos_token_id", "head_dim", "num_key_value_heads", "feed_forward_proj"]
MODEL_TYPES = ["gpt2", "bert", "llama", "t5"]
EVIL_MODULE = "import pathlib\npathlib.Path(__file__).with_name('IMPORTED').write_text('ran')\n" \
              "from pretrained import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"


@pytest.fixture(scope="module")
def config_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_config")
    (folder / "evil.py").write_text(EVIL_MODULE)
    bases = {}
    for model_type in MODEL_TYPES:
        config = AutoConfig.for_model(model_type)
        bases[model_type] = json.loads(config.to_json_string())
    return {"folder": folder, "path": folder / "config.json", "bases": bases}


@st.composite
def config_files(draw, base: dict) -> bytes:
    config = copy.deepcopy(base["bases"][draw(st.sampled_from(MODEL_TYPES))])
    text = json.dumps(config, indent=2).encode()
    kind = draw(st.sampled_from(["json", "json", "json", "json", "flip", "truncate", "raw"]))
    if kind == "flip":
        return flip_bits(text, draw(st.lists(st.tuples(st.integers(0, len(text) - 1), st.integers(0, 7)),
                                             min_size=1, max_size=6)))
    if kind == "truncate":
        return text[:draw(st.integers(0, len(text) - 1))]
    if kind == "raw":
        return draw(st.one_of(st.sampled_from(RAW_JSON_TEXTS), st.binary(max_size=64)))
    keys = sorted(config) + CONFIG_KEYS_EXTRA
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "set", "delete", "model_type", "auto_map", "top"]))
        if op == "set":
            config[draw(st.sampled_from(keys))] = draw(json_values)
        elif op == "delete":
            config.pop(draw(st.sampled_from(keys)), None)
        elif op == "model_type":
            config["model_type"] = draw(st.one_of(st.sampled_from(MODEL_TYPES + ["evil", "unknown", "", "GPT2"]),
                                                  json_values))
        elif op == "auto_map":
            config["auto_map"] = draw(st.one_of(
                st.just({"AutoConfig": "evil.EvilConfig"}), st.just({"AutoModel": "evil.EvilModel"}),
                st.just({"AutoConfig": "other--evil.EvilConfig"}), st.just({"AutoConfig": ["evil.EvilConfig"]}),
                json_values))
        else:
            return json_bytes(draw(json_values))
    try:
        return json.dumps(config).encode()
    except (ValueError, RecursionError):
        return b"{}"


def mutated_config(mutator: Mutator, base: dict) -> bytes:
    config = base["bases"][mutator.rng.choice(MODEL_TYPES)]
    if mutator.rng.random() < 0.75:
        config = mutator.json(config)
        if isinstance(config, dict) and mutator.rng.random() < 0.3:
            config[mutator.rng.choice(CONFIG_KEYS_EXTRA)] = mutator.value()
        return json.dumps(config).encode()
    text = json.dumps(config).encode()
    return mutator.bytes(text, len(text))


def _config_fuzz(base, data, seed):
    mutator = Mutator(seed)
    for item in [data] + [mutated_config(mutator, base) for _ in range(BATCH)]:
        write(base["path"], item)
        outcome("config", lambda: AutoConfig.from_pretrained(base["folder"]))


def test_fuzz_config_json(config_base, capped):
    fuzz("config", [config_files(config_base), st.integers(0, 2**32)],
         lambda data, seed: _config_fuzz(config_base, data, seed))
    counts = OUTCOMES["config"]
    assert counts["loaded"] > 0 and counts["CheckpointError"] > 0 and counts["RemoteCodeError"] > 0
    assert not (config_base["folder"] / "IMPORTED").exists(), "custom code ran without trust_remote_code"


@pytest.mark.slow
def test_fuzz_config_json_long(config_base, capped):
    fuzz("config", [config_files(config_base), st.integers(0, 2**32)],
         lambda data, seed: _config_fuzz(config_base, data, seed), slow=True)
    assert not (config_base["folder"] / "IMPORTED").exists()


# --------------------------------------------------------------------------- wrong-typed config values


WRONG_TYPED = st.one_of(st.sampled_from(["x", "12", "", "true", None, 1.5, True, False, [], [1], {}, {"a": 1},
                                         -1.0, 10**30]), json_values)


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_model") / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    return {"folder": folder, "config": config}


def _model_fuzz(base, key, value):
    kind = _field_kinds(GPT2Config).get(key)
    assume(kind is None or not _fits(value, *kind))  # a value of the right type is not this test's business
    config = dict(base["config"], **{key: value})
    write(base["folder"] / "config.json", json.dumps(config).encode())
    aliases = [alias for alias, target in GPT2Config.attribute_map.items() if target == key] + [key]
    aliases += ["torch_dtype"] if key == "dtype" else []
    try:
        GPT2LMHeadModel.from_pretrained(base["folder"])
        OUTCOMES["model" + _SUFFIX[0]]["loaded"] += 1
    except (PretrainedError, ValueError) as exc:
        OUTCOMES["model" + _SUFFIX[0]][type(exc).__name__] += 1
        assert any(repr(name) in str(exc) for name in aliases), f"{key}={value!r}: message does not name it: {exc}"


def test_fuzz_wrong_typed_config_values_name_the_key(model_base, capped):
    """Building a model from a config.json with a wrong-typed value: it loads, or the error names the key."""
    keys = sorted(k for k in model_base["config"] if not k.endswith("token_id") and k not in ("model_type",))
    fuzz("model", [st.sampled_from(keys), WRONG_TYPED], lambda key, value: _model_fuzz(model_base, key, value))
    assert OUTCOMES["model"]["CheckpointError"] > 0


@pytest.mark.parametrize("key,value", [("num_hidden_layers", "x"), ("n_layer", "x"), ("n_embd", 2.5),
                                       ("vocab_size", None), ("n_head", [2]), ("layer_norm_epsilon", "1e-5"),
                                       ("tie_word_embeddings", "false"), ("pruned_heads", {"0": "x"})])
def test_wrong_typed_config_value_is_a_checkpoint_error_naming_the_key(model_base, tmp_path, key, value):
    folder = tmp_path / "m"
    folder.mkdir()
    config = dict(model_base["config"], **{key: value})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=repr(key).replace("[", r"\[")) as info:
        AutoConfig.from_pretrained(folder)
    assert isinstance(info.value, ValueError)  # still the builtin a Transformers user catches


@pytest.mark.parametrize("model_type,fragment", [(None, "must be a string"), (5, "must be a string"),
                                                 (["gpt2"], "must be a string"), ("nope", "Unrecognized")])
def test_bad_model_type_is_documented(tmp_path, model_type, fragment):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(PretrainedError, match=fragment):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 2}))
    with pytest.raises(PretrainedError, match="no 'model_type'"):
        AutoConfig.from_pretrained(tmp_path)


# --------------------------------------------------------------------------- claims of huge sizes


def _header_file(path, header: dict, data: bytes = b"") -> None:
    raw = json_bytes(header)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


HUGE_CLAIMS = {
    "header length 10**12": lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}"),
    "header length just under the limit": lambda p: p.write_bytes(struct.pack("<Q", MAX_HEADER_SIZE) + b"{}"),
    "tensor of 10**12 bytes": lambda p: _header_file(p, {"w": {"dtype": "U8", "shape": [10**12],
                                                               "data_offsets": [0, 10**12]}}, b"\0" * 16),
    "shape 10**6 x 10**6": lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [10**6, 10**6],
                                                            "data_offsets": [0, 4]}}, b"\0" * 4),
    "zero-sized 2**62 x 8": lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [0, 2**62, 8],
                                                             "data_offsets": [0, 0]}}),
    "offsets 2**64": lambda p: _header_file(p, {"w": {"dtype": "U8", "shape": [2**64],
                                                      "data_offsets": [0, 2**64]}}, b"\0"),
}


@pytest.mark.parametrize("claim", sorted(HUGE_CLAIMS))
def test_huge_claims_allocate_nothing(tmp_path, claim):
    path = tmp_path / "model.safetensors"
    HUGE_CLAIMS[claim](path)
    tracemalloc.start()
    try:
        # The address-space cap makes any real allocation of the claimed size fail loudly.
        with address_space_headroom(256 << 20), pytest.raises(PretrainedError):
            load_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"{claim}: Python allocated {peak} bytes"


def _sparse_file(path, header: dict, size: int) -> None:
    raw = json_bytes({"__metadata__": {"format": "pt"}, **header})
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        try:
            file.truncate(8 + len(raw) + size)
        except OSError as exc:
            pytest.skip(f"this file system cannot hold a sparse {size}-byte file: {exc}")
    if os.stat(path).st_blocks * 512 > 1 << 20:
        pytest.skip("the file system does not make sparse files")


def test_terabyte_checkpoint_in_a_sparse_file_is_mapped_not_read(tmp_path):
    """A header announcing 10**12 bytes that the (sparse) file really holds: zero-copy views, nothing read.

    A copy-on-write mapping of the whole terabyte is more than the kernel's overcommit heuristic allows
    on most machines; the reader then maps tensor by tensor.
    """
    path = tmp_path / "model.safetensors"
    gigabyte = 10**9
    _sparse_file(path, {f"w{i:04d}": {"dtype": "U8", "shape": [1000, 10**6],
                                      "data_offsets": [i * gigabyte, (i + 1) * gigabyte]} for i in range(1000)},
                 1000 * gigabyte)
    read_before = psutil.Process().io_counters().read_chars
    tracemalloc.start()
    with Checkpoint(resolve_checkpoint(path)) as checkpoint:
        assert len(checkpoint) == 1000
        tensors = [checkpoint.get(name) for name in ("w0000", "w0500", "w0999")]
        assert all(t.shape == (1000, 10**6) and t[999, 999_999].item() == 0 for t in tensors)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    read = psutil.Process().io_counters().read_chars - read_before  # read() bytes; mapped pages are not reads
    assert peak < 2_000_000, f"Python allocated {peak} bytes"
    assert read < 16 << 20, f"{read} bytes were read instead of mapped"


def test_a_tensor_too_large_to_map_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "model.safetensors"
    _sparse_file(path, {"w": {"dtype": "U8", "shape": [10**6, 10**6], "data_offsets": [0, 10**12]}}, 10**12)
    with Checkpoint(resolve_checkpoint(path)) as checkpoint:
        try:
            tensor = checkpoint.get("w")
        except PretrainedError as exc:  # a private mapping of 1 TB is refused on this machine: said clearly
            assert "cannot map" in str(exc) and "'w'" in str(exc)
        else:
            assert tensor.shape == (10**6, 10**6) and tensor[-1, -1].item() == 0
