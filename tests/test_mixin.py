"""ModuleUtilsMixin and the accounting helpers of PreTrainedModel, on GPT-2 and BERT.

Numbers marked "spec" are the worked examples of spec.md section 4 (measured
on Transformers 4.37 with BertModel(hidden 32, 2 layers, 4 heads,
intermediate 64, vocabulary 100, 64 positions)); the rest is compared with
Transformers 5 where it still has the method, or with the written-out rule.
"""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import assert_close

from pretrained import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel, GPT2Model
from pretrained.logging import enable_propagation

transformers = pytest.importorskip("transformers")

SPEC_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 vocab_size=100, max_position_embeddings=64)
NEG32 = torch.finfo(torch.float32).min
WARNING_TEXT = "We strongly recommend passing in an `attention_mask`"


def _count(caplog, text=WARNING_TEXT):
    """Records holding ``text``; a record that reached caplog's handler twice
    (pytest attaches it to our non-propagating logger as well) counts once."""
    return len({id(r) for r in caplog.records if text in r.getMessage()})


@pytest.fixture(scope="module")
def spec_bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(**SPEC_BERT)).eval()


# ------------------------------------------------------------------ counting


def test_num_parameters_spec_numbers(spec_bert):
    assert spec_bert.num_parameters() == 23_520
    assert spec_bert.num_parameters(exclude_embeddings=True) == 18_208  # word + position + token type: 5 312
    spec_bert.embeddings.word_embeddings.weight.requires_grad_(False)
    try:
        assert spec_bert.num_parameters(only_trainable=True) == 20_320
        assert spec_bert.num_parameters(only_trainable=True, exclude_embeddings=True) == 18_208
    finally:
        spec_bert.embeddings.word_embeddings.weight.requires_grad_(True)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_num_parameters_and_footprint_match_transformers(arch, tiny_gpt2_config_kwargs, tiny_bert_config_kwargs):
    if arch == "gpt2":
        ours = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs))
        theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**tiny_gpt2_config_kwargs))
    else:
        ours = BertForMaskedLM(BertConfig(**tiny_bert_config_kwargs))
        theirs = transformers.BertForMaskedLM(transformers.BertConfig(**tiny_bert_config_kwargs))
    for kw in ({}, {"exclude_embeddings": True}, {"only_trainable": True}):
        assert ours.num_parameters(**kw) == theirs.num_parameters(**kw), kw
    assert ours.get_memory_footprint(return_buffers=False) == theirs.get_memory_footprint(return_buffers=False)
    assert ours.get_memory_footprint() == theirs.get_memory_footprint()


def test_memory_footprint_spec_and_ties(spec_bert, tiny_gpt2_config_kwargs):
    # spec: 94 080 bytes of parameters + 1 024 of the two non-persistent int64 buffers
    assert spec_bert.get_memory_footprint(return_buffers=False) == 94_080
    assert spec_bert.get_memory_footprint() == 95_104
    assert spec_bert.get_memory_footprint(return_buffers=True) - 94_080 == sum(
        b.numel() * b.element_size() for _, b in spec_bert.named_buffers())

    tied = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs))
    untied = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs, tie_word_embeddings=False))
    head_bytes = 99 * 32 * 4
    assert untied.get_memory_footprint() - tied.get_memory_footprint() == head_bytes  # tied counted once
    assert tied.get_memory_footprint() == 4 * tied.num_parameters()
    assert tied.half().get_memory_footprint() == 2 * tied.num_parameters()


def test_estimate_tokens_and_floating_point_ops(spec_bert, caplog):
    ids = torch.zeros(2, 7, dtype=torch.long)
    assert spec_bert.estimate_tokens({"input_ids": ids}) == 14
    assert spec_bert.floating_point_ops({"input_ids": ids}) == 1_529_472  # spec: 6 x 14 x 18 208
    assert spec_bert.floating_point_ops({"input_ids": ids}, exclude_embeddings=False) == 6 * 14 * 23_520

    enable_propagation()
    model = BertModel(BertConfig(**SPEC_BERT))
    with caplog.at_level(logging.WARNING, logger="pretrained"):
        assert model.estimate_tokens({"inputs_embeds": torch.zeros(2, 7, 32)}) == 0
        assert model.floating_point_ops({}) == 0
    assert _count(caplog, "Could not estimate the number of tokens") == 1  # once per model


# ------------------------------------------------------------------ masks


def test_extended_attention_mask_encoder(spec_bert):
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    ext = spec_bert.get_extended_attention_mask(mask, (2, 3))
    assert ext.shape == (2, 1, 1, 3) and ext.dtype == torch.float32
    assert ext[0, 0, 0].tolist() == [0.0, 0.0, NEG32] and ext[1, 0, 0].tolist() == [0.0, NEG32, NEG32]
    half = spec_bert.get_extended_attention_mask(mask, (2, 3), dtype=torch.float16)
    assert half.dtype == torch.float16 and float(half.min()) == -65504.0
    three = spec_bert.get_extended_attention_mask(torch.ones(2, 3, 3), (2, 3))
    assert three.shape == (2, 1, 3, 3) and float(three.abs().max()) == 0.0
    with pytest.warns(FutureWarning):
        spec_bert.get_extended_attention_mask(mask, (2, 3), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="Wrong shape"):
        spec_bert.get_extended_attention_mask(torch.ones(3), (3,))


def test_extended_attention_mask_decoder_is_causal_with_past():
    model = BertModel(BertConfig(**SPEC_BERT, is_decoder=True))
    ext = model.get_extended_attention_mask(torch.ones(1, 5, dtype=torch.long), (1, 2))  # 3 cached + 2 new
    assert ext.shape == (1, 1, 2, 5)
    assert (ext == 0).int()[0, 0].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]  # spec example
    assert float(ext.min()) == NEG32
    padded = model.get_extended_attention_mask(torch.tensor([[0, 1, 1]]), (1, 3))
    assert padded.shape == (1, 1, 3, 3)
    assert (padded == 0).int()[0, 0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_invert_attention_mask(spec_bert):
    inv = spec_bert.invert_attention_mask(torch.tensor([[1, 0]]))
    assert inv.shape == (1, 1, 1, 2) and inv.tolist() == [[[[0.0, NEG32]]]]
    assert spec_bert.invert_attention_mask(torch.ones(1, 2, 2)).shape == (1, 1, 2, 2)
    assert spec_bert.half().invert_attention_mask(torch.tensor([[0, 1]])).tolist() == [[[[-65504.0, 0.0]]]]
    spec_bert.float()


def test_get_head_mask(spec_bert):
    assert spec_bert.get_head_mask(None, 3) == [None, None, None]
    one = spec_bert.get_head_mask(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    assert one.shape == (2, 1, 4, 1, 1) and one[:, 0, :, 0, 0].tolist() == [[1, 0, 1, 1]] * 2
    two = spec_bert.get_head_mask(torch.tensor([[1, 0, 1, 1], [0, 1, 1, 1]]), 2)
    assert two.shape == (2, 1, 4, 1, 1) and two.dtype == torch.float32
    assert two[1, 0, :, 0, 0].tolist() == [0, 1, 1, 1]
    chunked = spec_bert.get_head_mask(torch.ones(4), 2, is_attention_chunked=True)
    assert chunked.shape == (2, 1, 4, 1, 1, 1)
    with pytest.raises(ValueError):
        spec_bert.get_head_mask(torch.ones(3, 4), 2)


# ------------------------------------------------------------------ head_mask in every forward


def _models(tiny_gpt2_config_kwargs, tiny_bert_config_kwargs):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs, pad_token_id=0)).eval()
    bert = BertForMaskedLM(BertConfig(**tiny_bert_config_kwargs)).eval()
    return {"GPT2Model": gpt2.transformer, "GPT2LMHeadModel": gpt2, "BertModel": bert.bert, "BertForMaskedLM": bert}


@pytest.mark.parametrize("name", ["GPT2Model", "GPT2LMHeadModel", "BertModel", "BertForMaskedLM"])
def test_every_forward_honours_head_mask(name, tiny_gpt2_config_kwargs, tiny_bert_config_kwargs, input_ids):
    model = _models(tiny_gpt2_config_kwargs, tiny_bert_config_kwargs)[name]
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    real = mask.bool()
    off = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    results = {}
    for impl in ("eager", "sdpa"):
        model.config._attn_implementation = impl
        with torch.no_grad():
            plain = model(input_ids, attention_mask=mask)[0]
            ones = model(input_ids, attention_mask=mask, head_mask=torch.ones(4))[0]
            results[impl] = model(input_ids, attention_mask=mask, head_mask=off)[0]
        assert_close(ones[real], plain[real], atol=1e-5)
        assert float((results[impl][real] - plain[real]).abs().max()) > 1e-3
    assert_close(results["sdpa"][real], results["eager"][real], atol=1e-5)


# ------------------------------------------------------------------ memory hooks


def test_memory_hooks():
    model = BertModel(BertConfig(**SPEC_BERT)).eval()
    model.add_memory_hooks()
    layer = model.encoder.layer[0]
    assert (model.mem_rss_diff, model.mem_rss_pre_forward, model.mem_rss_post_forward) == (0, 0, 0)
    with torch.no_grad():
        model(torch.zeros(2, 7, dtype=torch.long))
    for module in (model, layer, layer.attention.self.query):
        assert isinstance(module.mem_rss_pre_forward, int) and module.mem_rss_pre_forward > 10_000_000
        assert module.mem_rss_post_forward > 10_000_000
        assert module.mem_rss_diff == module.mem_rss_post_forward - module.mem_rss_pre_forward
    model.reset_memory_hooks_state()
    assert all((m.mem_rss_diff, m.mem_rss_pre_forward, m.mem_rss_post_forward) == (0, 0, 0)
               for m in model.modules())


def test_memory_hooks_read_rss_through_psutil(monkeypatch):
    import psutil

    class FakeProcess:
        rss = 0

        def __init__(self, pid=None):
            pass

        def memory_info(self):
            FakeProcess.rss += 1000
            return type("Info", (), {"rss": FakeProcess.rss})()

    model = BertModel(BertConfig(**SPEC_BERT)).eval()
    model.add_memory_hooks()
    monkeypatch.setattr(psutil, "Process", FakeProcess)
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long))
    ran = []  # modules that ran (a ModuleList never does)
    for module in model.modules():
        module.register_forward_hook(lambda m, *_: ran.append(m))
    FakeProcess.rss = 0
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long))
    calls = FakeProcess.rss // 1000
    assert calls == 2 * len(ran)  # one reading before and one after each module's forward
    assert model.mem_rss_pre_forward == 1000 and model.mem_rss_post_forward == calls * 1000
    assert model.mem_rss_diff == 2 * (calls - 1) * 1000  # accumulated over both forwards
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long))
    assert model.mem_rss_diff == 3 * (calls - 1) * 1000  # accumulates over forwards


# ------------------------------------------------------------------ padding warning


def test_padding_warning_once_per_model_only_first_or_last_column(caplog, tiny_bert_config_kwargs):
    enable_propagation()
    model = BertModel(BertConfig(**tiny_bert_config_kwargs)).eval()  # pad_token_id 0
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]])
    with caplog.at_level(logging.WARNING, logger="pretrained"), torch.no_grad():
        model(ids)
        inner = ids.clone()
        inner[1, 2] = 0  # interior padding is not looked for
        model(inner)
        assert _count(caplog) == 0
        last = ids.clone()
        last[1, -1] = 0
        model(last, attention_mask=torch.ones_like(last))  # a mask: no warning
        assert _count(caplog) == 0
        model(last)
        assert _count(caplog) == 1
        first = ids.clone()
        first[0, 0] = 0
        model(first)
        model(last)
        assert _count(caplog) == 1  # once per model
        other = BertModel(BertConfig(**tiny_bert_config_kwargs)).eval()
        other(first)
        assert _count(caplog) == 2
    model.warnings_issued.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pretrained"):
        model.warn_if_padding_and_no_attention_mask(first, None)
    assert _count(caplog) == 1 and _count(caplog, "You may ignore this warning") == 0


def test_padding_warning_gpt2(caplog, tiny_gpt2_config_kwargs):
    enable_propagation()
    ids = torch.tensor([[5, 6, 0]])
    with caplog.at_level(logging.WARNING, logger="pretrained"), torch.no_grad():
        GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs)).eval()(ids)  # no pad token: nothing to say
        assert _count(caplog) == 0
        GPT2LMHeadModel(GPT2Config(**tiny_gpt2_config_kwargs, pad_token_id=0)).eval()(ids)
        assert _count(caplog) == 1
        eos = tiny_gpt2_config_kwargs["eos_token_id"]
        GPT2Model(GPT2Config(**tiny_gpt2_config_kwargs, pad_token_id=eos)).eval()(torch.tensor([[eos, 5, 6]]))
    assert _count(caplog) == 2
    assert _count(caplog, "You may ignore this warning if your `pad_token_id` (98) is identical") == 1


@pytest.mark.parametrize("name", ["GPT2Model", "GPT2LMHeadModel", "BertModel", "BertForMaskedLM"])
def test_every_forward_taking_input_ids_checks_padding(name, monkeypatch, tiny_gpt2_config_kwargs,
                                                      tiny_bert_config_kwargs, input_ids):
    from pretrained import PreTrainedModel

    model = _models(tiny_gpt2_config_kwargs, tiny_bert_config_kwargs)[name]
    calls = []
    original = PreTrainedModel.warn_if_padding_and_no_attention_mask
    monkeypatch.setattr(PreTrainedModel, "warn_if_padding_and_no_attention_mask",
                        lambda self, ids, mask: calls.append((ids, mask)) or original(self, ids, mask))
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        model(input_ids, attention_mask=mask)
    assert len(calls) == 1 and calls[0][0] is input_ids and calls[0][1] is mask


# ------------------------------------------------------------------ init_weights / post_init


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_init_weights_initialises_each_module_once(tiny_bert_config_kwargs):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**tiny_bert_config_kwargs))
    assert all(getattr(m, "_is_hf_initialized", False) for m in model.modules())
    before = _state(model)
    model.init_weights()
    model.post_init()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a module that is not marked is initialised by _init_weights (here: the MLM bias is zeroed)
    with torch.no_grad():
        model.cls.predictions.bias.fill_(3.0)
    del model.cls.predictions._is_hf_initialized
    model.init_weights()
    assert float(model.cls.predictions.bias.detach().abs().max()) == 0.0
    assert model.cls.predictions._is_hf_initialized


def test_loaded_weights_are_never_reinitialised_only_missing_ones(hf_bert_dirs):
    """A BertModel checkpoint into BertForMaskedLM: the head transform and bias are missing."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model, info = BertForMaskedLM.from_pretrained(hf_bert_dirs["base"], output_loading_info=True)
    assert sorted(info["missing_keys"]) == [
        "cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ]
    file = load_file(str(hf_bert_dirs["base"] / "model.safetensors"))
    state = model.state_dict()
    for key, value in file.items():
        if not key.startswith("pooler."):
            assert torch.equal(state["bert." + key], value), key
    transform = model.cls.predictions.transform
    assert float(model.cls.predictions.bias.detach().abs().max()) == 0.0
    assert torch.equal(transform.LayerNorm.weight.detach(), torch.ones(32))
    assert float(transform.dense.bias.detach().abs().max()) == 0.0
    assert abs(float(transform.dense.weight.detach().std()) - 0.02) < 0.004

    before = _state(model)
    model.init_weights()
    model.post_init()
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
