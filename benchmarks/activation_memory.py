"""Peak activation memory of a training step, with and without gradient checkpointing.

    python benchmarks/activation_memory.py [--arch gpt2|bert] [--batch 2] [--seq 512] [--repeats 3]

Model: a 12-layer GPT-2 body (``GPT2Model``, n_embd 768, 12 heads, ~124M
parameters) or BERT-base body (``BertModel``), random weights at seed 0,
dropout as configured (train mode).  Work: one forward + backward of a
``batch x seq`` batch of random tokens, loss = mean of the squared last hidden
state (no LM head, so the vocabulary-sized logits do not dominate).

Method: every measurement runs in a fresh interpreter (``--child``), which
1. builds the model and runs one tiny warm-up step (one sequence of 8 tokens),
   so kernels, thread pools and every ``.grad`` exist (gradients, the same in
   both modes, are then part of the baseline rather than of the peak); the
   gradients are zeroed;
2. records ``RSS_before`` (``psutil``: current resident set size);
3. runs forward + backward once;
4. reads ``ru_maxrss`` (the process's high-water resident set size).

Peak activation memory = ``ru_maxrss - RSS_before``: everything the step
allocated beyond weights and gradients (saved activations, the backward's
temporaries, the embedding's transient dense gradient).  Medians over
``--repeats`` fresh processes, modes alternated.  Results go to
``benchmarks/results/activation_memory_<arch>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MARKER = "ACTMEM_RESULT "


def child(arch: str, batch: int, seq: int, checkpointing: bool) -> None:
    import gc
    import resource

    import psutil
    import torch

    from pretrained import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2Model(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=max(1024, seq)))
        vocab = model.config.vocab_size
    else:
        model = BertModel(BertConfig(max_position_embeddings=max(512, seq)), add_pooling_layer=False)
        vocab = model.config.vocab_size
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def step(batch_ids):
        hidden = model(batch_ids, use_cache=False) if arch == "gpt2" else model(batch_ids)
        return hidden.last_hidden_state.float().pow(2).mean()

    step(ids[:1, :8]).backward()  # warm-up: kernels, thread pools and the .grad tensors exist now
    for p in model.parameters():
        p.grad.zero_()
    gc.collect()

    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    loss = step(ids)
    forward_s = time.perf_counter() - start
    loss.backward()
    step_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "checkpointing": checkpointing, "rss_before": rss_before, "peak_rss": peak,
        "activation_bytes": peak - rss_before, "forward_s": forward_s, "step_s": step_s,
        "threads": torch.get_num_threads(), "params": model.num_parameters(),
        "grad_norm": float(torch.stack([p.grad.norm() for p in model.parameters()]).norm()),
    }
    print(MARKER + json.dumps(result), flush=True)


def run_child(args, checkpointing: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, __file__, "--child", "--arch", args.arch, "--batch", str(args.batch), "--seq", str(args.seq)]
    if checkpointing:
        cmd.append("--checkpointing")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARKER):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["gpt2", "bert"], default="gpt2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.arch, args.batch, args.seq, args.checkpointing)
        return

    runs = {False: [], True: []}
    for i in range(args.repeats):
        for mode in ((False, True) if i % 2 == 0 else (True, False)):
            result = run_child(args, mode)
            runs[mode].append(result)
            print(f"round {i + 1}: checkpointing={mode!s:5} activations {result['activation_bytes'] / 2**20:8.1f} MiB"
                  f"  step {result['step_s']:.2f} s", flush=True)

    def med(mode, key):
        return statistics.median(r[key] for r in runs[mode])

    plain, ckpt = med(False, "activation_bytes"), med(True, "activation_bytes")
    grads_equal = abs(med(False, "grad_norm") - med(True, "grad_norm")) <= 1e-4 * med(False, "grad_norm")
    print(f"\n{args.arch}, 12 layers, batch {args.batch} x {args.seq} tokens, "
          f"{runs[False][0]['params'] / 1e6:.1f}M parameters, {runs[False][0]['threads']} threads")
    print(f"{'':16}{'activations MiB':>18}{'step s':>10}")
    for mode, name in ((False, "plain"), (True, "checkpointing")):
        print(f"{name:16}{med(mode, 'activation_bytes') / 2**20:18.1f}{med(mode, 'step_s'):10.2f}")
    print(f"ratio plain / checkpointing: {plain / ckpt:.2f}x less activation memory; "
          f"time {med(True, 'step_s') / med(False, 'step_s'):.2f}x; gradient norms equal: {grads_equal}")

    out = HERE / "results" / f"activation_memory_{args.arch}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "arch": args.arch, "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
        "median_activation_bytes": {"plain": plain, "checkpointing": ckpt}, "ratio": plain / ckpt,
        "median_step_s": {"plain": med(False, "step_s"), "checkpointing": med(True, "step_s")},
        "runs": {"plain": runs[False], "checkpointing": runs[True]},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
