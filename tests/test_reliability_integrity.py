"""Integrity: ``save_pretrained(checksums=True)`` and ``from_pretrained(verify=True)``.

Where the checksums live (see ``pretrained.storage.integrity``):

* sharded: ``metadata["checksums"] = {shard: sha256 of the file}`` in the index;
* single safetensors file: ``__metadata__["sha256"]`` in its own header, the
  SHA-256 of the whole file with that value replaced by 64 ``"0"``.

``verify=True`` checks them before any tensor is read and names the corrupt
file; a checkpoint without checksums loads with a warning. Every single-byte
flip of a small checkpoint is caught (exhaustively, byte by byte).
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch

from pretrained import GPT2Config, GPT2LMHeadModel
from pretrained.errors import CheckpointError, PretrainedError
from pretrained.storage import Checkpoint, read_header, resolve_checkpoint, save_checkpoint
from reliability_support import record

TINY = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16)
IDS = torch.tensor([[1, 5, 9, 12, 3]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**TINY)).eval()


def flip(path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def data_offset(path) -> int:
    return read_header(path).data_offset


@pytest.mark.parametrize("layout", ["single", "sharded", "bin_sharded"])
def test_checksums_are_written_and_verified(tmp_path, model, layout):
    options = {"single": {}, "sharded": {"max_shard_size": 4000},
               "bin_sharded": {"max_shard_size": 4000, "safe_serialization": False}}[layout]
    model.save_pretrained(tmp_path, checksums=True, **options)
    if layout == "single":
        metadata = read_header(tmp_path / "model.safetensors").metadata
        assert metadata["format"] == "pt" and len(metadata["sha256"]) == 64
    else:
        index_name = "model.safetensors.index.json" if layout == "sharded" else "pytorch_model.bin.index.json"
        index = json.loads((tmp_path / index_name).read_text())
        sums = index["metadata"]["checksums"]
        assert sorted(sums) == sorted(set(index["weight_map"].values())) and len(sums) >= 3
        for shard, digest in sums.items():
            assert hashlib.sha256((tmp_path / shard).read_bytes()).hexdigest() == digest
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path, verify=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_a_flipped_data_byte_is_detected_and_named(tmp_path, model, layout):
    model.save_pretrained(tmp_path, checksums=True, **({"max_shard_size": 4000} if layout == "sharded" else {}))
    victim = sorted(tmp_path.glob("model*.safetensors"))[1 if layout == "sharded" else 0]
    flip(victim, data_offset(victim) + 37)
    GPT2LMHeadModel.from_pretrained(tmp_path)  # unverified: the corruption goes unnoticed
    with pytest.raises(CheckpointError, match=f"checksum mismatch in .*{victim.name}"):
        GPT2LMHeadModel.from_pretrained(tmp_path, verify=True)


def test_a_structurally_valid_header_change_is_detected(tmp_path, model):
    """F32 -> I32 keeps the header valid and the sizes equal; only the checksum can tell."""
    model.save_pretrained(tmp_path, checksums=True)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    assert data.count(b'"F32"') > 1
    path.write_bytes(data.replace(b'"F32"', b'"I32"', 1))
    read_header(path)  # still a valid file
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        GPT2LMHeadModel.from_pretrained(tmp_path, verify=True)


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_every_single_byte_flip_is_caught(tmp_path, layout):
    """Exhaustive: flip each byte of a weights file in turn; verify=True never loads it."""
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int8)}
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, state, checksums=True, **({"max_shard_size": 16} if layout == "sharded" else {}))
    victim = sorted(folder.glob("*.safetensors"))[0]
    original = victim.read_bytes()
    outcomes = {}
    for position in range(len(original)):
        data = bytearray(original)
        data[position] ^= 1 << (position % 8)
        victim.write_bytes(bytes(data))
        try:
            with Checkpoint(resolve_checkpoint(folder), verify=True):
                pass
            outcomes["loaded"] = outcomes.get("loaded", 0) + 1
        except PretrainedError as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
    victim.write_bytes(original)
    record(f"integrity.byte_flips.{layout}", {"file_bytes": len(original), "outcomes": outcomes})
    assert "loaded" not in outcomes and sum(outcomes.values()) == len(original)


def test_verify_without_checksums_warns_and_loads(tmp_path, model, caplog):
    model.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "sharded", max_shard_size=4000)
    for folder in ("plain", "sharded"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pretrained"):
            logger = logging.getLogger("pretrained")
            logger.addHandler(caplog.handler)
            try:
                GPT2LMHeadModel.from_pretrained(tmp_path / folder, verify=True)
            finally:
                logger.removeHandler(caplog.handler)
        assert any("carries no checksums" in r.getMessage() for r in caplog.records), folder


def test_single_bin_cannot_hold_a_checksum(tmp_path, model, caplog):
    logger = logging.getLogger("pretrained")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="pretrained"):
            model.save_pretrained(tmp_path, checksums=True, safe_serialization=False)
            GPT2LMHeadModel.from_pretrained(tmp_path, verify=True)
    finally:
        logger.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records]
    assert any("no place for a checksum" in m for m in messages)
    assert any("carries no checksums" in m for m in messages)


@pytest.mark.parametrize("damage,fragment", [
    (lambda sums, shard: sums.update({shard: "nothex"}), "malformed SHA-256"),
    (lambda sums, shard: sums.pop(shard), "none for shard"),
    (lambda sums, shard: sums.update({shard: "0" * 64}), "checksum mismatch"),
])
def test_damaged_checksum_entries(tmp_path, model, damage, fragment):
    model.save_pretrained(tmp_path, checksums=True, max_shard_size=4000)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    damage(index["metadata"]["checksums"], sorted(index["metadata"]["checksums"])[0])
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=fragment):
        GPT2LMHeadModel.from_pretrained(tmp_path, verify=True)


@pytest.mark.parametrize("max_shard_size", ["5GB", 4000])
def test_transformers_loads_checksummed_checkpoints(tmp_path, model, max_shard_size):
    transformers = pytest.importorskip("transformers")
    model.save_pretrained(tmp_path, checksums=True, max_shard_size=max_shard_size)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(IDS).logits, model(IDS).logits)
    from safetensors.torch import load_file

    for path in tmp_path.glob("model*.safetensors"):
        load_file(path)  # the reference reader accepts the extra metadata key
