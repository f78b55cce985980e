"""Shared pieces of the ``test_reliability_*`` modules: figures, guards, child processes.

Figures: every reliability test calls :func:`record` with its counts (cases
run, outcomes, trials, loads seen). They are printed (``pytest -s`` shows
them) and, for the long forms (``-m slow``) or when
``PRETRAINED_RELIABILITY_RECORD=1`` is set, merged into
``benchmarks/results/reliability.json`` with the machine they ran on.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"


def record(section: str, figures: dict, *, long_form: bool = False) -> None:
    """Print ``figures`` and, for long forms (or on request), store them under ``section``."""
    print(f"\n[reliability] {section}: {json.dumps(figures, sort_keys=True)}")
    if not (long_form or os.environ.get("PRETRAINED_RELIABILITY_RECORD") == "1"):
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    import torch

    data.setdefault("sections", {})[section] = {
        **figures,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpus": os.cpu_count()},
    }
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def address_space_headroom(extra_bytes: int = 1 << 30):
    """Cap this process's address space at its current size plus ``extra_bytes``.

    Inside, any allocation (Python, torch or mmap) of a size a hostile file
    merely claims fails at once instead of succeeding lazily; the caller
    checks that it never happens (it would surface as MemoryError/RuntimeError,
    which are not documented errors).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = psutil.Process().memory_info().vms + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def spawn(script: str, *args: str, **popen_kwargs) -> subprocess.Popen:
    """Start ``python -c script args...`` with this checkout's ``src`` first on the path."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=child_env(),
                            **popen_kwargs)


def run_child(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def require_folder_exchange(folder) -> None:
    """Skip unless this file system swaps folders atomically (renameat2 RENAME_EXCHANGE); without
    it saves replace files one by one, which the writer documents as not atomic."""
    import pytest

    from pretrained.storage import writer

    a, b = Path(folder) / "probe-a", Path(folder) / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        writer._exchange(str(a), str(b))
    except OSError as exc:
        pytest.skip(f"no RENAME_EXCHANGE on this file system ({exc}); saves are not atomic here")
    finally:
        a.rmdir(), b.rmdir()


def temp_leftovers(parent) -> list:
    return [name for name in os.listdir(parent) if ".pretrained-tmp-" in name]
