"""The benchmark registry: checkpoints to build, and scenarios that time them.

Adding a scenario means adding entries here, nothing else:

* a ``Checkpoint`` in ``CHECKPOINTS`` if it needs new weights: ``build`` is
  Python source run once in a subprocess with ``path`` (an empty folder) and
  ``torch`` defined; it must write the checkpoint with Transformers at a fixed
  seed;
* a ``Scenario`` in ``SCENARIOS`` whose ``impls`` map an implementation name
  (``"ours"``, ``"transformers"``, ``"floor"``) to its timed steps. Each step is
  ``(metric, code)``; the code runs in the child with ``path`` (the checkpoint
  folder) and ``scratch`` (an empty folder, removed after the trial) defined.
  A step that sets ``logits`` gets them compared across implementations.

``G1``-``G4`` (decode, prefill, batched decode, padded BERT) live in
``decode_scenarios.py``.

``S4``/``S4b`` time disk offload (``device_map="auto"``, a CPU budget,
``offload_folder=scratch``) on GPT-2-medium, in fp32 and converted to bf16.

``S2``/``S3`` load the Llama 1.1B bf16 checkpoint (5 shards) as bf16 / fp32;
``S2Q`` is S2 on a Qwen2-0.5B-shaped bf16 checkpoint (shards, tied embeddings);
``S5`` times ``save_pretrained(max_shard_size="500MB")`` against safetensors
writing the same shards directly.

``C1``-``C3`` need a CUDA device (they are not in the default set): loads
straight to the GPU, and a GPU + CPU + disk map. They report the peak GPU
memory that ``torch.cuda.max_memory_allocated`` saw.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

# "The quick brown fox jumps over the lazy" in GPT-2's vocabulary: 8 tokens.
TOKENS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931]


def _code(source: str) -> str:
    return textwrap.dedent(source).strip() + "\n"


@dataclass(frozen=True)
class Checkpoint:
    """Weights written once into ``benchmarks/.cache/<key>/`` and reused."""

    key: str
    description: str
    build: str


@dataclass(frozen=True)
class Impl:
    """One implementation of a scenario: ordered ``(metric, code)`` steps."""

    steps: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scenario:
    """A measured task: the same work done by each implementation."""

    key: str
    title: str
    checkpoint: str | None
    impls: dict[str, Impl]
    atol: float = 1e-4  # largest logits difference allowed between implementations
    timeout_s: float = 900
    notes: str = ""
    metrics: tuple[str, ...] = field(default=("wall_s", "import_s", "load_s", "forward_s"))


# --- checkpoints ------------------------------------------------------------

GPT2_MEDIUM_FP32 = Checkpoint(
    key="gpt2-medium-fp32",
    description="GPT2LMHeadModel, n_embd=1024, n_layer=24, n_head=16 (~355M params), fp32, one model.safetensors",
    build=_code(
        """
        from transformers import GPT2Config, GPT2LMHeadModel
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16))
        model.save_pretrained(path, max_shard_size="20GB")
        """
    ),
)

LLAMA_1B_BF16 = Checkpoint(
    key="llama-1.1b-bf16-5shards",
    description="LlamaForCausalLM with TinyLlama shapes (hidden 2048, intermediate 5632, 22 layers, 32 heads, "
    "4 kv heads, vocab 32000; ~1.1B params), bf16, 5 safetensors shards",
    build=_code(
        """
        import glob
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(path, max_shard_size="500MB")
        shards = glob.glob(path + "/model-*-of-*.safetensors")
        assert len(shards) == 5, shards
        """
    ),
)

QWEN2_05B_BF16 = Checkpoint(
    key="qwen2-0.5b-bf16-shards",
    description="Qwen2ForCausalLM with Qwen2-0.5B shapes (hidden 896, intermediate 4864, 24 layers, 14 heads, "
    "2 kv heads, vocab 151936, q/k/v bias, tied embeddings; ~494M params), bf16, 500MB safetensors shards",
    build=_code(
        """
        import glob
        from transformers import Qwen2Config, Qwen2ForCausalLM
        torch.manual_seed(0)
        config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                             rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(path, max_shard_size="500MB")
        shards = glob.glob(path + "/model-*-of-*.safetensors")
        assert len(shards) >= 2, shards
        """
    ),
)

CHECKPOINTS = {c.key: c for c in [GPT2_MEDIUM_FP32, LLAMA_1B_BF16, QWEN2_05B_BF16]}


# --- shared steps -----------------------------------------------------------

FORWARD = (
    "forward_s",
    _code(
        f"""
        with torch.inference_mode():
            logits = model(torch.tensor([{TOKENS}])).logits
        """
    ),
)


def floor_load(config_class: str, model_class: str, tie: str | None, dtype: str | None = None) -> str:
    """Plain-PyTorch loading: Transformers' class built on meta, then assign the tensors
    of every ``model*.safetensors`` file (cast to ``dtype`` one file at a time, if given).

    Args:
        config_class, model_class: names importable from ``transformers``.
        tie: a statement run after the weights are in (tying the output embedding,
            rebuilding non-persistent buffers left on meta), or None.
        dtype: a ``torch`` dtype name, or None to keep the stored one.
    """
    cast = f".to(torch.{dtype})" if dtype else ""
    return _code(
        f"""
        import glob
        config = transformers.{config_class}.from_pretrained(path)
        with torch.device("meta"):
            model = transformers.{model_class}(config)
        for file in sorted(glob.glob(path + "/model*.safetensors")):
            state_dict = {{k: v{cast} for k, v in safetensors.torch.load_file(file).items()}}
            model.load_state_dict(state_dict, strict=False, assign=True)
            del state_dict
        {tie or ""}
        model.eval()
        left_on_meta = [n for n, t in model.state_dict().items() if t.is_meta]
        assert not left_on_meta, left_on_meta
        """
    )


# --- scenarios --------------------------------------------------------------

S1 = Scenario(
    key="S1",
    title="GPT-2-medium fp32 -> fp32 (load + first logits)",
    checkpoint=GPT2_MEDIUM_FP32.key,
    impls={
        "ours": Impl(
            steps=(
                ("import_s", "import torch\nfrom pretrained import AutoModelForCausalLM\n"),
                ("load_s", "model = AutoModelForCausalLM.from_pretrained(path)\n"),
                FORWARD,
            )
        ),
        "transformers": Impl(
            steps=(
                ("import_s", "import torch\nimport transformers\n"),
                ("load_s", "model = transformers.AutoModelForCausalLM.from_pretrained(path)\n"),
                FORWARD,
            )
        ),
        "floor": Impl(
            steps=(
                ("import_s", "import torch\nimport safetensors.torch\nimport transformers\n"),
                ("load_s", floor_load("GPT2Config", "GPT2LMHeadModel", "model.lm_head.weight = model.transformer.wte.weight")),
                FORWARD,
            )
        ),
    },
)

S6 = Scenario(
    key="S6",
    title="import times",
    checkpoint=None,
    impls={
        "ours": Impl(steps=(("import_s", "import pretrained\n"),)),
        "transformers": Impl(steps=(("import_s", "import transformers\nfrom transformers import GPT2LMHeadModel\n"),)),
        "floor": Impl(steps=(("import_s", "import torch\n"),)),
        "ours_model": Impl(steps=(("import_s", "from pretrained import GPT2LMHeadModel\n"),)),
    },
    metrics=("wall_s", "import_s"),
    notes="floor = `import torch` alone; ours = `import pretrained` (lazy: torch is not imported yet); "
    "ours_model = `from pretrained import GPT2LMHeadModel` (torch + the model module); "
    "transformers = `import transformers; from transformers import GPT2LMHeadModel`",
)

def offload_load(api: str, budget: str, dtype: str | None = None) -> str:
    """``from_pretrained`` under ``device_map="auto"`` with a CPU budget and ``scratch`` as
    the offload folder; asserts that part of the model really is on disk."""
    dtype_arg = f", torch_dtype=torch.{dtype}" if dtype else ""
    return _code(
        f"""
        model = {api}.from_pretrained(path, device_map="auto", max_memory={{"cpu": "{budget}"}},
                                      offload_folder=scratch{dtype_arg})
        assert "disk" in set(model.hf_device_map.values()), model.hf_device_map
        """
    )


def offload_scenario(key: str, title: str, budget: str, dtype: str | None, atol: float, notes: str,
                     checkpoint: str = GPT2_MEDIUM_FP32.key) -> Scenario:
    return Scenario(
        key=key,
        title=title,
        checkpoint=checkpoint,
        impls={
            "ours": Impl(steps=(
                ("import_s", "import torch\nfrom pretrained import AutoModelForCausalLM\n"),
                ("load_s", offload_load("AutoModelForCausalLM", budget, dtype)),
                FORWARD,
            )),
            "transformers": Impl(steps=(
                ("import_s", "import torch\nimport transformers\n"),
                ("load_s", offload_load("transformers.AutoModelForCausalLM", budget, dtype)),
                FORWARD,
            )),
        },
        atol=atol,
        notes=notes,
    )


S4 = offload_scenario(
    "S4", 'GPT-2-medium fp32, device_map="auto", max_memory={"cpu": "1GiB"}: the rest on disk (load + first logits)',
    "1GiB", None, 1e-4,
    "disk weights are read from the checkpoint in place (same dtype): nothing is written to offload_folder; "
    "the forward brings every disk module in once",
)

S4b = offload_scenario(
    "S4b", 'GPT-2-medium fp32 -> bf16, device_map="auto", max_memory={"cpu": "300MB"}: converted weights on disk',
    "300MB", "bfloat16", 2e-2,
    "ours converts each disk weight once into offload_folder (one safetensors file per tensor) and reads it "
    "back per forward; Transformers 5.x converts at each read. bf16 logits: atol 2e-2",
)

S4L = offload_scenario(
    "S4L", 'Llama 1.1B bf16, device_map="auto", max_memory={"cpu": "1GiB"}: the rest on disk (load + first logits)',
    "1GiB", "bfloat16", 2e-2,
    "bf16 -> bf16: disk weights are read from the checkpoint's own shards in place",
    checkpoint=LLAMA_1B_BF16.key,
)


ROTARY = "model.model.rotary_emb = type(model.model.rotary_emb)(config=config)"


def llama_load_scenario(key: str, title: str, dtype: str, atol: float, extra: dict | None = None,
                        notes: str = "", checkpoint: str = LLAMA_1B_BF16.key,
                        floor: tuple[str, str, str] = ("LlamaConfig", "LlamaForCausalLM", ROTARY)) -> Scenario:
    """A decoder checkpoint (default: the 1.1B Llama bf16) loaded as ``dtype`` (load + first logits);
    ``floor`` = (config class, model class, the statement that fixes what the meta build left)."""
    return Scenario(
        key=key,
        title=title,
        checkpoint=checkpoint,
        impls={
            "ours": Impl(steps=(
                ("import_s", "import torch\nfrom pretrained import AutoModelForCausalLM\n"),
                ("load_s", f"model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.{dtype})\n"),
                FORWARD,
            )),
            "transformers": Impl(steps=(
                ("import_s", "import torch\nimport transformers\n"),
                ("load_s", f"model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.{dtype})\n"),
                FORWARD,
            )),
            "floor": Impl(steps=(
                ("import_s", "import torch\nimport safetensors.torch\nimport transformers\n"),
                ("load_s", floor_load(*floor, dtype)),
                FORWARD,
            )),
            **(extra or {}),
        },
        atol=atol,
        notes=notes,
    )


S2 = llama_load_scenario("S2", "Llama 1.1B bf16 (5 shards) -> bf16 (load + first logits)", "bfloat16", 2e-2)
S2Q = llama_load_scenario(
    "S2Q", "Qwen2 0.5B bf16 (shards, tied embeddings) -> bf16 (load + first logits)", "bfloat16", 2e-2,
    checkpoint=QWEN2_05B_BF16.key,
    floor=("Qwen2Config", "Qwen2ForCausalLM", ROTARY + "; model.lm_head.weight = model.model.embed_tokens.weight"),
    notes="S2 on a second family: Qwen2-0.5B shapes (q/k/v bias, 151936-token vocabulary tied to the output); "
    "bf16 logits: atol 2e-2",
)
# The physical floor of S3's load on this machine: every byte of the fp32 model is a fresh page
# that the kernel must fault in and zero; touching them (no reading, no converting) is the least
# any loader must spend.
TOUCH = Impl(steps=(
    ("import_s", "import torch\n"),
    ("load_s", "weights = torch.empty(1_100_048_384, dtype=torch.float32).fill_(1.0)\n"),
))
S3 = llama_load_scenario("S3", "Llama 1.1B bf16 (5 shards) -> float32 (load + first logits)", "float32", 1e-4,
                         extra={"touch": TOUCH},
                         notes="touch = allocate and fill the fp32 model's 4.4 GB and nothing else: the "
                         "page-fault floor of any load (its RSS: import torch + the bytes, no model)")


# --- saving -----------------------------------------------------------------

SAVE_SHARD = "500MB"
SAVE_CHECK = _code(
    """
    import glob, json, os
    files = sorted(glob.glob(scratch + "/out/*.safetensors"))
    assert len(files) >= 3, files
    saved_bytes = sum(os.path.getsize(f) for f in files)
    """
)
# The same tensors, the same shards, written with safetensors directly (no index, no atomicity):
# the tied output embedding is left out, as every implementation stores it once.
SAFETENSORS_DIRECT = _code(
    f"""
    import safetensors.torch
    from pretrained.storage.shards import plan_shards
    state_dict = {{k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}}
    os.makedirs(scratch + "/out")
    plan = plan_shards([(k, v.numel() * v.element_size()) for k, v in state_dict.items()], "{SAVE_SHARD}")
    for file, names in zip(plan.files, plan.shards):
        safetensors.torch.save_file({{k: state_dict[k] for k in names}}, scratch + "/out/" + file,
                                    metadata={{"format": "pt"}})
    """
)

OURS_IMPORT = "import os\nimport torch\nfrom pretrained import AutoModelForCausalLM\n"
OURS_LOAD = "model = AutoModelForCausalLM.from_pretrained(path)\n"


def save_impl(imports: str, load: str, save: str) -> Impl:
    """Load GPT-2-medium (``load_s``), save it into ``scratch/out`` (``save_s``), check the shards."""
    return Impl(steps=(("import_s", imports), ("load_s", load), ("save_s", save), ("check_s", SAVE_CHECK)))


S5 = Scenario(
    key="S5",
    title=f'GPT-2-medium fp32 save_pretrained(max_shard_size="{SAVE_SHARD}")',
    checkpoint=GPT2_MEDIUM_FP32.key,
    impls={
        "ours": save_impl(OURS_IMPORT, OURS_LOAD,
                          f'model.save_pretrained(scratch + "/out", max_shard_size="{SAVE_SHARD}")\n'),
        "transformers": save_impl("import os\nimport torch\nimport transformers\n",
                                  "model = transformers.AutoModelForCausalLM.from_pretrained(path)\n",
                                  f'model.save_pretrained(scratch + "/out", max_shard_size="{SAVE_SHARD}")\n'),
        "floor": save_impl(OURS_IMPORT, OURS_LOAD, SAFETENSORS_DIRECT),
        "ours_durable": save_impl(OURS_IMPORT, OURS_LOAD,
                                  f'model.save_pretrained(scratch + "/out", max_shard_size="{SAVE_SHARD}", '
                                  'durable=True)\n'),
    },
    metrics=("save_s", "load_s", "wall_s"),
    notes="floor = the same tensors in the same shards written by safetensors.torch.save_file (no index, "
    "not atomic); ours writes into a sibling folder and swaps it in (atomic); ours_durable also fsyncs "
    "every file and folder first (durable=True); nobody else fsyncs",
)


# --- CUDA (run on a machine with a GPU) -------------------------------------

GPU_FORWARD = (
    "forward_s",
    _code(
        f"""
        with torch.inference_mode():
            logits = model(torch.tensor([{TOKENS}], device="cuda:0")).logits.float().cpu()
        torch.cuda.synchronize()
        """
    ),
)


def gpu_scenario(key: str, title: str, dtype: str, placement: str, atol: float, notes: str = "") -> Scenario:
    """The 1.1B Llama bf16 checkpoint loaded straight to the GPU (``placement`` = from_pretrained kwargs)."""
    impls = {}
    for name, api, dtype_kw in (("ours", "AutoModelForCausalLM", "torch_dtype"),
                                ("transformers", "transformers.AutoModelForCausalLM", "dtype")):
        imports = ("import torch\nfrom pretrained import AutoModelForCausalLM\n" if name == "ours"
                   else "import torch\nimport transformers\n")
        impls[name] = Impl(steps=(
            ("import_s", imports + "torch.cuda.init()\n"),
            ("load_s", f"model = {api}.from_pretrained(path, {dtype_kw}=torch.{dtype}, {placement})\n"
                       "torch.cuda.synchronize()\n"),
            GPU_FORWARD,
        ))
    return Scenario(key=key, title=title, checkpoint=LLAMA_1B_BF16.key, impls=impls, atol=atol, notes=notes,
                    metrics=("wall_s", "import_s", "load_s", "forward_s", "peak_gpu_bytes"))


C1 = gpu_scenario("C1", 'Llama 1.1B bf16 -> bf16 straight to the GPU (device_map="cuda")', "bfloat16",
                  'device_map="cuda"', 2e-2)
C2 = gpu_scenario("C2", 'Llama 1.1B bf16 -> float32 straight to the GPU (device_map="cuda")', "float32",
                  'device_map="cuda"', 1e-3, "fp32 logits computed on the GPU (TF32 off by default): atol 1e-3")
C3 = gpu_scenario("C3", 'Llama 1.1B bf16, device_map="auto", max_memory={0: "1GiB", "cpu": "1GiB"}: GPU + CPU + disk',
                  "bfloat16", 'device_map="auto", max_memory={0: "1GiB", "cpu": "1GiB"}, offload_folder=scratch',
                  2e-2)

# --- quantized weights (issue 16) -----------------------------------------------

DECODE_TOKENS = 64
DECODE_PROMPT = "prompt = torch.randint(3, 32000, (1, 8), generator=torch.Generator().manual_seed(0))\n"


def decode_steps(imports: str, load: str, generate: str) -> tuple[tuple[str, str], ...]:
    """Load, warm up (2 tokens), then time a greedy decode of ``DECODE_TOKENS`` tokens at batch 1.

    ``generate`` is an expression of ``model`` and ``prompt`` ending in ``max_new_tokens=``.
    """
    return (
        ("import_s", "import resource, time\nimport torch\n" + imports),
        ("load_s", load + "\nrss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"),
        ("warmup_s", DECODE_PROMPT + generate + "max_new_tokens=2)\n"),
        ("decode_s", f"t = time.perf_counter()\nnew = {generate}max_new_tokens={DECODE_TOKENS})[:, 8:]\n"
                     f"elapsed = time.perf_counter() - t\nassert new.shape == (1, {DECODE_TOKENS}), new.shape\n"
                     f"extra_metrics = {{'tokens_per_s': {DECODE_TOKENS} / elapsed, 'load_rss_bytes': rss_load, "
                     "'footprint_bytes': model.get_memory_footprint()}\n"
                     "logits = new[:, -4:].float()[None]\n"),
    )


OURS_IMPORT = "from pretrained import AutoModelForCausalLM, BitsAndBytesConfig, Int4Config\n"
OURS_GENERATE = "model.generate(prompt, do_sample=False, eos_token_id=[], "
THEIRS_IMPORT = ("import transformers\ntransformers.utils.logging.set_verbosity_error()\n"
                 "from transformers import AutoModelForCausalLM, QuantoConfig\n")
THEIRS_GENERATE = "model.generate(prompt, do_sample=False, eos_token_id=None, pad_token_id=0, "
Q1 = Scenario(
    key="Q1",
    title=f"Llama 1.1B bf16 checkpoint: greedy decode of {DECODE_TOKENS} tokens at batch 1, bf16 vs quantized",
    checkpoint=LLAMA_1B_BF16.key,
    impls={
        "ours": Impl(steps=decode_steps(OURS_IMPORT, "model = AutoModelForCausalLM.from_pretrained(path, "
                                        "dtype=torch.bfloat16)", OURS_GENERATE)),
        "ours_int8": Impl(steps=decode_steps(OURS_IMPORT, "model = AutoModelForCausalLM.from_pretrained(path, "
                                             "dtype=torch.bfloat16, load_in_8bit=True)", OURS_GENERATE)),
        "ours_int8_all": Impl(steps=decode_steps(OURS_IMPORT, "model = AutoModelForCausalLM.from_pretrained(path, "
                                                 "dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig("
                                                 "load_in_8bit=True, llm_int8_skip_modules=[]))", OURS_GENERATE)),
        "ours_int4": Impl(steps=decode_steps(OURS_IMPORT, "model = AutoModelForCausalLM.from_pretrained(path, "
                                             "dtype=torch.bfloat16, quantization_config=Int4Config())",
                                             OURS_GENERATE)),
        "ours_int4_all": Impl(steps=decode_steps(OURS_IMPORT, "model = AutoModelForCausalLM.from_pretrained(path, "
                                                 "dtype=torch.bfloat16, quantization_config=Int4Config("
                                                 "modules_to_not_convert=[]))", OURS_GENERATE)),
        "transformers_quanto_int8": Impl(steps=decode_steps(
            THEIRS_IMPORT, "model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, "
            "quantization_config=QuantoConfig(weights='int8'))", THEIRS_GENERATE)),
    },
    atol=1e9,  # token ids of different quantizations need not agree: quality is benchmarks/quant_quality.py's
    timeout_s=1800,
    metrics=("load_s", "tokens_per_s", "load_rss_bytes", "footprint_bytes"),
    notes=f"tokens/s = {DECODE_TOKENS} / decode time (8-token prompt, after a 2-token warm-up); load_rss = peak RSS "
    "right after the (quantize-on-)load; footprint = get_memory_footprint(); *_all also quantize the LM head",
)

from adapter_scenarios import A1  # noqa: E402  (it imports the names above)
from decode_scenarios import BERT_BASE, G1, G1G, G2, G3, G4  # noqa: E402

CHECKPOINTS[BERT_BASE.key] = BERT_BASE

SCENARIOS = {s.key: s for s in [S1, S2, S2Q, S3, S4, S4b, S4L, S5, S6, G1, G1G, G2, G3, G4, A1, C1, C2, C3, Q1]}
DEFAULT_SCENARIOS = [key for key in SCENARIOS if not key.startswith(("C", "Q"))]  # C*: CUDA only; Q*: slow
