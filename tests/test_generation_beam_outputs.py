"""``return_dict_in_generate=True`` with beam search against Transformers 5.25 on the same tiny weights
(GPT-2, Llama, T5 built at seed 0): ``sequences``, ``sequences_scores``, ``beam_indices``, the per-step
``scores`` (processed log-probabilities of every beam) and ``logits``, hidden states and attentions per step;
and T5's dict outputs (greedy and beams) for left- and right-padded prompt batches."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from test_generation import BEAM_PAD, NEW, _beam_eos, _pair, _t5_pair, left_padded_prompt  # noqa: E402

FULL = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)


@pytest.fixture(scope="module")
def prompt():
    return left_padded_prompt()


@pytest.fixture(scope="module", params=["gpt2", "llama", "t5"])
def pair(request):
    return _t5_pair(initializer_factor=5.0) if request.param == "t5" else _pair(request.param)


def _batches(ours, ids, mask):
    """One row, then a padded batch: left-padded for decoder-only models, right-padded for T5."""
    if getattr(ours.config, "is_encoder_decoder", False):
        ids, mask = ids.flip(1), mask.flip(1)
        return ids, ((ids[:1], None), (ids, mask)), 1
    return ids, ((ids[:1], None), (ids[1:], mask[1:])), 7


def _check_same(got, expected, *, beams: bool):
    assert type(got).__name__ == type(expected).__name__
    assert torch.equal(got.sequences, expected.sequences), (got.sequences, expected.sequences)
    if beams:
        assert got.beam_indices.dtype == expected.beam_indices.dtype
        assert torch.equal(got.beam_indices, expected.beam_indices), (got.beam_indices, expected.beam_indices)
        if expected.sequences_scores is None:
            assert got.sequences_scores is None
        else:
            assert_close(got.sequences_scores, expected.sequences_scores, atol=1e-4)
    for name in ("scores", "logits"):
        theirs, ours = getattr(expected, name), getattr(got, name)
        if theirs is None:
            assert ours is None, name
            continue
        assert len(ours) == len(theirs), name
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape
            finite = torch.isfinite(b)
            assert torch.equal(torch.isfinite(a), finite), name
            assert_close(a[finite], b[finite], atol=1e-4)


@pytest.mark.parametrize("options", [dict(num_beams=4), dict(num_beams=3, num_return_sequences=2, length_penalty=0.5),
                                     dict(num_beams=4, early_stopping=True, repetition_penalty=1.3, min_new_tokens=3),
                                     dict(num_beams=4, num_return_sequences=4, length_penalty=0.5),
                                     dict(num_beams=2, output_scores=False)], ids=str)
def test_beam_dict_outputs_equal_transformers(pair, prompt, options):
    """EOS ends some hypotheses early, so ``beam_indices`` holds -1 after their end and the
    ``sequences_scores`` mix lengths; without ``output_scores`` there are none, as in Transformers."""
    ours, theirs = pair
    ids, batches, start = _batches(ours, *prompt)
    eos = _beam_eos(theirs, ids[:1], start)
    for batch_ids, batch_mask in batches:
        kw = dict(attention_mask=batch_mask, max_new_tokens=NEW, do_sample=False, eos_token_id=eos,
                  pad_token_id=BEAM_PAD, **{**FULL, **options})
        expected, got = theirs.generate(batch_ids, **kw), ours.generate(batch_ids, **kw)
        _check_same(got, expected, beams=True)
        assert torch.equal(got.sequences, ours.generate(batch_ids, **{**kw, "return_dict_in_generate": False}))
        if options.get("num_return_sequences") == 4 and batch_mask is None:     # _beam_eos ends one of them early
            assert bool((got.beam_indices == -1).any()) and bool((got.sequences[:, -1] == BEAM_PAD).any())


def test_beam_dict_hidden_states_and_attentions(pair, prompt):
    """Per step, as in Transformers: the model's per-layer tuples for all beams; the cache is returned."""
    ours, theirs = pair
    ids, batches, start = _batches(ours, *prompt)
    kw = dict(max_new_tokens=4, num_beams=2, eos_token_id=[], pad_token_id=BEAM_PAD, output_hidden_states=True,
              output_attentions=True, **FULL)
    expected, got = theirs.generate(ids[:1], **kw), ours.generate(ids[:1], **kw)
    _check_same(got, expected, beams=True)
    encoder_decoder = getattr(ours.config, "is_encoder_decoder", False)
    name = "decoder_hidden_states" if encoder_decoder else "hidden_states"
    assert len(getattr(got, name)) == len(getattr(expected, name)) == 4
    for step_a, step_b in zip(getattr(got, name), getattr(expected, name)):
        assert len(step_a) == len(step_b)
        for a, b in zip(step_a, step_b):
            assert_close(a, b, atol=1e-4 * max(1.0, float(b.abs().max())))     # T5's states reach ~500
    attentions = got.decoder_attentions if encoder_decoder else got.attentions
    assert len(attentions) == 4
    assert got.past_key_values is not None


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3, num_return_sequences=2), dict(do_sample=True)], ids=str)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_t5_padded_prompt_scores_equal_transformers(prompt, options, padding):
    """A padded encoder batch (the mask marks the padding on either side): the same tokens and scores."""
    ours, theirs = _t5_pair(initializer_factor=5.0)
    ids, mask = prompt
    if padding == "right":
        ids, mask = ids.flip(1), mask.flip(1)
    kw = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=BEAM_PAD, eos_token_id=1, **FULL, **options)
    torch.manual_seed(3)
    expected = theirs.generate(ids, **kw)
    torch.manual_seed(3)
    got = ours.generate(ids, **kw)
    _check_same(got, expected, beams=options.get("num_beams", 1) > 1)
