"""``.bin`` reading never runs code and explains bad files."""

import os
import pickle

import pytest
import torch

from pretrained.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError
from pretrained.storage.pickle import load_pickle, save_pickle

# torch warns when it meets a pickle protocol above 2, which several tests do on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class _CreatesFile:
    """A pickle payload that would create a file when unpickled unsafely."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _CreatesFileViaOpen:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_roundtrip_zip_and_legacy(tmp_path):
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor(7, dtype=torch.int64)}
    save_pickle(state, tmp_path / "new.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    for name in ("new.bin", "legacy.bin"):
        loaded = load_pickle(tmp_path / name)
        assert list(loaded) == ["a", "b"]
        for key in state:
            torch.testing.assert_close(loaded[key], state[key])


def test_save_function_is_used(tmp_path):
    calls = []

    def saver(obj, path):
        calls.append(path)
        torch.save(obj, path)

    save_pickle({"a": torch.ones(1)}, tmp_path / "x.bin", save_function=saver)
    assert calls == [str(tmp_path / "x.bin")]
    with pytest.raises(TypeError):
        save_pickle({"a": 1}, tmp_path / "y.bin")


@pytest.mark.parametrize("payload", [_CreatesFile, _CreatesFileViaOpen])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({"weight": torch.ones(2), "x": payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_raw_pickle_with_code_is_refused(tmp_path, protocol):
    # torch's weights-only unpickler stops at the FRAME opcode of protocol >= 4 before it
    # sees the import; we still name the import by decoding (not running) the opcodes.
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps({"weight": torch.ones(1), "a": _CreatesFile(marker)}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match="evil.bin"):
        load_pickle(path)
    assert not marker.exists()


def test_harmless_pickle_torch_cannot_read_is_not_called_unsafe(tmp_path):
    # (a plain pickle of a *tensor* is not harmless: it imports torch.storage._load_from_bytes,
    # which runs torch.load(weights_only=False) on nested bytes; see test_reliability_security)
    path = tmp_path / "p4.bin"
    path.write_bytes(pickle.dumps({"a": [1.0, 2.0]}, protocol=4))
    with pytest.raises(CheckpointError, match="re-save it with torch.save") as info:
        load_pickle(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_numpy_objects_are_refused(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "np.bin"
    torch.save({"a": np.zeros(3)}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_pickle(path)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_broken_files(tmp_path, kind):
    path = tmp_path / f"{kind}.bin"
    if kind == "truncated":
        torch.save({"a": torch.ones(100)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 20)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_git_lfs_pointer_hint(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(CheckpointError, match="git-lfs"):
        load_pickle(path)


def test_non_state_dicts_are_rejected(tmp_path):
    torch.save([torch.ones(1)], tmp_path / "list.bin")
    torch.save({"a": 1}, tmp_path / "int.bin")
    torch.save({1: torch.ones(1)}, tmp_path / "intkey.bin")
    with pytest.raises(CheckpointError, match="list"):
        load_pickle(tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="'a'"):
        load_pickle(tmp_path / "int.bin")
    with pytest.raises(CheckpointError, match="not a string"):
        load_pickle(tmp_path / "intkey.bin")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nope.bin"):
        load_pickle(tmp_path / "nope.bin")
