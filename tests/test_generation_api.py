"""`generate`'s wider API against Transformers 5.25 on the same tiny weights: unknown keywords,
Transformers' GenerationConfig, ``inputs_embeds``, streamers, stopping criteria, dict outputs,
``no_repeat_ngram_size``/``min_p``, several samples per prompt, ``max_new_tokens=0``."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from test_generation import PAD, VOCAB, _pair, _t5_pair  # noqa: E402

NEW = 8


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    return _pair(request.param)


@pytest.fixture(scope="module")
def prompt():
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, PAD), mask


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
