"""inspect / plan build the class a checkpoint names, found through auto's public lookup."""

import pytest
import torch

from pretrained.auto import auto_class_name, builtin_class, builtin_model_types
from pretrained.inspection import inspect_checkpoint, meta_model, read_config

transformers = pytest.importorskip("transformers")


def _tiny_bert_classifier(tmp_path):
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(tmp_path)
    return model


def test_inspect_counts_the_heads_of_a_class_outside_the_config_module(tmp_path):
    # BertForSequenceClassification lives in models/bert_heads.py, not beside BertConfig: it used to be
    # looked up in bert.py only, so BertForMaskedLM was built and the pooler and classifier went uncounted.
    reference = _tiny_bert_classifier(tmp_path)
    info = inspect_checkpoint(tmp_path)
    assert info["architecture"] == "BertForSequenceClassification" and info["limitations"] == []
    assert info["parameters"]["total"] == reference.num_parameters()
    embedding = reference.num_parameters() - reference.num_parameters(exclude_embeddings=True)
    assert info["parameters"]["embedding"] == embedding
    assert type(meta_model(read_config(tmp_path))).__name__ == "BertForSequenceClassification"


def test_public_lookup_matches_the_auto_tables():
    assert {"bert", "gpt2", "llama", "t5"} <= set(builtin_model_types())
    assert auto_class_name("AutoModelForSequenceClassification", "bert") == "BertForSequenceClassification"
    assert auto_class_name("AutoModelForCausalLM", "bert") is None
    assert builtin_class("gpt2", "GPT2LMHeadModel").__module__ == "pretrained.models.gpt2"
    with pytest.raises(ValueError, match="phi"):
        builtin_class("phi", "PhiForCausalLM")
    with pytest.raises(ValueError, match="GPT2DoubleHeadsModel"):
        builtin_class("gpt2", "GPT2DoubleHeadsModel")
    with pytest.raises(KeyError):
        auto_class_name("AutoModelForImageClassification", "bert")
