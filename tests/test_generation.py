"""`generate` against Transformers' on the same weights (tiny GPT-2 and Llama, seed 0).

Greedy decoding must give exactly Transformers' tokens, also for a left-padded
batch, when EOS finishes one row early, with a repetition penalty and with a
minimum length; sampling with the same global seed must draw the same tokens
(same processors, same order, same RNG use).  A ``generation_config.json``
written by Transformers must drive both libraries' ``generate`` alike.  The
encoder-decoder path is checked on a toy model that follows the hook contract
of :mod:`pretrained.modeling.generation`, and on T5 where it exists.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil

import pytest
import torch
from torch import nn

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from pretrained import AutoModelForCausalLM, GenerationConfig  # noqa: E402
from pretrained.logging import enable_propagation  # noqa: E402
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


def left_padded_prompt():
    """A (3, 7) left-padded batch (0, 2 and 4 pads) and its mask; pads are token 0."""
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.fixture(scope="module")
def prompt():
    return left_padded_prompt()


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
    ours, theirs = pair
    ids, mask = prompt
    assert ours.generate(ids, attention_mask=mask, max_length=10, eos_token_id=[]).shape == (3, 10)
    assert ours.generate(ids, attention_mask=mask, eos_token_id=[]).shape == (3, 7 + 20)     # default: 20 new
    # max_new_tokens=0 (or a max_length the prompt reaches) raises, as in Transformers 5.25 (docs/guide.md)
    for options in (dict(max_new_tokens=0), dict(max_length=7), dict(max_new_tokens=0, num_beams=2)):
        with pytest.raises(ValueError, match="max_"):
            theirs.generate(ids, attention_mask=mask, pad_token_id=PAD, **options)
        with pytest.raises(ValueError, match="max_"):
            ours.generate(ids, attention_mask=mask, **options)


@pytest.mark.parametrize("seed, options", [
    (0, dict()), (1, dict(temperature=0.7, top_k=0)), (2, dict(top_p=0.8, top_k=0)),
    (3, dict(temperature=1.3, top_k=20, top_p=0.9)), (4, dict(repetition_penalty=1.3, min_new_tokens=5, top_k=0)),
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
        ours.generate(ids, num_beams=4, do_sample=True)
    with pytest.raises(ValueError, match="temperature"):
        ours.generate(ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        ours.generate(ids, do_sample=True, top_p=1.5)
    for value in (0, 0.0, -1.3, True, "1.3"):
        with pytest.raises(ValueError, match="repetition_penalty"):
            ours.generate(ids, repetition_penalty=value)
    for name, value in (("min_new_tokens", -1), ("min_length", -2), ("min_new_tokens", 2.5)):
        with pytest.raises(ValueError, match=name):
            ours.generate(ids, **{name: value})
    with pytest.raises(TypeError, match="generation_config"):
        ours.generate(ids, generation_config={"max_new_tokens": 3})


# ----------------------------------------------------------------------------- repetition penalty, minimum length


def _eos_at_step_2(theirs, ids) -> int:
    """The token Transformers' plain greedy run on ``ids`` (one row) produces third: as EOS it stops that run early."""
    plain = theirs.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=VOCAB - 1, pad_token_id=PAD)
    return int(plain[0, ids.shape[1] + 2])


@pytest.mark.parametrize("options", [dict(repetition_penalty=1.3), dict(min_new_tokens=5),
                                     dict(repetition_penalty=1.3, min_new_tokens=5), dict(min_length=7 + 5),
                                     dict(repetition_penalty=0.7)], ids=str)
def test_penalty_and_min_length_equal_transformers(pair, prompt, options):
    ours, theirs = pair
    ids, mask = prompt
    eos = _eos_at_step_2(theirs, ids[:1])
    for batch_ids, batch_mask in ((ids[:1], None), (ids, mask)):
        expected = theirs.generate(batch_ids, attention_mask=batch_mask, max_new_tokens=NEW, do_sample=False,
                                   eos_token_id=eos, pad_token_id=PAD, **options)
        got = ours.generate(batch_ids, attention_mask=batch_mask, max_new_tokens=NEW, eos_token_id=eos,
                            pad_token_id=PAD, **options)
        assert torch.equal(got, expected), (got, expected)
    # the options change the run, so the comparison above can fail
    assert ours.generate(ids[:1], max_new_tokens=NEW, eos_token_id=eos).shape[1] <= 7 + 3
    if "min_new_tokens" in options or "min_length" in options:
        alone = ours.generate(ids[:1], max_new_tokens=NEW, eos_token_id=eos, **options)
        assert alone.shape[1] >= 7 + 6 and not bool((alone[0, 7:7 + 5] == eos).any())
    if "repetition_penalty" in options:
        free = ours.generate(ids[:1], max_new_tokens=NEW, eos_token_id=[])
        assert not torch.equal(ours.generate(ids[:1], max_new_tokens=NEW, eos_token_id=[],
                                             repetition_penalty=options["repetition_penalty"]), free)


def test_repetition_penalty_leaves_left_padding_out(pair, prompt):
    """Pad tokens before the prompt are not "seen" (Transformers 5): each row's tokens equal
    the row's own run, even with a pad id the model likes (the one row 2 would pick first)."""
    ours, theirs = pair
    raw, mask = prompt
    pad = int(ours.generate(raw[2:, 4:], max_new_tokens=1, eos_token_id=[])[0, -1])
    ids = raw.masked_fill(mask == 0, pad)
    options = dict(max_new_tokens=NEW, eos_token_id=VOCAB - 1, pad_token_id=pad, repetition_penalty=1.3)
    got = ours.generate(ids, attention_mask=mask, **options)
    assert torch.equal(got, theirs.generate(ids, attention_mask=mask, do_sample=False, **options))
    for row in range(3):
        real = ids[row:row + 1, mask[row].bool()]
        alone = ours.generate(real, **options)[0, real.shape[1]:]
        assert torch.equal(got[row, 7:7 + len(alone)], alone)


# ----------------------------------------------------------------------------- beam search

# Beam search pads a finished hypothesis with pad_token_id.  Transformers 5 fills with `pad_token_id or eos`
# (a pad id of 0 is falsy there, so it pads with EOS instead): the beam tests pass a non-zero pad id.
BEAM_PAD = 5
BEAM_OPTIONS = [dict(num_beams=2), dict(num_beams=4), dict(num_beams=4, length_penalty=0.5),
                dict(num_beams=4, length_penalty=2.0), dict(num_beams=4, early_stopping=True),
                dict(num_beams=4, early_stopping=False), dict(num_beams=4, early_stopping="never"),
                dict(num_beams=2, early_stopping="never"), dict(num_beams=3, early_stopping=True, length_penalty=2.0),
                dict(num_beams=3, early_stopping="never", length_penalty=-1.0),
                dict(num_beams=4, num_return_sequences=2),
                dict(num_beams=4, repetition_penalty=1.3, min_new_tokens=3),
                dict(num_beams=4, num_return_sequences=3, early_stopping=True, length_penalty=0.5,
                     repetition_penalty=1.3, min_new_tokens=3)]


def _beam_eos(theirs, ids, prompt_length) -> int:
    """A token of Transformers' 4-beam run on ``ids`` (one row) without EOS that, as EOS, ends one of
    the 4 hypotheses the run returns early (padded) with ``length_penalty=0.5``: finished hypotheses
    compete with running beams (with the default 1.0, the tiny GPT-2's long repetitions win)."""
    options = dict(max_new_tokens=NEW, num_beams=4, do_sample=False, pad_token_id=BEAM_PAD, length_penalty=0.5)
    plain = theirs.generate(ids, eos_token_id=VOCAB - 1, **options)
    for step in range(1, NEW // 2):
        eos = int(plain[0, prompt_length + step])
        out = theirs.generate(ids, eos_token_id=eos, num_return_sequences=4, **options)
        if bool((out[:, -1] == BEAM_PAD).any()):
            return eos
    raise AssertionError("no token of the beam run ends a hypothesis early")


def _check_beam_search(ours, theirs, batches, eos, options):
    for batch_ids, batch_mask in batches:
        for eos_ids in (eos, [eos, VOCAB - 1]):
            kwargs = dict(attention_mask=batch_mask, max_new_tokens=NEW, do_sample=False, eos_token_id=eos_ids,
                          pad_token_id=BEAM_PAD, **options)
            expected = theirs.generate(batch_ids, **kwargs)
            got = ours.generate(batch_ids, **kwargs)
            assert torch.equal(got, expected), (got, expected)
            assert got.shape[0] == batch_ids.shape[0] * options.get("num_return_sequences", 1)
            assert torch.equal(ours.generate(batch_ids, use_cache=False, **kwargs), got)


@pytest.mark.parametrize("options", BEAM_OPTIONS, ids=str)
def test_beam_search_equals_transformers(pair, prompt, options):
    """One row, then a left-padded batch of 2 (2 and 4 pads); EOS ends some beams early."""
    ours, theirs = pair
    ids, mask = prompt
    eos = _beam_eos(theirs, ids[:1], 7)
    _check_beam_search(ours, theirs, ((ids[:1], None), (ids[1:], mask[1:])), eos, options)


def test_beam_search_finishes_hypotheses_early(pair, prompt):
    """The EOS of the tests above ends a returned hypothesis early: EOS, then padding; the returned
    hypotheses differ from each other, and beam search from greedy decoding."""
    ours, theirs = pair
    ids, mask = prompt
    eos = _beam_eos(theirs, ids[:1], 7)
    out = ours.generate(ids[:1], max_new_tokens=NEW, num_beams=4, num_return_sequences=4, eos_token_id=eos,
                        pad_token_id=BEAM_PAD, length_penalty=0.5)
    short = [row[7:].tolist() for row in out if row[-1] == BEAM_PAD]
    assert short and all(eos in row and set(row[row.index(eos) + 1:]) == {BEAM_PAD} for row in short)
    assert len({tuple(row.tolist()) for row in out}) == 4
    # the early_stopping modes end the search at different points (options of the tests above, same inputs)
    def differ(options, other):
        return any(not torch.equal(ours.generate(x, attention_mask=m, **common, **options),
                                   ours.generate(x, attention_mask=m, **common, **other))
                   for x, m in ((ids[:1], None), (ids[1:], mask[1:])))

    common = dict(max_new_tokens=NEW, eos_token_id=eos, pad_token_id=BEAM_PAD)
    assert differ(dict(num_beams=2, early_stopping=False), dict(num_beams=2, early_stopping="never"))
    assert differ(dict(num_beams=3, length_penalty=2.0, early_stopping=False),
                  dict(num_beams=3, length_penalty=2.0, early_stopping=True))
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, num_beams=4, eos_token_id=[])
    assert free.shape == (3, 7 + NEW)
    assert not torch.equal(free, ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[]))


def test_beam_search_repetition_penalty_leaves_left_padding_out(pair, prompt):
    """Each beam leaves its row's left padding out of the penalty, with a pad id the model likes."""
    ours, theirs = pair
    raw, mask = prompt
    pad = int(ours.generate(raw[2:, 4:], max_new_tokens=1, eos_token_id=[])[0, -1])
    ids = raw.masked_fill(mask == 0, pad)
    for beams in (2, 4):
        options = dict(max_new_tokens=NEW, eos_token_id=VOCAB - 1, pad_token_id=BEAM_PAD, repetition_penalty=1.3,
                       num_beams=beams, do_sample=False)
        assert torch.equal(ours.generate(ids, attention_mask=mask, **options),
                           theirs.generate(ids, attention_mask=mask, **options))


def test_beam_search_arguments(pair, prompt):
    ours, _ = pair
    ids, _ = prompt
    with pytest.raises(ValueError, match="num_return_sequences"):
        ours.generate(ids, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="num_return_sequences"):
        ours.generate(ids, num_return_sequences=2)                                     # greedy: one sequence
    for name, value in (("num_beams", 0), ("num_beams", 2.0), ("early_stopping", "sometimes"),
                        ("length_penalty", "long")):
        with pytest.raises(ValueError, match=name):
            ours.generate(ids, **{"num_beams": 2, name: value})
    for options in (dict(num_beams=2, do_sample=True), dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
                    dict(num_beams=2, force_words_ids=[[5]])):
        with pytest.raises(NotImplementedError):
            ours.generate(ids, **options)
    with pytest.raises(NotImplementedError, match="past_key_values"):
        ours.generate(ids, num_beams=2, past_key_values=ours(ids[:, :2], use_cache=True).past_key_values)
    # a generation config drives beam search as the arguments do
    kwargs = dict(max_new_tokens=6, eos_token_id=[])
    config = GenerationConfig(num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping=True)
    assert torch.equal(ours.generate(ids, generation_config=config, **kwargs),
                       ours.generate(ids, num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping=True,
                                     **kwargs))


# ----------------------------------------------------------------------------- generation config


@pytest.fixture(scope="module", params=[
    dict(max_new_tokens=6, repetition_penalty=1.3),
    dict(do_sample=True, temperature=0.7, top_k=10, max_length=7 + 9, min_new_tokens=3, repetition_penalty=1.2),
], ids=["greedy", "sampling"])
def configured_checkpoint(request, pair, prompt, tmp_path_factory):
    """A checkpoint saved by Transformers with a generation_config.json: the params above, EOS the
    token a greedy run with the penalty produces third (row 0), pad ``PAD``.  Returns
    ``(folder, ours, theirs)``, both loaded from it."""
    _, reference = pair
    ids, _ = prompt
    eos = int(reference.generate(ids[:1], max_new_tokens=NEW, do_sample=False, eos_token_id=VOCAB - 1,
                                 pad_token_id=PAD, repetition_penalty=1.3)[0, 7 + 2])
    writer = copy.deepcopy(reference)
    writer.generation_config = transformers.GenerationConfig(eos_token_id=eos, pad_token_id=PAD, **request.param)
    folder = tmp_path_factory.mktemp("generation_config")
    writer.save_pretrained(folder)
    return folder, AutoModelForCausalLM.from_pretrained(folder), \
        transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def test_generation_config_json_drives_generate_as_in_transformers(configured_checkpoint, prompt):
    folder, ours, theirs = configured_checkpoint
    ids, mask = prompt
    written = json.loads((folder / "generation_config.json").read_text())
    assert {k: v for k, v in ours.generation_config.to_dict().items() if k != "transformers_version"} == \
        {k: v for k, v in written.items() if k != "transformers_version"}
    for batch_ids in (ids[:1], ids):                  # only input_ids: the mask comes from the file's pad id
        torch.manual_seed(7)
        expected = theirs.generate(batch_ids)
        torch.manual_seed(7)
        assert torch.equal(ours.generate(batch_ids), expected)
    torch.manual_seed(7)
    expected = theirs.generate(ids, attention_mask=mask, generation_config=theirs.generation_config)
    torch.manual_seed(7)
    assert torch.equal(ours.generate(ids, attention_mask=mask, generation_config=ours.generation_config), expected)
    if not written.get("do_sample"):
        assert ours.generate(ids[:1]).shape == (1, 7 + 3)                            # the file's EOS stops it


def test_explicit_arguments_override_the_generation_config(configured_checkpoint, prompt):
    folder, ours, theirs = configured_checkpoint
    ids, _ = prompt
    options = dict(max_new_tokens=9, do_sample=False, repetition_penalty=1.0, min_new_tokens=0, eos_token_id=[])
    expected = theirs.generate(ids, **options)
    assert torch.equal(ours.generate(ids, **options), expected)
    assert expected.shape == (3, 7 + 9)
    penalized = ours.generate(ids, max_new_tokens=9, do_sample=False, min_new_tokens=0, eos_token_id=[])
    assert not torch.equal(penalized, expected)                         # the file's penalty, overridden above
    # a length argument replaces the config's length, whichever way each states it
    assert ours.generate(ids, max_length=10, do_sample=False, eos_token_id=[]).shape == (3, 10)
    # a generation_config argument overrides the model's, and arguments override both
    call = GenerationConfig(max_new_tokens=2, do_sample=False)
    assert ours.generate(ids, eos_token_id=[], generation_config=call).shape == (3, 7 + 2)
    assert ours.generate(ids, eos_token_id=[], generation_config=call, max_new_tokens=4).shape == (3, 7 + 4)
    assert ours.generation_config == AutoModelForCausalLM.from_pretrained(folder).generation_config   # untouched


def test_save_load_round_trip_keeps_the_generation_config(configured_checkpoint, tmp_path):
    _, loaded, _ = configured_checkpoint
    model = copy.deepcopy(loaded)
    model.generation_config.custom_key = {"kept": [1, 2]}     # unknown keys are kept and written back
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.generation_config == model.generation_config
    assert reloaded.generation_config.custom_key == {"kept": [1, 2]}
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    for key, value in loaded.generation_config.to_dict().items():
        if key != "transformers_version":
            assert getattr(theirs.generation_config, key) == value, key


def test_generation_config_of_a_built_model(tmp_path):
    """Built directly: the config's token ids, marked ``_from_model_config`` until a field is set."""
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, bos_token_id=1,
                                       eos_token_id=2))
    assert model.generation_config.to_dict() == {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2}
    assert GPT2Model(model.config).generation_config is None
    model.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "generation_config.json").read_text()) == \
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2}
    model.generation_config.max_new_tokens = 3
    model.save_pretrained(tmp_path / "set")
    written = json.loads((tmp_path / "set" / "generation_config.json").read_text())
    assert written == {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 3}
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "set")
    assert theirs.generation_config.max_new_tokens == 3
    assert model.generate(torch.tensor([[5, 6]]), eos_token_id=[]).shape == (1, 2 + 3)


def test_missing_or_invalid_generation_config_json_falls_back(hf_gpt2_dirs, tmp_path, caplog):
    folder = tmp_path / "ckpt"
    shutil.copytree(hf_gpt2_dirs["single"], folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.generation_config == GenerationConfig.from_model_config(model.config)
    enable_propagation()
    for text in ("{not json", "[1, 2]", '{"to_dict": 1}'):
        (folder / "generation_config.json").write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pretrained"):
            model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.generation_config == GenerationConfig.from_model_config(model.config)
        assert "generation_config.json" in caplog.text


def test_generation_config_json_of_a_hub_repo(configured_checkpoint, tmp_path):
    """A repo id (a hand-made Hub cache, offline): the snapshot's file is read; without one the load still works."""
    folder, ours, _ = configured_checkpoint
    sha = "0123456789abcdef0123456789abcdef01234567"
    for repo, keep in (("acme/with-config", True), ("acme/without-config", False)):
        root = tmp_path / ("models--" + repo.replace("/", "--"))
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(sha)
        shutil.copytree(folder, root / "snapshots" / sha,
                        ignore=None if keep else shutil.ignore_patterns("generation_config.json"))
        model = AutoModelForCausalLM.from_pretrained(repo, cache_dir=tmp_path)
        expected = ours.generation_config if keep else GenerationConfig.from_model_config(model.config)
        assert model.generation_config == expected


def test_bad_or_unsupported_values_from_the_generation_config(pair, prompt):
    ours, _ = pair
    ids, _ = prompt
    saved = ours.generation_config
    try:
        ours.generation_config = GenerationConfig(repetition_penalty=0.0)
        with pytest.raises(ValueError, match="repetition_penalty"):
            ours.generate(ids)
        assert ours.generate(ids, max_new_tokens=2, repetition_penalty=1.3).shape == (3, 7 + 2)
        ours.generation_config = GenerationConfig(num_beam_groups=2, no_repeat_ngram_size=0, bad_words_ids=[])
        with pytest.raises(NotImplementedError, match="num_beam_groups=2 .*generation config"):
            ours.generate(ids)
        assert ours.generate(ids, max_new_tokens=2, num_beam_groups=1).shape == (3, 7 + 2)
    finally:
        ours.generation_config = saved


def test_generation_config_class():
    config = GenerationConfig.from_dict({"max_new_tokens": 5, "num_beams": 1, "transformers_version": "5.0.0",
                                         "_commit_hash": "abc", "custom": [1]})
    assert (config.max_new_tokens, config.num_beams, config.custom, config.top_k) == (5, 1, [1], None)
    assert config.to_dict() == {"max_new_tokens": 5, "num_beams": 1, "transformers_version": "5.0.0", "custom": [1]}
    assert json.loads(config.to_json_string()) == config.to_dict()
    assert config.to_json_string().endswith("}\n")
    assert GenerationConfig.from_dict(json.loads(config.to_json_string())) == config
    marked = GenerationConfig.from_model_config(GPT2Config(bos_token_id=None, eos_token_id=[2, 3], pad_token_id=0))
    assert marked.to_dict() == {"_from_model_config": True, "eos_token_id": [2, 3], "pad_token_id": 0}
    marked.pad_token_id = 1
    assert marked.to_dict() == {"eos_token_id": [2, 3], "pad_token_id": 1}
    with pytest.raises(ValueError, match="to_json_string"):
        GenerationConfig(to_json_string=1)


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


def _t5_pair(**extra):
    from pretrained.models import t5, t5_heads

    kw = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **extra)
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    theirs = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
    ours = t5_heads.T5ForConditionalGeneration(t5.T5Config(**kw)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def test_t5_greedy_equals_transformers(prompt):
    ours, theirs = _t5_pair()
    ids, mask = prompt
    ids = ids.flip(1) + 0 * ids                                              # right padding, as encoders take it
    mask = mask.flip(1)
    expected = theirs.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=NEW), expected)


@pytest.mark.parametrize("options", [dict(repetition_penalty=1.3), dict(min_new_tokens=5),
                                     dict(repetition_penalty=1.3, min_new_tokens=5), dict(min_length=1 + 5)], ids=str)
def test_t5_penalty_and_min_length_equal_transformers(prompt, options):
    """The penalty sees the decoder ids; min_length counts them, start token included."""
    ours, theirs = _t5_pair(initializer_factor=5.0)                          # varied tokens, not one repeated
    ids, mask = prompt
    ids, mask = ids.flip(1), mask.flip(1)
    plain = theirs.generate(ids[:1], max_new_tokens=NEW, do_sample=False, eos_token_id=VOCAB - 1)
    eos = int(plain[0, 1 + 2])                                               # the third new token
    for batch_ids, batch_mask in ((ids[:1], None), (ids, mask)):
        expected = theirs.generate(batch_ids, attention_mask=batch_mask, max_new_tokens=NEW, do_sample=False,
                                   eos_token_id=eos, **options)
        got = ours.generate(batch_ids, attention_mask=batch_mask, max_new_tokens=NEW, eos_token_id=eos, **options)
        assert torch.equal(got, expected), (got, expected)
    # the options change the run, so the comparison above can fail
    assert ours.generate(ids[:1], max_new_tokens=NEW, eos_token_id=eos).shape[1] <= 1 + 3
    if "min_new_tokens" in options or "min_length" in options:
        assert ours.generate(ids[:1], max_new_tokens=NEW, eos_token_id=eos, **options).shape[1] >= 1 + 6
    if "repetition_penalty" in options:
        free = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
        assert not torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[],
                                             repetition_penalty=1.3), free)


@pytest.mark.parametrize("options", BEAM_OPTIONS, ids=str)
def test_t5_beam_search_equals_transformers(prompt, options):
    """The encoder runs once; its output and mask are repeated per beam."""
    ours, theirs = _t5_pair(initializer_factor=5.0)
    ids, mask = prompt
    ids, mask = ids.flip(1), mask.flip(1)
    eos = _beam_eos(theirs, ids[:1], 1)
    _check_beam_search(ours, theirs, ((ids[:1], None), (ids, mask)), eos, options)
