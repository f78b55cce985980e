"""Llama parity with Transformers on the same weights.

Tiny Transformers ``LlamaForCausalLM`` models (4 heads, 2 key/value heads: GQA)
are built at seed 0, one per RoPE type; ours get their state dict with
``strict=True`` (identical parameter names) and logits are compared in eval
mode, eager and sdpa, with and without left padding.  ``max_position_embeddings``
is 16 and the inputs 24 tokens long, so ``"dynamic"`` RoPE really rescales.
At left-padded positions the outputs are meaningless (the query sees nothing)
and are not compared.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from pretrained import AutoConfig, AutoModelForCausalLM  # noqa: E402
from pretrained.modeling.cache import DynamicCache  # noqa: E402
from pretrained.models.llama import LlamaConfig, LlamaForCausalLM, LlamaModel  # noqa: E402

ATOL = 1e-5
IMPLS = ["eager", "sdpa"]
VOCAB, SEQ, MAX_POS = 99, 24, 16
ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8},
}


def config_kwargs(rope: str = "default", **extra) -> dict:
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                  bos_token_id=1, eos_token_id=2, rope_theta=10000.0, initializer_range=0.1)
    if ROPES[rope] is not None:
        kwargs["rope_scaling"] = dict(ROPES[rope])
    kwargs.update(extra)
    return kwargs


def hf_config(rope: str = "default", impl: str = "eager", **extra):
    kwargs = config_kwargs(rope, **extra)
    theta, scaling = kwargs.pop("rope_theta"), kwargs.pop("rope_scaling", None)
    kwargs["rope_parameters"] = {"rope_type": "default", **(scaling or {}), "rope_theta": theta}
    return transformers.LlamaConfig(**kwargs, attn_implementation=impl)


@pytest.fixture(scope="module")
def references():
    """rope type -> {"eager": model, "sdpa": model}, Transformers', same weights (seed 0)."""
    transformers.utils.logging.set_verbosity_error()
    out = {}
    for rope in ROPES:
        torch.manual_seed(0)
        eager = transformers.LlamaForCausalLM(hf_config(rope, "eager")).eval()
        sdpa = transformers.LlamaForCausalLM(hf_config(rope, "sdpa")).eval()
        sdpa.load_state_dict(eager.state_dict())
        out[rope] = {"eager": eager, "sdpa": sdpa}
    return out


def ours_for(references, rope: str = "default", impl: str = "sdpa", **extra) -> LlamaForCausalLM:
    model = LlamaForCausalLM(LlamaConfig(**config_kwargs(rope, **extra), attn_implementation=impl)).eval()
    model.load_state_dict(references[rope]["eager"].state_dict(), strict=True)
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def left_mask():
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :5] = 0
    return mask


def positions_from(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as Transformers' ``generate`` derives them from a left-padded mask."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rope", list(ROPES))
def test_logits_equal_transformers(references, ids, left_mask, rope, impl):
    theirs = references[rope][impl]
    real = left_mask.bool()
    with torch.no_grad():
        # A fresh model for every call: dynamic RoPE keeps state between calls, in Transformers too.
        assert_close(ours_for(references, rope, impl)(ids).logits, theirs(ids).logits, atol=ATOL)
        a = ours_for(references, rope, impl)(ids, attention_mask=left_mask).logits
        b = theirs(ids, attention_mask=left_mask).logits
        assert_close(a[real], b[real], atol=ATOL)
        pos = positions_from(left_mask)
        a = ours_for(references, rope, impl)(ids, attention_mask=left_mask, position_ids=pos).logits
        b = theirs(ids, attention_mask=left_mask, position_ids=pos).logits
        assert_close(a[real], b[real], atol=ATOL)


def test_rope_types_really_differ(references, ids):
    """Each scaled RoPE changes the logits (dynamic only past max_position_embeddings)."""
    with torch.no_grad():
        logits = {rope: ours_for(references, rope)(ids).logits for rope in ROPES}
        short = {rope: ours_for(references, rope)(ids[:, :MAX_POS]).logits for rope in ("default", "dynamic")}
    assert_close(short["dynamic"], short["default"], atol=0)
    for rope in ("linear", "dynamic", "llama3"):
        assert float((logits[rope] - logits["default"]).abs().max()) > 100 * ATOL, rope


def test_dynamic_rope_state_follows_transformers(references, ids):
    """Long, then shorter-but-still-long, then short: the cached table is reused
    and then reset exactly as in Transformers."""
    ours, theirs = ours_for(references, "dynamic"), references["dynamic"]["eager"]
    with torch.no_grad():
        for length in (SEQ, MAX_POS + 2, MAX_POS - 4, SEQ - 2):
            assert_close(ours(ids[:, :length]).logits, theirs(ids[:, :length]).logits, atol=ATOL)


def test_state_dict_names_and_no_rotary_buffer(references):
    ours, theirs = ours_for(references), references["default"]["eager"]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert not any("inv_freq" in k for k in ours.state_dict())
    assert ours.model.layers[0].self_attn.k_proj.weight.shape == (2 * 8, 32)      # GQA: Hkv * D rows
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight              # untied by default
    assert LlamaForCausalLM.base_model_prefix == "model"
    assert LlamaForCausalLM._no_split_modules == ["LlamaDecoderLayer"]


def test_output_attentions_and_hidden_states(references, ids, left_mask):
    ours, theirs = ours_for(references, impl="eager"), references["default"]["eager"]
    real = left_mask.bool()
    with torch.no_grad():
        a = ours(ids, attention_mask=left_mask, output_attentions=True, output_hidden_states=True)
        b = theirs(ids, attention_mask=left_mask, output_attentions=True, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states) == 3
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert_close(x[real], y[real], atol=ATOL)
    assert len(a.attentions) == len(b.attentions) == 2
    for x, y in zip(a.attentions, b.attentions):
        assert x.shape == (2, 4, SEQ, SEQ)
        assert_close(x[0], y[0], atol=ATOL)
        assert_close(x[1][:, 5:], y[1][:, 5:], atol=ATOL)                          # rows of real queries
    # sdpa falls back to the written-out path when weights are asked for
    with torch.no_grad():
        c = ours_for(references, impl="sdpa")(ids, output_attentions=True)
    assert len(c.attentions) == 2 and c.attentions[0].shape == (2, 4, SEQ, SEQ)


def test_labels_loss(references, ids):
    ours, theirs = ours_for(references), references["default"]["sdpa"]
    labels = ids.clone()
    labels[0, 3] = -100
    with torch.no_grad():
        a, b = ours(ids, labels=labels), theirs(ids, labels=labels)
    assert a.loss.shape == () and a.loss.dtype == torch.float32
    assert_close(a.loss, b.loss, atol=ATOL)


def test_logits_to_keep(references, ids):
    ours = ours_for(references)
    with torch.no_grad():
        full = ours(ids).logits
        assert_close(ours(ids, logits_to_keep=1).logits, full[:, -1:], atol=1e-6)
        assert_close(ours(ids, logits_to_keep=torch.tensor([0, 5])).logits, full[:, [0, 5]], atol=1e-6)


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("impl", IMPLS)
def test_incremental_decoding_equals_full_forward(references, ids, left_mask, impl):
    """Prefill, a chunk of two, then one token at a time: the logits of the
    recomputed sequence (1e-5), with and without left padding."""
    ours = ours_for(references, impl=impl)
    for mask in (None, left_mask):
        pos = positions_from(mask) if mask is not None else torch.arange(SEQ)[None].expand(2, -1)
        with torch.no_grad():
            full = ours(ids, attention_mask=mask, position_ids=pos).logits
            m = (lambda t: None) if mask is None else (lambda t: mask[:, :t])
            out = ours(ids[:, :6], attention_mask=m(6), position_ids=pos[:, :6], use_cache=True)
            cache = out.past_key_values
            assert isinstance(cache, DynamicCache) and len(cache) == 2
            assert cache[0][0].shape == (2, 2, 6, 8)                                    # (B, Hkv, P, D)
            steps = [out.logits]
            out = ours(ids[:, 6:8], attention_mask=m(8), position_ids=pos[:, 6:8], past_key_values=cache)
            steps.append(out.logits)
            for t in range(8, SEQ):
                out = ours(ids[:, t:t + 1], attention_mask=m(t + 1), position_ids=pos[:, t:t + 1],
                           past_key_values=out.past_key_values)
                steps.append(out.logits)
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        assert_close(torch.cat(steps, dim=1)[real], full[real], atol=ATOL)


def test_legacy_tuple_cache_and_cache_kwarg(references, ids):
    ours = ours_for(references)
    with torch.no_grad():
        full = ours(ids).logits
        legacy = ours(ids[:, :10]).past_key_values.to_legacy_cache()
        assert isinstance(legacy, tuple) and len(legacy) == 2
        out = ours(ids[:, 10:], past_key_values=legacy)
        assert isinstance(out.past_key_values, DynamicCache) and out.past_key_values.get_seq_length() == SEQ
        assert_close(out.logits, full[:, 10:], atol=ATOL)
        cache = transformers.DynamicCache()                                   # another library's cache object
        ours(ids[:, :10], cache=cache)
        out = ours(ids[:, 10:], cache=cache)
        assert out.past_key_values is cache
        assert_close(out.logits, full[:, 10:], atol=ATOL)
        assert ours(ids, use_cache=False).past_key_values is None


# ----------------------------------------------------------------------------- checkpoints and configs


def test_checkpoint_exchange_sharded_both_directions(references, ids, tmp_path):
    """Transformers' sharded save -> our Auto class, and ours -> Transformers' Auto class."""
    theirs = references["llama3"]["sdpa"]
    theirs.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) >= 3
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(ours) is LlamaForCausalLM and ours.config.rope_parameters["rope_type"] == "llama3"
    with torch.no_grad():
        expected = theirs(ids).logits
        assert_close(ours(ids).logits, expected, atol=ATOL)
    ours.save_pretrained(tmp_path / "ours", max_shard_size="20KB")
    assert len(list((tmp_path / "ours").glob("model-*-of-*.safetensors"))) >= 3
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert back.config.rope_parameters["rope_type"] == "llama3"
    with torch.no_grad():
        assert_close(back(ids).logits, expected, atol=ATOL)


def test_rotary_buffer_is_right_after_from_pretrained(references, tmp_path):
    theirs = references["linear"]["eager"]
    theirs.save_pretrained(tmp_path)
    for dtype in (torch.float32, torch.bfloat16):
        ours = LlamaForCausalLM.from_pretrained(tmp_path, torch_dtype=dtype)
        assert ours.dtype == dtype
        inv_freq = ours.model.rotary_emb.inv_freq
        assert inv_freq.dtype == torch.float32 and inv_freq.device.type == "cpu"
        assert_close(inv_freq, theirs.model.rotary_emb.inv_freq, atol=0)


def test_tied_embeddings_round_trip(ids, tmp_path):
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    theirs = transformers.LlamaForCausalLM(hf_config(tie_word_embeddings=True)).eval()
    theirs.save_pretrained(tmp_path / "hf")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(ids).logits, atol=ATOL)


@pytest.mark.parametrize("style", ["5.x", "4.x"])
def test_config_files_of_both_versions_load(references, ids, tmp_path, style):
    """A 5.x file (``rope_parameters``) and a 4.x file (``rope_theta`` + ``rope_scaling``
    with the old ``"type"`` key) give the same model as Transformers reading it."""
    theirs = references["linear"]["eager"]
    theirs.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    if style == "4.x":
        params = data.pop("rope_parameters")
        data["rope_theta"] = params["rope_theta"]
        data["rope_scaling"] = {"type": "linear", "factor": params["factor"]}
        data["torch_dtype"] = data.pop("dtype")
        data.pop("head_dim")
    else:
        assert "rope_theta" not in data and "rope_scaling" not in data
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert config.rope_theta == 10000.0 and config.rope_scaling == {"type": "linear", "factor": 2.0}
    config.save_pretrained(tmp_path / "ours")                                # and what we write, they read
    reread_params = transformers.AutoConfig.from_pretrained(tmp_path / "ours").rope_parameters
    assert {k: reread_params[k] for k in config.rope_parameters} == config.rope_parameters
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    reread = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert_close(ours(ids).logits, reread(ids).logits, atol=ATOL)
        assert_close(ours(ids).logits, theirs(ids).logits, atol=ATOL)


def test_config_defaults_and_written_keys():
    ours, theirs = LlamaConfig().to_dict(), transformers.LlamaConfig().to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range",
                "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "pretraining_tp",
                "tie_word_embeddings", "attention_bias", "attention_dropout", "mlp_bias", "head_dim",
                "rope_parameters"):
        assert ours[key] == theirs[key], key
    assert ours["rope_theta"] == 10000.0 and ours["rope_scaling"] is None and ours["model_type"] == "llama"
    config = LlamaConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                         rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 500000.0})
    assert config.head_dim == 16 and config.rope_theta == 500000.0
    assert config.rope_scaling == {"type": "dynamic", "factor": 4.0}
    again = LlamaConfig.from_dict(config.to_dict())
    assert again == config and again.rope_parameters == config.rope_parameters
    config.rope_scaling = None
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}
    unknown = LlamaConfig(rope_parameters={"rope_type": "nonsense", "factor": 3.0})   # readable, not buildable
    assert LlamaConfig.from_dict(unknown.to_dict()).rope_parameters["rope_type"] == "nonsense"
    with pytest.raises(ValueError, match="rope_type 'nonsense' is not supported"):
        LlamaModel(LlamaConfig(**config_kwargs(), rope_parameters={"rope_type": "nonsense"}))
    with pytest.raises(ValueError, match="factor"):
        LlamaConfig(rope_scaling={"type": "linear"})


# ----------------------------------------------------------------------------- model utilities


def test_gradient_checkpointing_same_grads(references, ids):
    grads = []
    for checkpointing in (False, True):
        model = ours_for(references)
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        model.train()
        out = model(ids, labels=ids)
        assert (out.past_key_values is None) == checkpointing                 # the cache is turned off
        out.loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert_close(a, b, atol=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_resize_token_embeddings(ids, tie):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config_kwargs(tie_word_embeddings=tie))).eval()
    with torch.no_grad():
        before = model(ids).logits
    embedding = model.resize_token_embeddings(VOCAB + 5)
    assert embedding.weight.shape == (VOCAB + 5, 32) and model.lm_head.weight.shape == (VOCAB + 5, 32)
    assert model.config.vocab_size == VOCAB + 5 and model.vocab_size == VOCAB + 5
    assert (model.lm_head.weight is embedding.weight) == tie
    with torch.no_grad():
        after = model(ids).logits
    assert_close(after[..., :VOCAB], before, atol=ATOL)
    model.resize_token_embeddings(VOCAB - 9)
    assert model.lm_head.weight.shape == (VOCAB - 9, 32)


def test_sdpa_switch_and_memory_footprint(references, ids, left_mask):
    ours = ours_for(references, impl="eager")
    real = left_mask.bool()
    with torch.no_grad():
        eager = ours(ids, attention_mask=left_mask).logits
        ours.to_bettertransformer()
        assert ours.config._attn_implementation == "sdpa"
        assert_close(ours(ids, attention_mask=left_mask).logits[real], eager[real], atol=ATOL)
        ours.reverse_bettertransformer()
        assert ours.config._attn_implementation == "eager"
    params = sum(p.numel() * p.element_size() for p in ours.parameters())
    buffers = sum(b.numel() * b.element_size() for b in ours.buffers())
    assert ours.get_memory_footprint() == params + buffers
    assert ours.get_memory_footprint(return_buffers=False) == params


def test_base_model_and_inputs_embeds(references, ids):
    ours = ours_for(references)
    base = LlamaModel(ours.config).eval()
    base.load_state_dict(ours.model.state_dict())
    with torch.no_grad():
        hidden = base(ids).last_hidden_state
        assert hidden.shape == (2, SEQ, 32)
        assert_close(base(inputs_embeds=base.embed_tokens(ids)).last_hidden_state, hidden, atol=0)
        assert_close(ours.lm_head(hidden), ours(ids).logits, atol=ATOL)
    with pytest.raises(ValueError, match="exactly one"):
        base()
    with pytest.raises(ValueError, match="attention_mask"):
        base(ids, attention_mask=torch.ones(2, 3))
