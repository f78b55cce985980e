"""`generate` against Transformers' on the same weights (tiny GPT-2 and Llama, seed 0).

Greedy decoding must give exactly Transformers' tokens, also for a left-padded
batch and when EOS finishes one row early; sampling with the same global seed
must draw the same tokens (same processors, same order, same RNG use).  The
encoder-decoder path is checked on a toy model that follows the hook contract
of :mod:`pretrained.modeling.generation`, and on T5 where it exists.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from pretrained.modeling.generation import GenerationMixin, process_logits  # noqa: E402
from pretrained.modeling.outputs import BaseModelOutput, Seq2SeqLMOutput  # noqa: E402
from pretrained.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model  # noqa: E402
from pretrained.models.llama import LlamaConfig, LlamaForCausalLM, LlamaModel  # noqa: E402

VOCAB, PAD = 99, 0
NEW = 16


def _pair(arch: str):
    transformers.utils.logging.set_verbosity_error()
    if arch == "gpt2":
        kw = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2,
                  initializer_range=0.1)
        torch.manual_seed(0)
        theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)).eval()
        ours = GPT2LMHeadModel(GPT2Config(**kw)).eval()
    else:
        kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                  initializer_range=0.1)
        torch.manual_seed(0)
        theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()
        ours = LlamaForCausalLM(LlamaConfig(**kw)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    return _pair(request.param)


@pytest.fixture(scope="module")
def prompt():
    """A (3, 7) left-padded batch (0, 2 and 4 pads) and its mask; pads are token 0."""
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, PAD), mask


_NO_STOP = {}


def _no_stop_eos(theirs, ids, mask) -> int:
    """An EOS id that Transformers' greedy run on the batch never produces (so nothing stops early)."""
    if id(theirs) not in _NO_STOP:
        out = theirs.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=VOCAB - 1,
                              pad_token_id=PAD)
        _NO_STOP[id(theirs)] = min(set(range(3, VOCAB)) - set(out[:, ids.shape[1]:].flatten().tolist()))
    return _NO_STOP[id(theirs)]


def test_can_generate():
    assert LlamaForCausalLM.can_generate() and GPT2LMHeadModel.can_generate()
    assert not LlamaModel.can_generate() and not GPT2Model.can_generate()


def test_greedy_equals_transformers(pair, prompt):
    ours, theirs = pair
    ids, mask = prompt
    eos = _no_stop_eos(theirs, ids, mask)
    for batch_ids, batch_mask in ((ids[:1], None), (ids, mask)):
        expected = theirs.generate(batch_ids, attention_mask=batch_mask, max_new_tokens=NEW, do_sample=False,
                                   eos_token_id=eos, pad_token_id=PAD)
        got = ours.generate(batch_ids, attention_mask=batch_mask, max_new_tokens=NEW, eos_token_id=eos,
                            pad_token_id=PAD)
        assert got.shape == (batch_ids.shape[0], 7 + NEW)
        assert torch.equal(got, expected), (got, expected)
        assert torch.equal(got[:, :7], batch_ids)


def test_eos_finishes_one_row_early(pair, prompt):
    """Row 0 emits EOS at step 5; it gets pad tokens after it while the others go on."""
    ours, theirs = pair
    ids, mask = prompt
    eos = _no_stop_eos(theirs, ids, mask)
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD)
    new = free[:, 7:]
    step = next(t for t in range(3, NEW - 2) if new[0, t] not in new[1:, :].flatten() and new[0, t] not in new[0, :t])
    stop = int(new[0, step])
    expected = theirs.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=stop, pad_token_id=PAD)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=stop, pad_token_id=PAD)
    assert torch.equal(got, expected)
    assert got.shape == (3, 7 + NEW)
    assert int(got[0, 7 + step]) == stop and bool((got[0, 8 + step:] == PAD).all())
    assert torch.equal(got[1:], free[1:])
    # pad_token_id defaults to the EOS id, as in Transformers
    default_pad = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=stop)
    assert bool((default_pad[0, 8 + step:] == stop).all())
    # every row finished: the loop stops before max_new_tokens
    alone = ours.generate(ids[:1], max_new_tokens=NEW, eos_token_id=stop)
    assert alone.shape == (1, 7 + step + 1)
    assert torch.equal(alone, theirs.generate(ids[:1], max_new_tokens=NEW, eos_token_id=stop, pad_token_id=PAD))


def test_left_padded_batch_equals_each_row_alone(pair, prompt):
    ours, _ = pair
    ids, mask = prompt
    batch = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
    for row in range(3):
        real = ids[row:row + 1, mask[row].bool()]
        alone = ours.generate(real, max_new_tokens=NEW, eos_token_id=[])
        assert torch.equal(batch[row, 7:], alone[0, real.shape[1]:])


def test_default_mask_from_pad_token(pair, prompt):
    """No attention_mask: it is derived from pad_token_id (pad != eos), as Transformers does."""
    ours, theirs = pair
    ids, mask = prompt
    got = ours.generate(ids, max_new_tokens=4, eos_token_id=VOCAB - 1, pad_token_id=PAD)
    assert torch.equal(got, ours.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=VOCAB - 1,
                                          pad_token_id=PAD))
    assert torch.equal(got, theirs.generate(ids, max_new_tokens=4, eos_token_id=VOCAB - 1, pad_token_id=PAD))


def test_cache_and_no_cache_agree(pair, prompt):
    """Decoding with the cache: the step logits equal recomputing the whole sequence (1e-5)."""
    ours, _ = pair
    ids, mask = prompt
    with_cache = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[],
                                     use_cache=False), with_cache)
    full_mask = torch.cat([mask, torch.ones(3, NEW, dtype=mask.dtype)], dim=1)
    pos = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    with torch.no_grad():
        full = ours(with_cache, attention_mask=full_mask, position_ids=pos).logits
        out = ours(ids, attention_mask=mask, position_ids=pos[:, :7], use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(7, 7 + NEW - 1):
            out = ours(with_cache[:, t:t + 1], attention_mask=full_mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                       past_key_values=out.past_key_values)
            steps.append(out.logits[:, -1])
    assert_close(torch.stack(steps, dim=1), full[:, 6:-1], atol=1e-5)


def test_max_length_and_zero_new_tokens(pair, prompt):
    ours, _ = pair
    ids, mask = prompt
    assert ours.generate(ids, attention_mask=mask, max_length=10, eos_token_id=[]).shape == (3, 10)
    assert ours.generate(ids, attention_mask=mask, eos_token_id=[]).shape == (3, 7 + 20)     # default: 20 new
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=0), ids)


@pytest.mark.parametrize("seed, options", [
    (0, dict()), (1, dict(temperature=0.7, top_k=0)), (2, dict(top_p=0.8, top_k=0)),
    (3, dict(temperature=1.3, top_k=20, top_p=0.9)),
])
def test_sampling_equals_transformers_with_the_same_seed(pair, prompt, seed, options):
    """Also checks the defaults: ``do_sample=True`` alone samples from the top 50, as in Transformers."""
    ours, theirs = pair
    ids, mask = prompt
    torch.manual_seed(seed)
    expected = theirs.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, eos_token_id=2,
                               pad_token_id=PAD, **options)
    torch.manual_seed(seed)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, eos_token_id=2,
                        pad_token_id=PAD, **options)
    assert torch.equal(got, expected)


def test_generator_makes_sampling_reproducible(pair, prompt):
    ours, _ = pair
    ids, mask = prompt

    def run(seed):
        return ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, top_k=0, eos_token_id=[],
                             generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_logits_processors_equal_transformers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    scores[0, :10] = 1.0                                                     # ties at the top-k boundary
    for temperature, k, p in ((0.5, None, None), (1.0, 7, None), (1.0, None, 0.6), (1.7, 12, 0.3)):
        expected = scores
        if temperature != 1.0:
            expected = TemperatureLogitsWarper(temperature)(None, expected)
        if k:
            expected = TopKLogitsWarper(k)(None, expected)
        if p:
            expected = TopPLogitsWarper(p)(None, expected)
        got = process_logits(scores, temperature=temperature, top_k=k, top_p=p)
        assert torch.equal(got, expected)


def test_bad_arguments(pair, prompt):
    ours, _ = pair
    ids, _ = prompt
    with pytest.raises(NotImplementedError, match="num_beams"):
        ours.generate(ids, num_beams=4)
    with pytest.raises(ValueError, match="temperature"):
        ours.generate(ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        ours.generate(ids, do_sample=True, top_p=1.5)


# ----------------------------------------------------------------------------- encoder-decoder contract


class _ToyConfig:
    is_encoder_decoder = True
    decoder_start_token_id = 0
    eos_token_id = None
    pad_token_id = None
    bos_token_id = None


class _ToySeq2Seq(nn.Module, GenerationMixin):
    """Decoder logits = encoder summary + embedding of the last decoder token (no cache)."""

    def __init__(self):
        super().__init__()
        self.config = _ToyConfig()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, VOCAB)
        self.encoder_calls = 0

    def get_encoder(self):
        def encoder(input_ids, attention_mask, return_dict=True):
            self.encoder_calls += 1
            state = (self.embed(input_ids) * attention_mask[..., None]).sum(1, keepdim=True)
            return BaseModelOutput(last_hidden_state=state)
        return encoder

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      encoder_outputs=None, use_cache=True, **kwargs):
        return {"decoder_input_ids": input_ids, "encoder_outputs": encoder_outputs}

    def forward(self, decoder_input_ids, encoder_outputs, return_dict=True):
        return Seq2SeqLMOutput(logits=encoder_outputs.last_hidden_state + self.embed(decoder_input_ids))


def test_encoder_decoder_contract(prompt):
    model = _ToySeq2Seq()
    ids, mask = prompt
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5)
    assert model.encoder_calls == 1
    assert out.shape == (3, 6) and bool((out[:, 0] == 0).all())
    with torch.no_grad():
        state = (model.embed(ids) * mask[..., None]).sum(1)
        token = torch.zeros(3, dtype=torch.long)
        for t in range(5):
            token = (state + model.embed(token)).argmax(-1)
            assert torch.equal(out[:, t + 1], token)
    assert model.generate(ids, attention_mask=mask, max_length=3).shape == (3, 3)


def test_t5_greedy_equals_transformers(prompt):
    t5 = pytest.importorskip("pretrained.models.t5")
    if not t5.T5ForConditionalGeneration.can_generate() or not hasattr(t5.T5ForConditionalGeneration, "generate"):
        pytest.skip("T5ForConditionalGeneration does not mix in GenerationMixin yet")
    kw = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    theirs = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
    ours = t5.T5ForConditionalGeneration(t5.T5Config(**kw)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=False)
    ids, mask = prompt
    ids = ids.flip(1) + 0 * ids                                              # right padding, as encoders take it
    mask = mask.flip(1)
    expected = theirs.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=NEW), expected)
