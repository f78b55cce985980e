"""T5 parity with Transformers on the same weights, and checkpoint exchange both ways.

Two tiny configurations, built by Transformers at seed 0:

* ``v1``:   T5 v1.0 — ReLU feed-forward, LM head tied to ``shared`` (decoder
  output rescaled by ``d_model ** -0.5``);
* ``v1_1``: T5 v1.1 — gated-GELU feed-forward, ``tie_word_embeddings=False``:
  its own ``lm_head`` (random, unlike ``shared``) and no rescaling.

Transformers 5 always ties the head at construction and unties it when a
checkpoint holds a different one; the reference's head is therefore replaced by
a fresh parameter.  Its state dict is copied into ours with ``strict=True`` (so
parameter names are identical) and outputs are compared in eval mode, for both
attention implementations.  Transformers 5 dropped head masks and pruning, so
pruning is checked against our own head-masked output.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from pretrained import AutoModelForSeq2SeqLM  # noqa: E402
from pretrained.modeling.cache import EncoderDecoderCache  # noqa: E402
from pretrained.models.t5 import T5Config  # noqa: E402
from pretrained.models.t5_heads import T5EncoderModel, T5ForConditionalGeneration, T5Model  # noqa: E402

ATOL = 1e-5       # eager vs eager: the same operations in the same order
SDPA_ATOL = 5e-5  # fused kernels sum in another order; v1.1's N(0, 1) head gives logits ~10
IMPLS = ["eager", "sdpa"]
VARIANTS = ["v1", "v1_1"]
SHARD_BYTES = 40_000
BASE = dict(
    vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
)
KWARGS = {
    "v1": dict(BASE),
    "v1_1": dict(BASE, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


@pytest.fixture(scope="module", autouse=True)
def quiet():
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def hf_model(variant: str, impl: str = "eager", cls=None):
    """Transformers' model at seed 0; for v1.1 with a head of its own."""
    cls = cls or transformers.T5ForConditionalGeneration
    torch.manual_seed(0)
    model = cls(transformers.T5Config(**KWARGS[variant], attn_implementation=impl)).eval()
    if variant == "v1_1" and hasattr(model, "lm_head"):
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model


@pytest.fixture(scope="module")
def reference():
    """{(variant, impl): Transformers' T5ForConditionalGeneration}, same weights per variant."""
    models = {}
    for variant in VARIANTS:
        eager = hf_model(variant, "eager")
        sdpa = hf_model(variant, "sdpa")
        sdpa.load_state_dict(eager.state_dict())
        models[variant, "eager"], models[variant, "sdpa"] = eager, sdpa
    return models


def ours_for(reference, variant: str, impl: str, cls=T5ForConditionalGeneration):
    model = cls(T5Config(**KWARGS[variant], attn_implementation=impl)).eval()
    model.load_state_dict(reference[variant, "eager"].state_dict(), strict=cls is T5ForConditionalGeneration)
    return model


@pytest.fixture(scope="module", params=[(v, i) for v in VARIANTS for i in IMPLS], ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, reference):
    """(ours, theirs, variant) with the same weights and attention implementation."""
    variant, impl = request.param
    return ours_for(reference, variant, impl), reference[variant, impl], variant


@pytest.fixture(scope="module")
def batch():
    """Encoder ids (2, 30) with the second row right-padded by 9; decoder ids (2, 12);
    labels = decoder ids with the last 3 of row 1 ignored (-100)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 99, (2, 30), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -9:] = 0
    dec = torch.randint(2, 99, (2, 12), generator=g)
    labels = dec.clone()
    labels[1, -3:] = -100
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, labels=labels)


def logits_of(model, batch, **kwargs):
    with torch.no_grad():
        return model(batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"], **kwargs).logits


# ----------------------------------------------------------------------------- config
def test_config_defaults_match_transformers():
    ours, theirs = T5Config(), transformers.T5Config()
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
                "layer_norm_epsilon", "initializer_factor", "feed_forward_proj", "is_encoder_decoder", "use_cache",
                "pad_token_id", "eos_token_id", "dense_act_fn", "is_gated_act"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.decoder_start_token_id == 0 and ours.tie_word_embeddings and ours.scale_decoder_outputs
    assert (ours.hidden_size, ours.num_attention_heads, ours.num_hidden_layers, ours.head_dim) == (512, 8, 6, 64)
    assert T5Config(num_layers=3).num_decoder_layers == 3


def test_config_feed_forward_proj_and_scaling():
    v11 = T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    assert (v11.dense_act_fn, v11.is_gated_act, v11.scale_decoder_outputs) == ("gelu_new", True, False)
    silu = T5Config(feed_forward_proj="gated-silu")
    assert (silu.dense_act_fn, silu.is_gated_act) == ("silu", True)
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gelu-gated-relu")
    # A Transformers 5 config.json of a v1.1 model: tied, but not rescaled.
    theirs = json.loads(transformers.T5Config(**KWARGS["v1_1"]).to_json_string())
    config = T5Config.from_dict(theirs)
    assert config.tie_word_embeddings and not config.scale_decoder_outputs
    assert T5Config.from_dict(config.to_dict()).to_dict() == config.to_dict()


# ----------------------------------------------------------------------------- parity
def test_state_dict_names_and_ties(reference):
    for variant in VARIANTS:
        ours = ours_for(reference, variant, "eager")
        assert list(ours.state_dict()) == list(reference[variant, "eager"].state_dict())
        assert ours.encoder.embed_tokens.weight is ours.shared.weight
        assert ours.decoder.embed_tokens.weight is ours.shared.weight
        assert (ours.lm_head.weight is ours.shared.weight) == (variant == "v1")


def tol(model) -> float:
    return ATOL if model.config._attn_implementation == "eager" else SDPA_ATOL


def test_logits_with_padding(pair, batch):
    ours, theirs, _ = pair
    assert_close(logits_of(ours, batch), logits_of(theirs, batch), atol=tol(ours))


def test_decoder_attention_mask(pair, batch):
    ours, theirs, _ = pair
    dec_mask = torch.ones_like(batch["decoder_input_ids"])
    dec_mask[0, -4:] = 0
    a = logits_of(ours, batch, decoder_attention_mask=dec_mask)
    b = logits_of(theirs, batch, decoder_attention_mask=dec_mask)
    assert_close(a[dec_mask.bool()], b[dec_mask.bool()], atol=tol(ours))


def test_labels_loss(pair, batch):
    ours, theirs, _ = pair
    with torch.no_grad():
        a = ours(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        b = theirs(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert_close(a.logits, b.logits, atol=tol(ours))
    assert_close(a.loss, b.loss, atol=tol(ours))
    shifted = ours._shift_right(batch["labels"])
    assert shifted[:, 0].eq(0).all() and not shifted.eq(-100).any()
    assert torch.equal(shifted, theirs._shift_right(batch["labels"]))


def test_eager_and_sdpa_agree(reference, batch):
    for variant in VARIANTS:
        eager, sdpa = ours_for(reference, variant, "eager"), ours_for(reference, variant, "sdpa")
        assert_close(logits_of(eager, batch), logits_of(sdpa, batch), atol=SDPA_ATOL)


def test_hidden_states_and_attentions(reference, batch):
    ours = ours_for(reference, "v1", "sdpa")  # weights force the eager path
    theirs = reference["v1", "eager"]
    with torch.no_grad():
        a = ours(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True,
                 output_hidden_states=True)
        b = theirs(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True,
                   output_hidden_states=True)
    for name, count in [("encoder_hidden_states", 3), ("decoder_hidden_states", 4), ("encoder_attentions", 2),
                        ("decoder_attentions", 3), ("cross_attentions", 3)]:
        x, y = getattr(a, name), getattr(b, name)
        assert len(x) == len(y) == count, name
        for p, q in zip(x, y):
            assert_close(p, q, atol=ATOL)
    assert a.cross_attentions[0].shape == (2, 4, 12, 30)
    assert_close(a.encoder_last_hidden_state, b.encoder_last_hidden_state, atol=ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_t5_model_and_encoder_model(reference, batch, impl):
    for variant in VARIANTS:
        theirs = hf_model(variant, impl, transformers.T5Model)
        ours = T5Model(T5Config(**KWARGS[variant], attn_implementation=impl)).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        with torch.no_grad():
            a = ours(batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"])
            b = theirs(batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"])
        assert_close(a.last_hidden_state, b.last_hidden_state, atol=tol(ours))
        assert_close(a.encoder_last_hidden_state, b.encoder_last_hidden_state, atol=tol(ours))

        theirs = hf_model(variant, impl, transformers.T5EncoderModel)
        ours = T5EncoderModel(T5Config(**KWARGS[variant], attn_implementation=impl)).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        with torch.no_grad():
            a = ours(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
            b = theirs(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        assert_close(a.last_hidden_state, b.last_hidden_state, atol=tol(ours))
        assert len(a.hidden_states) == len(b.hidden_states) == 3


def test_return_tuple_and_encoder_outputs_tuple(reference, batch):
    ours = ours_for(reference, "v1", "eager")
    expected = logits_of(ours, batch)
    with torch.no_grad():
        enc = ours.get_encoder()(batch["input_ids"], attention_mask=batch["attention_mask"], return_dict=False)
        out = ours(encoder_outputs=enc, attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"], return_dict=False)
    assert isinstance(out, tuple)
    assert_close(out[0], expected, atol=0.0)
    assert ours.get_decoder() is ours.decoder


# ----------------------------------------------------------------------------- cache
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("legacy", [False, True], ids=["cache", "legacy"])
def test_cache_step_by_step_equals_full_pass(reference, batch, impl, legacy):
    ours = ours_for(reference, "v1", impl)
    full = logits_of(ours, batch)
    dec = batch["decoder_input_ids"]
    with torch.no_grad():
        enc = ours.get_encoder()(batch["input_ids"], attention_mask=batch["attention_mask"])
        past = () if legacy else None
        steps = []
        for t in range(dec.shape[1]):
            out = ours(encoder_outputs=enc, attention_mask=batch["attention_mask"], decoder_input_ids=dec[:, t:t + 1],
                       past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
    assert isinstance(past, tuple if legacy else EncoderDecoderCache)
    assert len(past) == 3 and len(past[0]) == 4
    assert past[0][0].shape == (2, 4, 12, 8) and past[0][2].shape == (2, 4, 30, 8)
    assert_close(torch.cat(steps, dim=1), full, atol=ATOL)


def test_cache_matches_transformers(reference, batch):
    """The cache after a 5-token prefix equals Transformers'; continuing from it gives its logits."""
    ours, theirs = ours_for(reference, "v1_1", "eager"), reference["v1_1", "eager"]
    dec = batch["decoder_input_ids"]
    with torch.no_grad():
        a = ours(batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec[:, :5])
        b = theirs(batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec[:, :5])
        for layer, hf_self, hf_cross in zip(a.past_key_values, b.cache.self_attention_cache.layers,
                                            b.cache.cross_attention_cache.layers):
            for x, y in zip(layer, (hf_self.keys, hf_self.values, hf_cross.keys, hf_cross.values)):
                assert_close(x, y, atol=ATOL)
        a2 = ours(encoder_outputs=(a.encoder_last_hidden_state,), attention_mask=batch["attention_mask"],
                  decoder_input_ids=dec[:, 5:], past_key_values=a.past_key_values)
        b2 = theirs(encoder_outputs=(b.encoder_last_hidden_state,), attention_mask=batch["attention_mask"],
                    decoder_input_ids=dec[:, 5:], cache=b.cache)
    assert_close(a2.logits, b2.logits, atol=ATOL)


def test_prepare_inputs_for_generation(reference, batch):
    ours = ours_for(reference, "v1", "eager")
    dec = batch["decoder_input_ids"]
    with torch.no_grad():
        out = ours(batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec[:, :5])
    inputs = ours.prepare_inputs_for_generation(dec[:, :7], past_key_values=out.past_key_values,
                                                attention_mask=batch["attention_mask"], encoder_outputs="enc")
    assert torch.equal(inputs["decoder_input_ids"], dec[:, 5:7])
    assert inputs["encoder_outputs"] == "enc" and inputs["attention_mask"] is batch["attention_mask"]
    inputs = ours.prepare_inputs_for_generation(dec[:, :5], past_key_values=out.past_key_values)
    assert torch.equal(inputs["decoder_input_ids"], dec[:, 4:5])
    assert torch.equal(ours.prepare_inputs_for_generation(dec)["decoder_input_ids"], dec)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("variant", VARIANTS)
def test_load_transformers_sharded_checkpoint(reference, batch, tmp_path, variant):
    theirs = reference[variant, "eager"]
    theirs.save_pretrained(tmp_path, max_shard_size=SHARD_BYTES)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 3
    ours, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True,
                                                     attn_implementation="eager")
    assert isinstance(ours, T5ForConditionalGeneration)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert ours.encoder.embed_tokens.weight is ours.shared.weight
    assert (ours.lm_head.weight is ours.shared.weight) == (variant == "v1")
    assert_close(logits_of(ours, batch), logits_of(theirs, batch), atol=ATOL)


def test_load_transformers_tied_v1_1(batch, tmp_path):
    """Transformers 5 builds v1.1 tied but unscaled and writes it as such: read it the same way."""
    torch.manual_seed(0)
    theirs = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**KWARGS["v1_1"], attn_implementation="eager")).eval()
    theirs.save_pretrained(tmp_path)
    ours, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True,
                                                     attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert ours.lm_head.weight is ours.shared.weight and not ours.config.scale_decoder_outputs
    assert_close(logits_of(ours, batch), logits_of(theirs, batch), atol=ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_loads_our_sharded_save(reference, batch, tmp_path, variant):
    ours = ours_for(reference, variant, "eager")
    ours.save_pretrained(tmp_path, max_shard_size=SHARD_BYTES)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 3
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert "shared.weight" in index and "encoder.embed_tokens.weight" not in index
    assert ("lm_head.weight" in index) == (variant == "v1_1")
    theirs, info = transformers.T5ForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_close(logits_of(theirs.eval(), batch), logits_of(ours, batch), atol=ATOL)
    # and back again, through our loader
    again, info = T5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True,
                                                           attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_close(logits_of(again, batch), logits_of(ours, batch), atol=0.0)


def test_encoder_model_from_full_checkpoint(reference, batch, tmp_path):
    theirs = reference["v1", "eager"]
    theirs.save_pretrained(tmp_path)
    enc, info = T5EncoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        expected = theirs.encoder(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        got = enc(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert_close(got, expected, atol=ATOL)


def test_fp16_load_keeps_wo_in_fp32(reference, batch, tmp_path):
    theirs = reference["v1_1", "eager"]
    theirs.save_pretrained(tmp_path)
    ours = T5ForConditionalGeneration.from_pretrained(tmp_path, torch_dtype=torch.float16)
    for name, param in ours.named_parameters():
        expected = torch.float32 if name.split(".")[-2] == "wo" else torch.float16
        assert param.dtype == expected, name
    hf16 = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16).eval()
    assert hf16.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    a, b = logits_of(ours, batch), logits_of(hf16, batch)
    assert torch.isfinite(a).all()
    assert_close(a, b, atol=1e-2)
    assert_close(a, logits_of(theirs, batch), atol=0.1)


# ----------------------------------------------------------------------------- surgery and training
def test_prune_heads_equals_head_mask(reference, batch, tmp_path):
    model = ours_for(reference, "v1", "eager")
    to_prune = {0: [1], 1: [0, 2]}
    head_mask = torch.ones(2, 4)
    for layer, heads in to_prune.items():
        head_mask[layer, heads] = 0.0
    masked = logits_of(model, batch, head_mask=head_mask, decoder_head_mask=torch.ones(3, 4))

    model.prune_heads(to_prune)
    assert model.config.pruned_heads == {0: [1], 1: [0, 2]}
    assert model.encoder.block[1].layer[0].SelfAttention.q.weight.shape == (2 * 8, 32)
    assert model.encoder.block[1].layer[0].SelfAttention.o.weight.shape == (32, 2 * 8)
    for impl in IMPLS:
        model.set_attn_implementation(impl)
        assert_close(logits_of(model, batch), masked, atol=tol(model))

    model.save_pretrained(tmp_path)  # pruning is re-applied on load
    again = T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert again.encoder.block[1].layer[0].SelfAttention.n_heads == 2
    assert_close(logits_of(again, batch), masked, atol=ATOL)


def test_cross_attn_head_mask(reference, batch):
    model = ours_for(reference, "v1", "eager")
    mask = torch.ones(3, 4)
    mask[1, 2] = 0.0
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, cross_attn_head_mask=mask,
                    output_attentions=True)
    assert out.cross_attentions[1][:, 2].abs().max() == 0
    assert out.cross_attentions[0][:, 2].abs().max() > 0
    assert (logits_of(model, batch) - out.logits).abs().max() > 1e-4


def test_gradient_checkpointing_gives_equal_gradients(reference, batch):
    def grads(checkpointing: bool):
        model = ours_for(reference, "v1_1", "eager").train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        torch.manual_seed(1)  # same dropout masks
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        return out.loss, {n: p.grad for n, p in model.named_parameters()}

    loss_a, a = grads(False)
    loss_b, b = grads(True)
    assert_close(loss_a, loss_b, atol=ATOL)
    assert a.keys() == b.keys()
    for name in a:
        assert_close(a[name], b[name], atol=ATOL)


def test_untied_head_init_and_resize(reference):
    model = T5ForConditionalGeneration(T5Config(**KWARGS["v1_1"]))
    assert model.lm_head.weight is not model.shared.weight
    assert 0.8 < float(model.lm_head.weight.detach().std()) < 1.2
    assert 0.8 < float(model.shared.weight.detach().std()) < 1.2
    q = model.encoder.block[0].layer[0].SelfAttention.q.weight.detach()
    assert float(q.std()) < 0.2  # N(0, (d_model * d_kv) ** -0.5)
    model.resize_token_embeddings(104)
    assert model.encoder.embed_tokens.weight.shape == (104, 32) and model.lm_head.weight.shape == (104, 32)
    assert model.decoder.embed_tokens.weight is model.shared.weight and model.config.vocab_size == 104
    new = torch.nn.Embedding(7, 32)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new and model.encoder.embed_tokens.weight is new.weight


def test_device_map_with_disk_offload(reference, batch, tmp_path):
    """Tied embeddings across three modules survive planning and offload; outputs unchanged."""
    theirs = reference["v1", "eager"]
    theirs.save_pretrained(tmp_path / "ckpt")
    model = T5ForConditionalGeneration.from_pretrained(
        tmp_path / "ckpt", device_map="auto", max_memory={"cpu": 60_000}, offload_folder=tmp_path / "offload",
        attn_implementation="eager")
    assert "disk" in set(model.hf_device_map.values())
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert_close(logits_of(model, batch), logits_of(theirs, batch), atol=ATOL)


# ----------------------------------------------------------------------------- generate
GEN_KWARGS = {variant: dict(kwargs, num_decoder_layers=2) for variant, kwargs in KWARGS.items()}


@pytest.fixture(scope="module")
def prompts():
    """Encoder ids (3, 10): row 1 right-padded by 4, row 2 left-padded by 3 (pad id 0)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 99, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    mask[2, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generate_equals_transformers(prompts, variant, impl):
    # Transformers 5's generate sizes its cache by num_layers, so both stacks have 2 blocks here.
    torch.manual_seed(0)
    theirs = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**GEN_KWARGS[variant], attn_implementation=impl)).eval()
    if variant == "v1_1":
        theirs.lm_head.weight = torch.nn.Parameter(torch.randn_like(theirs.lm_head.weight))
    ours = T5ForConditionalGeneration(T5Config(**GEN_KWARGS[variant], attn_implementation=impl)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ids, mask = prompts
    a = ours.generate(ids, attention_mask=mask, max_new_tokens=16)
    b = theirs.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert a.shape == (3, 17) and a[:, 0].eq(0).all()
    assert torch.equal(a, b), f"\nours   {a}\ntheirs {b}"
    # The default mask (ids != pad) is the one passed above.
    assert torch.equal(ours.generate(ids, max_new_tokens=16), a)
    if variant == "v1_1":  # a random tied v1.0 head only copies its input; v1.1 says something
        assert len(set(a[:, 1:].flatten().tolist())) > 5


def test_generate_is_padding_invariant_and_uses_the_cache(reference, prompts):
    """Each row generated alone (no padding) and without a cache equals the padded batch."""
    model = ours_for(reference, "v1_1", "eager")  # 2 encoder and 3 decoder blocks
    ids, mask = prompts
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=16, eos_token_id=[])
    assert batched.shape == (3, 17)
    for row in range(3):
        alone = ids[row][mask[row].bool()][None]
        assert torch.equal(model.generate(alone, max_new_tokens=16, eos_token_id=[], use_cache=False),
                           batched[row:row + 1])
