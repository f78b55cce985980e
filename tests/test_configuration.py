"""PretrainedConfig: defaults, aliases, unknown keys, JSON round trip, 4.x and 5.x files."""

import json

import pytest
import torch

from pretrained import PretrainedConfig
from pretrained.errors import CheckpointError, CheckpointNotFoundError


class ToyConfig(PretrainedConfig):
    model_type = "toy"
    attribute_map = {"hidden_size": "d_model"}

    def __init__(self, d_model=16, layers=2, **kwargs):
        self.d_model = d_model
        self.layers = layers
        super().__init__(**kwargs)


def test_defaults_and_common_fields():
    c = ToyConfig()
    assert c.tie_word_embeddings is True and c.torchscript is False
    assert c.pruned_heads == {} and c.is_decoder is False and c.is_encoder_decoder is False
    assert c.pad_token_id is None and c.architectures is None


def test_attribute_map_reads_and_writes_the_real_field():
    c = ToyConfig(hidden_size=64)
    assert c.d_model == 64 and c.hidden_size == 64
    c.hidden_size = 8
    assert c.d_model == 8
    assert "hidden_size" not in c.to_dict() and c.to_dict()["d_model"] == 8


def test_unknown_keys_are_kept_and_written_back(tmp_path):
    c = ToyConfig(my_flag=[1, 2], nested={"a": 1})
    c.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["my_flag"] == [1, 2] and data["nested"] == {"a": 1}
    again = ToyConfig.from_pretrained(tmp_path)
    assert again.my_flag == [1, 2] and again == c


def test_json_format_sorted_indent2_trailing_newline(tmp_path):
    ToyConfig().save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert json.loads(text)["model_type"] == "toy"


@pytest.mark.parametrize("key", ["torch_dtype", "dtype"])
def test_both_dtype_keys_read_and_both_written(key, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy", key: "bfloat16"}))
    c = ToyConfig.from_pretrained(tmp_path)
    assert c.torch_dtype == "bfloat16" and c.dtype == "bfloat16"
    d = c.to_dict()
    assert d["torch_dtype"] == d["dtype"] == "bfloat16"
    c.dtype = torch.float16
    assert c.to_dict()["torch_dtype"] == "float16"


def test_pruned_heads_json_keys_back_to_int(tmp_path):
    c = ToyConfig(pruned_heads={0: [1, 2], 3: [0]})
    c.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["pruned_heads"] == {"0": [1, 2], "3": [0]}
    assert ToyConfig.from_pretrained(tmp_path).pruned_heads == {0: [1, 2], 3: [0]}


def test_overrides_and_unused_kwargs(tmp_path):
    ToyConfig().save_pretrained(tmp_path)
    c, unused = ToyConfig.from_pretrained(tmp_path, layers=7, not_a_field=3, return_unused_kwargs=True)
    assert c.layers == 7 and unused == {"not_a_field": 3}


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        ToyConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        ToyConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        ToyConfig.from_pretrained(tmp_path)


def test_reads_transformers_4x_and_5x_config_files(tmp_path, hf_gpt2_dirs, hf_bert_dirs):
    from pretrained import AutoConfig, BertConfig, GPT2Config

    gpt2 = AutoConfig.from_pretrained(hf_gpt2_dirs["single"])
    assert isinstance(gpt2, GPT2Config)
    ref = hf_gpt2_dirs["model"].config
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.vocab_size) == (ref.n_embd, ref.n_layer, ref.n_head, ref.vocab_size)
    assert gpt2.hidden_size == ref.n_embd
    bert = AutoConfig.from_pretrained(hf_bert_dirs["single"])
    assert isinstance(bert, BertConfig) and bert.intermediate_size == 37
    # a 4.x-era file (torch_dtype, transformers_version 4.8.2 style)
    old = {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
           "torch_dtype": "float16", "transformers_version": "4.37.2", "gradient_checkpointing": False}
    (tmp_path / "config.json").write_text(json.dumps(old))
    c = AutoConfig.from_pretrained(tmp_path)
    assert c.torch_dtype == "float16" and c.hidden_size == 32


def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    from pretrained import GPT2Config

    GPT2Config(n_layer=3, n_embd=48, n_head=4, custom_key="x").save_pretrained(tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "GPT2Config"
    assert (theirs.n_layer, theirs.n_embd, theirs.n_head) == (3, 48, 4) and theirs.custom_key == "x"
