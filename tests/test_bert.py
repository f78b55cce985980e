"""BERT parity with Transformers on the same weights, and the padding-free SDPA path.

A tiny Transformers ``BertForMaskedLM`` is built at seed 0; its state dict is
copied into ours with ``strict=True`` and outputs are compared in eval mode.
With ``attn_implementation="sdpa"`` and a padded batch our model runs without
the padding (``PackedSequences``): real tokens must match, pad positions are
zeros.  Head masks are checked against the written-out eager math (Transformers
5 dropped them).
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")
from transformers.models.bert import modeling_bert as hf_bert  # noqa: E402

from pretrained.modeling.attention import PackedSequences, attention  # noqa: E402
from pretrained.models.bert import BertConfig, BertForMaskedLM, BertModel  # noqa: E402

ATOL = 1e-5
IMPLS = ["eager", "sdpa"]


@pytest.fixture(scope="module")
def kwargs(tiny_bert_config_kwargs):
    return dict(tiny_bert_config_kwargs)


@pytest.fixture(scope="module")
def reference(kwargs):
    """Transformers' BertForMaskedLM (eager and sdpa) and BertModel with a pooler, same weights."""
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    eager = transformers.BertForMaskedLM(transformers.BertConfig(**kwargs, attn_implementation="eager")).eval()
    sdpa = transformers.BertForMaskedLM(transformers.BertConfig(**kwargs, attn_implementation="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    base = transformers.BertModel(transformers.BertConfig(**kwargs, attn_implementation="eager")).eval()
    result = base.load_state_dict(eager.bert.state_dict(), strict=False)  # the MLM body has no pooler
    assert sorted(result.missing_keys) == ["pooler.dense.bias", "pooler.dense.weight"], result
    assert not result.unexpected_keys, result
    return {"eager": eager, "sdpa": sdpa, "base": base}


def ours_for(reference, kwargs, impl: str) -> BertForMaskedLM:
    """Ours with Transformers' weights; "sdpa" also turns the padding-free path on."""
    model = BertForMaskedLM(BertConfig(**kwargs, attn_implementation=impl)).eval()
    model.load_state_dict(reference["eager"].state_dict(), strict=True)
    model.bert.unpad_inputs = impl == "sdpa"
    return model


def base_for(reference, kwargs, impl: str) -> BertModel:
    model = BertModel(BertConfig(**kwargs, attn_implementation=impl)).eval()
    model.load_state_dict(reference["base"].state_dict(), strict=True)
    model.unpad_inputs = impl == "sdpa"
    return model


@pytest.fixture(scope="module", params=IMPLS)
def pair(request, reference, kwargs):
    return ours_for(reference, kwargs, request.param), reference[request.param]


def test_state_dict_names_and_ties(reference, kwargs):
    ours = ours_for(reference, kwargs, "eager")
    assert list(ours.state_dict()) == list(reference["eager"].state_dict())
    head = ours.cls.predictions
    assert head.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias
    buffers = dict(ours.named_buffers())
    assert "bert.embeddings.position_ids" in buffers and "bert.embeddings.position_ids" not in ours.state_dict()
    assert list(base_for(reference, kwargs, "eager").state_dict()) == list(reference["base"].state_dict())


def test_plain_batch(pair, input_ids):
    ours, theirs = pair
    with torch.no_grad():
        assert_close(ours(input_ids).logits, theirs(input_ids).logits, atol=ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_right_padding(reference, kwargs, input_ids, attention_mask_right, impl):
    ours = ours_for(reference, kwargs, impl)
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right).logits
        b = reference[impl](input_ids, attention_mask=attention_mask_right).logits
        c = reference["eager"](input_ids, attention_mask=attention_mask_right).logits
    real = attention_mask_right.bool()
    assert_close(a[real], b[real], atol=ATOL)
    assert_close(a[real], c[real], atol=ATOL)
    if impl == "eager":
        assert_close(a, b, atol=ATOL)  # eager computes pad positions exactly as Transformers


def test_left_padding_is_not_packed(reference, kwargs, input_ids, attention_mask_left):
    """Token 0 is padding in one row: the pooler reads it, so every position is computed."""
    for impl in IMPLS:
        ours = base_for(reference, kwargs, impl)
        with torch.no_grad():
            a = ours(input_ids, attention_mask=attention_mask_left)
            b = reference["base"](input_ids, attention_mask=attention_mask_left)
        assert_close(a.last_hidden_state, b.last_hidden_state, atol=ATOL)
        assert_close(a.pooler_output, b.pooler_output, atol=ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_pooler_with_padding(reference, kwargs, input_ids, attention_mask_right, impl):
    ours = base_for(reference, kwargs, impl)
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right)
        b = reference["base"](input_ids, attention_mask=attention_mask_right)
    real = attention_mask_right.bool()
    assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=ATOL)
    assert_close(a.pooler_output, b.pooler_output, atol=ATOL)
    if impl == "sdpa":  # packed: padding positions are not computed
        assert float(a.last_hidden_state[~real].abs().max()) == 0.0


def test_token_type_and_position_ids(pair, input_ids):
    ours, theirs = pair
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    positions = torch.arange(7).flip(0)[None]
    with torch.no_grad():
        assert_close(ours(input_ids, token_type_ids=types, position_ids=positions).logits,
                     theirs(input_ids, token_type_ids=types, position_ids=positions).logits, atol=ATOL)


def test_hidden_states_and_attentions(reference, kwargs, input_ids, attention_mask_right):
    ours = ours_for(reference, kwargs, "sdpa")  # weights force the eager path (no packing)
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right, output_attentions=True, output_hidden_states=True)
        b = reference["eager"](input_ids, attention_mask=attention_mask_right,
                               output_attentions=True, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states) == kwargs["num_hidden_layers"] + 1
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert_close(x, y, atol=ATOL)
    for x, y in zip(a.attentions, b.attentions):
        assert x.shape == (2, 4, 7, 7)
        assert_close(x, y, atol=ATOL)


def test_packed_hidden_states(reference, kwargs, input_ids, attention_mask_right):
    ours = ours_for(reference, kwargs, "sdpa")
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right, output_hidden_states=True)
        b = reference["eager"](input_ids, attention_mask=attention_mask_right, output_hidden_states=True)
    real = attention_mask_right.bool()
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert_close(x[real], y[real], atol=ATOL)


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
def test_head_mask(reference, kwargs, input_ids, attention_mask_right, monkeypatch, impl):
    head_mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    monkeypatch.setattr(hf_bert, "eager_attention_forward", _eager_with_head_mask(head_mask))
    ours = ours_for(reference, kwargs, impl)
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right, head_mask=head_mask, output_attentions=True)
        b = reference["eager"](input_ids, attention_mask=attention_mask_right, output_attentions=True)
        plain = ours(input_ids, attention_mask=attention_mask_right).logits
    assert_close(a.logits, b.logits, atol=ATOL)
    assert float(a.attentions[1][:, 2:].abs().max()) == 0.0
    assert float((a.logits - plain).abs().max()) > 1e-3


def test_prune_heads_equals_head_mask(reference, kwargs, input_ids, attention_mask_right):
    model = ours_for(reference, kwargs, "eager")
    real = attention_mask_right.bool()
    with torch.no_grad():
        masked = model(input_ids, attention_mask=attention_mask_right,
                       head_mask=torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])).logits
    model.prune_heads({0: [0, 3]})
    attn = model.bert.encoder.layer[0].attention
    assert attn.self.num_attention_heads == 2 and attn.self.query.weight.shape == (16, 32)
    assert attn.output.dense.weight.shape == (32, 16) and attn.pruned_heads == {0, 3}
    for impl in IMPLS:
        model.config._attn_implementation = impl
        with torch.no_grad():
            assert_close(model(input_ids, attention_mask=attention_mask_right).logits[real], masked[real], atol=ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_labels_loss(reference, kwargs, input_ids, attention_mask_right, impl):
    ours = ours_for(reference, kwargs, impl)
    labels = torch.full_like(input_ids, -100)
    labels[0, 1], labels[1, 2], labels[0, 5] = 7, 11, 3
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right, labels=labels)
        b = reference["eager"](input_ids, attention_mask=attention_mask_right, labels=labels)
        tup = ours(input_ids, attention_mask=attention_mask_right, labels=labels, return_dict=False)
    assert_close(a.loss, b.loss, atol=ATOL)
    assert len(tup) == 2 and torch.equal(tup[0], a.loss)


def test_chunked_feed_forward(reference, kwargs, input_ids, attention_mask_right):
    for impl in IMPLS:
        ours = BertForMaskedLM(BertConfig(**kwargs, chunk_size_feed_forward=3, attn_implementation=impl)).eval()
        ours.load_state_dict(reference["eager"].state_dict())
        with torch.no_grad():
            a = ours(input_ids, attention_mask=attention_mask_right).logits
            b = reference["eager"](input_ids, attention_mask=attention_mask_right).logits
        real = attention_mask_right.bool()
        assert_close(a[real], b[real], atol=ATOL)


def test_gradient_checkpointing_same_grads(reference, kwargs, input_ids, attention_mask_right):
    kw = dict(kwargs, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    grads = []
    for checkpointing in (False, True):
        model = BertForMaskedLM(BertConfig(**kw))
        model.load_state_dict(reference["eager"].state_dict())
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(input_ids, attention_mask=attention_mask_right, labels=input_ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert_close(a, b, atol=1e-6)


def test_config_defaults_match_transformers():
    ours, theirs = BertConfig().to_dict(), transformers.BertConfig().to_dict()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "use_cache",
                "classifier_dropout"):
        assert ours[key] == theirs[key], key
    assert ours["position_embedding_type"] == "absolute"
    # relative_key(_query) follow 4.37 (tests/test_bert_relative.py); anything else is refused
    with pytest.raises(NotImplementedError, match="position_embedding_type='rotary'"):
        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             position_embedding_type="rotary"))


def test_init_weights():
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=128, vocab_size=500))
    layer = model.bert.encoder.layer[0]
    assert abs(float(layer.attention.self.query.weight.detach().std()) - 0.02) < 0.003
    assert float(layer.attention.self.query.bias.detach().abs().max()) == 0.0
    assert float(model.bert.embeddings.word_embeddings.weight.detach()[0].abs().max()) == 0.0  # padding row
    assert float(model.cls.predictions.bias.detach().abs().max()) == 0.0
    assert torch.equal(model.bert.embeddings.position_ids[0, :5], torch.arange(5))


# ------------------------------------------------------------------ packed attention
@pytest.mark.parametrize("merge_cost, slack", [(0, 0.0), (32 * 32, 0.125), (10**9, 0.0)])
def test_packed_attention_equals_masked_attention(merge_cost, slack):
    """Per-sequence SDPA over a packed batch == masked attention on the padded batch, at real tokens."""
    torch.manual_seed(0)
    lengths = [9, 1, 16, 16, 4, 12, 3, 16, 0]
    B, S, H, D = len(lengths), 16, 3, 8
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    mask[2, 5] = 0  # a hole inside a sequence
    q, k, v = (torch.randn(B, H, S, D) for _ in range(3))
    additive = torch.zeros(B, 1, 1, S).masked_fill(mask[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    expected, _ = attention(q, k, v, mask=additive, implementation="eager")                # (B, H, S, D)

    packed = PackedSequences.from_mask(mask, merge_cost=merge_cost, slack=slack)
    assert packed.num_tokens == int(mask.sum())
    to_packed = lambda t: packed.pack(t.transpose(1, 2)).transpose(0, 1)  # noqa: E731  (B,H,S,D) -> (H,T,D)
    out, weights = attention(to_packed(q), to_packed(k), to_packed(v), mask=packed)
    assert weights is None
    got = packed.unpack(out.transpose(0, 1)).transpose(1, 2)                               # (B, H, S, D)
    real = mask.bool()[:, None, :, None].expand_as(got)
    assert_close(got[real], expected[real], atol=1e-6)
    assert float(got[~real].abs().max()) == 0.0
    with pytest.raises(ValueError, match="packed"):
        attention(to_packed(q), to_packed(k), to_packed(v), mask=packed, output_attentions=True)


def test_packed_path_backward_matches_padded(reference, kwargs, input_ids, attention_mask_right):
    kw = dict(kwargs, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    grads = []
    for impl in IMPLS:  # sdpa packs the batch, eager does not
        model = BertForMaskedLM(BertConfig(**kw, attn_implementation=impl)).train()
        model.load_state_dict(reference["eager"].state_dict())
        model.bert.unpad_inputs = impl == "sdpa"
        labels = input_ids.masked_fill(attention_mask_right == 0, -100)
        model(input_ids, attention_mask=attention_mask_right, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert_close(a, b, atol=1e-5)


def test_real_checkpoint_minilm(minilm_dir):
    """all-MiniLM-L6-v2 (6 layers, hidden 384): real weights, ragged batch, both paths."""
    from safetensors.torch import load_file

    theirs = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    state = load_file(str(minilm_dir / "model.safetensors"))
    state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    lengths = [5, 33, 17, 64, 2]
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask)
        for impl in IMPLS:
            config = BertConfig.from_pretrained(minilm_dir, attn_implementation=impl)
            ours = BertModel(config).eval()
            ours.load_state_dict(state, strict=True)
            got = ours(ids, attention_mask=mask)
            real = mask.bool()
            assert_close(got.last_hidden_state[real], expected.last_hidden_state[real], atol=ATOL)
            assert_close(got.pooler_output, expected.pooler_output, atol=ATOL)


def test_resize_keeps_mlm_bias_shared(reference, kwargs):
    model = ours_for(reference, kwargs, "eager")
    model.resize_token_embeddings(120)
    head = model.cls.predictions
    assert head.bias.shape == (120,) and head.decoder.bias is head.bias
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model(torch.tensor([[1, 119, 2]])).logits.shape == (1, 3, 120)


def test_default_sdpa_computes_pad_positions_like_transformers(reference, kwargs, input_ids, attention_mask_right):
    ours = BertForMaskedLM(BertConfig(**kwargs, attn_implementation="sdpa")).eval()
    ours.load_state_dict(reference["eager"].state_dict(), strict=True)
    assert ours.bert.unpad_inputs is False
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right).logits
        b = reference["sdpa"](input_ids, attention_mask=attention_mask_right).logits
    assert_close(a, b, atol=ATOL)


def test_to_bettertransformer_turns_the_padding_free_path_on_and_off(reference, kwargs, input_ids, attention_mask_right):
    ours = BertForMaskedLM(BertConfig(**kwargs, attn_implementation="eager")).eval()
    ours.load_state_dict(reference["eager"].state_dict(), strict=True)
    assert ours.to_bettertransformer() is ours
    assert ours.config._attn_implementation == "sdpa" and ours.bert.unpad_inputs
    real = attention_mask_right.bool()
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask_right).logits
        b = reference["sdpa"](input_ids, attention_mask=attention_mask_right).logits
    assert_close(a[real], b[real], atol=ATOL)
    assert ours.reverse_bettertransformer() is ours
    assert ours.config._attn_implementation == "eager" and not ours.bert.unpad_inputs
    with torch.no_grad():
        assert_close(ours(input_ids, attention_mask=attention_mask_right).logits, b, atol=ATOL)
