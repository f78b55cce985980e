"""Mistral, Qwen2, Qwen3 and Gemma parity with Transformers on the same weights.

For each family a tiny Transformers ``*ForCausalLM`` is built at seed 0 and
saved by Transformers (single file, shards, a 4.x ``.bin``); ours load those
folders, and ours saved load in Transformers.  Logits are compared in fp32
(eager and sdpa), with left and right padding, step by step through the KV
cache, and greedy ``generate`` must match token for token.  Sliding windows are
shorter than the inputs (Mistral: every layer; Qwen2/Qwen3 with
``use_sliding_window``: the layers from ``max_window_layers`` on), so the
window really cuts, also across cache steps.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, write_sharded_bin

transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402
from pretrained import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

ATOL = 1e-4
VOCAB, SEQ = 99, 12
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, bos_token_id=1,
            eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "mistral": dict(sliding_window=5, head_dim=16),
    "mistral_full": dict(sliding_window=None),
    "qwen2": dict(use_sliding_window=True, sliding_window=5, max_window_layers=1),
    "qwen2_full": dict(),
    "qwen3": dict(head_dim=16, use_sliding_window=True, sliding_window=5, max_window_layers=1),
    "qwen3_bias": dict(head_dim=8, attention_bias=True),
    "gemma": dict(head_dim=8, num_key_value_heads=1),
}
NAMES = {"mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma"}


def family(case: str) -> str:
    return case.split("_")[0]


def hf_model(case: str, impl: str = "eager", cls: str = "ForCausalLM", **extra):
    name = NAMES[family(case)]
    config = getattr(transformers, f"{name}Config")(**{**BASE, **FAMILIES[case], **extra}, attn_implementation=impl)
    torch.manual_seed(0)
    model = getattr(transformers, f"{name}{cls}")(config).eval()
    with torch.no_grad():  # Gemma starts its norms at 0 (= scale 1): move them off it so (1 + w) is tested
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request):
    return request.param


@pytest.fixture(scope="module")
def saved(case, tmp_path_factory):
    """The Transformers model and its checkpoint folders (single, sharded, bin, bin_sharded)."""
    transformers.utils.logging.set_verbosity_error()
    model = hf_model(case)
    root = tmp_path_factory.mktemp(case)
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    assert len(list((root / "sharded").glob("model-*.safetensors"))) >= 2
    state = model.state_dict()
    for name in ("bin", "bin_sharded"):
        (root / name).mkdir()
        model.config.save_pretrained(root / name)
    torch.save(state, root / "bin" / "pytorch_model.bin")
    write_sharded_bin(state, root / "bin_sharded", max_shard_bytes=20_000)
    return {"model": model, **{n: root / n for n in ("single", "sharded", "bin", "bin_sharded")}}


@pytest.fixture(scope="module")
def ids():
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    return ids


def masks():
    left = torch.ones(2, SEQ, dtype=torch.long)
    left[1, :4] = 0
    right = torch.ones(2, SEQ, dtype=torch.long)
    right[1, -3:] = 0
    return {"left": left, "right": right}


@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "bin_sharded"])
def test_transformers_checkpoints_load_with_equal_logits(saved, case, ids, layout):
    ours, info = AutoModelForCausalLM.from_pretrained(saved[layout], output_loading_info=True)
    assert type(ours).__name__ == f"{NAMES[family(case)]}ForCausalLM"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    with torch.no_grad():
        assert_close(ours(ids).logits, saved["model"](ids).logits, atol=ATOL)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_padded_batches_equal_transformers(saved, case, ids, impl, padding):
    mask = masks()[padding]
    theirs = hf_model(case, impl)
    ours = AutoModelForCausalLM.from_pretrained(saved["single"], attn_implementation=impl).eval()
    real = mask.bool()
    with torch.no_grad():
        assert_close(ours(ids, attention_mask=mask).logits[real], theirs(ids, attention_mask=mask).logits[real],
                     atol=ATOL)


def test_kv_cache_steps_equal_transformers(saved, ids):
    """A prompt, then one token at a time through the cache past the window."""
    ours = AutoModelForCausalLM.from_pretrained(saved["single"]).eval()
    theirs = saved["model"]
    mask = masks()["left"]
    with torch.no_grad():
        a = ours(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
        b = theirs(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
        for t in range(4, SEQ):
            step_a = ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=a.past_key_values,
                          use_cache=True)
            step_b = theirs(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=b.past_key_values,
                            use_cache=True)
            assert_close(step_a.logits, step_b.logits, atol=ATOL)
            a, b = step_a, step_b


def test_greedy_generate_equals_transformers(saved, ids):
    ours = AutoModelForCausalLM.from_pretrained(saved["single"]).eval()
    mask = masks()["left"]
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    out_a = ours.generate(ids, **kwargs)
    out_b = saved["model"].generate(ids, **kwargs, eos_token_id=None)
    assert out_a.tolist() == out_b.tolist()


def test_ours_saved_load_in_transformers(saved, case, ids, tmp_path):
    ours = AutoModelForCausalLM.from_pretrained(saved["single"]).eval()
    ours.save_pretrained(tmp_path / "ours", max_shard_size="20KB")
    theirs = getattr(transformers, f"{NAMES[family(case)]}ForCausalLM").from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert_close(theirs(ids).logits, saved["model"](ids).logits, atol=ATOL)
    for key in ("sliding_window", "head_dim", "tie_word_embeddings", "num_key_value_heads"):
        if hasattr(saved["model"].config, key):
            assert getattr(theirs.config, key) == getattr(saved["model"].config, key), key
    if hasattr(saved["model"].config, "layer_types"):
        assert theirs.config.layer_types == saved["model"].config.layer_types


def test_state_dict_names_and_class_facts(saved, case):
    ours = AutoModelForCausalLM.from_pretrained(saved["single"])
    assert list(ours.state_dict()) == list(saved["model"].state_dict())
    name = NAMES[family(case)]
    assert type(ours)._no_split_modules == [f"{name}DecoderLayer"]
    assert type(ours.model.layers[0]).__name__ == f"{name}DecoderLayer"
    tied = family(case) == "gemma"
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    assert type(AutoConfig.from_pretrained(saved["single"])).__name__ == f"{name}Config"


def test_sliding_window_really_cuts(saved, case, ids):
    """With the window the logits differ from full attention (so the test above can fail)."""
    if "sliding_window" not in FAMILIES[case] or FAMILIES[case]["sliding_window"] is None:
        pytest.skip("no window in this case")
    ours = AutoModelForCausalLM.from_pretrained(saved["single"]).eval()
    full = AutoModelForCausalLM.from_pretrained(saved["single"], sliding_window=None).eval()
    with torch.no_grad():
        assert float((ours(ids).logits - full(ids).logits).abs().max()) > 100 * ATOL


def test_sequence_classifier_equals_transformers(case, ids, tmp_path):
    theirs = hf_model(case, cls="ForSequenceClassification", num_labels=3)
    theirs.save_pretrained(tmp_path)
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    padded = ids.clone()
    padded[1, :3] = 0                                                    # left padding by pad_token_id 0
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        a, b = ours(padded, labels=labels), theirs(padded, labels=labels)
    assert_close(a.logits, b.logits, atol=ATOL)
    assert_close(a.loss, b.loss, atol=ATOL)


def test_base_model_on_causal_checkpoint_reports_the_head_unused(saved, case, ids):
    body, info = AutoModel.from_pretrained(saved["single"], output_loading_info=True)
    assert type(body).__name__ == f"{NAMES[family(case)]}Model"
    expected = [] if family(case) == "gemma" else ["lm_head.weight"]          # Gemma's head is the embedding
    assert sorted(info["unexpected_keys"]) == expected and info["missing_keys"] == []
    with torch.no_grad():
        assert_close(body(ids).last_hidden_state, saved["model"].model(ids).last_hidden_state, atol=ATOL)


def test_disk_offload_and_device_map(saved, ids, tmp_path):
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    ours = AutoModelForCausalLM.from_pretrained(saved["sharded"], device_map=device_map,
                                                offload_folder=tmp_path / "off")
    with torch.no_grad():
        assert_close(ours(ids).logits, saved["model"](ids).logits, atol=ATOL)
    auto = AutoModelForCausalLM.from_pretrained(saved["single"], device_map="auto",
                                                max_memory={"cpu": 30_000}, offload_folder=tmp_path / "off2")
    assert "disk" in set(auto.hf_device_map.values())
    with torch.no_grad():
        assert_close(auto(ids).logits, saved["model"](ids).logits, atol=ATOL)


def test_resize_tie_and_gradient_checkpointing(saved, case, ids):
    model = AutoModelForCausalLM.from_pretrained(saved["single"])
    model.resize_token_embeddings(VOCAB + 5)
    assert model.lm_head.weight.shape[0] == VOCAB + 5
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (family(case) == "gemma")
    plain = AutoModelForCausalLM.from_pretrained(saved["single"]).train()
    ckpt = AutoModelForCausalLM.from_pretrained(saved["single"]).train()
    ckpt.gradient_checkpointing_enable()
    for m in (plain, ckpt):
        m.config.attention_dropout = 0.0
        m(ids, labels=ids).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert_close(a.grad, b.grad, atol=1e-5)


@pytest.mark.parametrize("name", ["mistral", "qwen2", "qwen3", "gemma"])
def test_config_reads_4x_and_5x_rope_keys(name):
    cls = getattr(pretrained, f"{NAMES[name]}Config")
    old = cls(rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0})
    new = cls(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0})
    assert old.rope_parameters == new.rope_parameters
    d = new.to_dict()
    assert d["rope_theta"] == 5000.0 and d["rope_scaling"] == {"type": "linear", "factor": 2.0}
    theirs = getattr(transformers, f"{NAMES[name]}Config")(**{k: v for k, v in d.items() if k != "rope_scaling"})
    assert theirs.rope_parameters["rope_theta"] == 5000.0


def test_qwen2_sliding_window_config_follows_transformers_5():
    for kwargs in ({}, {"use_sliding_window": True, "max_window_layers": 1}, {"layer_types": ["full_attention"] * 2,
                                                                               "use_sliding_window": True}):
        ours = pretrained.Qwen2Config(num_hidden_layers=2, **kwargs)
        theirs = transformers.Qwen2Config(num_hidden_layers=2, **kwargs)
        assert ours.sliding_window == theirs.sliding_window
        assert ours.layer_types == theirs.layer_types


def test_gemma_legacy_gelu_and_bidirectional_refused():
    assert pretrained.GemmaConfig(hidden_act="gelu").hidden_act == "gelu_pytorch_tanh"
    assert transformers.GemmaConfig(hidden_act="gelu").hidden_act == "gelu_pytorch_tanh"
    config = pretrained.GemmaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, head_dim=4, use_bidirectional_attention=True)
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        pretrained.GemmaModel(config)
