"""Gradient checkpointing on GPT-2 and BERT.

The decisions of api.md: ``use_reentrant=False`` by default, blocks are
checkpointed through their ``__call__`` (so hooks run again during the
recompute), nothing is checkpointed when gradients are off, and GPT-2 turns
``use_cache`` off in training with one warning.  Gradients must equal those of
the plain run.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from helpers import assert_close

from pretrained import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel
from pretrained.logging import enable_propagation
from pretrained.modeling.base import checkpoint_block

ARCHS = ["gpt2", "bert"]


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def make(arch, tiny_gpt2_config_kwargs, tiny_bert_config_kwargs):
    """A builder of dropout-free head models with the same (seed 0) weights."""

    def build(**overrides):
        torch.manual_seed(0)
        if arch == "gpt2":
            kw = dict(tiny_gpt2_config_kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
            return GPT2LMHeadModel(GPT2Config(**kw))
        kw = dict(tiny_bert_config_kwargs, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)
        return BertForMaskedLM(BertConfig(**kw))

    return build


def _stack(model):
    """The module that owns the checkpointing switch, and its blocks."""
    if isinstance(model, GPT2LMHeadModel):
        return model.transformer, list(model.transformer.h)
    return model.bert.encoder, list(model.bert.encoder.layer)


def _loss(model, input_ids):
    return model(input_ids, labels=input_ids)[0]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_enable_disable_and_default_kwargs(make):
    model = make()
    stack, _ = _stack(model)
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and stack.gradient_checkpointing
    fn = stack._gradient_checkpointing_func
    assert isinstance(fn, functools.partial) and fn.func is checkpoint_block  # torch checkpoint, run to the end
    assert fn.keywords == {"use_reentrant": False}
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing and not stack.gradient_checkpointing

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True, "preserve_rng_state": False})
    assert stack._gradient_checkpointing_func.keywords == {"use_reentrant": True, "preserve_rng_state": False}


def test_grads_equal_plain_run_and_hooks_fire_during_recompute(make, input_ids):
    plain, checkpointed = make().train(), make().train()
    checkpointed.gradient_checkpointing_enable()
    counts = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        block = _stack(model)[1][0]
        calls = []
        block.register_forward_hook(lambda m, args, out: calls.append(torch.is_grad_enabled()))
        _loss(model, input_ids).backward()
        counts[name] = calls
    assert counts["plain"] == [True]
    assert len(counts["checkpointed"]) == 2  # the forward, then the recompute in backward
    a, b = _grads(plain), _grads(checkpointed)
    assert a.keys() == b.keys() and len(a) == len(list(plain.parameters()))
    for name in a:
        assert_close(b[name], a[name], atol=1e-5)


def test_reentrant_checkpointing_also_gives_equal_grads(make, input_ids):
    plain, checkpointed = make().train(), make().train()
    checkpointed.gradient_checkpointing_enable({"use_reentrant": True})
    _loss(plain, input_ids).backward()
    _loss(checkpointed, input_ids).backward()
    a, b = _grads(plain), _grads(checkpointed)
    assert a.keys() == b.keys()
    for name in a:
        assert_close(b[name], a[name], atol=1e-5)


def test_not_checkpointed_without_grad_or_in_eval(make, input_ids):
    model = make().train()
    model.gradient_checkpointing_enable()
    stack, blocks = _stack(model)
    used = []
    inner = stack._gradient_checkpointing_func
    stack._gradient_checkpointing_func = lambda *a, **k: used.append(1) or inner(*a, **k)
    calls = []
    blocks[0].register_forward_hook(lambda *_: calls.append(1))

    with torch.no_grad():
        model(input_ids)
    assert used == [] and calls == [1]
    model.eval()
    _loss(model, input_ids).backward()
    assert used == [] and calls == [1, 1]
    model.train()
    _loss(model, input_ids).backward()
    assert len(used) == len(blocks) and calls == [1, 1, 1, 1]


@pytest.mark.parametrize("reentrant", [False, True])
def test_frozen_embeddings_still_give_block_grads(make, input_ids, reentrant):
    grads = []
    for checkpointing in (False, True):
        model = make().train()
        for module in model.base_model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.requires_grad_(False)
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        _loss(model, input_ids).backward()
        grads.append(_grads(model))
        assert model.get_input_embeddings().weight.grad is None
    plain, checkpointed = grads
    block_grads = [n for n in plain if ".h.0." in n or ".layer.0." in n]
    assert block_grads and all(float(plain[n].abs().max()) > 0 for n in block_grads)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert_close(checkpointed[name], plain[name], atol=1e-5)


def test_gpt2_use_cache_is_turned_off_in_training_with_one_warning(tiny_gpt2_config_kwargs, input_ids, caplog,
                                                                   monkeypatch):
    import pretrained.logging as plog

    monkeypatch.setattr(plog, "_seen", set())  # warning_once is per process: start afresh
    enable_propagation()
    model = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs)).train()
    model.gradient_checkpointing_enable()
    with caplog.at_level(logging.WARNING, logger="pretrained"):
        first = model(input_ids, use_cache=True)
        second = model(input_ids)  # config.use_cache is True
    assert first.past_key_values is None and second.past_key_values is None
    records = {id(r) for r in caplog.records if "incompatible with gradient checkpointing" in r.getMessage()}
    assert len(records) == 1
    model.eval()
    assert len(model(input_ids).past_key_values) == tiny_gpt2_config_kwargs["n_layer"]  # eval: cache as usual
    with torch.no_grad():
        model.train()
        assert model(input_ids).past_key_values is not None  # no gradients: no checkpointing, cache kept


def test_unsupported_model_and_config_flag(make):
    class Plain(PreTrainedModel):
        config_class = PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.linear = torch.nn.Linear(2, 2)
            self.post_init()

    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        Plain(PretrainedConfig()).gradient_checkpointing_enable()
    model = make(gradient_checkpointing=True)  # the pre-4.35 config switch
    assert model.is_gradient_checkpointing
    assert not hasattr(model.config, "gradient_checkpointing")  # not saved again


def test_reentrant_input_grad_hook_is_single_and_harmless_in_inference(make, input_ids):
    model = make().train()
    model.gradient_checkpointing_enable({"use_reentrant": True})
    model.gradient_checkpointing_enable({"use_reentrant": True})
    assert len(model.get_input_embeddings()._forward_hooks) == 1
    with torch.inference_mode():
        model(input_ids)
    model.gradient_checkpointing_disable()
    assert len(model.get_input_embeddings()._forward_hooks) == 0
