"""Benchmark `pretrained` against Transformers and a plain-PyTorch floor.

    python benchmarks/run.py [--scenarios S1,S6] [--repeats 5] [--keep] [--baseline REV]

For each scenario: build its checkpoint with Transformers (once, cached in
``benchmarks/.cache/``), then run every implementation in fresh subprocesses
(``child.py``): one warm-up run each (warms the page cache, not recorded in the
statistics), then ``--repeats`` rounds, alternating the order of the
implementations from round to round. Prints a table of medians with min-max,
the ratios ours/transformers and ours/floor, checks that all implementations'
logits agree, and writes ``benchmarks/results/<scenario>.json``.

``--baseline REV`` adds an implementation ``before``: the same steps as
``ours``, run on the ``src/`` of git revision REV (exported once into
``benchmarks/.cache/baseline-<REV>/``), alternating with the others in the same
rounds, so a change is measured against its parent on one noisy machine.

A failing implementation (``pretrained`` while it is being written) is
reported with the tail of its stderr; the others still run.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scenarios import CHECKPOINTS, DEFAULT_SCENARIOS, SCENARIOS, Checkpoint, Scenario

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
CHILD = HERE / "child.py"
MARKER = "BENCH_RESULT "
IMPL_ORDER = ("ours", "transformers", "floor")
STDERR_TAIL_LINES = 15
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


# --- processes --------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None, *, src: Path = REPO / "src") -> dict[str, str]:
    """The environment of every subprocess: offline, ``src`` (this checkout's by default) first on the path."""
    env = dict(os.environ, **OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def stderr_tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_trial(steps, *, path: str | None, scratch: Path, timeout_s: float, src: Path = REPO / "src") -> dict:
    """Run one trial in a fresh interpreter; return its JSON result or ``{"error": ...}``."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    spec = {"steps": [list(step) for step in steps], "path": path, "scratch": str(scratch)}
    env = child_env({"BENCH_SPEC": json.dumps(spec), "BENCH_T0": repr(time.time())}, src=src)
    try:
        proc = subprocess.run(
            [sys.executable, str(CHILD)], env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return {"error": f"timed out after {timeout_s:.0f} s", "stderr_tail": stderr_tail(tail)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit code {proc.returncode}", "stderr_tail": stderr_tail(proc.stderr)}
    return json.loads(lines[-1][len(MARKER):])


# --- checkpoints ------------------------------------------------------------


def build_fingerprint(checkpoint: Checkpoint) -> str:
    """Changes whenever the build code or the Transformers/torch versions change."""
    versions = [package_version(name) for name in ("transformers", "torch")]
    return hashlib.sha256("\n".join([checkpoint.build, *versions]).encode()).hexdigest()[:16]


def ensure_checkpoint(checkpoint: Checkpoint) -> Path:
    """Build ``checkpoint`` into the cache unless an up-to-date copy is there."""
    folder = CACHE / checkpoint.key
    marker = folder / ".built"
    fingerprint = build_fingerprint(checkpoint)
    if marker.is_file() and marker.read_text().strip() == fingerprint:
        return folder
    print(f"[setup] building {checkpoint.key}: {checkpoint.description}", flush=True)
    staging = CACHE / f"{checkpoint.key}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    code = f"import torch\npath = {str(staging)!r}\n" + checkpoint.build
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"[setup] building {checkpoint.key} failed:\n{stderr_tail(proc.stderr, 30)}")
    (staging / ".built").write_text(fingerprint + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    print(f"[setup] {checkpoint.key}: {folder_size(folder) / 2**20:.0f} MiB in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return folder


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- running a scenario -----------------------------------------------------


def run_scenario(scenario: Scenario, repeats: int, baseline: Path | None = None, warmups: int = 1) -> dict:
    """Warm up, then run ``repeats`` alternating rounds; return the raw record.

    ``baseline``: a ``src`` folder of an earlier revision; every ``ours*``
    implementation gets a ``before*`` twin (the same steps on that code)."""
    path = str(ensure_checkpoint(CHECKPOINTS[scenario.checkpoint])) if scenario.checkpoint else None
    impls = dict(scenario.impls)
    sources = {name: REPO / "src" for name in impls}
    if baseline is not None:
        for name in [n for n in impls if n.startswith("ours")]:
            twin = "before" + name[len("ours"):]
            impls[twin], sources[twin] = impls[name], baseline
    names = [n for n in IMPL_ORDER if n in impls] + [n for n in impls if n not in IMPL_ORDER]
    record = {name: {"warmup": None, "runs": [], "failures": []} for name in names}

    def trial(name: str, label: str) -> dict:
        scratch = CACHE / "scratch" / scenario.key / name
        result = run_trial(impls[name].steps, path=path, scratch=scratch, timeout_s=scenario.timeout_s,
                           src=sources[name])
        status = f"FAILED ({result['error']})" if "error" in result else f"{result['wall_s']:.2f} s"
        print(f"[{scenario.key}] {label:>7} {name:<12} {status}", flush=True)
        return result

    for name in names:
        record[name]["warmup"] = trial(name, "warm-up") if warmups else {}
    active = [n for n in names if "error" not in record[n]["warmup"]]
    for round_index in range(repeats):
        order = active if round_index % 2 == 0 else active[::-1]
        for name in order:
            result = trial(name, f"run {round_index + 1}")
            record[name]["failures" if "error" in result else "runs"].append(result)
    return record


def summarize(record: dict, scenario: Scenario) -> dict:
    """Median/min/max per metric and implementation, ratios, and the logits check."""
    summary = {}
    for name, data in record.items():
        runs = data["runs"]
        if not runs:
            error = data["warmup"] if "error" in (data["warmup"] or {}) else (data["failures"] or [{}])[0]
            tail = error.get("stderr_tail", "")
            last_line = tail.splitlines()[-1] if tail else ""
            summary[name] = {"failed": f"{error.get('error', 'no runs')}: {last_line}".rstrip(": "),
                             "stderr_tail": tail}
            continue
        stats = {}
        for metric in (*scenario.metrics, "peak_rss_bytes"):
            values = [run[metric] for run in runs if metric in run]
            if values:
                stats[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        summary[name] = {"n": len(runs), "failures": len(data["failures"]), "stats": stats}
    return {"impls": summary, "ratios": ratios(summary), "logits": check_logits(record, scenario.atol)}


def ratios(summary: dict) -> dict:
    """ours/transformers and ours/floor of every median, where both sides ran."""
    ours = summary.get("ours", {}).get("stats")
    out = {}
    for other in [name for name in summary if name != "ours" and not name.startswith("before_")]:
        theirs = summary.get(other, {}).get("stats")
        if ours and theirs:
            out[f"ours/{other}"] = _ratio(ours, theirs)
    for name in [n for n in summary if n.startswith("before_")]:
        mine, theirs = (summary.get(n, {}).get("stats") for n in ("ours" + name[len("before"):], name))
        if mine and theirs:
            out[f"ours{name[len('before'):]}/{name}"] = _ratio(mine, theirs)
    return out


def _ratio(ours: dict, theirs: dict) -> dict:
    return {m: ours[m]["median"] / theirs[m]["median"] for m in ours if m in theirs and theirs[m]["median"] > 0}


def check_logits(record: dict, atol: float) -> dict:
    """Compare each implementation's logits sample (every run) with the reference's first run."""
    samples = {name: [r["logits"]["sample"] for r in data["runs"] if "logits" in r] for name, data in record.items()}
    samples = {name: s for name, s in samples.items() if s}
    if not samples:
        return {}
    reference = "transformers" if "transformers" in samples else next(iter(samples))
    ref = samples[reference][0]
    diffs = {
        name: max(max(abs(a - b) for a, b in zip(sample, ref)) for sample in runs)
        for name, runs in samples.items()
    }
    return {"reference": reference, "atol": atol, "max_abs_diff": diffs, "ok": all(d <= atol for d in diffs.values())}


# --- output -----------------------------------------------------------------


BYTES = (1 / 2**20, 0)  # fmt_stat's scale and digits for a byte count: MiB


def fmt_stat(stat: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not stat:
        return "-"
    med, lo, hi = (stat[k] * scale for k in ("median", "min", "max"))
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def print_table(scenario: Scenario, summary: dict, repeats: int) -> None:
    """Medians (min-max) per implementation, then the ratios and the logits check."""
    metrics = list(scenario.metrics)
    headers = ["impl", *(m.replace("_bytes", " MiB") for m in metrics), "peak RSS MiB"]
    rows = []
    for name, info in summary["impls"].items():
        if "failed" in info:
            rows.append([name, f"FAILED: {info['failed']}"])
            continue
        stats = info["stats"]
        rows.append([name, *(fmt_stat(stats.get(m), *BYTES if m.endswith("_bytes") else ()) for m in metrics),
                     fmt_stat(stats.get("peak_rss_bytes"), *BYTES)])
    for label, values in summary["ratios"].items():
        rows.append([label, *(f"{values[m]:.2f}x" if m in values else "-" for m in metrics),
                     f"{values['peak_rss_bytes']:.2f}x" if "peak_rss_bytes" in values else "-"])

    print(f"\n{scenario.key}: {scenario.title}  [{repeats} repeat(s); median (min-max), seconds]")
    if scenario.notes:
        print(f"  {scenario.notes}")
    widths = [max(len(str(row[i])) for row in [headers, *rows] if i < len(row) and len(row) > 2) for i in range(len(headers))]
    for row in [headers, *rows]:
        if len(row) == 2:  # a failure line spans the table
            print(f"  {row[0]:<{widths[0]}}  {row[1]}")
        else:
            print("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)))
    for name, info in summary["impls"].items():
        if "failed" in info and info["stderr_tail"]:
            print(f"  --- {name} stderr (tail) ---")
            print("    " + info["stderr_tail"].replace("\n", "\n    "))
    logits = summary["logits"]
    if logits:
        diffs = ", ".join(f"{n} {d:.1e}" for n, d in logits["max_abs_diff"].items())
        verdict = "OK" if logits["ok"] else "MISMATCH"
        print(f"  logits vs {logits['reference']} (max abs diff of logits[0,-1,:8]): {diffs} -> {verdict} (atol {logits['atol']:g})")


def package_version(name: str) -> str:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} (not installed)"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment() -> dict:
    """What the figures depend on: machine, interpreter, library versions."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "packages": [package_version(n) for n in ("torch", "transformers", "safetensors", "accelerate", "pretrained")],
        "commit": commit or None,
    }


def write_results(scenario: Scenario, repeats: int, record: dict, summary: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{scenario.key}.json"
    payload = {
        "scenario": scenario.key,
        "title": scenario.title,
        "checkpoint": scenario.checkpoint,
        "repeats": repeats,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "summary": summary,
        "runs": record,
    }
    out.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return out


# --- command line -----------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated keys (default: {','.join(DEFAULT_SCENARIOS)}; "
                        f"all: {','.join(SCENARIOS)})")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per implementation (default 5)")
    parser.add_argument("--warmups", type=int, choices=(0, 1), default=1,
                        help="1 (default): one untimed warm-up trial per implementation; 0: none (quick checks)")
    parser.add_argument("--keep", action="store_true",
                        help="keep benchmarks/.cache/ (built checkpoints) for the next run; by default it is removed")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run ours' steps on the src/ of git revision REV, as implementation 'before'")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def export_baseline(rev: str) -> Path:
    """``src/`` of git revision ``rev``, exported (once) under ``benchmarks/.cache/``; its path."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=False)
    if commit.returncode != 0:
        raise SystemExit(f"--baseline: {rev!r} is not a git revision of {REPO}: {commit.stderr.strip()}")
    folder = CACHE / f"baseline-{commit.stdout.strip()[:12]}"
    if not (folder / "src").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit.stdout.strip(), "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    compileall.compile_dir(str(folder / "src"), quiet=1)
    return folder / "src"


def compile_sources() -> None:
    """Byte-compile ``src/`` once, as installing a package does: the references run from
    compiled site-packages, and with ``PYTHONDONTWRITEBYTECODE`` set every child would
    otherwise compile ``pretrained`` from source again."""
    compileall.compile_dir(str(REPO / "src"), quiet=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    compile_sources()
    mismatch = False
    try:
        baseline = export_baseline(args.baseline) if args.baseline else None
        for key in args.scenarios:
            scenario = SCENARIOS[key]
            record = run_scenario(scenario, args.repeats, baseline, args.warmups)
            summary = summarize(record, scenario)
            print_table(scenario, summary, args.repeats)
            print(f"  results: {write_results(scenario, args.repeats, record, summary).relative_to(REPO)}\n")
            mismatch |= summary["logits"].get("ok") is False
    finally:
        if not args.keep:
            shutil.rmtree(CACHE, ignore_errors=True)
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
