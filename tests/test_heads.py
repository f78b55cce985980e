"""Task heads against Transformers, and the label fields of every config.

BERT's sequence/token classifiers and QA head, GPT-2's and Llama's sequence
classifiers: built by Transformers at seed 0, saved (single file, shards, a 4.x
``.bin``), loaded here; logits and the three kinds of loss must match, and ours
saved must load in Transformers.  The decoder classifiers read the last
non-pad token, with left and right padding; without a pad token only a batch
of one is accepted, as in Transformers.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import assert_close, write_sharded_bin

transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402
from pretrained import (AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,  # noqa: E402
                        AutoModelForTokenClassification, BertConfig, LlamaConfig)

ATOL = 1e-4
VOCAB, SEQ = 99, 10
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, pad_token_id=0)
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)
HEADS = {
    "bert_seq": ("BertConfig", BERT, "BertForSequenceClassification", AutoModelForSequenceClassification),
    "bert_tok": ("BertConfig", BERT, "BertForTokenClassification", AutoModelForTokenClassification),
    "bert_qa": ("BertConfig", BERT, "BertForQuestionAnswering", AutoModelForQuestionAnswering),
    "gpt2_seq": ("GPT2Config", GPT2, "GPT2ForSequenceClassification", AutoModelForSequenceClassification),
    "llama_seq": ("LlamaConfig", LLAMA, "LlamaForSequenceClassification", AutoModelForSequenceClassification),
}


def hf_head(head: str, **extra):
    config_name, kwargs, cls, _ = HEADS[head]
    config = getattr(transformers, config_name)(**{**kwargs, **extra})
    torch.manual_seed(0)
    return getattr(transformers, cls)(config).eval()


@pytest.fixture(scope="module", params=list(HEADS))
def head(request):
    return request.param


@pytest.fixture(scope="module")
def saved(head, tmp_path_factory):
    transformers.utils.logging.set_verbosity_error()
    model = hf_head(head, num_labels=2 if head == "bert_qa" else 3)
    root = tmp_path_factory.mktemp(head)
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    (root / "bin").mkdir()
    model.config.save_pretrained(root / "bin")
    write_sharded_bin(model.state_dict(), root / "bin", max_shard_bytes=20_000)
    return {"model": model, "single": root / "single", "sharded": root / "sharded", "bin": root / "bin"}


@pytest.fixture(scope="module")
def ids():
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    return ids


def outputs(out):
    return [out.start_logits, out.end_logits] if hasattr(out, "start_logits") else [out.logits]


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_transformers_head_checkpoints_load_with_equal_outputs(saved, head, ids, layout):
    ours, info = HEADS[head][3].from_pretrained(saved[layout], output_loading_info=True)
    assert type(ours).__name__ == HEADS[head][2]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        for a, b in zip(outputs(ours(ids, attention_mask=mask)), outputs(saved["model"](ids, attention_mask=mask))):
            assert_close(a, b, atol=ATOL)
    assert ours.config.id2label == saved["model"].config.id2label


def test_ours_saved_load_in_transformers(saved, head, ids, tmp_path):
    ours = HEADS[head][3].from_pretrained(saved["single"])
    ours.config.id2label = {0: "neg", 1: "pos", 2: "mid"} if head != "bert_qa" else {0: "start", 1: "end"}
    ours.config.label2id = {v: k for k, v in ours.config.id2label.items()}
    ours.save_pretrained(tmp_path)
    theirs = getattr(transformers, HEADS[head][2]).from_pretrained(tmp_path).eval()
    assert theirs.config.id2label == ours.config.id2label and theirs.config.label2id == ours.config.label2id
    with torch.no_grad():
        for a, b in zip(outputs(theirs(ids)), outputs(saved["model"](ids))):
            assert_close(a, b, atol=ATOL)


def _labels(kind: str, head: str, n: int):
    g = torch.Generator().manual_seed(1)
    if head == "bert_tok":
        labels = torch.randint(0, n, (2, SEQ), generator=g)
        labels[0, :2] = -100
        return {"labels": labels}
    if head == "bert_qa":
        return {"start_positions": torch.tensor([1, 40]), "end_positions": torch.tensor([[3], [5]])}
    if kind == "regression":
        return {"labels": torch.rand(2, generator=g) if n == 1 else torch.rand(2, n, generator=g)}
    if kind == "single":
        return {"labels": torch.tensor([0, n - 1])}
    return {"labels": (torch.rand(2, n, generator=g) > 0.5).float()}


@pytest.mark.parametrize("kind,num_labels", [("regression", 1), ("single", 3), ("multi", 3), ("regression", 3)])
def test_losses_and_inferred_problem_type_equal_transformers(head, ids, kind, num_labels, tmp_path):
    if head in ("bert_tok", "bert_qa") and (kind, num_labels) != ("single", 3):
        pytest.skip("one loss only")
    theirs = hf_head(head, num_labels=2 if head == "bert_qa" else num_labels)
    if (kind, num_labels) == ("regression", 3):
        theirs.config.problem_type = "regression"
    theirs.save_pretrained(tmp_path)
    ours = HEADS[head][3].from_pretrained(tmp_path).eval()
    labels = _labels(kind, head, num_labels)
    with torch.no_grad():
        a, b = ours(ids, **labels), theirs(ids, **labels)
    assert_close(a.loss, b.loss, atol=ATOL)
    assert ours.config.problem_type == theirs.config.problem_type


@pytest.mark.parametrize("head", ["gpt2_seq", "llama_seq"])
@pytest.mark.parametrize("padding", ["left", "right", "none"])
def test_decoder_heads_read_the_last_non_pad_token(head, ids, padding, tmp_path):
    theirs = hf_head(head, num_labels=3)
    theirs.save_pretrained(tmp_path)
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    padded, mask = ids.clone(), torch.ones_like(ids)
    if padding == "left":
        padded[1, :4], mask[1, :4] = 0, 0
    elif padding == "right":
        padded[1, -4:], mask[1, -4:] = 0, 0
    with torch.no_grad():
        a = ours(padded, attention_mask=mask).logits
        assert_close(a, theirs(padded, attention_mask=mask).logits, atol=ATOL)
        if padding == "right":    # the pooled row is the token before the padding, not the last position
            full = ours(padded[1:, :-4]).logits
            assert_close(a[1:], full, atol=ATOL)


@pytest.mark.parametrize("head", ["gpt2_seq", "llama_seq"])
def test_no_pad_token_batch_of_one_only(head, ids, tmp_path):
    theirs = hf_head(head, num_labels=2, pad_token_id=None)
    theirs.save_pretrained(tmp_path)
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert_close(ours(ids[:1]).logits, theirs(ids[:1]).logits, atol=ATOL)
        with pytest.raises(ValueError, match="no padding token"):
            ours(ids)
        with pytest.raises(ValueError, match="no padding token"):
            theirs(ids)


def test_auto_model_on_a_head_checkpoint_reports_head_keys_unused(saved, head, ids):
    body, info = AutoModel.from_pretrained(saved["single"], output_loading_info=True)
    head_keys = sorted(k for k in saved["model"].state_dict() if not k.startswith(("bert.", "transformer.", "model.")))
    assert sorted(info["unexpected_keys"]) == head_keys and head_keys
    if head.startswith("bert") and head != "bert_seq":   # token/QA heads have no pooler: AutoModel's is missing
        assert sorted(info["missing_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    else:
        assert info["missing_keys"] == []
    with torch.no_grad():
        prefix = HEADS[head][2].startswith("Bert") and "bert" or ("transformer" if head == "gpt2_seq" else "model")
        assert_close(body(ids).last_hidden_state, getattr(saved["model"], prefix)(ids).last_hidden_state, atol=ATOL)


def test_head_on_a_body_checkpoint_reports_and_initialises_the_head(head, ids, tmp_path, caplog):
    theirs = hf_head(head)
    base = theirs.base_model
    base.save_pretrained(tmp_path)
    cls = getattr(pretrained, HEADS[head][2])
    with caplog.at_level("WARNING", logger="pretrained"):
        ours, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    head_keys = sorted(k for k in theirs.state_dict() if not k.startswith(("bert.", "transformer.", "model.")))
    assert sorted(info["missing_keys"]) == head_keys
    assert any("newly initialized" in r.getMessage() for r in caplog.records)
    for key in head_keys:
        value = ours.state_dict()[key]
        assert torch.isfinite(value).all() and value.device.type == "cpu"
        if key.endswith("weight"):
            assert float(value.std()) > 0          # initialised, not left empty or zero


# ------------------------------------------------------------------ config label fields


def test_default_labels_and_setter_rebuild_like_4_37():
    config = BertConfig()
    assert config.num_labels == 2 and config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1}
    config.num_labels = 4
    assert config.id2label == {i: f"LABEL_{i}" for i in range(4)} and config.label2id["LABEL_3"] == 3
    config = LlamaConfig(id2label={"0": "a", "1": "b", "2": "c"}, num_labels=7)
    assert config.num_labels == 3 and config.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(ValueError, match="problem_type"):
        BertConfig(problem_type="ranking")
    with pytest.raises(ValueError, match="label2id"):
        BertConfig(label2id=["a"])


def test_labels_round_trip_through_json_with_int_keys(tmp_path):
    config = BertConfig(id2label={0: "neg", 1: "pos", 2: "mid"}, label2id={"neg": 0, "pos": 1, "mid": 2},
                        problem_type="single_label_classification")
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["id2label"] == {"0": "neg", "1": "pos", "2": "mid"}
    back = BertConfig.from_pretrained(tmp_path)
    assert back.id2label == {0: "neg", 1: "pos", 2: "mid"} and back.label2id == config.label2id
    assert back.problem_type == "single_label_classification" and back.num_labels == 3
    theirs = transformers.BertConfig.from_pretrained(tmp_path)
    assert theirs.id2label == back.id2label and theirs.num_labels == 3
    assert BertConfig.from_pretrained(tmp_path, num_labels=5).id2label[4] == "LABEL_4"
