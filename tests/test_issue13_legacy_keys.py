"""Issue 13, item 1: legacy tensor names (``gamma``/``beta``, weight-norm pairs) load as Transformers loads them.

Google's original BERT checkpoints (``bert-base-uncased`` on the Hub, ``.bin`` and
safetensors alike) name LayerNorm parameters ``gamma``/``beta``. Transformers renames
them on load; before this fix they were reported missing and re-initialised.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import assert_close

transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402
from pretrained.legacy_keys import current_name, legacy_aliases  # noqa: E402


def _legacy_layernorm_names(state_dict, norm_word: str):
    """``...<norm_word>...weight`` -> ``gamma``, ``bias`` -> ``beta``, as TF-era checkpoints name them."""
    out = {}
    for name, tensor in state_dict.items():
        module, _, leaf = name.rpartition(".")
        if norm_word in module.split(".")[-1] and leaf in ("weight", "bias"):
            name = f"{module}.{'gamma' if leaf == 'weight' else 'beta'}"
        out[name] = tensor.detach().clone().contiguous()
    return out


def _write(folder, config, state_dict, fmt):
    folder.mkdir()
    config.save_pretrained(folder)
    if fmt == "bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
    else:
        save_file(state_dict, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_issue13_bert_gamma_beta_load_like_transformers(hf_bert_dirs, input_ids, tmp_path, fmt):
    hf = hf_bert_dirs["model"]
    legacy = _legacy_layernorm_names(hf.state_dict(), "LayerNorm")
    assert sum(k.endswith(".gamma") for k in legacy) == 6  # embeddings, 2 per layer, the head transform
    folder = _write(tmp_path / "legacy", hf.config, legacy, fmt)

    ours, info = pretrained.BertForMaskedLM.from_pretrained(folder, output_loading_info=True)
    theirs = transformers.BertForMaskedLM.from_pretrained(folder).eval()
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    with torch.no_grad():
        expected = theirs(input_ids).logits
        assert_close(expected, hf(input_ids).logits)  # Transformers renamed them too
        assert_close(ours(input_ids).logits, expected)

    # the base model with a head checkpoint (prefix stripping and renaming together)
    base, info = pretrained.BertModel.from_pretrained(folder, output_loading_info=True)
    assert not [k for k in info["missing_keys"] if "LayerNorm" in k]
    assert_close(base.embeddings.LayerNorm.weight.detach(), hf.bert.embeddings.LayerNorm.weight.detach(), atol=0)

    # a re-save writes today's names, which both libraries load
    ours.save_pretrained(tmp_path / "resaved")
    with open(tmp_path / "resaved" / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert not [k for k in header if k.endswith((".gamma", ".beta"))]
    again = transformers.BertForMaskedLM.from_pretrained(tmp_path / "resaved").eval()
    with torch.no_grad():
        assert_close(again(input_ids).logits, expected)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_issue13_gpt2_gamma_beta_load_as_transformers_4x(hf_gpt2_dirs, input_ids, tmp_path, fmt):
    # Transformers 4.x renames every gamma/beta key (5.x only LayerNorm.gamma): ln_1.gamma loads.
    hf = hf_gpt2_dirs["model"]
    legacy = _legacy_layernorm_names(hf.state_dict(), "ln_")
    legacy.pop("lm_head.weight")  # tied to wte, as 4.x saved safetensors
    assert sum(k.endswith(".gamma") for k in legacy) == 5
    folder = _write(tmp_path / "legacy", hf.config, legacy, fmt)
    ours, info = pretrained.GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    with torch.no_grad():
        assert_close(ours(input_ids).logits, hf(input_ids).logits)


def test_issue13_llama_and_t5_norm_gamma_load(tmp_path, input_ids):
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).eval()
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0)).eval()
    for name, hf, ours_cls in (("llama", llama, pretrained.LlamaForCausalLM),
                               ("t5", t5, pretrained.T5ForConditionalGeneration)):
        legacy = _legacy_layernorm_names(hf.state_dict(), "norm")
        assert any(k.endswith(".gamma") for k in legacy)
        legacy = {k: v for k, v in legacy.items() if k not in ("encoder.embed_tokens.weight",
                                                               "decoder.embed_tokens.weight", "lm_head.weight")
                  or name == "llama"}
        folder = _write(tmp_path / name, hf.config, legacy, "safetensors")
        ours, info = ours_cls.from_pretrained(folder, output_loading_info=True)
        assert info["missing_keys"] == [] and info["unexpected_keys"] == [], (name, info)
        with torch.no_grad():
            kwargs = {"decoder_input_ids": input_ids[:, :3]} if name == "t5" else {}
            assert_close(ours(input_ids, **kwargs).logits, hf(input_ids, **kwargs).logits)


def test_issue13_current_name_wins_and_real_gamma_parameters_stay():
    assert current_name("encoder.LayerNorm.gamma") == "encoder.LayerNorm.weight"
    assert current_name("ln.beta") == "ln.bias"
    assert current_name("conv.weight_g") == "conv.parametrizations.weight.original0"
    assert current_name("conv.parametrizations.weight.original1") == "conv.weight_v"
    assert current_name("gammas.weight") is None and current_name("x.alphabeta") is None
    # both names present: the current one is used, the legacy one stays unexpected
    assert legacy_aliases(["a.gamma", "a.weight", "b.beta"]) == {"b.bias": "b.beta"}


class _WeightNormConfig(pretrained.PretrainedConfig):
    model_type = "issue13-weight-norm"


class _WeightNormModel(pretrained.PreTrainedModel):
    config_class = _WeightNormConfig

    def __init__(self, config):
        super().__init__(config)
        self.conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 3, 1))
        self.post_init()

    def forward(self, x):
        return self.conv(x)


def test_issue13_weight_norm_legacy_names_load(tmp_path):
    # a checkpoint of torch.nn.utils.weight_norm (weight_g / weight_v) into the parametrization API
    torch.manual_seed(0)
    model = _WeightNormModel(_WeightNormConfig()).eval()
    sd = model.state_dict()
    old = {"conv.bias": sd["conv.bias"], "conv.weight_g": sd["conv.parametrizations.weight.original0"] * 2,
           "conv.weight_v": sd["conv.parametrizations.weight.original1"]}
    folder = _write(tmp_path / "wn", model.config, old, "safetensors")
    loaded, info = _WeightNormModel.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert torch.equal(loaded.conv.parametrizations.weight.original0, old["conv.weight_g"])
    assert torch.equal(loaded.conv.parametrizations.weight.original1, old["conv.weight_v"])
