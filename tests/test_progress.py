"""Progress bars appear only on a terminal and obey the off switches."""

import io
import sys

import pytest

from pretrained.progress import progress, progress_enabled


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def tty(monkeypatch):
    """Clean switches; the test body calls it to put a terminal on stderr (pytest's
    capture resets sys.stderr between fixture setup and the test call)."""
    monkeypatch.delenv("PRETRAINED_NO_PROGRESS", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    return lambda: monkeypatch.setattr(sys, "stderr", FakeTTY())


def test_on_for_a_terminal(tty):
    tty()
    assert progress_enabled()
    items = list(range(5))
    wrapped = progress(items, desc="x")
    assert wrapped is not items and list(wrapped) == items


@pytest.mark.parametrize("switch", ["PRETRAINED_NO_PROGRESS", "HF_HUB_DISABLE_PROGRESS_BARS"])
def test_switches_turn_it_off(tty, monkeypatch, switch):
    tty()
    monkeypatch.setenv(switch, "1")
    items = [1, 2, 3]
    assert not progress_enabled() and progress(items) is items
    monkeypatch.setenv(switch, "0")
    assert progress_enabled()


def test_off_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    items = [1, 2, 3]
    assert progress(items) is items
