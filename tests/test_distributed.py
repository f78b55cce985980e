"""More than one process (issue 18): tensor-parallel loading, FSDP2 shards, saving back.

Ranks run on the CPU with gloo on 127.0.0.1 only. Each launch runs many checks
(tests/distributed_worker.py writes what every rank saw to JSON); launches are
bounded by a subprocess timeout and their whole process group is killed on
failure. The kill scenarios start the ranks with torchrun's environment
themselves, since torchrun would SIGTERM the survivors the moment one rank dies
and hide whether they end with a clear error on their own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_close

WORKER = Path(__file__).with_name("distributed_worker.py")
SRC = Path(__file__).resolve().parent.parent / "src"
LAUNCH_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", PRETRAINED_NO_PROGRESS="1")
    env.update(extra)
    return env


def _wait(procs, timeout):
    """Wait for every process; on timeout kill every process group. Returns their outputs."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"distributed launch did not finish in {timeout}s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return outputs


def torchrun(scenario: str, work: Path, nproc: int):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(WORKER), scenario, str(work)]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output = _wait([proc], LAUNCH_TIMEOUT)[0]
    assert proc.returncode == 0, output[-6000:]
    return [json.loads((work / f"{scenario}-{rank}.json").read_text()) for rank in range(nproc)]


def launch_ranks(scenario: str, work: Path, nproc: int):
    """Start ``nproc`` ranks with torchrun's environment (no agent); return their return codes."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), scenario, str(work)],
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DIST_TEST_TIMEOUT="15"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for r in range(nproc)]
    outputs = _wait(procs, LAUNCH_TIMEOUT)
    return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny Llama (GQA: 4 heads, 2 kv heads), GPT-2 and BERT checkpoints written by Transformers."""
    import transformers

    folder = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).save_pretrained(folder / "llama")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64)).save_pretrained(folder / "gpt2")
    transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64), add_pooling_layer=True).save_pretrained(folder / "bert")
    return folder


@pytest.fixture(scope="module")
def two_ranks(work):
    return torchrun("main", work, 2)


def _same_weights(saved: Path, original: Path):
    from pretrained.storage.checkpoint import Checkpoint
    from pretrained.storage.resolve import resolve_checkpoint

    with Checkpoint(resolve_checkpoint(saved)) as a, Checkpoint(resolve_checkpoint(original)) as b:
        assert set(a.keys()) <= set(b.keys())
        for key in b.keys():
            if key in a.keys():
                assert torch.equal(a.get(key), b.get(key)), key


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_tp_forward_generate_and_bytes_read(two_ranks, arch):
    for rank in two_ranks:
        result = rank[f"tp-{arch}"]
        assert result["diff"] <= 1e-5
        assert result["local_ok"] and result["split"]
        assert result["read"] == result["expected_read"]      # the slices' bytes and the replicated tensors, no more
        if arch != "bert":
            assert result["generate_equal"]


def test_tp_save_is_the_hf_layout_loadable_here_and_by_transformers(two_ranks, work):
    import transformers

    from pretrained import AutoModel, AutoModelForCausalLM

    for arch, ref_class in (("llama", transformers.LlamaForCausalLM), ("gpt2", transformers.GPT2LMHeadModel),
                            ("bert", transformers.BertModel)):
        saved = work / f"tp-{arch}-2"
        assert (saved / "model.safetensors.index.json").is_file()   # max_shard_size="20KB": several shards
        _same_weights(saved, work / arch)
        ours = (AutoModel if arch == "bert" else AutoModelForCausalLM).from_pretrained(saved)
        theirs = ref_class.from_pretrained(saved).eval()
        assert json.loads((saved / "config.json").read_text())["architectures"] == [type(ours).__name__]
        ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            key = "last_hidden_state" if arch == "bert" else "logits"
            assert_close(ours(ids)[key], theirs(ids)[key], atol=1e-4)


def test_device_mesh_and_plan_errors(two_ranks):
    for rank in two_ranks:
        assert rank["mesh"]["tp_size"] == 2
        assert "qkv_proj" in rank["missing_module"]["error"] and "names no module" in rank["missing_module"]["error"]


def test_fsdp2_load_sharded_reads_its_rows_and_saves(two_ranks, work):
    from pretrained.storage.safetensors import read_header

    total = sum(i.nbytes for i in read_header(str(work / "llama" / "model.safetensors")).tensors.values())
    reads = [rank["fsdp"]["read"] for rank in two_ranks]
    for rank in two_ranks:
        fsdp = rank["fsdp"]
        assert fsdp["diff"] == 0.0 and fsdp["report"] == {"missing_keys": [], "unexpected_keys": []}
        assert fsdp["read"] == fsdp["local_param_bytes"]      # exactly this rank's rows
        assert "build the model in that dtype" in fsdp["dtype_error"]
    assert sum(reads) == total
    _same_weights(work / "fsdp-llama", work / "llama")
    config = json.loads((work / "fsdp-llama" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]    # not FSDP's FSDPLlamaForCausalLM


def test_torch_hf_storage_interop(two_ranks):
    for rank in two_ranks:
        dcp = rank["dcp"]
        assert "model.safetensors.index.json" in dcp["files"]
        assert dcp["diff_written"] <= 1e-5 and dcp["reader_equal"]


def test_four_ranks_gpt2_and_heads_not_divisible(work):
    ranks = torchrun("four", work, 4)
    for rank in ranks:
        result = rank["tp-gpt2"]
        assert result["diff"] <= 1e-5 and result["generate_equal"] and result["read"] == result["expected_read"]
        assert "num_key_value_heads = 2 is not divisible by the world size 4" in rank["heads"]["error"]
    _same_weights(work / "tp-gpt2-4", work / "gpt2")


def test_rank_killed_mid_load_ends_every_rank_with_a_clear_error(work):
    codes, outputs = launch_ranks("kill_load", work, 2)
    assert codes[1] == -signal.SIGKILL
    survivor = json.loads((work / "kill_load-0.json").read_text())["load"]
    assert survivor["error"].startswith("DistributedError: tensor-parallel from_pretrained: another rank"), outputs[0]
    assert survivor["seconds"] < 60


def test_rank_killed_mid_save_leaves_the_previous_checkpoint(work):
    from pretrained import LlamaForCausalLM

    previous = LlamaForCausalLM.from_pretrained(work / "llama")
    previous.save_pretrained(work / "previous")
    before = {p.name: p.read_bytes() for p in (work / "previous").iterdir() if p.is_file()}
    codes, outputs = launch_ranks("kill_save", work, 2)
    assert codes[0] == -signal.SIGKILL                          # the writer died part way
    survivor = json.loads((work / "kill_save-1.json").read_text())["save"]
    assert survivor["error"].startswith("DistributedError: save_pretrained of a distributed model: the writing rank 0 "
                                        "failed, died or timed out"), outputs[1]
    assert survivor["seconds"] < 60
    after = {p.name: p.read_bytes() for p in (work / "previous").iterdir() if p.is_file()}
    assert after == before
    again = LlamaForCausalLM.from_pretrained(work / "previous")
    for name, tensor in previous.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor)
