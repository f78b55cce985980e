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
