"""A1: a rank-16 LoRA adapter on every linear layer of the 1.1B Llama (bf16).

Steps (one trial, one process): load the base, write the adapter (random
factors, PEFT's file layout, written with safetensors directly so both
implementations read the same file), then time

* ``adapter_load_s``   loading the adapter onto the already loaded base,
* ``base_fwd_s``       3 forwards at batch 1 (8 tokens) with the adapter disabled,
* ``lora_fwd_s``       3 forwards with the adapter active and unmerged,
* ``merge_s``          ``merge_and_unload()`` (folds ΔW into the weights in place),

and report ``merge_rss_growth_bytes``: how far the process's peak RSS rose
during the merge (a second copy of the model would add ~2.2 GB).
Targets: adapter_load_s <= 0.1 s, lora_fwd_s / base_fwd_s <= 1.15, merge_s <= 1 s.
"""

from __future__ import annotations

from scenarios import LLAMA_1B_BF16, TOKENS, Impl, Scenario, _code

WRITE_ADAPTER = _code(
    """
    import json, os, resource
    import safetensors.torch
    adapter = os.path.join(scratch, "adapter")
    os.makedirs(adapter, exist_ok=True)
    shapes = {"self_attn.q_proj": (2048, 2048), "self_attn.k_proj": (2048, 256), "self_attn.v_proj": (2048, 256),
              "self_attn.o_proj": (2048, 2048), "mlp.gate_proj": (2048, 5632), "mlp.up_proj": (2048, 5632),
              "mlp.down_proj": (5632, 2048)}
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(22):
        for name, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{name}"
            tensors[key + ".lora_A.weight"] = (torch.randn(16, fan_in, generator=g) / fan_in ** 0.5).bfloat16()
            tensors[key + ".lora_B.weight"] = (torch.randn(fan_out, 16, generator=g) * 0.01).bfloat16()
    safetensors.torch.save_file(tensors, os.path.join(adapter, "adapter_model.safetensors"), metadata={"format": "pt"})
    del tensors
    config = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(n.split(".")[-1] for n in shapes), "task_type": "CAUSAL_LM",
              "base_model_name_or_path": path, "fan_in_fan_out": False, "init_lora_weights": True}
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    ids = torch.tensor([TOKENS])
    with torch.inference_mode():
        model(ids)  # warm the kernels once before anything is timed
    """
).replace("TOKENS", repr(TOKENS))


def _forwards(name: str, keep_logits: bool) -> tuple[str, str]:
    body = "        for _ in range(3):\n            logits = model(ids).logits\n"
    tail = "" if keep_logits else "del logits\n"
    return name, "with torch.inference_mode():\n" + body.replace("        ", "    ", 1).replace(
        "\n            ", "\n        ") + tail


def _steps(imports: str, load: str, attach: str, disable: str, enable: str) -> Impl:
    merge = _code(
        """
        import resource
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model = model.merge_and_unload()
        """
    )
    return Impl(steps=(
        ("import_s", imports),
        ("load_s", load),
        ("prep_s", WRITE_ADAPTER),
        ("adapter_load_s", attach),
        ("disable_s", disable),
        _forwards("base_fwd_s", False),
        ("enable_s", enable),
        _forwards("lora_fwd_s", True),
        ("merge_s", merge),
        ("report_s", "bench_metrics = {'merge_rss_growth_bytes': "
                     "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}\n"),
    ))


A1 = Scenario(
    key="A1",
    title="LoRA r=16 on all 154 linear layers of Llama 1.1B bf16: adapter load, forward overhead, merge",
    checkpoint=LLAMA_1B_BF16.key,
    impls={
        "ours": _steps("import torch\nfrom pretrained import AutoModelForCausalLM\n",
                       "model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)\n",
                       "model.load_adapter(os.path.join(scratch, 'adapter'))\n",
                       "model.disable_adapters()\n", "model.enable_adapters()\n"),
        "peft": _steps("import torch\nimport transformers\nimport peft\n",
                       "model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)\n",
                       "model = peft.PeftModel.from_pretrained(model, os.path.join(scratch, 'adapter'), "
                       "autocast_adapter_dtype=False)\n",
                       "model.base_model.disable_adapter_layers()\n", "model.base_model.enable_adapter_layers()\n"),
    },
    atol=2e-2,
    timeout_s=1200,
    notes="base_fwd_s / lora_fwd_s: 3 forwards each, batch 1, 8 tokens; merge_rss_growth: peak-RSS rise in the merge",
    metrics=("load_s", "adapter_load_s", "base_fwd_s", "lora_fwd_s", "merge_s", "merge_rss_growth_bytes"),
)
