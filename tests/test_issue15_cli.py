"""Issue 15: ``pretrained inspect``, ``plan`` and ``run`` on the new families and task heads.

Every checkpoint is written by Transformers 5.x at seed 0 (vocabulary of the
all-MiniLM-L6-v2 ``tokenizer.json``, which is copied next to it).  ``run``'s
text and logits are compared with Transformers' ``generate`` / forward on the
same token ids; ``inspect`` with the Transformers model's own parameter counts.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from pretrained.cli import main  # noqa: E402

VOCAB = 30522  # the all-MiniLM-L6-v2 tokenizer's
DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = {"mistral": ("Mistral", dict(sliding_window=4, head_dim=16)),
            "qwen2": ("Qwen2", dict(tie_word_embeddings=True)),
            "qwen3": ("Qwen3", dict(head_dim=16)),
            "gemma": ("Gemma", dict(head_dim=8, num_key_value_heads=1)),
            "llama": ("Llama", {})}
LABELS = {"id2label": {0: "neg", 1: "mid", 2: "pos"}, "label2id": {"neg": 0, "mid": 1, "pos": 2}}
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
TEXTS = ["a cat sat on the mat", "the dog ran"]
HEADS = {"bert-seq": "BertForSequenceClassification", "gpt2-seq": "GPT2ForSequenceClassification",
         **{f"{t}-seq": f"{n}ForSequenceClassification" for t, (n, _) in FAMILIES.items()},
         "bert-tok": "BertForTokenClassification", "bert-qa": "BertForQuestionAnswering"}


def _config(key: str):
    family = key.split("-")[0]
    if family == "bert":
        return transformers.BertConfig(**BERT, **(LABELS if not key.endswith("qa") else {}))
    if family == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB, pad_token_id=0, **LABELS)
    name, extra = FAMILIES[family]
    return getattr(transformers, f"{name}Config")(**{**DECODER, **extra}, **(LABELS if "-" in key else {}))


def _hf_model(key: str):
    name = HEADS.get(key) or f"{FAMILIES[key][0]}ForCausalLM"
    torch.manual_seed(0)
    model = getattr(transformers, name)(_config(key)).eval()
    with torch.no_grad():  # move Gemma's zero-initialised norms off 0 so that (1 + w) matters
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, minilm_dir):
    """key -> (Transformers model, folder with its checkpoint and tokenizer.json)."""
    transformers.utils.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("issue15_cli")
    out = {}
    for key in [*FAMILIES, *HEADS]:
        model = _hf_model(key)
        model.save_pretrained(root / key)
        shutil.copy(minilm_dir / "tokenizer.json", root / key / "tokenizer.json")
        out[key] = (model, root / key)
    return out


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    return tok


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _logits(line: str) -> torch.Tensor:
    return torch.tensor([float(v) for v in line.split("logits")[1].split()])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_issue15_run_generates_what_transformers_generates(capsys, checkpoints, tokenizer, family):
    model, folder = checkpoints[family]
    prompt = "the quick brown fox jumps over the lazy dog"  # longer than Mistral's window of 4
    out = _run(capsys, "run", folder, "--prompt", prompt, "--max-new-tokens", 8)
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert expected.shape[1] > ids.shape[1] + 1, "the reference generated (almost) nothing"
    assert out.splitlines()[0] == prompt + tokenizer.decode(expected[0, ids.shape[1]:].tolist())
    assert f"{FAMILIES[family][0]}ForCausalLM" in out and "Load report" in out


@pytest.mark.parametrize("key", [k for k in HEADS if k.endswith("-seq")])
def test_issue15_run_classifies_with_transformers_logits(capsys, checkpoints, tokenizer, key):
    model, folder = checkpoints[key]
    out = _run(capsys, "run", folder, *[a for t in TEXTS for a in ("--text", t)])
    assert "Sequence classification (3 labels, single_label_classification)" in out
    rows = [line for line in out.splitlines() if "logits" in line]
    assert len(rows) == len(TEXTS)
    for text, row in zip(TEXTS, rows):
        ids = torch.tensor([tokenizer.encode(text).ids])
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        torch.testing.assert_close(_logits(row), expected, atol=1e-4, rtol=0)
        assert row.split()[0] == model.config.id2label[int(expected.argmax())]
    assert HEADS[key] in out


def test_issue15_run_token_classification_with_transformers_logits(capsys, checkpoints, tokenizer):
    model, folder = checkpoints["bert-tok"]
    out = _run(capsys, "run", folder, "--text", TEXTS[0])
    encoding = tokenizer.encode(TEXTS[0])
    rows = [line.split() for line in out.splitlines() if "logits" in line]
    assert [r[0] for r in rows] == encoding.tokens
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([encoding.ids])).logits[0]
    torch.testing.assert_close(torch.stack([_logits(" ".join(r)) for r in rows]), expected, atol=1e-4, rtol=0)
    assert [r[1] for r in rows] == [model.config.id2label[int(i)] for i in expected.argmax(-1)]


def test_issue15_run_question_answering_picks_transformers_best_span(capsys, checkpoints, tokenizer):
    model, folder = checkpoints["bert-qa"]
    question, context = "who ran?", "the dog ran after the cat in the park"
    out = _run(capsys, "run", folder, "--question", question, "--context", context)
    enc = tokenizer.encode(question, context)
    with torch.no_grad():
        o = model(input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids]))
    start, end = o.start_logits[0], o.end_logits[0]
    ctx = [i for i, s in enumerate(enc.sequence_ids) if s == 1]
    score, a, b = max((float(start[i] + end[j]), i, j) for i in ctx for j in ctx if i <= j < i + 15)
    answer = context[enc.offsets[a][0]:enc.offsets[b][1]]
    assert f"Answer:   {answer}\n" in out and f"tokens {a}..{b}," in out
    assert float(re.search(r"score ([-+.\d]+)", out).group(1)) == pytest.approx(score, abs=1e-4)


def test_issue15_run_a_qa_model_on_question_and_context_defaults(capsys, checkpoints):
    out = _run(capsys, "run", checkpoints["bert-qa"][1])
    assert "Question: What is the man eating?" in out and "Answer:" in out


@pytest.mark.parametrize("key", [*FAMILIES, *HEADS])
def test_issue15_inspect_counts_like_transformers(capsys, checkpoints, key):
    model, folder = checkpoints[key]
    info = json.loads(_run(capsys, "inspect", folder, "--json"))
    assert info["architecture"] == type(model).__name__ and info["limitations"] == []
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert info["parameters"] == {"total": model.num_parameters(), "embedding": embedding,
                                  "non_embedding": model.num_parameters() - embedding}
    tied = [g for g in info["tied_weights"] if "lm_head.weight" in g]
    assert bool(tied) == bool(model.config.tie_word_embeddings and key in FAMILIES)
    assert not [g for g in info["tied_weights"] if any(n.startswith("cls.") for n in g)]  # a head, not MaskedLM


@pytest.mark.parametrize("key", [*FAMILIES, *HEADS])
def test_issue15_plan_places_the_head_and_keeps_layers_whole(capsys, checkpoints, key):
    """Device 0 holds all but half the head: the head (a task head's own module) goes to the CPU."""
    model, folder = checkpoints[key]
    head = model.get_output_embeddings() if key in FAMILIES else \
        next(m for n, m in model.named_children() if n in ("score", "classifier", "qa_outputs"))
    head_name = next(n for n, m in model.named_modules() if m is head)
    budget = 4 * model.num_parameters() - 2 * sum(p.numel() for p in head.parameters())
    out = _run(capsys, "plan", folder, "--max-memory", f"0={budget},cpu=8MB")
    assert "to disk: nothing" in out
    modules = {m.strip() for line in out.splitlines() if line.startswith("         ") for m in line.split(",")}
    assert not [m for m in modules if re.fullmatch(r".*\.(layers|layer|h)\.\d+\..+", m)], out  # layers whole
    if key in HEADS:
        assert head_name in modules, out


@pytest.mark.parametrize("key", ["qwen2", "gemma-seq"])
def test_issue15_run_with_disk_offload_prints_the_same(capsys, checkpoints, tmp_path, key):
    folder = checkpoints[key][1]
    args = ("run", folder, "--prompt", "the quick brown fox", "--max-new-tokens", 4, "--text", TEXTS[1])
    plain = _run(capsys, *args)
    offloaded = _run(capsys, *args, "--max-memory", "cpu=3920KB", "--offload-folder", tmp_path / "off")
    assert "'disk'" in offloaded.split("device map")[-1]
    assert plain.split("Load report")[0] == offloaded.split("Load report")[0]


@pytest.mark.parametrize("problem_type, squash", [("multi_label_classification", torch.sigmoid),
                                                  ("regression", lambda t: t),
                                                  ("single_label_classification", lambda t: t.softmax(-1))])
def test_issue15_run_scores_labels_as_the_pipeline_does(capsys, checkpoints, tmp_path, problem_type, squash):
    """Transformers' text-classification pipeline: raw outputs for regression, sigmoid for multi-label
    (or one label), else softmax."""
    folder = tmp_path / "clf"
    shutil.copytree(checkpoints["bert-seq"][1], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "problem_type": problem_type}))
    out = _run(capsys, "run", folder, "--text", TEXTS[0])
    assert f"(3 labels, {problem_type})" in out
    row = next(line for line in out.splitlines() if "logits" in line).split()
    probs = squash(_logits(" ".join(row)))
    assert row[0] == LABELS["id2label"][int(probs.argmax())]
    assert float(row[1]) == pytest.approx(probs.max().item(), abs=1e-3)
