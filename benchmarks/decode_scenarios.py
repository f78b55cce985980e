"""G1-G4 (issue 19): running the model, against Transformers and the memory-bandwidth floor.

* ``G1``  greedy decode at batch 1 on the 1.1B Llama: ``G1_NEW`` new tokens after a
  ``G1_PROMPT``-token prompt, bf16 then fp32 (both loaded from the bf16 checkpoint);
  ``G1G`` the same on GPT-2-medium (fp32 checkpoint, loaded as bf16 then fp32).
  ``decode_*_tok_s`` = (``G1_NEW`` - 1) / (time of ``generate(max_new_tokens=G1_NEW)``
  - time of ``generate(max_new_tokens=1)``): the prefill and the first token are taken out.
  ``gen_*_tok_s`` = ``G1_NEW`` / the whole call.
* ``floor`` (G1, G1G): the same model loaded (ours), then every weight read once as fast as
  plain PyTorch reads it: the best of ``READERS`` (an int32 view's ``max``, ``amax``, ``sum``)
  over ``READ_REPEATS`` passes; ``read_*_gbs`` is that bandwidth, and ``decode_*_tok_s`` =
  bandwidth / the bytes a decode step must read (every weight except the input embedding,
  unless it is tied to the output; positional tables excluded).  ``ours/floor`` of
  ``decode_*_tok_s`` is the fraction of the floor reached.
* ``G2``  prefill: one forward (``use_cache=True``) of a ``G2_PROMPT``-token prompt at batch 1,
  bf16, after one warm-up forward; ``prefill_tok_s`` = ``G2_PROMPT`` / its time.
* ``G3``  batch-8 greedy decode, bf16, left padding: prompts of ``G3_LENGTHS`` tokens padded on
  the left to the longest, ``G3_NEW`` new tokens; ``decode_tok_s`` = 8 x (``G3_NEW`` - 1) /
  (time of ``G3_NEW`` tokens - time of 1 token).
* ``G4``  BERT-base (random, seed 0) on ``G4_BATCH`` sequences of ``G4_MIN``..``G4_MAX`` tokens,
  right-padded: ours SDPA, ours padding-free (``to_bettertransformer()``), Transformers' SDPA;
  ``seq_per_s`` = ``G4_BATCH`` / the median of ``G4_ITERS`` forwards after a warm-up.

``BENCH_QUICK=1`` in the environment shrinks every size (8 new tokens, a 64-token prefill, 4
batched tokens, 4 BERT rows of 16..64) to check that the scenarios run on a loaded machine;
its figures are not the issue's.

The compared sample is in fp32 where there is one (greedy tokens in bf16 may split at near
ties: see ``benchmarks/numerics_llama.py``).
"""

from __future__ import annotations

import os

from scenarios import GPT2_MEDIUM_FP32, LLAMA_1B_BF16, Checkpoint, Impl, Scenario, _code

QUICK = os.environ.get("BENCH_QUICK") == "1"
G1_NEW, G1_PROMPT = (8 if QUICK else 128), 32
G2_PROMPT = 64 if QUICK else 512
G3_LENGTHS, G3_NEW = (32, 28, 24, 20, 16, 12, 8, 4), (4 if QUICK else 32)
G4_BATCH, G4_MIN, G4_MAX, G4_ITERS = (4, 16, 64, 1) if QUICK else (8, 32, 256, 3)
READ_REPEATS = 3

OURS_IMPORT = "import gc, time\nimport torch\nfrom pretrained import AutoModelForCausalLM\n"
THEIRS_IMPORT = ("import gc, time\nimport torch\nimport transformers\n"
                 "transformers.utils.logging.set_verbosity_error()\n"
                 "from transformers import AutoModelForCausalLM\n")
OURS_LOAD = "model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.{dtype}).eval()\n"
THEIRS_LOAD = "model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.{dtype}).eval()\n"
OURS_GENERATE = "model.generate(prompt, do_sample=False, eos_token_id=[], pad_token_id=0, "
THEIRS_GENERATE = "model.generate(prompt, do_sample=False, eos_token_id=None, pad_token_id=0, "
DTYPES = (("bfloat16", "bf16"), ("float32", "fp32"))


def prompt_code(vocab: int, lengths=(G1_PROMPT,)) -> str:
    """``prompt`` (B, max length) random ids at seed 0, left-padded with 0; ``mask`` its attention mask."""
    longest = max(lengths)
    return _code(
        f"""
        lengths = {list(lengths)}
        g = torch.Generator().manual_seed(0)
        prompt = torch.zeros(len(lengths), {longest}, dtype=torch.long)
        mask = torch.zeros(len(lengths), {longest}, dtype=torch.long)
        for row, n in enumerate(lengths):
            prompt[row, {longest} - n:] = torch.randint(3, {vocab}, (n,), generator=g)
            mask[row, {longest} - n:] = 1
        """
    )


def timed_decode(short: str, generate: str, new: int, rows: int = 1, masked: bool = False) -> str:
    """Warm up, time ``new`` tokens and 1 token; set ``extra_metrics`` and ``new_<short>``."""
    call = generate + ("attention_mask=mask, " if masked else "")
    return _code(
        f"""
        with torch.inference_mode():
            {call}max_new_tokens=2)
            t = time.perf_counter(); {call}max_new_tokens=1); t1 = time.perf_counter() - t
            t = time.perf_counter(); out = {call}max_new_tokens={new}); tn = time.perf_counter() - t
        new_{short} = out[:, prompt.shape[1]:]
        assert new_{short}.shape == ({rows}, {new}), new_{short}.shape
        extra_metrics = dict(globals().get("extra_metrics") or {{}})
        extra_metrics["decode_{short}_tok_s"] = {rows} * ({new} - 1) / max(tn - t1, 1e-9)
        extra_metrics["gen_{short}_tok_s"] = {rows} * {new} / tn
        """
    )


def decode_impl(imports: str, load: str, generate: str, vocab: int) -> Impl:
    steps = [("import_s", imports + prompt_code(vocab))]
    for dtype, short in DTYPES:
        free = "model = None\ngc.collect()\n" if dtype == "float32" else ""
        steps += [(f"load_{short}_s", free + load.format(dtype=dtype)),
                  (f"generate_{short}_s", timed_decode(short, generate, G1_NEW))]
    steps.append(("check_s", "logits = new_fp32[:, -8:].float()[None]\n"))
    return Impl(steps=tuple(steps))


# The fastest full read of the weights plain PyTorch does: best of these per pass.
READ_FLOOR = _code(
    f"""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings().weight
    tensors = [p.detach().reshape(-1) for p in model.parameters()]
    total = sum(t.numel() * t.element_size() for t in tensors)
    skip = [] if embedding.data_ptr() == output.data_ptr() else [embedding]
    skip += [p for n, p in model.named_parameters() if n.endswith(("wpe.weight", "position_embeddings.weight"))]
    per_token = total - sum(p.numel() * p.element_size() for p in skip)
    readers = {{
        "int32_max": lambda t: t.view(torch.int32).max() if t.numel() * t.element_size() % 4 == 0 else t.max(),
        "amax": lambda t: torch.amax(t),
        "sum": lambda t: torch.sum(t),
    }}
    best = {{}}
    with torch.inference_mode():
        for name, read in readers.items():
            for _ in range({READ_REPEATS}):
                t = time.perf_counter()
                for x in tensors:
                    read(x)
                best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
    fastest = min(best, key=best.get)
    extra_metrics = dict(globals().get("extra_metrics") or {{}})
    extra_metrics["read_{{short}}_gbs"] = total / best[fastest] / 1e9
    extra_metrics["decode_{{short}}_tok_s"] = total / best[fastest] / per_token
    extra_metrics["read_{{short}}_" + fastest] = 1.0
    """
)


def floor_impl() -> Impl:
    steps = [("import_s", OURS_IMPORT)]
    for dtype, short in DTYPES:
        free = "model = None\ngc.collect()\n" if dtype == "float32" else ""
        steps += [(f"load_{short}_s", free + OURS_LOAD.format(dtype=dtype)),
                  (f"read_{short}_s", f"short = {short!r}\n" + READ_FLOOR.replace("{short}", short))]
    return Impl(steps=tuple(steps))


G1_METRICS = ("decode_bf16_tok_s", "decode_fp32_tok_s", "gen_bf16_tok_s", "gen_fp32_tok_s",
              "read_bf16_gbs", "read_fp32_gbs", "load_bf16_s")


def g1_scenario(key: str, title: str, checkpoint: str, vocab: int) -> Scenario:
    return Scenario(
        key=key, title=title, checkpoint=checkpoint,
        impls={"ours": decode_impl(OURS_IMPORT, OURS_LOAD, OURS_GENERATE, vocab),
               "transformers": decode_impl(THEIRS_IMPORT, THEIRS_LOAD, THEIRS_GENERATE, vocab),
               "floor": floor_impl()},
        atol=0.5,  # the "logits" are the last 8 fp32 token ids: they must be equal
        timeout_s=1800, metrics=G1_METRICS,
        notes=f"tokens/s (higher is better): decode_* = {G1_NEW - 1} / (t({G1_NEW} tokens) - t(1 token)) after "
        f"a {G1_PROMPT}-token prompt; gen_* = {G1_NEW} / t({G1_NEW} tokens); floor decode_* = best full-read "
        "bandwidth (read_*_gbs) / bytes read per token; check = last 8 fp32 tokens",
    )


G1 = g1_scenario("G1", f"Llama 1.1B greedy decode at batch 1: {G1_NEW} new tokens after {G1_PROMPT}, bf16 and fp32",
                 LLAMA_1B_BF16.key, 32000)
G1G = g1_scenario("G1G", f"GPT-2-medium greedy decode at batch 1: {G1_NEW} new tokens after {G1_PROMPT}, "
                  "bf16 and fp32", GPT2_MEDIUM_FP32.key, 50257)


def prefill_impl(imports: str, load: str) -> Impl:
    return Impl(steps=(
        ("import_s", imports + prompt_code(32000, (G2_PROMPT,))),
        ("load_s", load.format(dtype="bfloat16")),
        ("prefill_s", _code(
            f"""
            with torch.inference_mode():
                model(prompt, use_cache=True)
                t = time.perf_counter(); logits = model(prompt, use_cache=True).logits; elapsed = time.perf_counter() - t
            extra_metrics = {{"prefill_tok_s": {G2_PROMPT} / elapsed}}
            """)),
    ))


G2 = Scenario(
    key="G2", title=f"Llama 1.1B bf16 prefill: one forward of a {G2_PROMPT}-token prompt at batch 1",
    checkpoint=LLAMA_1B_BF16.key,
    impls={"ours": prefill_impl(OURS_IMPORT, OURS_LOAD), "transformers": prefill_impl(THEIRS_IMPORT, THEIRS_LOAD)},
    atol=2e-2, timeout_s=1200, metrics=("prefill_tok_s", "prefill_s", "load_s"),
    notes=f"prefill_tok_s = {G2_PROMPT} / the second forward (use_cache=True, logits of every position); "
    "bf16 logits: atol 2e-2",
)


def batch_impl(imports: str, load: str, generate: str) -> Impl:
    return Impl(steps=(
        ("import_s", imports + prompt_code(32000, G3_LENGTHS)),
        ("load_s", load.format(dtype="bfloat16")),
        ("generate_s", timed_decode("bf16", generate, G3_NEW, rows=len(G3_LENGTHS), masked=True)
         + "logits = new_bf16[:, :2].float()[None]\n"),
    ))


G3 = Scenario(
    key="G3", title=f"Llama 1.1B bf16 greedy decode at batch {len(G3_LENGTHS)}, left padding "
    f"(prompts of {min(G3_LENGTHS)}..{max(G3_LENGTHS)} tokens), {G3_NEW} new tokens",
    checkpoint=LLAMA_1B_BF16.key,
    impls={"ours": batch_impl(OURS_IMPORT, OURS_LOAD, OURS_GENERATE),
           "transformers": batch_impl(THEIRS_IMPORT, THEIRS_LOAD, THEIRS_GENERATE)},
    atol=0.5, timeout_s=1800, metrics=("decode_bf16_tok_s", "gen_bf16_tok_s", "load_s"),
    notes=f"decode_bf16_tok_s = {len(G3_LENGTHS)} x {G3_NEW - 1} / (t({G3_NEW}) - t(1)); check = the first 2 "
    "new tokens of every row (bf16)",
)

BERT_BASE = Checkpoint(
    key="bert-base-random",
    description="BertModel(BertConfig()) (12 layers, hidden 768, 12 heads, ~110M params), fp32",
    build=_code(
        """
        import transformers
        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig()).save_pretrained(path)
        """
    ),
)


def bert_impl(imports: str, load: str) -> Impl:
    batch = _code(
        f"""
        lengths = torch.linspace({G4_MIN}, {G4_MAX}, {G4_BATCH}).round().long()
        mask = (torch.arange({G4_MAX})[None, :] < lengths[:, None]).long()
        ids = torch.randint(1000, 30000, ({G4_BATCH}, {G4_MAX}), generator=torch.Generator().manual_seed(0))
        ids = ids.masked_fill(mask == 0, 0)
        """
    )
    return Impl(steps=(
        ("import_s", "import statistics, time\nimport torch\n" + imports + batch),
        ("load_s", load),
        ("forward_s", _code(
            f"""
            times = []
            with torch.inference_mode():
                for i in range({G4_ITERS} + 1):
                    t = time.perf_counter()
                    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
                    times.append(time.perf_counter() - t)
            extra_metrics = {{"seq_per_s": {G4_BATCH} / statistics.median(times[1:])}}
            logits = out[-1:, :1, :]  # the shortest row's first token (a real one)
            """)),
    ))


G4 = Scenario(
    key="G4", title=f"BERT-base on {G4_BATCH} sequences of {G4_MIN}..{G4_MAX} tokens, right-padded",
    checkpoint=BERT_BASE.key,
    impls={
        "ours": bert_impl("from pretrained import BertModel\n", "model = BertModel.from_pretrained(path).eval()\n"),
        "transformers": bert_impl("import transformers\n", "model = transformers.BertModel.from_pretrained("
                                  "path, attn_implementation='sdpa').eval()\n"),
        "ours_packed": bert_impl("from pretrained import BertModel\n",
                                 "model = BertModel.from_pretrained(path).to_bettertransformer().eval()\n"),
    },
    atol=1e-4, metrics=("seq_per_s", "forward_s", "load_s"),
    notes=f"seq_per_s = {G4_BATCH} / median of {G4_ITERS} forwards (after one warm-up); ours = default SDPA on "
    "the padded batch; ours_packed = to_bettertransformer() (padding taken out); transformers = SDPA",
)
