"""LoRA adapters against the real PEFT 0.21.2 on tiny GPT-2 (Conv1D), Llama and BERT models.

Every interop test builds the base with Transformers at a fixed seed, saves it,
and loads the same folder here; adapters use ``init_lora_weights=False`` so the
update is not a no-op.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import pretrained  # noqa: E402
from helpers import assert_close, train_losses  # noqa: E402
from pretrained.adapters import LoraConfig  # noqa: E402
from pretrained.errors import CheckpointError, WeightsMismatchError  # noqa: E402

VOCAB = 64

ARCHS = {
    "gpt2": dict(
        hf=lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=1, eos_token_id=1)),
        ours=lambda: pretrained.GPT2LMHeadModel,
        lora=dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    ),
    "llama": dict(
        hf=lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=1, bos_token_id=1, eos_token_id=2)),
        ours=lambda: pretrained.LlamaForCausalLM,
        lora=dict(r=4, lora_alpha=16, target_modules="all-linear", use_rslora=True,
                  rank_pattern={"v_proj": 2}, alpha_pattern={r"layers\.1\.mlp\.down_proj": 3}),
    ),
    "bert": dict(
        hf=lambda: transformers.BertForMaskedLM(transformers.BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, vocab_size=VOCAB,
            max_position_embeddings=32)),
        ours=lambda: pretrained.BertForMaskedLM,
        lora=dict(r=2, lora_alpha=4, target_modules=["query", "value"], bias="lora_only",
                  modules_to_save=["transform.dense"]),
    ),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """``{arch: folder}`` of each tiny base model saved by Transformers."""
    transformers.utils.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("adapter_bases")
    folders = {}
    for arch, spec in ARCHS.items():
        torch.manual_seed(0)
        spec["hf"]().save_pretrained(root / arch)
        folders[arch] = root / arch
    return folders


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


def _hf(arch, folder):
    return getattr(transformers, type(ARCHS[arch]["hf"]()).__name__).from_pretrained(folder).eval()


def _peft_adapter(arch, base, folder, **overrides):
    """An adapter made and saved by ``peft.get_peft_model``; returns the PEFT model."""
    torch.manual_seed(2)
    config = peft.LoraConfig(init_lora_weights=False, **{**ARCHS[arch]["lora"], **overrides})
    model = peft.get_peft_model(_hf(arch, base), config).eval()
    model.save_pretrained(folder)
    return model


def _ours(arch, base, **kwargs):
    return ARCHS[arch]["ours"]().from_pretrained(base, **kwargs)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_peft_adapter_loads_here_with_the_same_outputs(arch, bases, ids, tmp_path):
    reference = _peft_adapter(arch, bases[arch], tmp_path / "adapter")
    model = _ours(arch, bases[arch])
    model.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        assert_close(model(ids).logits, reference(ids).logits, atol=1e-5)
        model.disable_adapters()
        assert_close(model(ids).logits, _hf(arch, bases[arch])(ids).logits, atol=1e-5)
    assert model.active_adapters() == ["default"]
    assert not any(p.requires_grad for p in model.parameters())  # is_trainable=False: frozen


@pytest.mark.parametrize("arch", list(ARCHS))
def test_our_adapter_loads_in_peft_with_the_same_outputs(arch, bases, ids, tmp_path):
    model = _ours(arch, bases[arch])
    torch.manual_seed(3)
    model.add_adapter(LoraConfig(init_lora_weights=False, **ARCHS[arch]["lora"]))
    model.eval()
    model.save_pretrained(tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(
        ["adapter_config.json", "adapter_model.safetensors"] + (["generation_config.json"] if arch != "bert" else []))
    reference = peft.PeftModel.from_pretrained(_hf(arch, bases[arch]), tmp_path / "ours").eval()
    with torch.no_grad():
        assert_close(reference(ids).logits, model(ids).logits, atol=1e-5)
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["base_model_name_or_path"] == str(bases[arch])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_merge_and_unload_equals_peft(arch, bases, ids, tmp_path):
    reference = _peft_adapter(arch, bases[arch], tmp_path / "adapter")
    model = _ours(arch, bases[arch])
    model.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        before = model(ids).logits
    merged = model.merge_and_unload()
    assert merged is model and not model._hf_peft_config_loaded
    expected = reference.merge_and_unload().state_dict()
    ours = merged.state_dict()
    assert sorted(ours) == sorted(k for k in expected if k in ours) and set(ours) <= set(expected)
    for key, value in ours.items():
        assert_close(value, expected[key], atol=1e-6)
    with torch.no_grad():
        assert_close(merged(ids).logits, before, atol=1e-5)


def test_merge_adapter_and_unmerge_restore_the_weights(bases, ids, tmp_path):
    _peft_adapter("llama", bases["llama"], tmp_path / "adapter")
    model = _ours("llama", bases["llama"])
    model.load_adapter(tmp_path / "adapter")
    weight = model.model.layers[0].self_attn.q_proj.base_layer.weight
    original = weight.detach().clone()
    with torch.no_grad():
        active = model(ids).logits
        model.merge_adapter()
        assert not torch.equal(weight, original)
        assert_close(model(ids).logits, active, atol=1e-5)
        model.unmerge_adapter()
        assert_close(weight, original, atol=1e-6)
        assert_close(model(ids).logits, active, atol=1e-5)


def test_peft_file_layout_and_save_peft_format_false(bases, tmp_path):
    from safetensors import safe_open

    model = _ours("gpt2", bases["gpt2"])
    model.add_adapter(LoraConfig(target_modules=["c_attn"]))
    model.save_pretrained(tmp_path / "peft")
    model.save_pretrained(tmp_path / "plain", save_peft_format=False)
    with safe_open(tmp_path / "peft" / "adapter_model.safetensors", "pt") as f:
        keys, metadata = sorted(f.keys()), f.metadata()
    assert metadata == {"format": "pt"}
    assert keys == [f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{ab}.weight" for i in (0, 1) for ab in "AB"]
    with safe_open(tmp_path / "plain" / "adapter_model.safetensors", "pt") as f:
        assert sorted(f.keys()) == [k[len("base_model.model."):] for k in keys]
    assert sorted(model.get_adapter_state_dict()) == [k[len("base_model.model."):] for k in keys]
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True  # set for Conv1D, as PEFT does
    read_back = peft.LoraConfig.from_pretrained(tmp_path / "peft").to_dict()
    read_back.update(peft_type="LORA", target_modules=sorted(read_back["target_modules"]))
    assert config == read_back  # every PEFT field, the values PEFT reads back


def test_adapter_save_keeps_the_model_files_of_the_folder(bases, tmp_path):
    model = _ours("gpt2", bases["gpt2"])
    model.save_pretrained(tmp_path / "both")
    model.add_adapter(LoraConfig(target_modules=["c_fc"]))
    model.save_pretrained(tmp_path / "both")
    assert {"model.safetensors", "config.json", "adapter_config.json"} <= set(os.listdir(tmp_path / "both"))


def test_all_linear_skips_the_output_head_and_wraps_what_peft_wraps(bases, tmp_path):
    reference = _peft_adapter("llama", bases["llama"], tmp_path / "adapter", rank_pattern={}, alpha_pattern={})
    expected = {n.removeprefix("base_model.model.") for n, m in reference.named_modules() if hasattr(m, "lora_A")}
    model = _ours("llama", bases["llama"])
    model.add_adapter(LoraConfig(target_modules="all-linear"))
    got = {n for n, m in model.named_modules() if isinstance(m, pretrained.adapters.LoraLayer)}
    assert got == expected == set(model.peft_config["default"].target_modules)
    assert "lm_head" not in got and len(got) == 3 * 7


def test_layers_to_transform_matches_peft(bases):
    kwargs = dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[0, 2], layers_pattern="layers")
    reference = peft.get_peft_model(_hf("llama", bases["llama"]), peft.LoraConfig(**kwargs))
    expected = {n.removeprefix("base_model.model.") for n, m in reference.named_modules()
                if type(m).__name__ == "Linear" and hasattr(m, "lora_A")}
    model = _ours("llama", bases["llama"])
    model.add_adapter(LoraConfig(**kwargs))
    got = {n for n, m in model.named_modules() if isinstance(m, pretrained.adapters.LoraLayer)}
    assert got == expected and len(got) == 4


def test_from_pretrained_adapter_folder_loads_the_base_then_the_adapter(bases, ids, tmp_path):
    reference = _peft_adapter("llama", bases["llama"], tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(bases["llama"])
    config_path.write_text(json.dumps(config))
    model = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")
    assert model.active_adapters() == ["default"]
    with torch.no_grad():
        expected = reference(ids).logits
        assert_close(model(ids).logits, expected, atol=1e-5)
        half = pretrained.LlamaForCausalLM.from_pretrained(tmp_path / "adapter", torch_dtype=torch.bfloat16,
                                                           device_map={"": "cpu"})
        assert half.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.bfloat16
        assert_close(half(ids).logits.float(), expected, atol=0.1)
        offloaded = pretrained.LlamaForCausalLM.from_pretrained(
            tmp_path / "adapter", device_map={"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu",
                                              "lm_head": "cpu", "model.rotary_emb": "cpu"},
            offload_folder=tmp_path / "offload")
        assert_close(offloaded(ids).logits, expected, atol=1e-5)


def test_add_adapter_trains_only_the_adapter_and_lowers_the_loss(bases, ids):
    model = _ours("bert", bases["bert"])
    model.add_adapter(LoraConfig(target_modules=["query", "value"], modules_to_save=["transform.dense"],
                                 bias="lora_only"))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_" in n or ".modules_to_save.default." in n or n.endswith("base_layer.bias")
                             for n in trainable)
    assert any(".modules_to_save." in n for n in trainable) and any("base_layer.bias" in n for n in trainable)
    model.train()
    losses = train_losses(model, ids)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_with_an_adapter_gives_the_same_grads(bases, ids, reentrant):
    grads = []
    for checkpointing in (False, True):
        model = _ours("llama", bases["llama"])
        torch.manual_seed(4)
        model.add_adapter(LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], atol=1e-6)


def test_several_adapters_set_disable_enable_delete(bases, ids, tmp_path):
    base_model = _ours("llama", bases["llama"])
    with torch.no_grad():
        base = base_model(ids).logits
    model = _ours("llama", bases["llama"])
    torch.manual_seed(5)
    model.add_adapter(LoraConfig(target_modules=["q_proj"], init_lora_weights=False), adapter_name="a")
    model.add_adapter(LoraConfig(target_modules=["q_proj", "o_proj"], init_lora_weights=False), adapter_name="b")
    model.eval()
    assert model.active_adapters() == ["b"]
    with torch.no_grad():
        only_b = model(ids).logits
        model.set_adapter(["a", "b"])
        both = model(ids).logits
        with pytest.raises(ValueError, match="Multiple active adapters"):
            model.save_pretrained(tmp_path / "x")
        model.set_adapter("a")
        only_a = model(ids).logits
        model.disable_adapters()
        assert_close(model(ids).logits, base, atol=1e-6)
        model.enable_adapters()
        assert_close(model(ids).logits, only_a, atol=1e-6)
        model.delete_adapter("a")
        assert model.active_adapters() == ["b"] and list(model.peft_config) == ["b"]
        assert_close(model(ids).logits, only_b, atol=1e-6)
        model.delete_adapter("b")
        assert_close(model(ids).logits, base, atol=1e-6)
    assert not (only_a - both).abs().max() < 1e-4 and not (only_b - both).abs().max() < 1e-4
    assert [n for n, _ in model.named_modules()] == [n for n, _ in base_model.named_modules()]
    with pytest.raises(ValueError, match="No adapter loaded"):
        model.active_adapters()


def test_adapter_state_dict_argument_loads_without_files(bases, ids, tmp_path):
    reference = _peft_adapter("gpt2", bases["gpt2"], tmp_path / "adapter")
    tensors = peft.get_peft_model_state_dict(reference)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    model = _ours("gpt2", bases["gpt2"])
    model.load_adapter(adapter_state_dict=tensors, peft_config=config, adapter_name="x", is_trainable=True)
    assert model.active_adapters() == ["x"] and any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert_close(model(ids).logits, reference(ids).logits, atol=1e-5)


# ---------------------------------------------------------------------------- bad input


def _snapshot(model):
    return [(n, type(m).__name__) for n, m in model.named_modules()], \
        {k: v.clone() for k, v in model.state_dict().items()}, [p.requires_grad for p in model.parameters()]


def _assert_untouched(model, snapshot):
    modules, state, grads = _snapshot(model)
    assert modules == snapshot[0] and grads == snapshot[2] and state.keys() == snapshot[1].keys()
    assert all(torch.equal(state[k], snapshot[1][k]) for k in state)
    assert "peft_config" not in model.__dict__ and not model._hf_peft_config_loaded


def _edit_adapter(folder, *, config=None, rename=None):
    from safetensors.torch import load_file, save_file

    if config is not None:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if rename is not None:
        tensors = load_file(folder / "adapter_model.safetensors")
        tensors = {rename(k): v for k, v in tensors.items()}
        save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("problem", ["unknown_key", "rank", "peft_type", "dora", "missing_key"])
def test_bad_adapters_are_clear_errors_and_leave_the_model_as_it_was(problem, bases, tmp_path):
    _peft_adapter("llama", bases["llama"], tmp_path / "a", rank_pattern={}, alpha_pattern={})
    folder = tmp_path / "a"
    if problem == "unknown_key":
        _edit_adapter(folder, rename=lambda k: k.replace("layers.2.mlp.up_proj", "layers.2.mlp.upp_proj"))
        error, match = CheckpointError, r"'base_model\.model\.model\.layers\.2\.mlp\.upp_proj\.lora_A\.weight'"
    elif problem == "rank":
        _edit_adapter(folder, config={"r": 8})
        error, match = WeightsMismatchError, r"adapter_model\.safetensors.*has shape \(4, \d+\) but the model expects \(8, \d+\)"
    elif problem == "peft_type":
        _edit_adapter(folder, config={"peft_type": "IA3"})
        error, match = CheckpointError, r"adapter_config\.json has peft_type='IA3'"
    elif problem == "dora":
        _edit_adapter(folder, config={"use_dora": True})
        error, match = CheckpointError, r"use_dora=True is not supported"
    else:
        _edit_adapter(folder, rename=lambda k: k if "layers.1" not in k else "base_model.model.lm_head.weight")
        error, match = (CheckpointError, WeightsMismatchError), r"adapter_model\.safetensors"
    model = _ours("llama", bases["llama"])
    snapshot = _snapshot(model)
    with pytest.raises(error, match=match):
        model.load_adapter(folder)
    _assert_untouched(model, snapshot)


def test_bad_configs_are_refused_by_name(bases):
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        LoraConfig(target_modules=["q_proj"], use_dora=True)
    with pytest.raises(ValueError, match="init_lora_weights='pissa'"):
        LoraConfig(target_modules=["q_proj"], init_lora_weights="pissa")
    with pytest.raises(ValueError, match="bias must be"):
        LoraConfig(bias="some")
    assert LoraConfig(use_dora=False, lora_bias=False).to_dict()["use_dora"] is False
    model = _ours("llama", bases["llama"])
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=r"Target modules \['nope'\] not found"):
        model.add_adapter(LoraConfig(target_modules=["nope"]))
    with pytest.raises(ValueError, match=r"Target module model\.norm \(.*RMSNorm\) is not supported"):
        model.add_adapter(LoraConfig(target_modules=["q_proj", "norm"]))
    _assert_untouched(model, snapshot)
    model.add_adapter(LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter(LoraConfig(target_modules=["q_proj"]))
