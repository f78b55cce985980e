"""Where do ours and Transformers' Llama differ numerically? (issue 19, investigation)

    python benchmarks/numerics_llama.py [--layers 2] [--tokens 32] [--new 32]

Builds a Llama with the 1.1B benchmark shapes but ``--layers`` layers (random
weights written by Transformers at seed 0, bf16, into ``.cache/llama-1.1b-shapes-<n>l``),
loads it with both libraries in bf16 and fp32, eager and sdpa, and compares:

1. every submodule's output on one prefill forward (forward hooks, same names
   on both sides): the first module that differs is printed with its max abs diff;
2. the output of one cached decode step (q_len 1);
3. greedy tokens (``--new``) and, at the first differing token, the top-2 margin
   of both sides' logits (a near-tie or not).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def build(layers: int) -> Path:
    import transformers
    path = HERE / ".cache" / f"llama-1.1b-shapes-{layers}l"
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                                      num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                      max_position_embeddings=2048)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def load(lib: str, path: Path, dtype, attn: str):
    if lib == "ours":
        from pretrained import AutoModelForCausalLM
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn).eval()
    import transformers
    transformers.utils.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn).eval()


def hooked_forward(model, ids, **kwargs):
    """Every named submodule's first output tensor on one forward, in call order."""
    outputs, handles = {}, []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, _inputs, out, name=name):
            t = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)
            if isinstance(t, torch.Tensor):
                outputs.setdefault(name, t.detach().clone())
        handles.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        out = model(ids, use_cache=True, **kwargs)
    for h in handles:
        h.remove()
    return outputs, out


def compare(a: dict, b: dict) -> list:
    rows = []
    for name in a:
        if name in b and a[name].shape == b[name].shape:
            rows.append((name, (a[name].float() - b[name].float()).abs().max().item(), torch.equal(a[name], b[name])))
    return rows


def report(title: str, rows: list, show: int = 40) -> None:
    first = next((r for r in rows if not r[2]), None)
    print(f"  {title}: {sum(r[2] for r in rows)}/{len(rows)} modules bit-identical; first differing: "
          f"{first[0] + f' (max abs diff {first[1]:.3g})' if first else 'none'}")
    for name, diff, same in rows[:show]:
        print(f"    {name:<40} {'equal' if same else f'{diff:.3g}'}")


def greedy(model, ids, new: int):
    """Greedy decoding with our own loop (no generate()), with each step's logits."""
    steps, past, cur = [], None, ids
    tokens = []
    with torch.inference_mode():
        for _ in range(new):
            out = model(cur, past_key_values=past, use_cache=True)
            logits = out.logits[:, -1].float()
            past, cur = out.past_key_values, logits.argmax(-1, keepdim=True)
            steps.append(logits[0])
            tokens.append(int(cur))
    return tokens, steps


def report_tokens(label, ours, theirs, ours_logits, theirs_logits):
    """Print whether two greedy token lists agree, else each side's top-2 and margin at the
    first differing step; return that step (None when equal)."""
    diff = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), None)
    if diff is None:
        print(f"  {label} {len(ours)} tokens: equal")
        return None
    for side, logits in (("ours", ours_logits[diff]), ("transformers", theirs_logits[diff])):
        top = logits.topk(2)
        print(f"  {label}: first differing token at step {diff}: {side} top-2 {top.indices.tolist()} "
              f"margin {float(top.values[0] - top.values[1]):.4g}")
    return diff


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--show", type=int, default=40)
    parser.add_argument("--path", help="an existing Llama checkpoint instead of building one (e.g. the 1.1B)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--attn", default="eager,sdpa")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = Path(args.path) if args.path else build(args.layers)
    ids = torch.randint(3, 32000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for attn in args.attn.split(","):
            print(f"\n== {dtype_name} {attn} ==")
            ours, theirs = load("ours", path, dtype, attn), load("transformers", path, dtype, attn)
            a, out_a = hooked_forward(ours, ids)
            b, out_b = hooked_forward(theirs, ids)
            report("prefill", compare(a, b), args.show)
            nxt = out_b.logits[:, -1:].argmax(-1)
            a1, _ = hooked_forward(ours, nxt, past_key_values=out_b.past_key_values.__class__() if False else None)
            # decode step: feed each side its own cache of the same prompt
            with torch.inference_mode():
                pa = ours(ids, use_cache=True).past_key_values
                pb = theirs(ids, use_cache=True).past_key_values
            a1, _ = hooked_forward(ours, nxt, past_key_values=pa)
            b1, _ = hooked_forward(theirs, nxt, past_key_values=pb)
            report("decode step (q_len 1)", compare(a1, b1), 0)
            ta, la = greedy(ours, ids, args.new)
            tb, lb = greedy(theirs, ids, args.new)
            if report_tokens("greedy", ta, tb, la, lb) is not None:
                print(f"    max abs logits diff at step 0: {(la[0] - lb[0]).abs().max().item():.3g}")
            gen = {}
            for side, model, kw in (("ours", ours, {"eos_token_id": []}), ("transformers", theirs, {"eos_token_id": None})):
                with torch.inference_mode():
                    out = model.generate(ids, do_sample=False, max_new_tokens=args.new, pad_token_id=0,
                                         output_logits=True, return_dict_in_generate=True, **kw)
                gen[side] = (out.sequences[0, ids.shape[1]:].tolist(), [x[0].float() for x in out.logits])
            (ga, gla), (gb, glb) = gen["ours"], gen["transformers"]
            print(f"  generate(): ours == own loop: {ga == ta}; transformers == own loop: {gb == tb}")
            if report_tokens("generate()", ga, gb, gla, glb) is None:
                print(f"    step-0 logits bit-identical: {torch.equal(gla[0], glb[0])}")
            del ours, theirs
    return 0


if __name__ == "__main__":
    sys.exit(main())
