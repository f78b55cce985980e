"""`generate`'s wider API against Transformers 5.25 on the same tiny weights: unknown keywords,
Transformers' GenerationConfig, ``inputs_embeds``, streamers, stopping criteria, dict outputs,
``no_repeat_ngram_size``/``min_p``, several samples per prompt, ``max_new_tokens=0``."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from test_generation import PAD, _pair, _t5_pair, left_padded_prompt  # noqa: E402

NEW = 8


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    return _pair(request.param)


@pytest.fixture(scope="module")
def prompt():
    return left_padded_prompt()


# ----------------------------------------------------------------------------- item 3: unknown keywords


def test_misspelt_generate_keyword_raises_naming_it(pair, prompt):
    ours, theirs = pair
    ids, mask = prompt
    with pytest.raises(ValueError, match="max_new_tokns"):
        theirs.generate(ids, attention_mask=mask, max_new_tokns=2, pad_token_id=PAD)
    with pytest.raises(ValueError, match="max_new_tokns"):
        ours.generate(ids, attention_mask=mask, max_new_tokns=2, pad_token_id=PAD)
    with pytest.raises(ValueError, match="not_a_thing"):
        ours.generate(ids, not_a_thing=torch.ones(1))
    # None values are ignored, as in Transformers; forward inputs stay allowed
    kw = dict(attention_mask=mask, max_new_tokens=3, eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(ours.generate(ids, unknown_option=None, **kw), theirs.generate(ids, unknown_option=None, **kw))


def test_gpt2_token_type_ids_still_accepted(prompt):
    ours, theirs = _pair("gpt2")
    ids, mask = prompt
    types = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(3))
    kw = dict(attention_mask=mask, token_type_ids=types, max_new_tokens=4, eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(ours.generate(ids, **kw), theirs.generate(ids, **kw))


def test_t5_keywords_checked_and_encoder_outputs_allowed(prompt):
    ours, theirs = _t5_pair()
    ids, _ = prompt
    with pytest.raises(ValueError, match="max_new_tokns"):
        ours.generate(ids, max_new_tokns=2)
    encoder_outputs = ours.get_encoder()(input_ids=ids, return_dict=True)
    got = ours.generate(ids, encoder_outputs=encoder_outputs, max_new_tokens=4)
    assert torch.equal(got, theirs.generate(ids, max_new_tokens=4))
    with pytest.raises(NotImplementedError, match="decoder_input_ids"):
        ours.generate(ids, decoder_input_ids=torch.zeros(3, 1, dtype=torch.long), max_new_tokens=2)


# ----------------------------------------------------------------------------- Transformers' GenerationConfig


def test_transformers_generation_config_is_accepted(pair, prompt):
    ours, theirs = pair
    ids, mask = prompt
    config = transformers.GenerationConfig(max_new_tokens=5, repetition_penalty=1.3, num_beams=2,
                                           eos_token_id=2, pad_token_id=PAD)
    expected = theirs.generate(ids, attention_mask=mask, generation_config=config)
    assert torch.equal(ours.generate(ids, attention_mask=mask, generation_config=config), expected)
    with pytest.raises(NotImplementedError, match="typical_p"):
        ours.generate(ids, generation_config=transformers.GenerationConfig(do_sample=True, typical_p=0.5))
    with pytest.raises(TypeError, match="to_dict"):
        ours.generate(ids, generation_config=object())


# ----------------------------------------------------------------------------- item 2: inputs_embeds


def test_inputs_embeds_equals_transformers(pair, prompt):
    ours, theirs = pair
    ids, mask = prompt
    embeds = theirs.get_input_embeddings()(ids)
    kw = dict(attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=PAD)
    expected = theirs.generate(inputs_embeds=embeds, **kw)
    got = ours.generate(inputs_embeds=embeds, **kw)
    assert got.shape == (3, NEW) and torch.equal(got, expected)                  # only the new tokens
    assert torch.equal(ours.generate(ids, inputs_embeds=embeds, **kw), theirs.generate(ids, inputs_embeds=embeds, **kw))
    kw = dict(max_length=7 + 4, eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(ours.generate(inputs_embeds=embeds[:1], **kw), theirs.generate(inputs_embeds=embeds[:1], **kw))


def test_inputs_embeds_refused_where_not_supported(prompt):
    ours, _ = _t5_pair()
    ids, _ = prompt
    with pytest.raises(NotImplementedError, match="inputs_embeds"):
        ours.generate(inputs_embeds=torch.zeros(1, 3, 32), max_new_tokens=2)


# ----------------------------------------------------------------------------- streamer, criteria, outputs


class _Recorder:
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def end(self):
        self.calls.append(("end", None))


def test_streamer_is_called_as_transformers_calls_it(pair, prompt):
    ours, theirs = pair
    ids, _ = prompt
    kw = dict(max_new_tokens=5, eos_token_id=[], pad_token_id=PAD)
    mine, yours = _Recorder(), _Recorder()
    ours.generate(ids[:1], streamer=mine, **kw)
    theirs.generate(ids[:1], streamer=yours, **kw)
    assert [c[0] for c in mine.calls] == [c[0] for c in yours.calls]
    assert all(a[1] is None or torch.equal(a[1], b[1]) for a, b in zip(mine.calls, yours.calls))


def test_stopping_criteria_equal_transformers(pair, prompt):
    from pretrained.modeling.stopping_criteria import StoppingCriteria, StoppingCriteriaList

    ours, theirs = pair
    ids, mask = prompt

    def stop_after(n):
        return lambda input_ids, scores: torch.full((input_ids.shape[0],), input_ids.shape[1] >= 7 + n)

    class Theirs(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return stop_after(3)(input_ids, scores)

    class Ours(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return stop_after(3)(input_ids, scores)

    kw = dict(attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=PAD)
    expected = theirs.generate(ids, stopping_criteria=transformers.StoppingCriteriaList([Theirs()]), **kw)
    assert expected.shape == (3, 10)
    assert torch.equal(ours.generate(ids, stopping_criteria=StoppingCriteriaList([Ours()]), **kw), expected)
    assert torch.equal(ours.generate(ids, stopping_criteria=[stop_after(3)], **kw), expected)


@pytest.mark.parametrize("do_sample", [False, True])
def test_dict_outputs_equal_transformers(pair, prompt, do_sample):
    ours, theirs = pair
    ids, mask = prompt
    kw = dict(attention_mask=mask, max_new_tokens=4, eos_token_id=2, pad_token_id=PAD, do_sample=do_sample,
              return_dict_in_generate=True, output_scores=True, output_logits=True, output_hidden_states=True,
              output_attentions=True)
    torch.manual_seed(0)
    expected = theirs.generate(ids, **kw)
    torch.manual_seed(0)
    got = ours.generate(ids, **kw)
    assert type(got).__name__ == type(expected).__name__ == "GenerateDecoderOnlyOutput"
    assert torch.equal(got.sequences, expected.sequences)
    for name in ("scores", "logits"):
        assert len(getattr(got, name)) == len(getattr(expected, name))
        for a, b in zip(getattr(got, name), getattr(expected, name)):
            assert_close(a, b, atol=1e-4)
    # hidden states per step and layer; row 0 has no padding (padded positions hold arbitrary values)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for step_a, step_b in zip(got.hidden_states, expected.hidden_states):
        assert len(step_a) == len(step_b)
        for a, b in zip(step_a, step_b):
            assert_close(a[0], b[0], atol=1e-4)
    assert len(got.attentions) == len(expected.attentions) == 4     # per step (values: see the guide)


def test_t5_dict_outputs_equal_transformers(prompt):
    ours, theirs = _t5_pair()
    ids, _ = prompt
    ids = ids[:1]                                     # no pad token in it: no default encoder mask question
    kw = dict(max_new_tokens=4, return_dict_in_generate=True, output_scores=True, output_attentions=True)
    expected, got = theirs.generate(ids, **kw), ours.generate(ids, **kw)
    assert type(got).__name__ == "GenerateEncoderDecoderOutput"
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.scores, expected.scores):
        assert_close(a, b, atol=1e-4)
    assert len(got.encoder_attentions) == 2           # ours per layer; 5.25's sdpa T5 returns none to compare


# ----------------------------------------------------------------------------- processors, several samples


@pytest.mark.parametrize("options", [dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=1),
                                     dict(do_sample=True, min_p=0.2), dict(do_sample=True, min_p=0.05, top_k=0),
                                     dict(do_sample=True, num_return_sequences=3, top_k=0),
                                     dict(do_sample=True, num_return_sequences=2, no_repeat_ngram_size=2)], ids=str)
def test_processors_and_samples_equal_transformers(pair, prompt, options):
    ours, theirs = pair
    ids, mask = prompt
    kw = dict(attention_mask=mask, max_new_tokens=NEW, eos_token_id=2, pad_token_id=PAD, **options)
    torch.manual_seed(5)
    expected = theirs.generate(ids, **kw)
    torch.manual_seed(5)
    got = ours.generate(ids, **kw)
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_beam_search_refuses_what_it_lacks(pair, prompt):
    ours, _ = pair
    ids, _ = prompt
    for options in (dict(streamer=_Recorder()), dict(stopping_criteria=[len])):     # dict outputs: test_generation_beam_outputs
        with pytest.raises(NotImplementedError, match="beam"):
            ours.generate(ids, num_beams=2, max_new_tokens=2, **options)


def test_stop_strings_refused_naming_the_keyword(pair, prompt):
    """``stop_strings`` needs a tokenizer: refused by name (argument or generation config), never ignored."""
    from pretrained import GenerationConfig

    ours, _ = pair
    ids, _ = prompt
    with pytest.raises(NotImplementedError, match="stop_strings=.*tokenizer.*stopping_criteria"):
        ours.generate(ids, stop_strings=["the"], tokenizer=object(), max_new_tokens=2)
    with pytest.raises(NotImplementedError, match="stop_strings=.*generation config"):
        ours.generate(ids, generation_config=GenerationConfig(stop_strings="the"), max_new_tokens=2)
