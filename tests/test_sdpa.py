"""Attention implementations on GPT-2 and BERT: ``attn_implementation`` at
load and build time, ``to_bettertransformer()`` / ``reverse_bettertransformer()``.

SDPA must give eager's outputs within 1e-5, with and without padding.  BERT's
padding-free path (turned on by ``to_bettertransformer``) leaves zeros at pad
positions, so there only real tokens are compared; default SDPA matches
everywhere.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

from pretrained import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config

ATOL = 1e-5
ARCHS = ["gpt2", "bert"]


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def setup(arch, hf_gpt2_dirs, hf_bert_dirs):
    if arch == "gpt2":
        return AutoModelForCausalLM, hf_gpt2_dirs
    return AutoModelForMaskedLM, hf_bert_dirs


def _run(model, input_ids, mask=None):
    with torch.no_grad():
        return model(input_ids, attention_mask=mask).logits


def _masks(attention_mask_left, attention_mask_right):
    return {"none": None, "right": attention_mask_right, "left": attention_mask_left}


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_sdpa_equals_eager_from_pretrained(setup, arch, input_ids, attention_mask_left, attention_mask_right, padding):
    auto, dirs = setup
    mask = _masks(attention_mask_left, attention_mask_right)[padding]
    eager = auto.from_pretrained(dirs["single"], attn_implementation="eager")
    sdpa = auto.from_pretrained(dirs["single"], attn_implementation="sdpa")
    default = auto.from_pretrained(dirs["single"])
    assert eager.config._attn_implementation == "eager"
    assert sdpa.config._attn_implementation == default.config._attn_implementation == "sdpa"
    expected = _run(eager, input_ids, mask)
    assert_close(_run(sdpa, input_ids, mask), expected, atol=ATOL)  # every position, pads included
    assert_close(_run(default, input_ids, mask), expected, atol=ATOL)
    real = mask.bool() if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    theirs = _run(dirs["model"], input_ids, mask)  # Transformers' own sdpa: equal at real tokens
    assert_close(theirs[real], expected[real], atol=ATOL)


def test_from_config_takes_attn_implementation(arch, tiny_gpt2_config_kwargs, tiny_bert_config_kwargs):
    if arch == "gpt2":
        auto, config = AutoModelForCausalLM, GPT2Config(**tiny_gpt2_config_kwargs)
    else:
        auto, config = AutoModelForMaskedLM, BertConfig(**tiny_bert_config_kwargs)
    for impl in ("eager", "sdpa"):
        model = auto.from_config(config, attn_implementation=impl)
        assert model.config._attn_implementation == impl
    assert auto.from_config(config).config._attn_implementation == "sdpa"
    assert config._attn_implementation is None  # the caller's config is left alone
    with pytest.raises(ValueError, match="attn_implementation"):
        auto.from_config(config, attn_implementation="flash_attention_9")


@pytest.mark.parametrize("padding", ["none", "right"])
def test_bettertransformer_round_trip(setup, arch, input_ids, attention_mask_left, attention_mask_right, padding):
    auto, dirs = setup
    mask = _masks(attention_mask_left, attention_mask_right)[padding]
    model = auto.from_pretrained(dirs["single"], attn_implementation="eager")
    expected = _run(model, input_ids, mask)

    assert model.to_bettertransformer() is model
    assert model.config._attn_implementation == "sdpa" and model.use_bettertransformer
    assert all(m.config._attn_implementation == "sdpa" for m in model.modules() if hasattr(m, "config"))
    fast = _run(model, input_ids, mask)
    if arch == "bert" and mask is not None:
        assert model.bert.unpad_inputs
        real = mask.bool()
        assert_close(fast[real], expected[real], atol=ATOL)
        assert float((fast[~real] - expected[~real]).abs().max()) > 1e-3  # pads are not computed there
    else:
        assert_close(fast, expected, atol=ATOL)

    assert model.reverse_bettertransformer() is model
    assert model.config._attn_implementation == "eager" and not model.use_bettertransformer
    if arch == "bert":
        assert not model.bert.unpad_inputs
    assert_close(_run(model, input_ids, mask), expected, atol=0)


def test_bettertransformer_training_grads_match(arch, setup, input_ids, attention_mask_right):
    """Gradients through the fused path equal the eager ones (real tokens carry the loss)."""
    auto, dirs = setup
    labels = input_ids.masked_fill(attention_mask_right == 0, -100)
    grads = []
    for fast in (False, True):
        model = auto.from_pretrained(dirs["single"], attn_implementation="eager")
        if fast:
            model.to_bettertransformer()
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model(input_ids, attention_mask=attention_mask_right, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], atol=ATOL)
