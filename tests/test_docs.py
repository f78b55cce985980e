"""The user guide's examples run: every ```python block of docs/guide.md in order,
in one namespace, in a fresh folder; ```bash blocks through a shell there."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def test_guide_examples_run(tmp_path, monkeypatch):
    blocks = BLOCK.findall(GUIDE.read_text())
    assert sum(kind == "python" for kind, _ in blocks) >= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "guide"}
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    for number, (kind, code) in enumerate(blocks, 1):
        if kind == "python":
            try:
                exec(compile(code, f"{GUIDE.name}:block{number}", "exec"), namespace)
            except Exception as err:  # pragma: no cover - the message is the point
                pytest.fail(f"guide block {number} failed: {type(err).__name__}: {err}\n{code}")
        else:
            for line in code.strip().splitlines():
                result = subprocess.run(line, shell=True, capture_output=True, text=True, env=env, timeout=300)
                assert result.returncode == 0, f"guide command {line!r} failed:\n{result.stderr}"
