"""BERT-base inference on a ragged batch: our attention paths against Transformers' SDPA.

    python benchmarks/sdpa_bert.py [--iterations 5] [--batch 16] [--min-len 32] [--max-len 512] [--threads N]

Checkpoint: ``BertModel(BertConfig())`` (12 layers, hidden 768, 12 heads,
~110M parameters) built by Transformers at ``torch.manual_seed(0)`` and saved
with its ``save_pretrained`` into ``benchmarks/.cache/bert-base-random/``.

Batch: ``--batch`` sequences whose lengths are spread evenly over
``[--min-len, --max-len]`` (16 sequences, 32..512: 4 352 real tokens in a
16 x 512 padded batch), right padding, random token ids at seed 0.

Implementations, all loaded from that folder and timed in one process:
- ``ours-packed``: ``from_pretrained(...).to_bettertransformer()`` — SDPA on the
  batch with its padding taken out (``PackedSequences``);
- ``ours-sdpa``: ``from_pretrained(path)`` (default SDPA on the padded batch);
- ``ours-eager``: ``from_pretrained(path, attn_implementation="eager")``;
- ``transformers-sdpa``: ``transformers.BertModel.from_pretrained(path,
  attn_implementation="sdpa")``.

Each iteration runs every implementation once under ``torch.inference_mode()``
(order rotated every iteration) after one untimed warm-up each; the figure is
the median of ``--iterations`` wall-clock timings, as sequences per second.
The CPU time of each call (``time.process_time``) is reported beside it: on a
machine shared with other jobs it is the steadier of the two.  Outputs are
checked against Transformers' at real tokens (max abs difference <= 1e-4).
Results go to ``benchmarks/results/sdpa_bert.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "bert-base-random"
sys.path.insert(0, str(HERE.parent / "src"))  # measure this checkout


def build_checkpoint(path: Path) -> None:
    import torch
    import transformers

    if (path / "model.safetensors").is_file():
        return
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig()).save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    import pretrained

    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    build_checkpoint(CACHE)
    path = str(CACHE)

    lengths = torch.linspace(args.min_len, args.max_len, args.batch).round().long()
    mask = (torch.arange(args.max_len)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, (args.batch, args.max_len), generator=torch.Generator().manual_seed(0))
    ids = ids.masked_fill(mask == 0, 0)
    real = mask.bool()

    models = {
        "ours-packed": pretrained.BertModel.from_pretrained(path).to_bettertransformer(),
        "ours-sdpa": pretrained.BertModel.from_pretrained(path),
        "ours-eager": pretrained.BertModel.from_pretrained(path, attn_implementation="eager"),
        "transformers-sdpa": transformers.BertModel.from_pretrained(path, attn_implementation="sdpa").eval(),
    }
    names = list(models)

    def run(name):
        with torch.inference_mode():
            return models[name](input_ids=ids, attention_mask=mask).last_hidden_state

    reference = run("transformers-sdpa")
    max_diff = {}
    for name in names:
        out = run(name)  # also the warm-up
        max_diff[name] = float((out[real] - reference[real]).abs().max())

    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for i in range(args.iterations):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            run(name)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        print(f"iteration {i + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)

    median = {name: statistics.median(t) for name, t in times.items()}
    median_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    base = args.batch / median["transformers-sdpa"]
    print(f"\nBERT-base, {args.batch} sequences of {int(lengths.min())}..{int(lengths.max())} tokens "
          f"({int(mask.sum())} real of {mask.numel()}), {torch.get_num_threads()} threads, "
          f"median of {args.iterations}")
    print(f"{'':20}{'seq/s':>8}{'wall s':>8}{'min-max s':>14}{'vs transformers':>17}"
          f"{'CPU s':>8}{'CPU vs tf':>11}{'max |diff|':>12}")
    for name in names:
        rate = args.batch / median[name]
        print(f"{name:20}{rate:8.2f}{median[name]:8.2f}{min(times[name]):7.2f}-{max(times[name]):<6.2f}"
              f"{rate / base:16.2f}x{median_cpu[name]:8.2f}"
              f"{median_cpu['transformers-sdpa'] / median_cpu[name]:10.2f}x{max_diff[name]:12.1e}")
    ok = all(d <= 1e-4 for d in max_diff.values())
    print("outputs equal at real tokens (<= 1e-4):", ok)

    out = HERE / "results" / f"sdpa_bert{'' if not args.threads else f'_{args.threads}threads'}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "lengths": lengths.tolist(), "iterations": args.iterations, "threads": torch.get_num_threads(),
        "median_s": median, "seq_per_s": {n: args.batch / median[n] for n in names},
        "speedup_vs_transformers": {n: median["transformers-sdpa"] / median[n] for n in names},
        "median_cpu_s": median_cpu, "max_abs_diff_real_tokens": max_diff, "times_s": times, "cpu_s": cpu,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
    }, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
