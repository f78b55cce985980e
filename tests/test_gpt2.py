"""GPT-2 parity with Transformers on the same weights.

A tiny Transformers ``GPT2LMHeadModel`` is built at seed 0; its state dict is
copied into ours with ``strict=True`` (so parameter names are identical) and
outputs are compared in eval mode, for both attention implementations.
Transformers 5 dropped head masks and head pruning, so those are checked
against the written-out eager math (and against each other).
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")
from transformers.models.gpt2 import modeling_gpt2 as hf_gpt2  # noqa: E402

from pretrained.modeling.cache import DynamicCache  # noqa: E402
from pretrained.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model  # noqa: E402

ATOL = 1e-5
IMPLS = ["eager", "sdpa"]


@pytest.fixture(scope="module")
def kwargs(tiny_gpt2_config_kwargs):
    return dict(tiny_gpt2_config_kwargs)


@pytest.fixture(scope="module")
def reference(kwargs):
    """Transformers' model, eager and sdpa (same weights)."""
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    eager = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs, attn_implementation="eager")).eval()
    sdpa = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs, attn_implementation="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    return {"eager": eager, "sdpa": sdpa}


def ours_for(reference, kwargs, impl: str) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel(GPT2Config(**kwargs, attn_implementation=impl)).eval()
    model.load_state_dict(reference["eager"].state_dict(), strict=True)
    return model


@pytest.fixture(scope="module", params=IMPLS)
def pair(request, reference, kwargs):
    """(ours, theirs) with the same attention implementation."""
    return ours_for(reference, kwargs, request.param), reference[request.param]


def left_padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as Transformers' ``generate`` derives them for left padding."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def test_state_dict_names_equal(reference, kwargs):
    ours = ours_for(reference, kwargs, "eager")
    assert list(ours.state_dict()) == list(reference["eager"].state_dict())
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_plain_batch(pair, input_ids):
    ours, theirs = pair
    with torch.no_grad():
        a, b = ours(input_ids), theirs(input_ids)
    assert_close(a.logits, b.logits, atol=ATOL)
    cache = b.get("cache") or b.past_key_values  # renamed in later Transformers 5.x
    theirs_cache = [(layer.keys, layer.values) for layer in cache.layers]
    assert len(a.past_key_values) == len(theirs_cache)
    for (ka, va), (kb, vb) in zip(a.past_key_values, theirs_cache):
        assert_close(ka, kb, atol=ATOL)
        assert_close(va, vb, atol=ATOL)


def test_eager_and_sdpa_agree(reference, kwargs, input_ids, attention_mask_left):
    eager, sdpa = ours_for(reference, kwargs, "eager"), ours_for(reference, kwargs, "sdpa")
    pos = left_padded_positions(attention_mask_left)
    with torch.no_grad():
        a = eager(input_ids, attention_mask=attention_mask_left, position_ids=pos).logits
        b = sdpa(input_ids, attention_mask=attention_mask_left, position_ids=pos).logits
    assert_close(a, b, atol=ATOL)


def test_switch_implementation_at_runtime(reference, kwargs, input_ids):
    model = ours_for(reference, kwargs, "eager")
    with torch.no_grad():
        a = model(input_ids).logits
        model.config._attn_implementation = "sdpa"
        b = model(input_ids).logits
    assert_close(a, b, atol=ATOL)


def test_left_padding(pair, input_ids, attention_mask_left):
    ours, theirs = pair
    pos = left_padded_positions(attention_mask_left)
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_left, position_ids=pos).logits
        b = theirs(input_ids, attention_mask=attention_mask_left, position_ids=pos).logits
    real = attention_mask_left.bool()
    assert_close(a[real], b[real], atol=ATOL)
    if ours.config._attn_implementation == "eager":  # same additive mask: pad rows agree too
        assert_close(a, b, atol=ATOL)


def test_mask_without_position_ids(pair, input_ids, attention_mask_right):
    ours, theirs = pair
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right).logits
        b = theirs(input_ids, attention_mask=attention_mask_right).logits
    real = attention_mask_right.bool()
    assert_close(a[real], b[real], atol=ATOL)


def test_token_type_ids(pair, input_ids):
    ours, theirs = pair
    types = torch.arange(input_ids.numel()).view_as(input_ids) % 3
    with torch.no_grad():
        assert_close(ours(input_ids, token_type_ids=types).logits,
                     theirs(input_ids, token_type_ids=types).logits, atol=ATOL)


def test_inputs_embeds(pair, input_ids):
    ours, theirs = pair
    embeds = theirs.transformer.wte(input_ids).detach()
    with torch.no_grad():
        assert_close(ours(inputs_embeds=embeds).logits, theirs(inputs_embeds=embeds).logits, atol=ATOL)


def test_hidden_states_and_attentions(reference, kwargs, input_ids, attention_mask_left):
    ours = ours_for(reference, kwargs, "sdpa")  # weights force the eager path
    theirs = reference["eager"]
    pos = left_padded_positions(attention_mask_left)
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_left, position_ids=pos,
                 output_attentions=True, output_hidden_states=True)
        b = theirs(input_ids, attention_mask=attention_mask_left, position_ids=pos,
                   output_attentions=True, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states) == kwargs["n_layer"] + 1
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert_close(x, y, atol=ATOL)
    assert len(a.attentions) == kwargs["n_layer"]
    for x, y in zip(a.attentions, b.attentions):
        assert x.shape == (2, kwargs["n_head"], 7, 7)
        assert_close(x, y, atol=ATOL)


def _eager_with_head_mask(head_mask):
    """Transformers' eager attention plus a head mask on the weights (the 4.37 math)."""

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = weights.softmax(dim=-1) * head_mask[module.layer_idx].view(1, -1, 1, 1)
        return torch.matmul(weights, value).transpose(1, 2), weights

    return forward


@pytest.mark.parametrize("impl", IMPLS)
def test_head_mask(reference, kwargs, input_ids, monkeypatch, impl):
    head_mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    monkeypatch.setattr(hf_gpt2, "eager_attention_forward", _eager_with_head_mask(head_mask))
    ours = ours_for(reference, kwargs, impl)
    with torch.no_grad():
        a = ours(input_ids, head_mask=head_mask, output_attentions=True)
        b = reference["eager"](input_ids, output_attentions=True)
        plain = ours(input_ids).logits
    assert_close(a.logits, b.logits, atol=ATOL)
    assert float(a.attentions[0][:, 1].abs().max()) == 0.0
    assert float((a.logits - plain).abs().max()) > 1e-3  # the mask did something
    with torch.no_grad():  # a 1-D mask applies to every layer
        one = ours(input_ids, head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0])).logits
        two = ours(input_ids, head_mask=torch.tensor([[1.0, 0.0, 1.0, 1.0]] * 2)).logits
    assert_close(one, two, atol=0)


def test_prune_heads_equals_head_mask(reference, kwargs, input_ids):
    model = ours_for(reference, kwargs, "eager")
    with torch.no_grad():
        masked = model(input_ids, head_mask=torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])).logits
    model.prune_heads({0: [1], 1: [3]})
    model.prune_heads({0: [1, 3]})  # 1 already gone: original numbering
    assert model.transformer.h[0].attn.num_heads == 2 and model.transformer.h[0].attn.pruned_heads == {1, 3}
    assert model.transformer.h[0].attn.c_attn.weight.shape == (32, 3 * 16)
    assert model.transformer.h[0].attn.c_proj.weight.shape == (16, 32)
    assert model.config.pruned_heads == {0: [1, 3], 1: [3]}
    for impl in IMPLS:
        model.config._attn_implementation = impl
        with torch.no_grad():
            assert_close(model(input_ids).logits, masked, atol=ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_incremental_decoding_equals_full_forward(reference, kwargs, input_ids, impl):
    ours = ours_for(reference, kwargs, impl)
    with torch.no_grad():
        full = ours(input_ids).logits
        out = ours(input_ids[:, :3], use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        assert isinstance(past, DynamicCache) and len(past) == kwargs["n_layer"]
        assert past[0][0].shape == (2, kwargs["n_head"], 3, 8)
        # one chunk of two tokens (causal inside the chunk), then one token at a time
        out = ours(input_ids[:, 3:5], past_key_values=past)
        steps.append(out.logits)
        past = out.past_key_values
        for t in range(5, input_ids.shape[1]):
            out = ours(input_ids[:, t:t + 1], past_key_values=past)
            steps.append(out.logits)
            past = out.past_key_values
    assert_close(torch.cat(steps, dim=1), full, atol=ATOL)
    assert_close(full, reference[impl](input_ids).logits.detach(), atol=ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_incremental_decoding_with_left_padding(reference, kwargs, input_ids, attention_mask_left, impl):
    ours = ours_for(reference, kwargs, impl)
    mask = attention_mask_left
    pos = left_padded_positions(mask)
    with torch.no_grad():
        full = ours(input_ids, attention_mask=mask, position_ids=pos).logits
        theirs = reference[impl](input_ids, attention_mask=mask, position_ids=pos).logits
        out = ours(input_ids[:, :4], attention_mask=mask[:, :4], position_ids=pos[:, :4])
        steps, past = [out.logits], out.past_key_values
        for t in range(4, input_ids.shape[1]):
            out = ours(input_ids[:, t:t + 1], past_key_values=past, attention_mask=mask[:, :t + 1],
                       position_ids=pos[:, t:t + 1])
            steps.append(out.logits)
            past = out.past_key_values
    real = mask.bool()
    assert_close(torch.cat(steps, dim=1)[real], full[real], atol=ATOL)
    assert_close(full[real], theirs[real], atol=ATOL)


def test_cache_object_is_returned_as_given(reference, kwargs, input_ids):
    ours = ours_for(reference, kwargs, "sdpa")
    cache = transformers.DynamicCache()
    with torch.no_grad():
        out = ours(input_ids[:, :4], past_key_values=cache, use_cache=True)
        assert out.past_key_values is cache and cache.get_seq_length() == 4
        step = ours(input_ids[:, 4:], past_key_values=cache).logits
        full = ours(input_ids).logits
    assert_close(step, full[:, 4:], atol=ATOL)


def test_use_cache_false_returns_no_cache(pair, input_ids):
    ours, _ = pair
    out = ours(input_ids, use_cache=False)
    assert out.past_key_values is None and "past_key_values" not in out


def test_labels_loss(pair, input_ids):
    ours, theirs = pair
    labels = input_ids.clone()
    labels[0, 2] = -100
    with torch.no_grad():
        a = ours(input_ids, labels=labels)
        b = theirs(input_ids, labels=labels)
    assert_close(a.loss, b.loss, atol=ATOL)
    assert a.loss.shape == ()


def test_return_dict_false_and_tuple_indexing(reference, kwargs, input_ids):
    ours = ours_for(reference, kwargs, "eager")
    with torch.no_grad():
        out = ours(input_ids, labels=input_ids)
        tup = ours(input_ids, labels=input_ids, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 3  # loss, logits, past_key_values
    assert_close(tup[1], out.logits, atol=0)
    assert out[0] is out.loss and out["logits"] is out.logits and out.cache is out.past_key_values
    base = GPT2Model(ours.config).eval()
    assert base(input_ids, return_dict=False)[0].shape == (2, 7, kwargs["n_embd"])


def test_gradient_checkpointing_same_grads(reference, kwargs, input_ids):
    kw = dict(kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    grads = []
    for checkpointing in (False, True):
        model = GPT2LMHeadModel(GPT2Config(**kw))
        model.load_state_dict(reference["eager"].state_dict())
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        out = model(input_ids, labels=input_ids)
        assert (out.past_key_values is None) == checkpointing  # cache is turned off
        out.loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert_close(a, b, atol=1e-6)


def test_config_defaults_match_transformers():
    ours, theirs = GPT2Config().to_dict(), transformers.GPT2Config().to_dict()
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
                "scale_attn_weights", "use_cache", "bos_token_id", "eos_token_id",
                "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "summary_type",
                "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout"):
        assert ours[key] == theirs[key], key
    config = GPT2Config(hidden_size=64, num_hidden_layers=3)
    aliases = (config.n_embd, config.n_layer, config.num_attention_heads, config.max_position_embeddings)
    assert aliases == (64, 3, 12, 1024)
    assert GPT2Config.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_init_weights_distribution():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=8, n_embd=128, n_head=4, vocab_size=500, n_positions=64)
    model = GPT2LMHeadModel(config)
    block = model.transformer.h[0]
    assert abs(float(block.attn.c_attn.weight.detach().std()) - 0.02) < 0.002
    scaled = 0.02 / math.sqrt(2 * 8)
    assert abs(float(block.attn.c_proj.weight.detach().std()) - scaled) < 0.1 * scaled
    assert abs(float(block.mlp.c_proj.weight.detach().std()) - scaled) < 0.1 * scaled
    assert abs(float(model.transformer.wte.weight.detach().std()) - 0.02) < 0.002
    assert float(block.attn.c_attn.bias.detach().abs().max()) == 0.0
    assert torch.equal(block.ln_1.weight, torch.ones(128))


def test_old_mask_buffers_are_ignored_on_load():
    import re

    patterns = GPT2LMHeadModel._keys_to_ignore_on_load_unexpected
    ignored = lambda key: any(re.search(p, key) for p in patterns)  # noqa: E731
    assert ignored("h.0.attn.bias") and ignored("transformer.h.11.attn.masked_bias")
    assert not ignored("transformer.h.0.attn.c_attn.bias") and not ignored("transformer.h.0.attn.c_proj.bias")


def test_upcast_and_scaling_options(reference, kwargs, input_ids):
    kw = dict(kwargs, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw, attn_implementation="eager")).eval()
    for impl in IMPLS:
        ours = GPT2LMHeadModel(GPT2Config(**kw, attn_implementation=impl)).eval()
        ours.load_state_dict(theirs.state_dict())
        with torch.no_grad():
            assert_close(ours(input_ids).logits, theirs(input_ids).logits, atol=ATOL)


def test_causal_mask_aligns_bottom_right_and_combines_padding():
    from pretrained.modeling.attention import causal_mask, padding_mask

    neg = torch.finfo(torch.float32).min
    mask = causal_mask(None, 2, 5, dtype=torch.float32)
    assert mask.shape == (1, 1, 2, 5)
    assert (mask == 0).int().tolist() == [[[[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]]]
    padded = causal_mask(torch.tensor([[0, 1, 1]]), 3, 3, dtype=torch.float16)
    assert padded.dtype == torch.float16 and (padded == 0).int().tolist() == [[[[0, 0, 0], [0, 1, 0], [0, 1, 1]]]]
    assert float(padded.min()) == torch.finfo(torch.float16).min
    assert padding_mask(torch.tensor([[1, 0]]), torch.float32).tolist() == [[[[0.0, neg]]]]


def test_activations_match_transformers():
    from transformers.activations import ACT2FN as THEIRS

    from pretrained.modeling.activations import ACT2FN

    x = torch.linspace(-12, 12, 1001)
    for name in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_python", "gelu_python_tanh", "gelu_fast",
                 "gelu_accurate", "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "silu", "swish", "tanh",
                 "sigmoid", "mish", "linear", "leaky_relu", "hardswish", "laplace"):
        assert torch.equal(ACT2FN[name](x), THEIRS[name](x)), name
    assert ACT2FN["gelu"] is not ACT2FN["gelu"]  # a fresh module per lookup
    with pytest.raises(KeyError, match="not_an_activation"):
        ACT2FN["not_an_activation"]
