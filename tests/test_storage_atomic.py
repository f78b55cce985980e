"""AtomicFolder on its own: the folder transaction every save runs in (storage/atomic.py)."""

import errno
import os

import pytest

import pretrained.storage.atomic as atomic
from pretrained.errors import SaveError
from pretrained.storage.atomic import AtomicFolder


def leftovers(parent):
    return [name for name in os.listdir(parent) if atomic.TMP_MARK in name]


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "f"
    path.mkdir()
    (path / "keep.txt").write_text("keep")
    (path / "old.bin").write_text("old")
    (path / "notes.txt").write_text("old notes")
    return path


@pytest.fixture(params=["exchange", "fallback"])
def swap_mode(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.EINVAL, "no")))
    return request.param


def test_a_clean_exit_swaps_in_the_new_version(folder, swap_mode):
    with AtomicFolder(folder, writes=["notes.txt", "sub/new.txt"], stale=lambda entries: [
            e for e in entries if e.endswith(".bin")]) as out:
        assert out.path != str(folder) and os.path.isdir(out.path)
        assert sorted(os.listdir(out.path)) == ["keep.txt"]  # carried over: neither written nor stale
        out.write_bytes("notes.txt", b"new notes")
        with open(out.new_file("sub/new.txt"), "w") as file:
            file.write("deep")
        out.written("sub/new.txt")
        assert (folder / "notes.txt").read_text() == "old notes"  # nothing visible before the exit
    assert sorted(os.listdir(folder)) == ["keep.txt", "notes.txt", "sub"]
    assert (folder / "notes.txt").read_text() == "new notes"
    assert (folder / "sub" / "new.txt").read_text() == "deep"
    assert leftovers(folder.parent) == []


def test_the_fallback_deletes_stale_entries_in_the_order_given(folder, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    (folder / "a.bin").write_text("a")
    deleted, real_unlink = [], os.unlink

    def unlink(path, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(folder):
            deleted.append(os.path.basename(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with AtomicFolder(folder, writes=["notes.txt"], stale=lambda entries: ["old.bin", "a.bin"]) as out:
        out.write_bytes("notes.txt", b"new")
    assert deleted == ["old.bin", "a.bin"]


def test_an_exception_leaves_the_folder_untouched_and_is_chained(folder, swap_mode):
    before = {name: (folder / name).read_text() for name in os.listdir(folder)}
    with pytest.raises(SaveError, match="previous contents are untouched: RuntimeError: boom") as info:
        with AtomicFolder(folder, writes=["notes.txt"], stale=lambda entries: ["old.bin"]) as out:
            out.write_bytes("notes.txt", b"new")
            raise RuntimeError("boom")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert {name: (folder / name).read_text() for name in os.listdir(folder)} == before
    assert leftovers(folder.parent) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SaveError("as it is")])
def test_save_errors_and_interrupts_propagate_as_they_are(folder, error):
    with pytest.raises(type(error)) as info:
        with AtomicFolder(folder, writes=["notes.txt"]):
            raise error
    assert info.value is error
    assert (folder / "notes.txt").read_text() == "old notes"
    assert leftovers(folder.parent) == []


def test_a_new_folder_is_created_with_its_parents(tmp_path):
    with AtomicFolder(tmp_path / "a" / "b", writes=["x"]) as out:
        out.write_bytes("x", b"1")
    assert (tmp_path / "a" / "b" / "x").read_bytes() == b"1"


def test_a_file_or_the_root_is_refused_before_anything_happens(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaveError, match="not a folder"):
        AtomicFolder(tmp_path / "file", writes=["x"])
    with pytest.raises(SaveError, match="root"):
        AtomicFolder("/", writes=["x"])
    with pytest.raises(ValueError):
        AtomicFolder(tmp_path / "new", writes=[])
    assert not (tmp_path / "new").exists()
