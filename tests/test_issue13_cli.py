"""Issue 13: the command line on pruned checkpoints, architectures pretrained lacks,
``convert`` into its own source, unreadable JSON, variant-only folders, ``--help`` text."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402
from pretrained.cli import main  # noqa: E402
from pretrained.errors import CheckpointNotFoundError  # noqa: E402


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tree_digest(folder):
    digest = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digest


@pytest.fixture
def pruned_dir(tmp_path, tiny_bert_config_kwargs):
    # Transformers 5.x can no longer prune; 4.37 wrote exactly this layout: fewer heads
    # in some layers (rows of query/key/value) and config.pruned_heads.
    torch.manual_seed(0)
    model = pretrained.BertForMaskedLM(pretrained.BertConfig(**tiny_bert_config_kwargs))
    model.prune_heads({0: [1, 2], 1: [0]})
    model.save_pretrained(tmp_path / "pruned")
    return tmp_path / "pruned"


def test_issue13_inspect_and_plan_pruned_checkpoint(capsys, pruned_dir):
    code, out, err = _run(capsys, "inspect", str(pruned_dir), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["pruned_heads"] == {"0": [1, 2], "1": [0]}
    with open(pruned_dir / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    floats = sum(torch.Size(v["shape"]).numel() for k, v in header.items()
                 if k != "__metadata__" and v["dtype"] == "F32")
    assert info["parameters"]["total"] == floats
    assert info["limitations"] == []
    code, out, err = _run(capsys, "plan", str(pruned_dir), "--max-memory", "cpu=1GB")
    assert code == 0, err
    assert "(whole model)" in out


def _lacking(tmp_path):
    torch.manual_seed(0)
    # Phi: an architecture Transformers has and we lack (Mistral, the first choice, has landed since)
    config = transformers.PhiConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=64)
    transformers.PhiForCausalLM(config).save_pretrained(tmp_path / "phi")
    return tmp_path / "phi"


def test_issue13_inspect_architecture_pretrained_lacks(capsys, tmp_path):
    folder = _lacking(tmp_path)
    code, out, err = _run(capsys, "inspect", str(folder), "--json")
    assert code == 0, err
    info = json.loads(out)
    hf = transformers.PhiForCausalLM.from_pretrained(folder)
    assert info["model_type"] == "phi" and info["architecture"] == "PhiForCausalLM"
    assert info["parameters"]["total"] == hf.num_parameters()
    assert info["parameters"]["embedding"] is None and info["flops_per_token"] is None
    assert info["tied_weights"] is None
    assert "phi" in info["limitations"][0] and "unknown" in info["limitations"][0]
    code, out, err = _run(capsys, "inspect", str(folder))
    assert code == 0 and "cannot tell" in out and "embedding split unknown" in out


def test_issue13_inspect_and_plan_unsupported_rope(capsys, tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rope_parameters={"rope_type": "nonsense-rope", "rope_theta": 10000.0})
    folder = tmp_path / "rope"
    folder.mkdir()
    config.save_pretrained(folder)
    save_file({"model.embed_tokens.weight": torch.zeros(99, 32), "model.layers.0.mlp.up_proj.weight":
               torch.zeros(48, 32), "model.layers.1.mlp.up_proj.weight": torch.zeros(48, 32)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    code, out, err = _run(capsys, "inspect", str(folder), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["parameters"]["total"] == 99 * 32 + 2 * 48 * 32
    assert "nonsense-rope" in info["limitations"][0]
    code, out, err = _run(capsys, "plan", str(folder), "--max-memory", "cpu=20KB,disk=1GB")
    assert code == 0, err
    assert "note:" in out and "headers" in out
    assert "model.layers" in out and ".mlp" not in out  # numbered layers are the units kept whole


def test_issue13_plan_architecture_pretrained_lacks(capsys, tmp_path):
    folder = _lacking(tmp_path)
    code, out, err = _run(capsys, "plan", str(folder), "--max-memory", "cpu=40KB,disk=1GB")
    assert code == 0, err
    assert "model_type 'phi'" in out
    assert "model.layers" in out and "to disk:" in out
    # a config alone, without weights, cannot be planned: said in one line
    os.remove(folder / "model.safetensors")
    code, out, err = _run(capsys, "plan", str(folder), "--max-memory", "cpu=40KB")
    assert code == 2 and "no weights files" in err and "phi" in err


@pytest.mark.parametrize("where", ["same", "same-trailing-slash", "inside"])
def test_issue13_convert_into_its_own_source_is_refused(capsys, hf_gpt2_dirs, tmp_path, where):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(hf_gpt2_dirs["sharded"], src)
    before = _tree_digest(src)
    dst = {"same": str(src), "same-trailing-slash": str(src) + "/", "inside": str(src / "out")}[where]
    code, out, err = _run(capsys, "convert", str(src), dst, "--dtype", "float16")
    assert code == 2
    assert "source folder" in err and "convert" in err
    assert _tree_digest(src) == before
    assert sorted(os.listdir(src)) == sorted(os.listdir(hf_gpt2_dirs["sharded"]))


def test_issue13_convert_invalid_config_json_names_the_file(capsys, hf_gpt2_dirs, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(hf_gpt2_dirs["single"], src)
    (src / "config.json").write_text("{not json")
    code, out, err = _run(capsys, "convert", str(src), str(tmp_path / "dst"), "--dtype", "float16")
    assert code == 2
    assert str(src / "config.json") in err and "not valid JSON" in err


def test_issue13_variant_only_folder_names_the_variant(hf_gpt2_dirs):
    with pytest.raises(CheckpointNotFoundError) as err:
        pretrained.GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["variant"])
    assert "'fp16'" in str(err.value) and "variant='fp16'" in str(err.value)
    # the named variant loads; a wrong one names what is there too
    pretrained.GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["variant"], variant="fp16")
    with pytest.raises(CheckpointNotFoundError, match="'fp16'"):
        pretrained.GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["variant"], variant="bf16")


def test_issue13_variants_in_names():
    from pretrained.storage.names import variants_in

    assert variants_in(["model.fp16-00001-of-00002.safetensors", "pytorch_model.bin.index.bf16.json",
                        "pytorch_model.ema.bin", "model.safetensors", "config.json"]) == ["bf16", "ema", "fp16"]


def test_issue13_help_has_no_restructuredtext_markup(capsys):
    for argv in (["--help"], ["convert", "--help"], ["plan", "--help"], ["inspect", "--help"], ["run", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "``" not in out and ":func:" not in out and ":class:" not in out, argv
        assert "usage: pretrained" in out
