"""Checkpoints move both ways between Transformers and `pretrained` with equal outputs.

Issue 2's list: every Transformers layout (single, >=3 shards, variant, .bin,
sharded .bin) loads here with equal logits; our saves load in Transformers;
file names, index JSON and metadata are as Transformers writes them; every
loaded tensor equals the file's bytes; the real all-MiniLM-L6-v2 matches.
"""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from helpers import assert_close, tensor_bytes_equal

import pretrained
from pretrained import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

transformers = pytest.importorskip("transformers")

LAYOUTS = [("single", {}), ("sharded", {}), ("variant", {"variant": "fp16"}), ("bin", {}), ("bin_sharded", {})]


def _logits(model, input_ids, **kw):
    with torch.no_grad():
        return model(input_ids=input_ids, **kw).logits


@pytest.mark.parametrize("layout,kw", LAYOUTS, ids=[name for name, _ in LAYOUTS])
def test_gpt2_transformers_checkpoints_load_with_equal_logits(hf_gpt2_dirs, input_ids, layout, kw):
    ours, info = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs[layout], output_loading_info=True, **kw)
    assert isinstance(ours, pretrained.GPT2LMHeadModel)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert_close(_logits(ours, input_ids), _logits(hf_gpt2_dirs["model"], input_ids), atol=1e-5)
    assert ours.lm_head.weight is ours.transformer.wte.weight


@pytest.mark.parametrize("layout,kw", LAYOUTS, ids=[name for name, _ in LAYOUTS])
def test_bert_transformers_checkpoints_load_with_equal_logits(hf_bert_dirs, input_ids, attention_mask_right, layout, kw):
    ours, info = AutoModelForMaskedLM.from_pretrained(hf_bert_dirs[layout], output_loading_info=True, **kw)
    assert isinstance(ours, pretrained.BertForMaskedLM)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ref = hf_bert_dirs["model"]
    assert_close(_logits(ours, input_ids, attention_mask=attention_mask_right),
                 _logits(ref, input_ids, attention_mask=attention_mask_right), atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("shard", [None, 40_000])
def test_our_saves_load_in_transformers_with_equal_logits(arch, shard, hf_gpt2_dirs, hf_bert_dirs, input_ids, tmp_path):
    dirs = hf_gpt2_dirs if arch == "gpt2" else hf_bert_dirs
    auto = AutoModelForCausalLM if arch == "gpt2" else AutoModelForMaskedLM
    ours = auto.from_pretrained(dirs["single"])
    kwargs = {"max_shard_size": shard} if shard else {}
    ours.save_pretrained(tmp_path, **kwargs)
    if shard:
        assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 3
    ref_cls = getattr(transformers, "AutoModelForCausalLM" if arch == "gpt2" else "AutoModelForMaskedLM")
    theirs, info = ref_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_close(_logits(theirs.eval(), input_ids), _logits(dirs["model"], input_ids), atol=1e-5)
    assert_close(_logits(ours, input_ids), _logits(theirs, input_ids), atol=1e-5)


def _file_layout(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".json", ".bin") and p.name != "config.json"
                  and p.name != "generation_config.json")


@pytest.mark.parametrize("kwargs", [{}, {"max_shard_size": 40_000}, {"variant": "fp16"},
                                    {"variant": "fp16", "max_shard_size": 40_000}], ids=["single", "sharded", "variant", "variant-sharded"])
def test_file_names_index_and_metadata_as_transformers_writes_them(hf_gpt2_dirs, tmp_path, kwargs):
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"]).save_pretrained(ours_dir, **kwargs)
    hf_gpt2_dirs["model"].save_pretrained(theirs_dir, **kwargs)
    assert _file_layout(ours_dir) == _file_layout(theirs_dir)
    for index in ours_dir.glob("*.index*.json"):
        ours_text, theirs_text = index.read_text(), (theirs_dir / index.name).read_text()
        assert ours_text == theirs_text  # byte for byte: sorted keys, indent 2, same metadata
    for shard in ours_dir.glob("*.safetensors"):
        with safe_open(shard, "pt") as a, safe_open(theirs_dir / shard.name, "pt") as b:
            assert a.metadata() == b.metadata() == {"format": "pt"}
            assert sorted(a.keys()) == sorted(b.keys())
            for key in a.keys():
                assert tensor_bytes_equal(a.get_tensor(key), b.get_tensor(key))
        assert shard.read_bytes() == (theirs_dir / shard.name).read_bytes()


def test_every_loaded_tensor_equals_the_file_bytes(hf_bert_dirs):
    folder = hf_bert_dirs["sharded"]
    model = AutoModelForMaskedLM.from_pretrained(folder)
    params = model.state_dict()
    seen = 0
    for shard in folder.glob("model-*.safetensors"):
        with safe_open(shard, "pt") as f:
            for key in f.keys():
                assert tensor_bytes_equal(params[key], f.get_tensor(key)), key
                seen += 1
    assert seen == len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])


def test_real_minilm_sentence_embeddings_equal_transformers(minilm_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(["A man is eating food.", "A man is riding a white horse on an enclosed ground.",
                            "The new movie is awesome."])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    ours = AutoModel.from_pretrained(minilm_dir)
    assert isinstance(ours, pretrained.BertModel)
    theirs = transformers.AutoModel.from_pretrained(minilm_dir).eval()

    def embed(model):
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * w).sum(1) / w.sum(1), dim=-1)

    assert_close(embed(ours), embed(theirs), atol=1e-5)
    assert ours.num_parameters() == theirs.num_parameters()


def test_base_checkpoint_into_head_model_and_back(hf_bert_dirs, hf_gpt2_dirs):
    model, info = AutoModelForMaskedLM.from_pretrained(hf_bert_dirs["base"], output_loading_info=True)
    assert set(info["unexpected_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert set(info["missing_keys"]) == {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
                                         "cls.predictions.transform.dense.bias",
                                         "cls.predictions.transform.LayerNorm.weight",
                                         "cls.predictions.transform.LayerNorm.bias"}
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    base, info = AutoModel.from_pretrained(hf_gpt2_dirs["single"], output_loading_info=True)
    assert isinstance(base, pretrained.GPT2Model) and not info["missing_keys"]
    assert set(info["unexpected_keys"]) <= {"lm_head.weight"}
    ref = hf_gpt2_dirs["base_model"]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert_close(base(ids).last_hidden_state, ref(ids).last_hidden_state, atol=1e-5)


def test_torch_dtype_options(hf_gpt2_dirs, tmp_path):
    assert AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"]).dtype == torch.float32
    for value in (torch.bfloat16, "bfloat16", "bf16"):
        assert AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"], torch_dtype=value).dtype == torch.bfloat16
    assert AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"], dtype="float16").dtype == torch.float16
    # "auto": from the config, else from the weights
    half = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"], torch_dtype=torch.float16)
    half.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.float16
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("torch_dtype"), cfg.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.float16
    with pytest.raises(ValueError, match="torch_dtype"):
        AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"], torch_dtype="int8")


def test_transformers_loads_our_fp16_save_and_both_dtype_keys(hf_gpt2_dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"], torch_dtype=torch.float16)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["dtype"] == "float16" and cfg["architectures"] == ["GPT2LMHeadModel"]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert theirs.dtype == torch.float16


def test_save_is_main_process_false_writes_nothing_and_safe_false_writes_bin(hf_gpt2_dirs, tmp_path, input_ids):
    model = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"])
    model.save_pretrained(tmp_path / "none", is_main_process=False)
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    assert not list((tmp_path / "bin").glob("*.safetensors"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bin")
    assert_close(_logits(theirs.eval(), input_ids), _logits(model, input_ids), atol=1e-5)
    calls = []
    model.save_pretrained(tmp_path / "fn", safe_serialization=False,
                          save_function=lambda obj, path: (calls.append(path), torch.save(obj, path)))
    assert len(calls) == 1


def test_stale_single_file_does_not_shadow_a_new_sharded_save(hf_gpt2_dirs, tmp_path, input_ids):
    model = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"])
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with torch.no_grad():
        model.transformer.wte.weight.mul_(2)
    model.save_pretrained(tmp_path, max_shard_size=40_000)
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_close(_logits(again, input_ids), _logits(model, input_ids), atol=0)
    model.save_pretrained(tmp_path)  # sharded -> single: shards and index go
    assert not list(tmp_path.glob("model-*")) and not (tmp_path / "model.safetensors.index.json").exists()


def test_max_shard_size_strings(hf_gpt2_dirs, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"])
    model.save_pretrained(tmp_path / "a", max_shard_size="40KB")
    model.save_pretrained(tmp_path / "b", max_shard_size=40_000)
    assert _file_layout(tmp_path / "a") == _file_layout(tmp_path / "b")
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_pretrained(tmp_path / "c", max_shard_size="lots")
