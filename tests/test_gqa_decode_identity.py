"""Decode steps with grouped key/value heads under SDPA equal Transformers 5.25 bit for bit.

A one-token step used to fold the query's heads into (B, Hkv, groups, D) before SDPA;
the sums came out in another order (fp32 steps 3e-7 apart, a bf16 greedy token flipped
on the 1.1B benchmark Llama). Now SDPA is called as Transformers calls it.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory):
    transformers.utils.logging.set_verbosity_error()
    folder = tmp_path_factory.mktemp("gqa_llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_decode_steps_equal_transformers(gqa_llama, dtype):
    theirs = transformers.LlamaForCausalLM.from_pretrained(gqa_llama, dtype=dtype, attn_implementation="sdpa").eval()
    ours = pretrained.LlamaForCausalLM.from_pretrained(gqa_llama, torch_dtype=dtype, attn_implementation="sdpa")
    prompt = torch.randint(0, 128, (1, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = theirs(prompt, use_cache=True), ours(prompt, use_cache=True)
        assert torch.equal(a.logits, b.logits)
        past_a, past_b, token = a.past_key_values, b.past_key_values, a.logits[:, -1:].argmax(-1)
        for _ in range(6):
            a = theirs(token, past_key_values=past_a, use_cache=True)
            b = ours(token, past_key_values=past_b, use_cache=True)
            assert torch.equal(a.logits, b.logits)
            past_a, past_b, token = a.past_key_values, b.past_key_values, a.logits[:, -1:].argmax(-1)
