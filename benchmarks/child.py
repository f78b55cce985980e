"""One benchmark trial, run by ``run.py`` in a fresh interpreter.

Reads its work from the environment:
    BENCH_T0    the parent's ``time.time()`` just before it spawned this process
    BENCH_SPEC  JSON: {"steps": [[metric, code], ...], "path": str|None, "scratch": str|None}

Each step's code is executed in one shared namespace (``path`` and ``scratch``
predefined) and timed with ``time.perf_counter``. A step that defines
``logits`` (a tensor) gets it summarised; numbers a step puts in an
``extra_metrics`` dict are reported as metrics of their own. The trial ends by printing one line:
``BENCH_RESULT {json}`` with

    startup_s     spawn -> this script running (interpreter start-up)
    <metric>      seconds spent in each step (e.g. import_s, load_s, forward_s)
    wall_s        spawn -> end of the last step (for load scenarios: first logits)
    <name>        every entry of a ``bench_metrics`` dict the steps define
    peak_rss_bytes  ru_maxrss of this process, in bytes
    peak_gpu_bytes  torch.cuda.max_memory_allocated(), where CUDA was initialised
    torch_threads   torch.get_num_threads(), if torch was imported
    logits        {"shape", "dtype", "sample": logits[0, -1, :8], "mean", "abs_mean", "sha256"}

Only the standard library is imported before the steps run, so an import
step measures the import alone.
"""

import hashlib
import json
import os
import resource
import sys
import time

MARKER = "BENCH_RESULT "


def summarize_logits(logits) -> dict:
    """A small, comparable summary of a logits tensor (computed in float32)."""
    values = logits.detach().float().cpu()
    return {
        "shape": list(values.shape),
        "dtype": str(logits.dtype),
        "sample": values.reshape(-1, values.shape[-1])[-1, :8].tolist(),
        "mean": float(values.mean()),
        "abs_mean": float(values.abs().mean()),
        "sha256": hashlib.sha256(values.contiguous().numpy().tobytes()).hexdigest()[:16],
    }


def main() -> None:
    t0 = float(os.environ["BENCH_T0"])
    result = {"startup_s": time.time() - t0}
    spec = json.loads(os.environ["BENCH_SPEC"])
    namespace = {"path": spec.get("path"), "scratch": spec.get("scratch"), "__name__": "__bench__"}

    for metric, code in spec["steps"]:
        start = time.perf_counter()
        exec(compile(code, f"<{metric}>", "exec"), namespace)
        result[metric] = time.perf_counter() - start
    result["wall_s"] = time.time() - t0
    result.update(namespace.get("bench_metrics") or {})  # numbers a step reports itself (e.g. an RSS delta)

    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        result["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    result.update(namespace.get("extra_metrics") or {})  # numbers a step computed (tokens/s, bytes)
    if namespace.get("logits") is not None:
        result["logits"] = summarize_logits(namespace["logits"])
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
