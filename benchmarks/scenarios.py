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

Planned (not here yet): S2/S3 Llama 1.1B bf16 in 5 shards -> bf16 / -> fp32;
S4 disk offload (``device_map="auto"``, ``max_memory={"cpu": "1GiB"}``,
``offload_folder=scratch``); S5 ``save_pretrained(scratch, max_shard_size="500MB")``.
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

CHECKPOINTS = {c.key: c for c in [GPT2_MEDIUM_FP32]}


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


def floor_load(config_class: str, model_class: str, tie: str | None) -> str:
    """Plain-PyTorch loading: Transformers' class built on meta, then assign the tensors.

    Args:
        config_class, model_class: names importable from ``transformers``.
        tie: a statement that ties the output embedding, or None.
    """
    return _code(
        f"""
        config = transformers.{config_class}.from_pretrained(path)
        with torch.device("meta"):
            model = transformers.{model_class}(config)
        state_dict = safetensors.torch.load_file(path + "/model.safetensors")
        model.load_state_dict(state_dict, strict=False, assign=True)
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
    },
    metrics=("wall_s", "import_s"),
    notes="floor = `import torch` alone; ours = `import pretrained`; "
    "transformers = `import transformers; from transformers import GPT2LMHeadModel`",
)

SCENARIOS = {s.key: s for s in [S1, S6]}
