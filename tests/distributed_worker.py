"""One rank of the multi-process tests (tests/test_distributed.py); run by torchrun or by
the test's own launcher. ``python distributed_worker.py SCENARIO WORKDIR``.

Each rank writes what it saw to ``WORKDIR/<scenario>-<rank>.json``; the test asserts.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from pretrained import BertModel, GPT2LMHeadModel, LlamaForCausalLM, load_sharded
from pretrained.storage import slices
from pretrained.storage.slices import READ_COUNTER

CLASSES = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel, "bert": BertModel}
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("DIST_TEST_TIMEOUT", "20")))


def ids():
    return torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))


def checkpoint_bytes(path, world, split_names):
    """Bytes a rank must read: split tensors / world, every other tensor whole."""
    from pretrained.storage.safetensors import read_header

    header = read_header(os.path.join(path, "model.safetensors"))
    return sum(info.nbytes // world if name in split_names else info.nbytes for name, info in header.tensors.items())


def tp_checks(work, arch, world, rank, out):
    cls, path = CLASSES[arch], os.path.join(work, arch)
    READ_COUNTER.reset()
    model = cls.from_pretrained(path, tp_plan="auto")
    read = READ_COUNTER.bytes
    ref = cls.from_pretrained(path)
    split = {n for n, p in model.named_parameters() if type(p).__name__ == "DTensor" and p.placements[0].is_shard()}
    local_ok = all(p.to_local().numel() * world == p.numel() for n, p in model.named_parameters() if n in split)
    with torch.no_grad():
        got, want = model(ids()), ref(ids())
    key = "last_hidden_state" if arch == "bert" else "logits"
    result = {"read": read, "expected_read": checkpoint_bytes(path, world, split), "split": sorted(split),
              "local_ok": local_ok, "diff": float((got[key] - want[key]).abs().max())}
    if arch != "bert":
        result["generate_equal"] = bool(torch.equal(model.generate(ids(), max_new_tokens=6, do_sample=False),
                                                    ref.generate(ids(), max_new_tokens=6, do_sample=False)))
    model.save_pretrained(os.path.join(work, f"tp-{arch}-{world}"), is_main_process=rank == 0, max_shard_size="20KB")
    out[f"tp-{arch}"] = result
    return model, ref


def fsdp_checks(work, rank, world, out):
    from torch.distributed.fsdp import fully_shard

    path = os.path.join(work, "llama")
    ref = LlamaForCausalLM.from_pretrained(path)
    torch.manual_seed(5)
    model = LlamaForCausalLM(ref.config)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    READ_COUNTER.reset()
    report = load_sharded(model, path)
    read = READ_COUNTER.bytes
    local = sum(p.to_local().nbytes if type(p).__name__ == "DTensor" else p.nbytes for p in model.parameters())
    with torch.no_grad():
        diff = float((model(ids()).logits - ref(ids()).logits).abs().max())
    try:
        load_sharded(model, path, torch_dtype="bfloat16")
        dtype_error = None
    except ValueError as err:
        dtype_error = str(err)
    model.save_pretrained(os.path.join(work, "fsdp-llama"), is_main_process=rank == 0)
    out["fsdp"] = {"read": read, "local_param_bytes": local, "diff": diff, "report": report,
                   "dtype_error": dtype_error}


def dcp_checks(work, rank, out):
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter

    path, written = os.path.join(work, "llama"), os.path.join(work, "dcp-written")
    ref = LlamaForCausalLM.from_pretrained(path)
    if rank == 0:
        dcp.save(ref.state_dict(), storage_writer=HuggingFaceStorageWriter(written), no_dist=True)
        shutil.copy(os.path.join(path, "config.json"), written)
    dist.barrier()
    model = LlamaForCausalLM.from_pretrained(written, tp_plan="auto")
    with torch.no_grad():
        diff_written = float((model(ids()).logits - ref(ids()).logits).abs().max())
    ours = {k: torch.zeros_like(v) for k, v in ref.state_dict().items()}
    dcp.load(ours, storage_reader=HuggingFaceStorageReader(os.path.join(work, "tp-llama-2")), no_dist=True)
    equal = all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())
    out["dcp"] = {"files": sorted(os.listdir(written)), "diff_written": diff_written, "reader_equal": equal}


def expect_error(out, name, call):
    start = time.monotonic()
    try:
        call()
        out[name] = {"error": None}
    except Exception as err:  # noqa: BLE001 - the test inspects type and message
        out[name] = {"error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - start}


def scenario_main(work, rank, world, out):
    for arch in ("llama", "gpt2", "bert"):
        tp_checks(work, arch, world, rank, out)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    model = LlamaForCausalLM.from_pretrained(os.path.join(work, "llama"), device_mesh=mesh)
    out["mesh"] = {"tp_size": model.tp_size}
    fsdp_checks(work, rank, world, out)
    dcp_checks(work, rank, out)
    expect_error(out, "missing_module", lambda: LlamaForCausalLM.from_pretrained(
        os.path.join(work, "llama"), tp_plan={"model.layers.*.self_attn.qkv_proj": "colwise"}))


def scenario_four(work, rank, world, out):
    tp_checks(work, "gpt2", world, rank, out)
    expect_error(out, "heads", lambda: LlamaForCausalLM.from_pretrained(os.path.join(work, "llama"), tp_plan="auto"))


def _die_after(calls, function_owner, name):
    """Replace ``function_owner.name`` so this process SIGKILLs itself on call number ``calls``."""
    original, seen = getattr(function_owner, name), [0]

    def dying(*args, **kwargs):
        seen[0] += 1
        if seen[0] >= calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(function_owner, name, dying)


def scenario_kill_load(work, rank, world, out):
    if rank == 1:
        from pretrained.distributed import tensor_parallel

        _die_after(3, tensor_parallel, "read_slice")
    expect_error(out, "load", lambda: LlamaForCausalLM.from_pretrained(os.path.join(work, "llama"), tp_plan="auto"))


def scenario_kill_save(work, rank, world, out):
    from pretrained.distributed import save

    model = LlamaForCausalLM.from_pretrained(os.path.join(work, "llama"), tp_plan="auto")
    if rank == 0:
        _die_after(4, save, "gather_to")
    expect_error(out, "save", lambda: model.save_pretrained(os.path.join(work, "previous"), is_main_process=rank == 0,
                                                            max_shard_size="20KB"))


def main():
    scenario, work = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo", timeout=TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    try:
        globals()[f"scenario_{scenario}"](work, rank, world, out)
    finally:
        with open(os.path.join(work, f"{scenario}-{rank}.json"), "w") as f:
            json.dump(out, f, indent=1, default=str)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
