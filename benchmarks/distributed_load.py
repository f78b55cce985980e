"""Tensor-parallel loading benchmark (issue 18): 1.1B Llama bf16 over 2 and 4 ranks.

For each world size, ranks start under torchrun (127.0.0.1) and load the
checkpoint with ``from_pretrained(..., tp_plan="auto", torch_dtype=bfloat16)``.
Each rank reports: bytes read (``pretrained.storage.slices.READ_COUNTER``), its
share (local slices + the replicated tensors), peak RSS (``ru_maxrss``), the
RSS after ``import torch, pretrained`` and process-group start, and the load
wall time, and the CPU seconds (user + system) the load took. The baselines
are one process: plain ``from_pretrained`` (mapped, zero-copy: pages are read
when first touched; its time "all ranks" includes reading every byte once,
with one reduction per parameter, as a first forward would) and ``tp_plan``
over a world of 1 (reads every byte with the ranks' reader). The page cache is
warm (the checkpoint was just written or read): this measures reading from
memory, not from the disk. The last lines give the target's ratio, 2 ranks'
load (all ranks done) over each baseline; see benchmarks/README.md for which
baseline is the target's.

    python benchmarks/distributed_load.py --checkpoint /tmp/llama-1.1b --worlds 2,4

``--backend nccl`` runs the ranks on CUDA (one GPU per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def build(path: str) -> None:
    """Random bf16 weights of TinyLlama's shapes, 5 shards of 500MB, written tensor by tensor."""
    import torch

    from pretrained import LlamaConfig, LlamaForCausalLM
    from pretrained.storage.writer import LazyTensor, save_checkpoint

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, torch_dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)

    def random(shape):
        return lambda: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

    state = {name: LazyTensor(torch.bfloat16, tuple(t.shape), random(tuple(t.shape)))
             for name, t in skeleton.state_dict().items()}
    save_checkpoint(path, state, max_shard_size=500 * 10**6, extra_files={"config.json": config.to_json_string()})


def _time_phases() -> dict:
    """Wrap the load's phases so each records (CPU s, wall s) into the returned dict (``--phases``)."""
    from pretrained.distributed import tensor_parallel
    from pretrained.modeling import base

    phases = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            cpu, wall = _cpu_seconds(), time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] = (round(_cpu_seconds() - cpu, 3), round(time.perf_counter() - wall, 3))
        return wrapper

    for name in ("build_skeleton", "maybe_tensor_parallel", "load_weights"):
        setattr(base, name, timed(name, getattr(base, name)))
    tensor_parallel.TensorParallel.finish = timed("finish (DTensors, hooks)", tensor_parallel.TensorParallel.finish)
    return phases


def child(mode: str, path: str, backend: str) -> None:
    """One rank (or the single process): load, measure, print one JSON line."""
    import torch

    import pretrained  # noqa: F401
    from pretrained import LlamaForCausalLM
    from pretrained.storage.slices import READ_COUNTER

    distributed = mode == "tp"
    phases = _time_phases() if os.environ.get("BENCH_PHASES") else {}
    if distributed:
        import torch.distributed as dist

        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.barrier()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = _cpu_seconds()
    start = time.perf_counter()
    kwargs = {"tp_plan": "auto"} if distributed else {}
    model = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, **kwargs)
    load = time.perf_counter() - start
    if not distributed:  # read every byte of the mapped weights, as a first forward does
        with torch.inference_mode():
            for p in model.parameters():
                p.sum()
    touched = time.perf_counter() - start
    split = sum(p.to_local().nbytes for p in model.parameters() if type(p).__name__ == "DTensor")
    whole = sum(p.nbytes for p in model.parameters() if type(p).__name__ != "DTensor")
    if distributed:
        dist.barrier()
        load_all = time.perf_counter() - start
        if backend == "nccl":  # one forward on the GPU: the split model runs there
            with torch.inference_mode():
                device = torch.device("cuda", torch.cuda.current_device())
                assert torch.isfinite(model(torch.tensor([[1, 2, 3]], device=device)).logits).all()
    cpu = _cpu_seconds() - cpu
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "load_s": load, "touched_s": touched, "cpu_s": cpu,
                      "all_ranks_s": load_all if distributed else load, "read": READ_COUNTER.bytes,
                      "split_local": split, "replicated": whole,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "base_rss_mb": base, "phases": phases}), flush=True)
    if distributed:
        dist.destroy_process_group()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def launch(args, mode: str, world: int) -> list:
    env = dict(os.environ, PYTHONPATH=SRC, PRETRAINED_NO_PROGRESS="1", **({"BENCH_PHASES": "1"} if args.phases else {}))
    me = [os.path.abspath(__file__), "--child", mode, "--checkpoint", args.checkpoint, "--backend", args.backend]
    if mode == "tp":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", *me]
    else:
        command = [sys.executable, *me]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-4000:]}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return sorted(rows, key=lambda r: r["rank"])


def table(results: dict, total: int) -> str:
    lines = ["| run | rank | bytes read (MB) | share of checkpoint | its slices + replicated (MB) | peak RSS (MB) "
             "| RSS after imports (MB) | load s (rank / all ranks) | CPU s |", "|" + "---|" * 9]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['rank']} | {r['read'] / 1e6:.0f} | {r['read'] / total:.3f} | "
                         f"{(r['split_local'] + r['replicated']) / 1e6:.0f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['base_rss_mb']:.0f} | {r['load_s']:.2f} / {r['all_ranks_s']:.2f}"
                         + (f" (every byte read: {r['touched_s']:.2f})" if name.startswith("1 process (mmap") else "")
                         + f" | {r['cpu_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--worlds", default="2,4")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--skip-baselines", action="store_true", help="only the --worlds runs")
    parser.add_argument("--phases", action="store_true",
                        help="also print each rank's (CPU s, wall s) per load phase")
    parser.add_argument("--child", choices=["tp", "single", "build"])
    args = parser.parse_args()
    if args.child == "build":
        return build(args.checkpoint)
    if args.child:
        return child(args.child, args.checkpoint, args.backend)
    if not os.path.isfile(os.path.join(args.checkpoint, "config.json")):  # in a child: ru_maxrss survives exec
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "build", "--checkpoint", args.checkpoint],
                       env=dict(os.environ, PYTHONPATH=SRC), check=True, timeout=args.timeout)
    total = sum(os.path.getsize(os.path.join(args.checkpoint, f)) for f in os.listdir(args.checkpoint)
                if f.endswith(".safetensors"))
    results = {} if args.skip_baselines else {
        "1 process (mmap, plain from_pretrained)": launch(args, "single", 1),
        "1 process, tp_plan (world 1: reads everything)": launch(args, "tp", 1)}
    for world in (int(w) for w in args.worlds.split(",") if w):
        results[f"{world} ranks, tp_plan ({args.backend})"] = launch(args, "tp", world)
    print(f"checkpoint: {total / 1e6:.0f} MB in safetensors files; cpus: {os.cpu_count()}")
    print(table(results, total))
    print(ratios(results))
    for name, rows in results.items():
        for r in rows:
            if r.get("phases"):
                print(f"phases {name} rank {r['rank']}: {r['phases']}")


def ratios(results: dict) -> str:
    """2 ranks' load (all ranks done) over each one-process baseline that ran."""
    two = next((rows for name, rows in results.items() if name.startswith("2 ranks")), None)
    plain, world1 = results.get("1 process (mmap, plain from_pretrained)"), results.get(
        "1 process, tp_plan (world 1: reads everything)")
    if two is None or plain is None or world1 is None:
        return ""
    both = max(r["all_ranks_s"] for r in two)
    return (f"2 ranks / plain + every byte read: {both / plain[0]['touched_s']:.2f}; "
            f"2 ranks / tp world 1: {both / world1[0]['all_ranks_s']:.2f}")


if __name__ == "__main__":
    main()
