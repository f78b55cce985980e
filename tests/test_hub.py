"""Hub repo ids through huggingface_hub: the cache, offline mode, revisions, push_to_hub.

No network here: a Hub cache is laid out by hand (as huggingface_hub writes it)
and loaded with HF_HUB_OFFLINE=1 (set by conftest); uploads go to a fake HfApi.
"""

import shutil

import pytest
import torch

from helpers import assert_close

from pretrained import AutoConfig, AutoModelForCausalLM, GPT2LMHeadModel
from pretrained.errors import CheckpointNotFoundError

SHA = "0123456789abcdef0123456789abcdef01234567"


def make_cache(cache, source, repo="acme/tiny-gpt2", sha=SHA, ref="main"):
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(sha)
    snapshot = root / "snapshots" / sha
    shutil.copytree(source, snapshot, dirs_exist_ok=True)
    return snapshot


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_repo_id_loads_from_the_cache_offline(hf_gpt2_dirs, tmp_path, input_ids, layout):
    make_cache(tmp_path, hf_gpt2_dirs[layout])
    model = AutoModelForCausalLM.from_pretrained("acme/tiny-gpt2", cache_dir=tmp_path)
    assert model.name_or_path == "acme/tiny-gpt2"
    with torch.no_grad():
        assert_close(model(input_ids).logits, hf_gpt2_dirs["model"](input_ids).logits, atol=1e-5)
    assert AutoConfig.from_pretrained("acme/tiny-gpt2", cache_dir=tmp_path).n_layer == 2


def test_revision_and_local_files_only(hf_gpt2_dirs, tmp_path, monkeypatch):
    make_cache(tmp_path, hf_gpt2_dirs["single"], ref="v1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = GPT2LMHeadModel.from_pretrained("acme/tiny-gpt2", cache_dir=tmp_path, revision="v1",
                                            local_files_only=True, token="hf_dummy")
    assert isinstance(model, GPT2LMHeadModel)
    with pytest.raises(CheckpointNotFoundError, match="acme/tiny-gpt2"):
        GPT2LMHeadModel.from_pretrained("acme/tiny-gpt2", cache_dir=tmp_path, revision="v2", local_files_only=True)


def test_uncached_repo_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="acme/absent"):
        AutoModelForCausalLM.from_pretrained("acme/absent", cache_dir=tmp_path)


def test_push_to_hub_uploads_the_saved_folder(hf_gpt2_dirs, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, create_pr=False, revision=None):
            import os

            calls.append(("upload", repo_id, sorted(os.listdir(folder_path)), commit_message))
            return "ok"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = AutoModelForCausalLM.from_pretrained(hf_gpt2_dirs["single"])
    assert model.push_to_hub("acme/pushed", token="tok", max_shard_size=40_000) == "ok"
    upload = [c for c in calls if c[0] == "upload"][0]
    assert upload[1] == "acme/pushed" and "model.safetensors.index.json" in upload[2] and "config.json" in upload[2]
    assert ("init", "tok") in calls and ("create", "acme/pushed", True) in calls
    calls.clear()
    model.save_pretrained(tmp_path / "local-name", push_to_hub=True, token="tok")
    assert [c for c in calls if c[0] == "upload"][0][1] == "local-name"
    assert (tmp_path / "local-name" / "model.safetensors").is_file()
