"""Model surgery on GPT-2 and BERT: embeddings, ties, resizing, head pruning.

Every model starts from the Transformers-written tiny checkpoints of
``conftest.py`` (loaded through ``from_pretrained``), so the resized and pruned
checkpoints we save can be loaded back by Transformers where it still can
(resizing; Transformers 5 has no head pruning).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from helpers import assert_close

from pretrained import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel, GPT2Model

transformers = pytest.importorskip("transformers")

ARCHS = ["gpt2", "bert"]
VOCAB = 99


def _dirs(arch, hf_gpt2_dirs, hf_bert_dirs):
    return hf_gpt2_dirs if arch == "gpt2" else hf_bert_dirs


def _head_class(arch):
    return GPT2LMHeadModel if arch == "gpt2" else BertForMaskedLM


def _reference_class(arch):
    return transformers.GPT2LMHeadModel if arch == "gpt2" else transformers.BertForMaskedLM


def _logits(model, input_ids, **kw):
    with torch.no_grad():
        return model(input_ids=input_ids, **kw)[0]


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def loaded(arch, hf_gpt2_dirs, hf_bert_dirs):
    """(our head model loaded from the Transformers checkpoint, its folder)."""
    folder = _dirs(arch, hf_gpt2_dirs, hf_bert_dirs)["single"]
    return _head_class(arch).from_pretrained(folder), folder


# ------------------------------------------------------------------ embeddings and ties


def test_get_and_set_embeddings(arch, loaded):
    model, _ = loaded
    inner = model.transformer.wte if arch == "gpt2" else model.bert.embeddings.word_embeddings
    head = model.lm_head if arch == "gpt2" else model.cls.predictions.decoder
    assert model.get_input_embeddings() is inner
    assert model.base_model.get_input_embeddings() is inner
    assert model.get_output_embeddings() is head
    assert model.base_model.get_output_embeddings() is None  # a body has no head

    new = nn.Embedding(VOCAB, 32)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new
    assert head.weight is not new.weight
    model.tie_weights()
    assert head.weight is new.weight


def test_tie_weights_shares_and_respects_tie_word_embeddings(arch, tiny_gpt2_config_kwargs, tiny_bert_config_kwargs):
    if arch == "gpt2":
        tied = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs))
        untied = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs, tie_word_embeddings=False))
    else:
        tied = BertForMaskedLM(BertConfig(**tiny_bert_config_kwargs))
        untied = BertForMaskedLM(BertConfig(**tiny_bert_config_kwargs, tie_word_embeddings=False))
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    untied.tie_weights()
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    if arch == "bert":  # the decoder bias and the head's bias stay one Parameter
        assert tied.cls.predictions.decoder.bias is tied.cls.predictions.bias


def test_torchscript_clones_instead_of_sharing_and_saves_the_head(arch, loaded, input_ids, tmp_path):
    _, folder = loaded
    model = _head_class(arch).from_pretrained(folder, torchscript=True)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    assert out.weight is not inp.weight and torch.equal(out.weight, inp.weight)
    assert out.weight.untyped_storage().data_ptr() != inp.weight.untyped_storage().data_ptr()
    out_name = "lm_head.weight" if arch == "gpt2" else "cls.predictions.decoder.weight"
    in_name = "transformer.wte.weight" if arch == "gpt2" else "bert.embeddings.word_embeddings.weight"

    model.save_pretrained(tmp_path / "ts")
    with safe_open(tmp_path / "ts" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert {out_name, in_name} <= keys  # the clone is written separately

    plain = _head_class(arch).from_pretrained(folder)
    plain.save_pretrained(tmp_path / "plain")
    with safe_open(tmp_path / "plain" / "model.safetensors", "pt") as f:
        assert out_name not in set(f.keys())  # a shared tie is stored once

    expected = _logits(plain, input_ids)
    reloaded = _head_class(arch).from_pretrained(tmp_path / "ts")
    assert reloaded.config.torchscript is True
    assert reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight
    assert_close(_logits(reloaded, input_ids), expected, atol=1e-6)
    theirs = _reference_class(arch).from_pretrained(tmp_path / "ts").eval()
    assert_close(_logits(theirs, input_ids), expected, atol=1e-5)


# ------------------------------------------------------------------ resize_token_embeddings


def _tied_bias(model, arch):
    return model.cls.predictions.bias if arch == "bert" else None


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_resize_grows_with_padding_to_multiple(arch, hf_gpt2_dirs, hf_bert_dirs, input_ids, tmp_path, low_cpu_mem_usage):
    folder = _dirs(arch, hf_gpt2_dirs, hf_bert_dirs)["single"]
    model = _head_class(arch).from_pretrained(folder, low_cpu_mem_usage=low_cpu_mem_usage)
    emb = model.get_input_embeddings()
    old_rows = emb.weight.detach().clone()
    padding_idx = emb.padding_idx
    assert padding_idx == (0 if arch == "bert" else None)
    old_bias = _tied_bias(model, arch).detach().clone() if arch == "bert" else None
    before = _logits(model, input_ids)

    torch.manual_seed(1)
    returned = model.resize_token_embeddings(110, pad_to_multiple_of=64)

    assert returned is emb and model.get_input_embeddings() is emb  # the module object is kept
    assert emb.num_embeddings == 128 and emb.weight.shape == (128, 32) and emb.padding_idx == padding_idx
    assert model.config.vocab_size == 128
    assert torch.equal(emb.weight[:VOCAB].detach(), old_rows)  # old rows untouched
    new_rows = emb.weight[VOCAB:].detach()
    mean = old_rows.mean(0)
    assert float((new_rows - mean).abs().max()) < 1e-3  # drawn from N(mean, 1e-9 cov): about the mean
    assert float((new_rows - mean).abs().max()) > 0  # sampled around it, not a constant fill

    head = model.get_output_embeddings()
    assert head.weight is emb.weight and head.out_features == 128
    if arch == "bert":
        bias = model.cls.predictions.bias
        assert head.bias is bias and bias.shape == (128,)
        assert torch.equal(bias[:VOCAB].detach(), old_bias) and float(bias[VOCAB:].detach().abs().max()) == 0.0

    after = _logits(model, input_ids)
    assert after.shape[-1] == 128
    assert_close(after[..., :VOCAB], before, atol=1e-6)  # the old vocabulary scores as before

    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 128
    reloaded = _head_class(arch).from_pretrained(tmp_path)
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    assert_close(_logits(reloaded, input_ids), after, atol=1e-6)
    theirs, info = _reference_class(arch).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert_close(_logits(theirs.eval(), input_ids), after, atol=1e-5)


def test_resize_shrinks_and_pads_current_size(arch, loaded, input_ids):
    model, _ = loaded
    emb = model.get_input_embeddings()
    old_rows = emb.weight.detach().clone()
    small = input_ids % 90

    assert model.resize_token_embeddings(90) is emb
    assert emb.weight.shape == (90, 32) and model.config.vocab_size == 90
    assert torch.equal(emb.weight.detach(), old_rows[:90])
    assert model.get_output_embeddings().weight is emb.weight
    if arch == "bert":
        assert model.cls.predictions.bias.shape == (90,)
        assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    logits = _logits(model, small)
    assert logits.shape[-1] == 90
    with torch.no_grad():  # loss uses the new vocabulary size
        assert torch.isfinite(model(small, labels=small)[0])

    # no new size: the current one padded up; neither: nothing changes
    assert model.resize_token_embeddings(pad_to_multiple_of=64).num_embeddings == 128
    assert model.resize_token_embeddings() is emb and emb.num_embeddings == 128
    assert torch.equal(emb.weight[:90].detach(), old_rows[:90])
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model.resize_token_embeddings(100, pad_to_multiple_of=2.5)
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(0)


def test_resize_untied_gpt2_head_follows(hf_gpt2_dirs, input_ids, tmp_path):
    torch.manual_seed(0)
    config = GPT2Config.from_pretrained(hf_gpt2_dirs["single"], tie_word_embeddings=False)
    model = GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is not model.transformer.wte.weight
    head = model.lm_head
    head_rows = head.weight.detach().clone()
    before = _logits(model, input_ids)

    model.resize_token_embeddings(130)

    assert model.lm_head is head and head.weight.shape == (130, 32) and head.out_features == 130
    assert head.weight is not model.transformer.wte.weight
    assert torch.equal(head.weight[:VOCAB].detach(), head_rows)
    assert float((head.weight[VOCAB:].detach() - head_rows.mean(0)).abs().max()) < 1e-3
    assert model.transformer.wte.weight.shape == (130, 32) and model.config.vocab_size == 130
    assert_close(_logits(model, input_ids)[..., :VOCAB], before, atol=1e-6)

    model.post_init()  # the resized head is not re-initialised by a later post_init
    assert torch.equal(head.weight[:VOCAB].detach(), head_rows)

    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" in set(f.keys())
    expected = _logits(model, input_ids)
    ours = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert ours.lm_head.weight is not ours.transformer.wte.weight
    assert_close(_logits(ours, input_ids), expected, atol=1e-6)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert_close(_logits(theirs, input_ids), expected, atol=1e-5)


def test_resize_untied_bert_head_and_bias_follow(hf_bert_dirs, input_ids):
    config = BertConfig.from_pretrained(hf_bert_dirs["single"], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    bias = model.cls.predictions.bias.detach().clone()
    model.resize_token_embeddings(105)
    head = model.cls.predictions
    assert head.decoder.weight.shape == (105, 32) and head.decoder.weight is not model.bert.embeddings.word_embeddings.weight
    assert head.bias.shape == (105,) and head.decoder.bias is head.bias
    assert torch.equal(head.bias[:VOCAB].detach(), bias)
    assert _logits(model, input_ids).shape == (2, 7, 105)


def test_resize_after_save_and_load(arch, loaded, input_ids, tmp_path):
    model, _ = loaded
    model.save_pretrained(tmp_path / "a")
    again = _head_class(arch).from_pretrained(tmp_path / "a")
    again.resize_token_embeddings(101)
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight
    assert again.get_output_embeddings().weight.shape == (101, 32)
    again.save_pretrained(tmp_path / "b")
    third = _head_class(arch).from_pretrained(tmp_path / "b")
    assert_close(_logits(third, input_ids), _logits(again, input_ids), atol=1e-6)


# ------------------------------------------------------------------ prune_heads


def _attention_shapes(model, arch):
    if arch == "gpt2":
        return [(b.attn.num_heads, tuple(b.attn.c_attn.weight.shape), tuple(b.attn.c_proj.weight.shape))
                for b in model.transformer.h]
    return [(layer.attention.self.num_attention_heads, tuple(layer.attention.self.query.weight.shape),
             tuple(layer.attention.output.dense.weight.shape)) for layer in model.bert.encoder.layer]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_prune_heads_is_exact_accumulates_and_survives_save(arch, hf_gpt2_dirs, hf_bert_dirs, input_ids,
                                                             attention_mask_right, tmp_path, impl):
    folder = _dirs(arch, hf_gpt2_dirs, hf_bert_dirs)["single"]
    model = _head_class(arch).from_pretrained(folder, attn_implementation=impl)
    mask = attention_mask_right
    real = mask.bool()
    head_mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    masked = _logits(model, input_ids, attention_mask=mask, head_mask=head_mask)
    assert float((masked - _logits(model, input_ids, attention_mask=mask)).abs().max()) > 1e-3

    model.prune_heads({0: [1], 1: [0, 3]})
    model.prune_heads({"0": [1, 2]})  # 1 is already gone: numbering stays the original one
    assert model.config.pruned_heads == {0: [1, 2], 1: [0, 3]}
    if arch == "gpt2":  # the fused q/k/v projection loses the heads' columns in all three parts
        assert _attention_shapes(model, arch) == [(2, (32, 48), (16, 32)), (2, (32, 48), (16, 32))]
    else:
        assert _attention_shapes(model, arch) == [(2, (16, 32), (32, 16)), (2, (16, 32), (32, 16))]
    pruned = _logits(model, input_ids, attention_mask=mask)
    assert_close(pruned[real], masked[real], atol=1e-5)

    model.post_init()  # pruned projections hold trained weights: never re-initialised
    assert_close(_logits(model, input_ids, attention_mask=mask)[real], masked[real], atol=1e-5)

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pruned_heads"] == {"0": [1, 2], "1": [0, 3]}
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        name = "transformer.h.0.attn.c_attn.weight" if arch == "gpt2" else \
            "bert.encoder.layer.0.attention.self.query.weight"
        assert tuple(f.get_slice(name).get_shape()) == ((32, 48) if arch == "gpt2" else (16, 32))
    reloaded, info = _head_class(arch).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert reloaded.config.pruned_heads == {0: [1, 2], 1: [0, 3]}
    assert _attention_shapes(reloaded, arch) == _attention_shapes(model, arch)
    assert_close(_logits(reloaded, input_ids, attention_mask=mask)[real], masked[real], atol=1e-5)


def test_prune_heads_on_base_model_and_empty_request(arch, hf_gpt2_dirs, hf_bert_dirs, input_ids):
    folder = _dirs(arch, hf_gpt2_dirs, hf_bert_dirs)["base"]
    base_class = GPT2Model if arch == "gpt2" else BertModel
    model = base_class.from_pretrained(folder)
    shapes = _attention_shapes_base(model, arch)
    model.prune_heads({0: []})
    assert _attention_shapes_base(model, arch) == shapes
    head_mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    with torch.no_grad():
        expected = model(input_ids, head_mask=head_mask).last_hidden_state
        model.prune_heads({1: [2]})
        got = model(input_ids).last_hidden_state
    assert model.config.pruned_heads[1] == [2]
    assert_close(got, expected, atol=1e-5)


def _attention_shapes_base(model, arch):
    layers = model.h if arch == "gpt2" else model.encoder.layer
    return [tuple(p.shape) for layer in layers for p in layer.parameters()]


def test_resize_without_mean_resizing_draws_from_initializer_range(arch, loaded):
    model, _ = loaded
    emb = model.get_input_embeddings()
    old_rows = emb.weight.detach().clone()
    torch.manual_seed(0)
    model.resize_token_embeddings(VOCAB + 200, mean_resizing=False)
    added = emb.weight[VOCAB:].detach()
    assert torch.equal(emb.weight[:VOCAB].detach(), old_rows)
    assert abs(float(added.std()) - 0.02) < 0.002 and abs(float(added.mean())) < 0.002
    assert float((added - old_rows.mean(0)).abs().max()) > 0.02  # not the mean rows
