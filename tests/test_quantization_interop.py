"""Quantized checkpoints both ways with Transformers + bitsandbytes (the real libraries, on the CPU).

Transformers and bitsandbytes are references only: these tests skip, with the
reason, when either cannot be imported.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

import pretrained
from pretrained import BitsAndBytesConfig
from pretrained.quantization import QuantizedLinear, formats

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not importable here")
transformers = pytest.importorskip("transformers")

ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(vocab_size=128, hidden_size=64, intermediate_size=128,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, max_position_embeddings=64)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64)),
    "bert": ("BertConfig", "BertForMaskedLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                   intermediate_size=128, vocab_size=128,
                                                   max_position_embeddings=64)),
}
MODES = {
    "int8": dict(load_in_8bit=True),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32),
}


def _hf_bnb(**kwargs):
    return transformers.BitsAndBytesConfig(**kwargs)


@pytest.fixture(scope="module")
def fp_dirs(tmp_path_factory):
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dirs = {}
    for arch, (config_name, model_name, kwargs) in ARCHS.items():
        torch.manual_seed(0)
        model = getattr(transformers, model_name)(getattr(transformers, config_name)(**kwargs))
        dirs[arch] = tmp_path_factory.mktemp(f"{arch}_fp")
        model.save_pretrained(dirs[arch])
    return dirs


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(2)
    return torch.randint(0, 128, (2, 16))


def _out(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def _cos(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _hf_load(folder, **kwargs):
    return transformers.AutoModelForMaskedLM.from_pretrained(folder, **kwargs) if "bert" in str(folder) else \
        transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def _dequantized_reference(theirs, fp_folder):
    """A Transformers fp32 model holding the weights of ``theirs`` dequantized by bitsandbytes itself.

    (``PreTrainedModel.dequantize()`` of Transformers 5.25 fails on CPU int8 models.)
    """
    reference = _hf_load(fp_folder).eval()
    state = reference.state_dict()
    for name, module in theirs.named_modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            scb = module.weight.SCB if getattr(module.weight, "SCB", None) is not None else module.state.SCB
            weight = bnb.functional.int8_vectorwise_dequant(module.weight.data, scb)
        elif isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        else:
            continue
        weight = weight.float()
        if type(reference.get_submodule(name)).__name__ == "Conv1D":
            weight = weight.t()
        state[name + ".weight"] = weight.contiguous()
    reference.load_state_dict(state)
    return reference


def _ours_class(arch):
    return getattr(pretrained, ARCHS[arch][1])


# ----------------------------------------------------------------------------- arithmetic against bitsandbytes


def test_dynamic_map_equals_bitsandbytes():
    assert torch.equal(formats.dynamic_map(), bnb.functional.create_dynamic_map(signed=True))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_layout_is_bitsandbytes(quant_type, double_quant):
    torch.manual_seed(0)
    w = torch.randn(96, 128) * 0.1
    ours = formats.quantize_4bit(w, quant_type=quant_type, double_quant=double_quant)
    packed, state = bnb.functional.quantize_4bit(w, quant_type=quant_type, compress_statistics=double_quant)
    assert torch.equal(ours["weight"], packed)
    if double_quant:  # their C++ CPU kernel rounds an exact midpoint now and then the other way
        off = (ours["absmax"].int() - state.absmax.int()).abs()
        assert off.max() <= 1 and int((off > 0).sum()) <= max(1, off.numel() // 50)
    else:
        assert torch.equal(ours["absmax"], state.absmax)
    assert torch.equal(ours["quant_map"], state.code)
    nested = None
    if double_quant:
        assert torch.equal(ours["nested_absmax"], state.state2.absmax)
        assert float(ours["nested_offset"]) == float(state.offset)
        nested = {"nested_absmax": state.state2.absmax, "nested_quant_map": state.state2.code,
                  "nested_offset": state.offset, "nested_blocksize": state.state2.blocksize}
    ours_w = formats.dequantize_4bit(packed, state.absmax, state.code, shape=w.shape, blocksize=64,
                                     dtype=torch.float32, nested=nested)
    torch.testing.assert_close(ours_w, bnb.functional.dequantize_4bit(packed, state), atol=1e-6, rtol=0)


def test_int8_layout_is_bitsandbytes():
    torch.manual_seed(0)
    w = torch.randn(48, 64).half()  # bitsandbytes quantizes from float16
    q, scb = formats.quantize_int8_rows(w)
    their_q, their_scb, _ = bnb.functional.int8_vectorwise_quant(w)
    assert torch.equal(scb, their_scb)
    assert (q.int() - their_q.int()).abs().max() <= 1  # rounding of w*127/absmax in fp16 vs fp32


# ----------------------------------------------------------------------------- their checkpoints here


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", list(MODES))
def test_transformers_quantized_checkpoint_loads_here(fp_dirs, ids, tmp_path, arch, mode):
    theirs = _hf_load(fp_dirs[arch], quantization_config=_hf_bnb(**MODES[mode]), device_map="cpu")
    theirs.save_pretrained(tmp_path)
    reference = _dequantized_reference(theirs, fp_dirs[arch])  # before a forward: bitsandbytes repacks on CPU
    expected = _out(theirs, ids)
    ours = _ours_class(arch).from_pretrained(tmp_path)
    assert ours.is_quantized and ours.quantization_method == "bitsandbytes"
    got = _out(ours, ids)
    assert _cos(got, expected) >= 0.999
    assert ours.num_parameters() == theirs.num_parameters()
    theirs_q = sorted(n for n, m in theirs.named_modules() if type(m).__module__.startswith("bitsandbytes"))
    ours_q = sorted(n for n, m in ours.named_modules() if isinstance(m, QuantizedLinear))
    assert ours_q == theirs_q
    # the same arithmetic: our output equals theirs with the weights dequantized (no activation quantization)
    torch.testing.assert_close(got, _out(reference, ids), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- our checkpoints there


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", list(MODES))
def test_our_quantized_checkpoint_loads_in_transformers(fp_dirs, ids, tmp_path, arch, mode):
    ours = _ours_class(arch).from_pretrained(fp_dirs[arch], quantization_config=BitsAndBytesConfig(**MODES[mode]))
    ours.save_pretrained(tmp_path)
    block = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert block == _hf_bnb(**MODES[mode]).to_dict()
    expected = _out(ours, ids)
    theirs = _hf_load(tmp_path, device_map="cpu")
    assert type(theirs.config.quantization_config).__name__ == "BitsAndBytesConfig"
    torch.testing.assert_close(_out(_dequantized_reference(theirs, fp_dirs[arch]), ids), expected,
                               atol=1e-4, rtol=1e-4)
    assert _cos(_out(theirs, ids), expected) >= 0.999


def test_quantize_on_load_matches_transformers_quantize_on_load(fp_dirs, ids):
    """nf4 codes are deterministic: the two libraries quantize the same fp32 weights identically."""
    theirs = _hf_load(fp_dirs["llama"], quantization_config=_hf_bnb(**MODES["nf4"]), device_map="cpu")
    ours = pretrained.LlamaForCausalLM.from_pretrained(fp_dirs["llama"],
                                                       quantization_config=BitsAndBytesConfig(**MODES["nf4"]))
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    for key in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight.nested_absmax"):
        assert torch.equal(ours_sd[key], theirs_sd[key]), key
    off = (ours_sd["model.layers.1.self_attn.q_proj.weight.absmax"].int()
           - theirs_sd["model.layers.1.self_attn.q_proj.weight.absmax"].int())
    assert off.abs().max() <= 1  # see test_4bit_layout_is_bitsandbytes
    assert _cos(_out(ours, ids), _out(theirs, ids)) >= 0.9999
    # Transformers counts parameters and buffers; we also count the quant-state tensors we store
    state_bytes = sum(b.numel() * b.element_size() for m in ours.modules() if isinstance(m, QuantizedLinear)
                      for b in m.buffers())
    assert ours.get_memory_footprint() == theirs.get_memory_footprint() + state_bytes
