"""The `pretrained` command through real subprocesses: output and error paths."""

import json
import os
import subprocess
import sys

import pytest


def cli(*args, timeout=180):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "pretrained.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def assert_one_line_error(result, fragment):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("pretrained: error:") and fragment in lines[0], lines[0]


def test_run_default_model_prints_similarities_and_a_load_report(minilm_dir):
    result = cli("run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Cosine similarity" in out and "Load report" in out and "peak RSS" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("[0]") and "1.000" in line]
    values = [float(v) for v in rows[0].split()[1:]]
    assert values[0] == pytest.approx(1.0, abs=1e-3)
    assert values[1] > 0.5 and values[2] < 0.3  # eating food ~ eating bread; ~ movie review: unrelated


def test_run_with_texts(minilm_dir):
    result = cli("run", str(minilm_dir), "--text", "a cat", "--text", "a kitten", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "[1] a kitten" in result.stdout and "torch.bfloat16" in result.stdout


def test_run_missing_model_is_one_line(tmp_path):
    assert_one_line_error(cli("run", str(tmp_path / "nope")), "does not exist")


def test_inspect_reads_headers_only(minilm_dir):
    result = cli("inspect", str(minilm_dir), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "BertModel" and info["format"] == "safetensors"
    assert info["parameters"]["total"] == 22_713_216
    assert info["parameters"]["embedding"] + info["parameters"]["non_embedding"] == 22_713_216
    assert info["flops_per_token"]["training"] == 6 * info["parameters"]["non_embedding"]
    text = cli("inspect", str(minilm_dir))
    assert text.returncode == 0 and "non-embedding" in text.stdout and "model.safetensors" in text.stdout


def test_inspect_tied_and_sharded(hf_gpt2_dirs):
    info = json.loads(cli("inspect", str(hf_gpt2_dirs["sharded"]), "--json").stdout)
    assert ["transformer.wte.weight", "lm_head.weight"] in info["tied_weights"]
    assert len(info["files"]) >= 3
    assert info["parameters"]["total"] == hf_gpt2_dirs["model"].num_parameters()


def test_inspect_not_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert_one_line_error(cli("inspect", str(tmp_path)), "model.safetensors")
    assert_one_line_error(cli("inspect", str(tmp_path / "missing")), "does not exist")
