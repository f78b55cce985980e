"""The fast paths of LoRA: in-place banded merges and loads that take the file's tensors over.

Each is checked against the plain computation (PEFT's numbers: ``W + (scaling * B @ A)``,
the delta rounded to the factors' dtype first), bit for bit, in bf16 and fp32, for both
weight layouts, with bands smaller than the weight so the banding itself is exercised.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pretrained.adapters import LoraConfig
from pretrained.adapters.files import read_safetensors_in_memory
from pretrained.adapters.layers import LoraLayer
from pretrained.storage.safetensors import save_safetensors


class Conv1D(nn.Module):
    """GPT-2's layout: weight (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


def _layer(dtype, fan_in_fan_out, out_features=300, in_features=1100):
    torch.manual_seed(0)
    base = Conv1D(out_features, in_features) if fan_in_fan_out else nn.Linear(in_features, out_features)
    base = base.to(dtype)
    layer = LoraLayer(base, fan_in_fan_out=fan_in_fan_out)
    layer.update_layer("a", r=8, lora_alpha=12, lora_dropout=0.0, use_rslora=False, init_lora_weights=False,
                       device=torch.device("cpu"), dtype=dtype)
    layer.active_adapters = ["a"]
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_banded_merge_equals_the_plain_delta_bit_for_bit(dtype, fan_in_fan_out):
    layer = _layer(dtype, fan_in_fan_out)
    weight = layer.base_layer.weight
    original = weight.detach().clone()
    with torch.no_grad():
        expected = original + layer.get_delta_weight("a").to(dtype)
    layer.merge()
    assert torch.equal(weight, expected)
    layer.unmerge()
    with torch.no_grad():
        assert torch.equal(weight, expected - layer.get_delta_weight("a").to(dtype))


def test_banding_over_several_bands():
    layer = _layer(torch.bfloat16, False, out_features=5000, in_features=600)  # bands of 1747 rows: 3 bands
    weight = layer.base_layer.weight
    with torch.no_grad():
        expected = weight + layer.get_delta_weight("a").to(weight.dtype)
    layer.merge()
    assert torch.equal(weight, expected)


def test_loaded_factors_take_over_the_file_tensors_but_a_given_state_dict_is_copied(tmp_path):
    import pretrained

    torch.manual_seed(0)
    config = pretrained.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1)
    model = pretrained.LlamaForCausalLM(config)
    model.add_adapter(LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False), adapter_name="x")
    model.save_pretrained(tmp_path / "ad")
    state = model.get_adapter_state_dict("x")
    model.delete_adapter("x")

    model.load_adapter(tmp_path / "ad", adapter_name="file")
    loaded = read_safetensors_in_memory(str(tmp_path / "ad" / "adapter_model.safetensors"))
    factor = model.model.layers[0].self_attn.q_proj.lora_A["file"].weight
    assert torch.equal(factor, loaded["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    assert isinstance(factor, nn.Parameter) and not factor.requires_grad

    given = {k: v.clone() for k, v in state.items()}
    model.load_adapter(adapter_state_dict=given, peft_config=model.peft_config["file"].to_dict(),
                       adapter_name="given")
    mine = model.model.layers[0].self_attn.q_proj.lora_A["given"].weight
    before = mine.detach().clone()
    for value in given.values():
        value.zero_()  # the caller's tensors are theirs: the model holds copies
    assert torch.equal(mine, before)


def test_read_in_memory_handles_empty_and_misaligned_tensors(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = {"a": torch.arange(3, dtype=torch.uint8), "b": torch.arange(5, dtype=torch.float32),
               "c": torch.empty(0, 4)}
    save_safetensors(tensors, str(path))
    loaded = read_safetensors_in_memory(str(path))
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value) and loaded[key].dtype == value.dtype


def test_forward_without_grad_equals_forward_with_grad():
    layer = _layer(torch.float32, False)
    x = torch.randn(2, 3, 1100)
    with_grad = layer(x)
    with torch.no_grad():
        without = layer(x)
    assert torch.equal(with_grad.detach(), without)
