"""Padding-free packed rows: ``position_ids`` that restart mark sequences packed into one row.

Transformers 5 (the pinned reference) reads position ids that do not step by one
as the start of another sequence in the same row, but only when no attention
mask is given and no key/value cache is in use. We follow it for BERT, GPT-2 and
Llama (docs/guide.md, "Packed sequences"). Each case is checked twice: against
Transformers on the same weights, and against running each packed sequence on
its own, which is what the feature promises.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import pretrained

transformers = pytest.importorskip("transformers")

VOCAB = 99
LENGTHS = [[3, 4, 2], [5, 4]]        # two rows of 9 tokens, each packing several sequences
ATOL = 1e-4

CONFIGS = {
    "bert": ("BertModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                               vocab_size=VOCAB, max_position_embeddings=64)),
    "gpt2": ("GPT2LMHeadModel", dict(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64,
                                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)),
    "llama": ("LlamaForCausalLM", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       bos_token_id=1, eos_token_id=2)),
}
CONFIG_CLASSES = {"bert": "BertConfig", "gpt2": "GPT2Config", "llama": "LlamaConfig"}


def _pair(arch: str, impl: str):
    cls_name, kwargs = CONFIGS[arch]
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    theirs_config = getattr(transformers, CONFIG_CLASSES[arch])(**kwargs, attn_implementation=impl)
    theirs = getattr(transformers, cls_name)(theirs_config).eval()
    ours_config = getattr(pretrained, CONFIG_CLASSES[arch])(**kwargs, attn_implementation=impl)
    ours = getattr(pretrained, cls_name)(ours_config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _packed_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), sum(LENGTHS[0])), generator=g)
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in LENGTHS])
    return ids, positions


def _output(model, **inputs):
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packed_rows_equal_transformers_and_each_sequence_alone(arch, impl):
    ours, theirs = _pair(arch, impl)
    ids, positions = _packed_inputs()
    extra = {} if arch == "bert" else {"use_cache": False}
    with torch.no_grad():
        got = _output(ours, input_ids=ids, position_ids=positions, **extra)
        assert_close(got, _output(theirs, input_ids=ids, position_ids=positions, **extra), atol=ATOL, rtol=0)
        for row, lengths in enumerate(LENGTHS):
            start = 0
            for n in lengths:
                alone = _output(ours, input_ids=ids[row:row + 1, start:start + n], **extra)
                assert_close(got[row:row + 1, start:start + n], alone, atol=1e-5, rtol=0)
                start += n


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_cache_or_an_attention_mask_turns_packing_off_as_in_transformers(arch):
    """With a cache in use (use_cache=True) or a 2-D mask given, the positions only move the embeddings."""
    ours, theirs = _pair(arch, "sdpa")
    ids, positions = _packed_inputs()
    ones = torch.ones_like(ids)
    with torch.no_grad():
        for extra in ({"use_cache": True}, {"use_cache": False, "attention_mask": ones}):
            got = _output(ours, input_ids=ids, position_ids=positions, **extra)
            assert_close(got, _output(theirs, input_ids=ids, position_ids=positions, **extra), atol=ATOL, rtol=0)
            packed = _output(ours, input_ids=ids, position_ids=positions, use_cache=False)
            assert (got - packed).abs().max() > 1e-3                  # it really is the unpacked meaning


def test_bert_restarting_positions_with_token_types_equal_transformers():
    """The case that found the difference: a decreasing run of positions (every token its own sequence)."""
    ours, theirs = _pair("bert", "eager")
    ids, _ = _packed_inputs()
    positions = torch.arange(ids.shape[1]).flip(0)[None]
    types = (torch.arange(ids.shape[1]) > 3).long()[None].expand_as(ids)
    with torch.no_grad():
        got = ours(input_ids=ids, position_ids=positions, token_type_ids=types).last_hidden_state
        expected = theirs(input_ids=ids, position_ids=positions, token_type_ids=types).last_hidden_state
    assert_close(got, expected, atol=ATOL, rtol=0)


def test_a_training_step_on_packed_rows_matches_transformers():
    """Loss and gradients of a causal LM on packed rows (labels -100 at each sequence start) equal theirs."""
    ours, theirs = _pair("llama", "sdpa")
    ours.train()
    theirs.train()
    ids, positions = _packed_inputs()
    labels = ids.masked_fill(positions == 0, -100)
    ours_loss = ours(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
    theirs_loss = theirs(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
    assert_close(ours_loss, theirs_loss, atol=1e-5, rtol=0)
    ours_loss.backward()
    theirs_loss.backward()
    ours_grads = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        assert_close(ours_grads[name].grad, param.grad, atol=1e-5, rtol=1e-4, msg=name)
