"""Every ``>>>`` example in ``src/pretrained`` runs and prints what it says.

The examples run module by module, in a fresh folder, with a few names that
docstrings assume already exist: ``model`` (a small GPT-2 with the real
vocabulary size), ``config_json``, ``path`` (a safetensors file), and a sharded
fp16-variant checkpoint at ``path/to/folder``. None is skipped.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
from pathlib import Path

import torch

import pretrained

SRC = Path(pretrained.__file__).resolve().parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules():
    yield pretrained
    for info in pkgutil.walk_packages(pretrained.__path__, prefix="pretrained."):
        yield importlib.import_module(info.name)


def _globs() -> dict:
    from pretrained import GPT2Config, GPT2LMHeadModel
    from pretrained.storage import save_checkpoint

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=16))   # vocab 50257
    weights = {"a": torch.ones(64, dtype=torch.float16), "b": torch.zeros(64, dtype=torch.float16)}
    save_checkpoint("path/to/folder", weights, extra_files={"config.json": "{}"})
    save_checkpoint("path/to/folder", weights, max_shard_size=200, variant="fp16",
                    extra_files={"config.json": "{}"})
    save_checkpoint("model-folder", {"w": torch.ones(2, 3)})
    os.replace("model-folder/model.safetensors", "model.safetensors")
    return {"torch": torch, "os": os, "model": model, "config_json": model.config.to_json_string(),
            "path": "w.safetensors"}


def test_no_example_is_skipped():
    skipped = [f"{file.relative_to(SRC)}:{n}" for file in sorted(SRC.rglob("*.py"))
               for n, line in enumerate(file.read_text().splitlines(), 1) if re.search(r"doctest:.*\+SKIP", line)]
    assert not skipped, f"examples marked +SKIP: {skipped}"


def test_every_docstring_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    globs = _globs()
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    seen, examples = set(), 0
    for module in _modules():
        for test in finder.find(module, module.__name__, extraglobs=globs):
            if not test.examples or (test.filename, test.lineno) in seen:
                continue
            seen.add((test.filename, test.lineno))
            examples += len(test.examples)
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} doctest examples failed (see above)"
    assert examples >= 90, f"only {examples} examples found: the finder missed modules"
