"""loading.py on its own: skeleton without init, key matching, report, init guard."""

import pytest
import torch
from torch import nn

from pretrained import PretrainedConfig, PreTrainedModel
from pretrained.errors import WeightsMismatchError
from pretrained.loading import (
    KeyList,
    StateDictSource,
    build_skeleton,
    initialize_missing,
    load_weights,
)


class ToyConfig(PretrainedConfig):
    model_type = "toy-loading"

    def __init__(self, hidden=8, vocab=10, **kwargs):
        self.hidden, self.vocab = hidden, vocab
        super().__init__(**kwargs)


class ToyPreTrained(PreTrainedModel):
    config_class = ToyConfig
    base_model_prefix = "body"
    _tied_weights_keys = ["head.weight"]


class ToyBody(ToyPreTrained):
    def __init__(self, config):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab, config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        self.register_buffer("positions", torch.arange(4) * 2, persistent=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.emb


class ToyWithHead(ToyPreTrained):
    def __init__(self, config):
        super().__init__(config)
        self.body = ToyBody(config)
        self.head = nn.Linear(config.hidden, config.vocab, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.head


def _clone_sd(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_skeleton_runs_no_parameter_init_but_computes_buffers():
    calls = []

    class Spy(ToyBody):
        def _init_weights(self, module):
            calls.append(module)

    model = build_skeleton(Spy, ToyConfig(), dtype=torch.bfloat16)
    assert calls == []  # _init_weights skipped while building for a checkpoint
    assert model.emb.weight.dtype == torch.bfloat16
    assert torch.equal(model.positions, torch.arange(4) * 2)  # buffers are real


def test_head_model_loads_base_checkpoint_and_vice_versa():
    base = ToyBody(ToyConfig())
    model, info = ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=_clone_sd(base),
                                              output_loading_info=True)
    assert torch.equal(model.body.emb.weight, base.emb.weight)
    assert model.head.weight is model.body.emb.weight  # tied, not reported missing
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []

    head = ToyWithHead(ToyConfig())
    back, info = ToyBody.from_pretrained(None, config=ToyConfig(), state_dict=_clone_sd(head),
                                         output_loading_info=True)
    assert torch.equal(back.proj.weight, head.body.proj.weight)
    assert info["unexpected_keys"] == ["head.weight"] and info["missing_keys"] == []


def test_missing_keys_are_relative_to_the_loaded_model_and_only_they_are_initialised():
    ref = ToyWithHead(ToyConfig())
    sd = _clone_sd(ref)
    sd.pop("body.proj.bias")
    model, info = ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=sd, output_loading_info=True)
    assert info["missing_keys"] == ["body.proj.bias"]
    assert info["missing_keys"] == {"body.proj.bias"}  # also equal to a set (Transformers 5.x)
    assert torch.equal(model.body.proj.weight, ref.body.proj.weight)  # sibling of a missing key untouched


def test_init_guard_protects_loaded_tensors_from_in_place_data_writes():
    class Clobber(ToyWithHead):
        def _init_weights(self, module):  # writes .data in place, like many custom models
            for p in module.parameters(recurse=False):
                p.data.fill_(0.5)

    ref = ToyWithHead(ToyConfig())
    sd = _clone_sd(ref)
    sd.pop("body.proj.bias")
    model = Clobber.from_pretrained(None, config=ToyConfig(), state_dict=sd)
    assert torch.equal(model.body.proj.weight, ref.body.proj.weight)
    assert torch.equal(model.body.proj.bias, torch.full((8,), 0.5))


def test_shape_mismatch_is_an_error_naming_the_key_unless_ignored():
    sd = _clone_sd(ToyWithHead(ToyConfig(hidden=8)))
    sd["body.proj.weight"] = torch.zeros(8, 9)
    with pytest.raises(WeightsMismatchError, match=r"(?s)body\.proj\.weight.*ignore_mismatched_sizes"):
        ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=sd)
    model, info = ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=sd,
                                              ignore_mismatched_sizes=True, output_loading_info=True)
    assert info["mismatched_keys"] == [("body.proj.weight", (8, 9), (8, 8))]
    assert model.body.proj.weight.shape == (8, 8) and torch.isfinite(model.body.proj.weight).all()


def test_checkpoint_with_different_head_and_embeddings_loads_untied_with_warning(caplog):
    from pretrained.logging import enable_propagation

    enable_propagation()
    sd = _clone_sd(ToyWithHead(ToyConfig()))
    sd["head.weight"] = torch.randn(10, 8)
    with caplog.at_level("WARNING"):
        model = ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=sd)
    assert model.head.weight is not model.body.emb.weight
    assert torch.equal(model.head.weight, sd["head.weight"])
    assert torch.equal(model.body.emb.weight, sd["body.emb.weight"])
    assert model.config.tie_word_embeddings is False
    assert "untied" in caplog.text


def test_only_head_weight_in_checkpoint_fills_the_tied_embedding():
    sd = _clone_sd(ToyWithHead(ToyConfig()))
    emb = sd.pop("body.emb.weight")
    model = ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=sd)
    assert torch.equal(model.body.emb.weight, emb) and model.head.weight is model.body.emb.weight


def test_dtype_conversion_and_zero_copy_when_dtype_matches():
    sd = _clone_sd(ToyWithHead(ToyConfig()))
    model = ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=sd)
    assert model.body.proj.weight.data_ptr() == sd["body.proj.weight"].data_ptr()  # no copy
    half = ToyWithHead.from_pretrained(None, config=ToyConfig(), state_dict=sd, torch_dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.body.proj.weight.dtype == torch.bfloat16
    assert not half.training


def test_keylist_compares_with_lists_and_sets():
    k = KeyList(["a", "b"])
    assert k == ["a", "b"] and k == {"a", "b"} and {"b", "a"} == k and k != {"a"}


def test_converted_tensors_are_read_into_fresh_memory_not_mapped(hf_gpt2_dirs):
    from pretrained import AutoModelForCausalLM

    same = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"])
    converted = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"], torch_dtype=torch.bfloat16)
    ref = hf_gpt2_dirs["model"].state_dict()
    for name, tensor in converted.state_dict().items():
        assert torch.equal(tensor, ref[name].to(torch.bfloat16)), name
    assert torch.equal(same.transformer.h[0].attn.c_attn.weight, ref["transformer.h.0.attn.c_attn.weight"])
