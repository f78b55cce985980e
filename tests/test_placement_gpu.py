"""Placement on CUDA devices: straight-to-GPU loads, GPU + CPU/disk offload, multi-GPU maps.

Skipped without CUDA (marker ``gpu``). The reference is the same checkpoint
loaded whole on ``cuda:0``: offloaded modules execute there too, with the
same kernels, so outputs must agree within 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from pretrained import BertForMaskedLM, GPT2LMHeadModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ATOL = 1e-5


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture(scope="module")
def gpt2_on_gpu(hf_gpt2_dirs, input_ids):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"]).to("cuda:0")
    return model, logits(model, input_ids.to("cuda:0")).cpu()


def tensor_devices(model) -> set:
    return {t.device for t in list(model.parameters()) + list(model.buffers())}


@pytest.mark.parametrize("device_map", [0, "cuda:0", "cuda", {"": 0}, torch.device("cuda", 0)])
def test_single_gpu_maps_load_straight_to_the_gpu(hf_gpt2_dirs, gpt2_on_gpu, input_ids, device_map):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map=device_map)
    assert model.hf_device_map == {"": 0}
    assert tensor_devices(model) == {torch.device("cuda", 0)}
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_close(logits(model, input_ids.to("cuda:0")), gpt2_on_gpu[1], atol=ATOL)


def test_gpu_and_cpu_offload(hf_gpt2_dirs, gpt2_on_gpu, input_ids):
    half = model_bytes(gpt2_on_gpu[0]) // 2
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map="auto",
                                            max_memory={0: half, "cpu": "1GB"})
    devices = set(model.hf_device_map.values())
    assert devices == {0, "cpu"}, model.hf_device_map
    assert {p.device.type for p in model.parameters()} == {"cuda", "cpu"}  # CPU modules' weights stay in RAM
    out = logits(model, input_ids)  # CPU inputs: the outputs come back to the CPU
    assert out.device.type == "cpu"
    assert_close(out, gpt2_on_gpu[1], atol=ATOL)


def test_gpu_and_disk_offload_with_dtype_conversion(hf_gpt2_dirs, input_ids, tmp_path):
    whole = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], torch_dtype=torch.float16).to("cuda:0")
    small = model_bytes(whole) // 3
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], torch_dtype=torch.float16, device_map="auto",
                                            max_memory={0: small, "cpu": small}, offload_folder=tmp_path)
    assert "disk" in model.hf_device_map.values() and 0 in model.hf_device_map.values()
    assert any(tmp_path.iterdir())
    assert_close(logits(model, input_ids.to("cuda:0")), logits(whole, input_ids.to("cuda:0")), atol=ATOL)


def test_bert_fully_on_disk_runs_on_the_gpu(hf_bert_dirs, input_ids):
    whole = BertForMaskedLM.from_pretrained(hf_bert_dirs["single"]).to("cuda:0")
    model = BertForMaskedLM.from_pretrained(hf_bert_dirs["single"], device_map={"bert.embeddings": 0, "": "disk"})
    assert model.hf_device_map == {"bert.embeddings": 0, "": "disk"}
    assert_close(logits(model, input_ids), logits(whole, input_ids.to("cuda:0")), atol=ATOL)


def test_greedy_with_cache_under_gpu_offload(hf_gpt2_dirs, gpt2_on_gpu, input_ids):
    half = model_bytes(gpt2_on_gpu[0]) // 2
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map="auto",
                                            max_memory={0: half, "cpu": "1GB"})
    reference = gpt2_on_gpu[0]
    ids_ref, ids = input_ids.to("cuda:0"), input_ids
    past_ref = past = None
    step_ref, step = ids_ref, ids
    with torch.no_grad():
        for _ in range(4):
            out_ref = reference(step_ref, past_key_values=past_ref, use_cache=True)
            out = model(step, past_key_values=past, use_cache=True)
            tok_ref = out_ref.logits[:, -1].argmax(-1, keepdim=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            assert torch.equal(tok.cpu(), tok_ref.cpu())
            past_ref, past, step_ref, step = out_ref.past_key_values, out.past_key_values, tok_ref, tok


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("strategy", ["balanced", "sequential"])
def test_two_gpus(hf_gpt2_dirs, gpt2_on_gpu, input_ids, strategy):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map=strategy,
                                            max_memory=None if strategy == "balanced" else {0: "1GB", 1: "1GB"})
    used = set(model.hf_device_map.values())
    assert used == ({0, 1} if strategy == "balanced" else {0})
    assert_close(logits(model, input_ids), gpt2_on_gpu[1], atol=ATOL)


@pytest.mark.skipif(torch.cuda.device_count() < 3, reason="needs three GPUs")
def test_balanced_low_0_leaves_gpu0_free(hf_gpt2_dirs, gpt2_on_gpu, input_ids):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map="balanced_low_0")
    assert 0 not in set(model.hf_device_map.values())
    assert_close(logits(model, input_ids), gpt2_on_gpu[1], atol=ATOL)


@pytest.mark.parametrize("stored, wanted", [(torch.float32, torch.float16), (torch.bfloat16, torch.float32),
                                            (torch.float16, torch.bfloat16)])
def test_dtype_conversion_on_the_way_to_the_gpu_is_exact(hf_gpt2_dirs, tmp_path, stored, wanted):
    """Narrowing casts run on the CPU before the copy, widening ones on the GPU after it:
    either way every tensor equals the CPU-side cast, bit for bit."""
    folder = tmp_path / "ckpt"
    GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], torch_dtype=stored).save_pretrained(folder)
    on_cpu = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=wanted)
    on_gpu = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=wanted, device_map="cuda")
    expected = on_cpu.state_dict()
    for name, tensor in on_gpu.state_dict().items():
        assert tensor.device.type == "cuda" and tensor.dtype == expected[name].dtype, name
        assert torch.equal(tensor.cpu(), expected[name]), name


def test_straight_to_gpu_matches_transformers_on_the_gpu(hf_gpt2_dirs, input_ids):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map="cuda")
    ours = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map="cuda")
    ids = input_ids.to("cuda:0")
    assert_close(logits(ours, ids), logits(theirs, ids), atol=ATOL)


def test_generate_on_the_gpu_matches_transformers(hf_gpt2_dirs, input_ids):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map="cuda")
    ours = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], device_map="cuda")
    ids = input_ids.to("cuda:0")
    kwargs = dict(max_new_tokens=8, do_sample=False, repetition_penalty=1.3, min_new_tokens=4, pad_token_id=0)
    expected = theirs.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    got = ours.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert got.device.type == "cuda" and torch.equal(got.cpu(), expected.cpu())
