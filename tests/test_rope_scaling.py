"""RoPE ``yarn`` and ``longrope`` against Transformers 5.25's LlamaForCausalLM on the same weights.

Tiny models (head_dim 8: 4 frequencies), ``max_position_embeddings`` 16 and
``original_max_position_embeddings`` 8, so a 24-token input is past both and
a 6-token one is inside the original length (longrope's short factors).
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from pretrained import AutoConfig, AutoModelForCausalLM  # noqa: E402
from pretrained.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402

ATOL = 1e-4
VOCAB, SEQ, MAX_POS, ORIGINAL = 99, 24, 16, 8
ROPES = {
    "yarn": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": ORIGINAL},
    "yarn_betas_mscale": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": ORIGINAL,
                          "beta_fast": 8.0, "beta_slow": 0.5, "mscale": 0.8, "mscale_all_dim": 0.5,
                          "truncate": False},
    "yarn_attention_factor": {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": ORIGINAL,
                              "attention_factor": 1.3},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6],
                 "long_factor": [1.5, 2.5, 4.0, 7.0], "original_max_position_embeddings": ORIGINAL},
    "longrope_factor": {"rope_type": "longrope", "short_factor": [1.0, 1.0, 1.2, 1.4],
                        "long_factor": [2.0, 3.0, 5.0, 9.0], "original_max_position_embeddings": ORIGINAL,
                        "factor": 4.0},
}


def config_kwargs(**extra) -> dict:
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                  bos_token_id=1, eos_token_id=2, initializer_range=0.1)
    kwargs.update(extra)
    return kwargs


@pytest.fixture(scope="module")
def references():
    """rope name -> {"eager": model, "sdpa": model} of Transformers (5.x ``rope_parameters``), seed 0."""
    transformers.utils.logging.set_verbosity_error()
    out = {}
    for name, params in ROPES.items():
        kwargs = config_kwargs(rope_parameters={**params, "rope_theta": 10000.0})
        torch.manual_seed(0)
        eager = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs, attn_implementation="eager")).eval()
        sdpa = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs, attn_implementation="sdpa")).eval()
        sdpa.load_state_dict(eager.state_dict())
        out[name] = {"eager": eager, "sdpa": sdpa}
    return out


def ours_for(references, name: str, impl: str = "sdpa", spelling: str = "4.x") -> LlamaForCausalLM:
    """Ours with the same weights; ``spelling`` picks ``rope_scaling`` + ``rope_theta`` or ``rope_parameters``."""
    params = dict(ROPES[name])
    if spelling == "4.x":
        kwargs = config_kwargs(rope_scaling=params, rope_theta=10000.0)
    else:
        kwargs = config_kwargs(rope_parameters={**params, "rope_theta": 10000.0})
    model = LlamaForCausalLM(LlamaConfig(**kwargs, attn_implementation=impl)).eval()
    model.load_state_dict(references[name]["eager"].state_dict(), strict=True)
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("spelling", ["4.x", "5.x"])
@pytest.mark.parametrize("name", list(ROPES))
def test_logits_equal_transformers(references, ids, name, spelling, impl):
    """Past the original length, inside it, and back (longrope switches its factors each call)."""
    ours, theirs = ours_for(references, name, impl, spelling), references[name][impl]
    assert_close(ours.model.rotary_emb.inv_freq, theirs.model.rotary_emb.original_inv_freq, atol=0)
    assert ours.model.rotary_emb.attention_scaling == pytest.approx(theirs.model.rotary_emb.attention_scaling)
    with torch.no_grad():
        for length in (SEQ, 6, ORIGINAL, ORIGINAL + 1, SEQ):
            assert_close(ours(ids[:, :length]).logits, theirs(ids[:, :length]).logits, atol=ATOL)


def test_scaling_really_changes_the_outputs(references, ids):
    """Attention factor and long factors are not no-ops: the variants differ from each other."""
    with torch.no_grad():
        logits = {name: ours_for(references, name)(ids).logits for name in ROPES}
    assert float((logits["yarn"] - logits["yarn_betas_mscale"]).abs().max()) > 1e-2
    assert float((logits["yarn"] - logits["yarn_attention_factor"]).abs().max()) > 1e-2
    model = ours_for(references, "longrope")
    with torch.no_grad():
        short = model(ids[:, :ORIGINAL]).logits
        long = model(ids[:, :ORIGINAL + 1]).logits[:, :ORIGINAL]       # same tokens, long factors now
    assert float((short - long).abs().max()) > 1e-2
    rotary = model.model.rotary_emb
    assert rotary.attention_scaling == pytest.approx((1 + torch.log(torch.tensor(2.0)).item()
                                                      / torch.log(torch.tensor(8.0)).item()) ** 0.5)


@pytest.mark.parametrize("name", ["yarn", "longrope"])
def test_decoding_with_cache_equals_transformers(references, ids, name):
    """A 5-token prompt, then one token at a time past the original length, through each library's cache;
    and greedy generate() gives the same tokens."""
    ours, theirs = ours_for(references, name), references[name]["sdpa"]
    with torch.no_grad():
        a, b = ours(ids[:, :5], use_cache=True), theirs(ids[:, :5], use_cache=True)
        assert_close(a.logits, b.logits, atol=ATOL)
        for t in range(5, SEQ):
            a = ours(ids[:, t:t + 1], past_key_values=a.past_key_values, use_cache=True)
            b = theirs(ids[:, t:t + 1], past_key_values=b.past_key_values, use_cache=True)
            assert_close(a.logits, b.logits, atol=ATOL)
        mine = ours_for(references, name).generate(ids[:, :5], max_new_tokens=12, do_sample=False)
        reference = theirs.generate(ids[:, :5], max_new_tokens=12, do_sample=False)
    assert torch.equal(mine, reference)


def test_checkpoint_exchange_both_directions(references, ids, tmp_path):
    for name in ("yarn_betas_mscale", "longrope_factor"):
        theirs = references[name]["sdpa"]
        theirs.save_pretrained(tmp_path / name / "hf")
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / name / "hf")
        assert ours.config.rope_parameters == theirs.config.rope_parameters
        with torch.no_grad():
            expected = theirs(ids).logits
            assert_close(ours(ids).logits, expected, atol=ATOL)
        ours.save_pretrained(tmp_path / name / "ours")
        written = json.loads((tmp_path / name / "ours" / "config.json").read_text())
        assert written["rope_scaling"]["rope_type"] == ROPES[name]["rope_type"]
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name / "ours").eval()
        assert back.config.rope_parameters == theirs.config.rope_parameters
        with torch.no_grad():
            assert_close(back(ids).logits, expected, atol=ATOL)
        assert AutoConfig.from_pretrained(tmp_path / name / "ours").rope_parameters == ours.config.rope_parameters


def test_original_length_defaults_to_max_position_embeddings():
    config = LlamaConfig(**config_kwargs(rope_scaling={"type": "yarn", "factor": 2.0}))
    assert config.rope_parameters["original_max_position_embeddings"] == MAX_POS
    theirs = transformers.LlamaConfig(**config_kwargs(rope_parameters={"rope_type": "yarn", "factor": 2.0,
                                                                       "rope_theta": 10000.0}))
    assert theirs.rope_parameters["original_max_position_embeddings"] == MAX_POS


def test_bad_longrope_parameters_are_named():
    with pytest.raises(ValueError, match="long_factor"):
        LlamaConfig(**config_kwargs(rope_scaling={"type": "longrope", "short_factor": [1.0] * 4}))
    config = LlamaConfig(**config_kwargs(rope_scaling={"type": "longrope", "short_factor": [1.0] * 3,
                                                       "long_factor": [1.0] * 4,
                                                       "original_max_position_embeddings": 8}))
    with pytest.raises(ValueError, match="short_factor.*4 numbers"):
        LlamaForCausalLM(config)
