"""LoRA on a quantized base (int8, nf4 and our int4): the base runs its own kernel, the adapter adds to it.

The reference is the same adapter on the dequantized model (plain linears holding exactly the
weights the quantized ones stand for): outputs agree up to the kernels' rounding. Training
moves only the adapter; merging into quantized weights is refused before anything changes.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402
from helpers import train_losses  # noqa: E402
from pretrained import BitsAndBytesConfig, Int4Config  # noqa: E402
from pretrained.adapters import LoraConfig  # noqa: E402

MODES = {
    "int8": lambda: BitsAndBytesConfig(load_in_8bit=True),
    "nf4": lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "int4": lambda: Int4Config(group_size=32),
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    transformers.utils.logging.set_verbosity_error()
    folder = tmp_path_factory.mktemp("lora_quant_llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _quantized(llama_dir, mode):
    return pretrained.LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=MODES[mode]())


@pytest.mark.parametrize("mode", list(MODES))
def test_lora_on_a_quantized_base_equals_lora_on_its_dequantized_weights(llama_dir, mode, tmp_path):
    ids = torch.tensor([[3, 17, 5, 60, 2, 41, 9]])
    model = _quantized(llama_dir, mode)
    with torch.no_grad():
        base = model(ids).logits
    torch.manual_seed(1)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    reference = _quantized(llama_dir, mode).dequantize()
    reference.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        ours, expected = model(ids).logits, reference(ids).logits
        assert not torch.allclose(ours, base, atol=1e-3)          # the adapter does something
        torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-3)
        model.disable_adapters()
        assert torch.equal(model(ids).logits, base)               # and nothing once disabled


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_training_on_a_quantized_base_moves_only_the_adapter(llama_dir, mode):
    model = _quantized(llama_dir, mode)
    model.add_adapter(LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    model.train()
    frozen = {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" not in n}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.is_floating_point() for p in trainable)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    losses = train_losses(model, ids)
    assert losses[-1] < losses[0]
    assert all(torch.equal(t, frozen[n]) for n, t in model.state_dict().items() if n in frozen)


def test_merging_into_quantized_weights_is_refused_before_anything_changes(llama_dir):
    model = _quantized(llama_dir, "int8")
    model.add_adapter(LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    weight = model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="quantized weights"):
        model.merge_and_unload()
    assert torch.equal(model.model.layers[0].self_attn.q_proj.base_layer.weight, weight)
    assert model._hf_peft_config_loaded


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_input_gradient_through_a_quantized_kernel_is_the_dequantized_weights(llama_dir, mode):
    layer = _quantized(llama_dir, mode).model.layers[0].mlp.down_proj
    x = torch.randn(3, 5, layer.in_features, requires_grad=True)
    layer(x).square().sum().backward()
    ours = x.grad.clone()
    x.grad = None
    reference = torch.nn.functional.linear(x, layer.dequantized_weight(torch.float32))
    reference.square().sum().backward()
    torch.testing.assert_close(ours, x.grad, atol=1e-4, rtol=1e-3)
