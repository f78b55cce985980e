"""Small helpers shared by the test modules.

Import them as ``from helpers import assert_close`` (``tests/`` is put on
``sys.path`` by ``conftest.py``). Nothing here imports ``pretrained`` or
Transformers, so a broken package cannot break the helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

__all__ = [
    "assert_close",
    "make_input_ids",
    "make_padding_mask",
    "ref437_dir",
    "run_python",
    "run_ref437",
    "tensor_bytes_equal",
    "write_sharded_bin",
]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 1e-4) -> None:
    """Assert two tensors have the same shape and differ by at most ``atol`` anywhere.

    Unlike ``torch.testing.assert_close`` there is no relative tolerance and no
    dtype check: both sides are compared in float64, and the message names the
    largest absolute difference and where it is.

    Args:
        actual: the tensor under test (e.g. our logits).
        expected: the reference tensor (e.g. Transformers' logits).
        atol: the largest absolute difference allowed.

    Raises:
        AssertionError: shapes differ, a side has NaN where the other does not,
            or the max abs difference exceeds ``atol``.
    """
    a = torch.as_tensor(actual).detach().cpu().to(torch.float64)
    b = torch.as_tensor(expected).detach().cpu().to(torch.float64)
    assert a.shape == b.shape, f"shape mismatch: {tuple(a.shape)} != {tuple(b.shape)}"
    if a.numel() == 0:
        return
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), "NaN positions differ"
    diff = (a - b).abs().masked_fill(nan_a, 0.0)
    worst = float(diff.max())
    if worst > atol:
        index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"max abs diff {worst:.3e} > atol {atol:.1e} at index {index} "
            f"(actual {float(a[index]):.6g}, expected {float(b[index]):.6g})"
        )


def tensor_bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if ``a`` and ``b`` have the same dtype, shape and exact bytes.

    Stricter than ``torch.equal``: ``-0.0`` differs from ``0.0``, NaN payloads
    count, and a dtype change is never equal.
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    raw_a = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    raw_b = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(raw_a, raw_b)


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``code`` with this interpreter in a fresh subprocess.

    Use it for things a test process cannot check on itself: import side
    effects, peak memory, a clean ``sys.modules``.

    Args:
        code: Python source; common indentation is removed, so a triple-quoted
            block indented with the test reads fine.
        env: variables added to (or overriding) the current environment, which
            already holds the offline settings from ``conftest.py``.
        timeout: seconds before ``subprocess.TimeoutExpired`` is raised.

    Returns:
        The ``CompletedProcess`` with ``returncode``, ``stdout``, ``stderr`` (text).
        It does not raise on a non-zero exit: assert on ``returncode`` yourself.

    Example:
        >>> proc = run_python("import sys; print(sys.version_info[0])")
        >>> proc.stdout.strip()
        '3'
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


REF437_VERSION = "4.37.2"
REF437_INSTALL = (
    "pip install --target {dir} --no-deps transformers==4.37.2 tokenizers==0.15.2 huggingface_hub==0.20.3 "
    "requests urllib3 idna charset-normalizer certifi"
)


def ref437_dir() -> Path:
    """The side folder holding Transformers 4.37.2 (``pip install --target``).

    ``$PRETRAINED_REF437`` when set, else ``<repo>/.venv/ref437``.
    """
    default = Path(__file__).resolve().parent.parent / ".venv" / "ref437"
    return Path(os.environ.get("PRETRAINED_REF437") or default)


def run_ref437(code: str, out_dir: str | os.PathLike, *, side_dir: str | os.PathLike, timeout: float = 300) -> Path:
    """Run ``code`` under Transformers 4.37.2 (from ``side_dir``) in a subprocess.

    The code sees ``OUT`` (a ``pathlib.Path``, created) and writes its results
    there (``save_pretrained``, ``torch.save``, JSON); ``transformers`` is
    already imported and checked to be 4.37.2. The rest of the environment
    (torch, numpy, safetensors...) is this interpreter's.

    Returns:
        ``Path(out_dir)``.

    Raises:
        AssertionError: the code failed (stdout/stderr are in the message).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prelude = (
        "import pathlib, transformers\n"
        f"assert transformers.__version__ == {REF437_VERSION!r}, transformers.__file__\n"
        "transformers.utils.logging.set_verbosity_error()\n"
        f"OUT = pathlib.Path({str(out)!r})\n"
    )
    path = [str(side_dir)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    proc = run_python(prelude + textwrap.dedent(code), env={"PYTHONPATH": os.pathsep.join(path)}, timeout=timeout)
    assert proc.returncode == 0, f"Transformers 4.37.2 script failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return out


def make_input_ids(*, batch: int = 2, seq: int = 7, vocab_size: int = 99, seed: int = 0) -> torch.Tensor:
    """A fixed random batch of token ids, shape (batch, seq), dtype int64.

    Uses its own generator, so the global RNG is left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=generator)


def make_padding_mask(*, batch: int = 2, seq: int = 7, side: str = "right", pad: tuple[int, ...] = (0, 3)) -> torch.Tensor:
    """An attention mask, shape (batch, seq), int64, with ``pad[i]`` padded positions in row ``i``.

    Args:
        side: ``"left"`` (padding first, as for batched generation) or
            ``"right"`` (padding last, as for encoders).
        pad: how many positions of each row are padding; each < ``seq``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if len(pad) != batch or not all(0 <= p < seq for p in pad):
        raise ValueError(f"pad must hold {batch} counts in [0, {seq}), got {pad!r}")
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, count in enumerate(pad):
        if count:
            if side == "left":
                mask[row, :count] = 0
            else:
                mask[row, seq - count :] = 0
    return mask


def write_sharded_bin(state_dict: dict[str, torch.Tensor], folder: str | os.PathLike, *, max_shard_bytes: int) -> list[str]:
    """Write ``state_dict`` as Hugging Face pickle shards plus their index.

    Files: ``pytorch_model-0000k-of-0000n.bin`` and ``pytorch_model.bin.index.json``
    holding ``{"metadata": {"total_size": N}, "weight_map": {name: file}}``
    (``json.dumps(indent=2, sort_keys=True)`` plus a newline), the layout
    Transformers 4.x wrote. Tensors that share storage (tied weights) go into
    the same shard and are counted once in ``total_size``. A shard is closed
    when the next tensor would push it past ``max_shard_bytes``.

    Returns:
        The shard file names, in order.
    """
    folder = Path(folder)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_sizes = [0]
    shard_of_storage: dict[tuple[int, int], int] = {}
    total_size = 0
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key in shard_of_storage:  # a tied tensor joins its twin, free of charge
            shards[shard_of_storage[key]][name] = tensor
            continue
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_sizes[-1] + size > max_shard_bytes:
            shards.append({})
            shard_sizes.append(0)
        shards[-1][name] = tensor
        shard_sizes[-1] += size
        shard_of_storage[key] = len(shards) - 1
        total_size += size

    count = len(shards)
    names = [f"pytorch_model-{k:05d}-of-{count:05d}.bin" for k in range(1, count + 1)]
    weight_map = {}
    for file_name, shard in zip(names, shards):
        torch.save(shard, folder / file_name)
        weight_map.update(dict.fromkeys(shard, file_name))
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names


def train_losses(model, ids, *, steps: int = 8, lr: float = 1e-2) -> list:
    """Losses of ``steps`` AdamW steps of ``model(ids, labels=ids)`` over its trainable parameters."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
