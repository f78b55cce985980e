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


def test_plan_from_config_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}))
    result = cli("plan", str(tmp_path), "--max-memory", "0=40GiB,1=40GiB,cpu=64GiB", "--dtype", "bf16")
    assert result.returncode == 0, result.stderr
    assert "device map" in result.stdout and "to disk: nothing" in result.stdout
    assert "model.layers.0" in result.stdout and "#" in result.stdout  # head model (prefix), with usage bars


def test_plan_sends_what_does_not_fit_to_disk(hf_gpt2_dirs):
    result = cli("plan", str(hf_gpt2_dirs["single"]), "--max-memory", "cpu=60KB")
    assert result.returncode == 0, result.stderr
    assert "to disk: " in result.stdout and "to disk: nothing" not in result.stdout


@pytest.mark.parametrize("spec", ["cpu", "cpu=lots", "gpu0=1GB", ""])
def test_plan_bad_max_memory_is_one_line(hf_gpt2_dirs, spec):
    assert_one_line_error(cli("plan", str(hf_gpt2_dirs["single"]), "--max-memory", spec), "max")


def test_convert_casts_reshards_and_loads_in_transformers(hf_gpt2_dirs, tmp_path, input_ids):
    import torch
    import transformers

    dst = tmp_path / "out"
    result = cli("convert", str(hf_gpt2_dirs["bin"]), str(dst), "--dtype", "bfloat16", "--max-shard-size", "40KB")
    assert result.returncode == 0, result.stderr
    assert "verified equal" in result.stdout
    assert len(list(dst.glob("model-*-of-*.safetensors"))) >= 2 and (dst / "config.json").is_file()
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["bin"])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype="auto")
    assert theirs.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(ref.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name
    back = cli("convert", str(dst), str(tmp_path / "bin"), "--to", "bin")
    assert back.returncode == 0, back.stderr and (tmp_path / "bin" / "pytorch_model.bin").is_file()


def test_convert_not_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    assert_one_line_error(cli("convert", str(tmp_path / "src"), str(tmp_path / "dst")), "model.safetensors")
    assert_one_line_error(cli("convert", str(tmp_path / "missing"), str(tmp_path / "dst")), "does not exist")


def test_run_with_max_memory_offloads_and_gives_the_same_table(minilm_dir, tmp_path):
    plain = cli("run", str(minilm_dir))
    offloaded = cli("run", str(minilm_dir), "--max-memory", "cpu=40MB", "--offload-folder", str(tmp_path / "off"))
    assert offloaded.returncode == 0, offloaded.stderr
    table = lambda out: [line for line in out.splitlines() if line.strip().startswith("[") and "." in line[6:]]
    assert table(offloaded.stdout) == table(plain.stdout)
    assert "disk" in offloaded.stdout  # the load report's device map


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_run_generates_for_causal_and_seq2seq_models(minilm_dir, tmp_path, arch):
    """A tiny random model with the all-MiniLM tokenizer.json (vocab 30522): run generates text."""
    import shutil

    import torch

    from pretrained import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30522, n_positions=64))
    else:
        model = T5ForConditionalGeneration(T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                                    vocab_size=30522, decoder_start_token_id=0))
    model.save_pretrained(tmp_path / arch)
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / arch / "tokenizer.json")
    result = cli("run", str(tmp_path / arch), "--prompt", "hello world", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert "Load report" in result.stdout and type(model).__name__ in result.stdout
    assert result.stdout.splitlines()[0].strip()  # the generated text comes first
