"""Issue 13, loading and surgery items: each test failed before its fix.

* item 7: ``PreTrainedModel.from_pretrained(path)`` on the bare base class;
* a Transformers config object passed as ``config=``;
* item 4: surgery (``resize_token_embeddings``, ``prune_heads``, ``tie_weights``)
  on a model whose weights a device_map offloads (refused before anything changes);
* ``copy.deepcopy`` of a disk-offloaded model.
"""

from __future__ import annotations

import copy

import pytest
import torch

import pretrained
from helpers import assert_close
from pretrained import AutoModel, BertForMaskedLM, BertModel, GPT2LMHeadModel, PreTrainedModel


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


# --------------------------------------------------------------------------- item 7: the bare base class


def test_bare_base_class_from_pretrained_raises_naming_the_class(hf_bert_dirs):
    import transformers

    with pytest.raises(ValueError, match="config_class"):  # what Transformers 5.25 does
        transformers.PreTrainedModel.from_pretrained(hf_bert_dirs["single"])
    with pytest.raises(ValueError, match=r"PreTrainedModel.*BertForMaskedLM.*AutoModel"):
        PreTrainedModel.from_pretrained(hf_bert_dirs["single"])


def test_bare_base_class_refused_with_a_config_object_too(hf_bert_dirs):
    config = pretrained.BertConfig.from_pretrained(hf_bert_dirs["single"])
    with pytest.raises(ValueError, match="abstract base class"):
        PreTrainedModel.from_pretrained(hf_bert_dirs["single"], config=config)


# --------------------------------------------------------------------------- a Transformers config as config=


def test_transformers_config_object_is_accepted(hf_bert_dirs, input_ids):
    theirs = hf_bert_dirs["model"].config
    ours = pretrained.BertConfig.from_pretrained(hf_bert_dirs["single"])
    expected = logits(BertForMaskedLM.from_pretrained(hf_bert_dirs["single"], config=ours), input_ids)
    model = BertForMaskedLM.from_pretrained(hf_bert_dirs["single"], config=theirs)
    assert isinstance(model.config, pretrained.BertConfig)
    assert_close(logits(model, input_ids), expected, atol=0)
    auto = AutoModel.from_pretrained(hf_bert_dirs["base"], config=hf_bert_dirs["base_model"].config)
    assert isinstance(auto, BertModel)


def test_transformers_config_of_another_model_type_says_what_is_expected(hf_bert_dirs, hf_gpt2_dirs):
    with pytest.raises(TypeError, match=r"model_type 'gpt2'.*BertConfig"):
        BertForMaskedLM.from_pretrained(hf_bert_dirs["single"], config=hf_gpt2_dirs["model"].config)
    with pytest.raises(TypeError, match="takes a BertConfig, a path or a repo id"):
        BertForMaskedLM.from_pretrained(hf_bert_dirs["single"], config=42)


# --------------------------------------------------------------------------- item 4: surgery on offloaded models

# The embeddings and the (tied) head on disk, the rest in RAM: hooks serve the weights.
GPT2_DISK_MAP = {"transformer.wte": "disk", "transformer.wpe": "cpu", "transformer.h": "cpu",
                 "transformer.ln_f": "cpu", "lm_head": "disk"}
BERT_DISK_MAP = {"bert.embeddings": "cpu", "bert.encoder.layer.0": "disk", "bert.encoder.layer.1": "cpu", "cls": "cpu"}


def _snapshot(model) -> dict:
    return {name: (id(p), tuple(p.shape), p.device.type) for name, p in model.named_parameters(remove_duplicate=False)}


def test_resize_of_an_offloaded_model_is_refused_before_anything_changes(hf_gpt2_dirs, input_ids, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map=GPT2_DISK_MAP)
    before, vocab, expected = _snapshot(model), model.config.vocab_size, logits(model, input_ids)
    with pytest.raises(RuntimeError, match=r"resize_token_embeddings.*device_map.*without a device_map"):
        model.resize_token_embeddings(vocab + 50)
    assert _snapshot(model) == before and model.config.vocab_size == vocab
    assert model.get_input_embeddings().num_embeddings == vocab
    assert_close(logits(model, input_ids), expected, atol=0)
    model.resize_token_embeddings()  # nothing asked: nothing to refuse
    # what the message says to do gives Transformers' result on the in-memory model
    whole = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"])
    torch.manual_seed(0)
    whole.resize_token_embeddings(vocab + 50)
    whole.save_pretrained(tmp_path)
    placed = GPT2LMHeadModel.from_pretrained(tmp_path, device_map=GPT2_DISK_MAP)
    import transformers

    theirs = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"])
    theirs.resize_token_embeddings(vocab + 50)
    theirs.transformer.wte.weight.data[vocab:] = whole.transformer.wte.weight.data[vocab:]  # new rows are random
    assert_close(logits(placed, input_ids), logits(theirs.eval(), input_ids), atol=1e-5)


def test_prune_heads_of_an_offloaded_model_is_refused(hf_bert_dirs):
    model = BertForMaskedLM.from_pretrained(hf_bert_dirs["single"], device_map=BERT_DISK_MAP)
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="prune_heads"):
        model.prune_heads({0: [1]})
    assert _snapshot(model) == before and not model.config.pruned_heads
    model.prune_heads({0: []})  # nothing new to prune


def test_tie_weights_of_an_offloaded_model_is_refused_when_it_would_retie(hf_gpt2_dirs, tmp_path):
    import transformers

    config = transformers.GPT2Config.from_pretrained(hf_gpt2_dirs["single"], tie_word_embeddings=False)
    untied = transformers.GPT2LMHeadModel(config)
    untied.save_pretrained(tmp_path)
    model = GPT2LMHeadModel.from_pretrained(tmp_path, device_map=GPT2_DISK_MAP)
    assert model.lm_head.weight is not model.transformer.wte.weight
    before = _snapshot(model)
    model.tie_weights()  # the config does not tie: nothing changes
    model.config.tie_word_embeddings = True
    with pytest.raises(RuntimeError, match="tie_weights"):
        model.tie_weights()
    assert _snapshot(model) == before
    tied = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map=GPT2_DISK_MAP)
    tied.tie_weights()  # already tied: a no-op, not an error


# --------------------------------------------------------------------------- copy.deepcopy of an offloaded model


def test_deepcopy_of_a_disk_offloaded_model(hf_gpt2_dirs, input_ids, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map=GPT2_DISK_MAP)
    expected = logits(model, input_ids)
    clone = copy.deepcopy(model)
    assert clone.hf_device_map == model.hf_device_map
    assert clone.lm_head.weight is clone.transformer.wte.weight  # ties survive the copy
    assert clone.transformer.wte.weight.device.type == "meta"
    assert_close(logits(clone, input_ids), expected, atol=0)
    model.__dict__["_placement"].remove()  # the original's files closed, hooks gone: the copy stands alone
    reader = clone.__dict__["_placement"].reader
    assert reader is not model.__dict__["_placement"].reader
    loads = [f.load for hook in clone.__dict__["_placement"].hooks.values() for f in hook.fetches]
    assert {id(load.args[0]) for load in loads if hasattr(load, "args")} == {id(reader)}
    assert_close(logits(clone, input_ids), expected, atol=0)
    clone.save_pretrained(tmp_path)
    assert_close(logits(GPT2LMHeadModel.from_pretrained(tmp_path), input_ids), expected, atol=1e-6)


def test_deepcopy_of_a_model_offloaded_into_a_folder(hf_gpt2_dirs, input_ids, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["bin"], device_map=GPT2_DISK_MAP,
                                            offload_folder=tmp_path / "offload")
    clone = copy.deepcopy(model)
    assert_close(logits(clone, input_ids), logits(model, input_ids), atol=0)
