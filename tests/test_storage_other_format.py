"""A save in one format removes the other format's weights of the same variant (issue 13, item 6).

The loader prefers safetensors: a ``.bin`` save that left ``model.safetensors``
in the folder would make the next load return the *old* weights, silently.
Transformers 4.37 has that flaw (5.x writes safetensors only); we remove the
other format's single file, shards and index of the same variant, in the same
atomic swap as the rest of the save. Other variants are untouched.
"""

import errno
import json
import os

import pytest
import torch

import pretrained.storage.atomic as atomic
from pretrained.errors import SaveError
from pretrained.storage import Checkpoint, resolve_checkpoint, save_checkpoint
from pretrained.storage.names import FORMATS, is_family_file
from pretrained.storage.writer import LazyTensor
from test_storage_writer import swap_mode  # noqa: F401  (the fixture: with renameat2 and with the fallback)

OTHER = {"safetensors": "bin", "bin": "safetensors"}


def state(value, n=4):
    return {f"layer.{i}.weight": torch.full((4, 4), float(value)) for i in range(n)}


def save(folder, value, fmt, sharded, variant, **kwargs):
    return save_checkpoint(folder, kwargs.pop("sd", None) or state(value), safe_serialization=fmt == "safetensors",
                           variant=variant, max_shard_size=64 if sharded else "5GB", **kwargs)


def listing(folder):
    return sorted(os.listdir(folder))


def weights_of(folder, variant):
    return [name for name in listing(folder) if any(is_family_file(name, fmt, variant) for fmt in FORMATS)]


def values(folder, **kwargs):
    """The one value every tensor of the checkpoint ``resolve_checkpoint(folder, **kwargs)`` finds holds."""
    with Checkpoint(resolve_checkpoint(folder, **kwargs)) as ckpt:
        found = {ckpt.get(name).unique().tolist()[0] for name in ckpt.keys()}
        assert sorted(ckpt.keys()) == sorted(state(0)), ckpt.keys()
    assert len(found) == 1, f"mixed versions {found}"
    return found.pop()


def snapshot(folder, keep):
    return {name: (folder / name).read_bytes() for name in listing(folder) if keep(name)}


@pytest.mark.parametrize("variant", [None, "fp16"])
@pytest.mark.parametrize("new_sharded", [False, True], ids=["new-single", "new-sharded"])
@pytest.mark.parametrize("old_sharded", [False, True], ids=["old-single", "old-sharded"])
@pytest.mark.parametrize("old_fmt", FORMATS, ids=[f"{fmt}-then-{OTHER[fmt]}" for fmt in FORMATS])
def test_a_save_removes_the_other_formats_weights_of_its_variant(tmp_path, swap_mode, old_fmt, old_sharded,
                                                                 new_sharded, variant):
    folder = tmp_path / "ck"
    others = {"v2": "safetensors", "v3": "bin"}  # other variants, one per format: never touched
    for index, (other, fmt) in enumerate(others.items()):
        save(folder, 7 + index, fmt, True, other)
    save(folder, 1, old_fmt, old_sharded, variant, extra_files={"config.json": "{}"})
    (folder / "tokenizer.json").write_text("tok")
    kept = snapshot(folder, lambda name: not weights_of_variant(name, variant))
    new_fmt = OTHER[old_fmt]

    written = save(folder, 2, new_fmt, new_sharded, variant)

    assert weights_of(folder, variant) == sorted(written)  # nothing of the old format is left
    assert values(folder, variant=variant) == 2  # the default preference (safetensors first) finds the new ones
    assert values(folder, variant=variant, use_safetensors=new_fmt == "safetensors") == 2
    with pytest.raises(Exception):
        resolve_checkpoint(folder, variant=variant, use_safetensors=old_fmt == "safetensors")
    assert snapshot(folder, lambda name: not weights_of_variant(name, variant)) == kept
    for index, other in enumerate(others):
        assert values(folder, variant=other) == 7 + index
    assert not [name for name in os.listdir(tmp_path) if ".pretrained-tmp-" in name]


def weights_of_variant(name, variant):
    return any(is_family_file(name, fmt, variant) for fmt in FORMATS)


@pytest.mark.parametrize("variant", [None, "fp16"])
@pytest.mark.parametrize("old_fmt", FORMATS, ids=[f"{fmt}-then-{OTHER[fmt]}" for fmt in FORMATS])
def test_a_save_failing_part_way_leaves_the_other_formats_checkpoint_loadable(tmp_path, swap_mode, old_fmt, variant):
    folder = tmp_path / "ck"
    save(folder, 1, old_fmt, True, variant, extra_files={"config.json": "old"})
    before = snapshot(folder, lambda name: True)

    def failing():
        raise RuntimeError("disk on fire")

    sd = {**state(2), "layer.3.weight": LazyTensor(torch.float32, (4, 4), failing)}  # the last shard fails
    with pytest.raises(SaveError, match="disk on fire"):
        save(folder, 2, OTHER[old_fmt], True, variant, sd=sd, extra_files={"config.json": "new"})
    assert snapshot(folder, lambda name: True) == before
    assert values(folder, variant=variant) == 1
    assert not [name for name in os.listdir(tmp_path) if ".pretrained-tmp-" in name]


def test_extra_files_may_not_be_named_like_the_other_formats_weights(tmp_path):
    with pytest.raises(ValueError, match="model.safetensors"):
        save_checkpoint(tmp_path / "ck", state(1), safe_serialization=False, extra_files={"model.safetensors": "x"})
    with pytest.raises(ValueError, match="pytorch_model.bin.index.json"):
        save_checkpoint(tmp_path / "ck", state(1), extra_files={"pytorch_model.bin.index.json": "{}"})
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("old_fmt", FORMATS, ids=[f"{fmt}-then-{OTHER[fmt]}" for fmt in FORMATS])
def test_fallback_removes_indexes_before_shards_so_every_step_loads(tmp_path, monkeypatch, old_fmt):
    """Without RENAME_EXCHANGE files are replaced one by one; at every deletion the folder
    still loads one complete version (an index never names a shard already deleted)."""
    folder = tmp_path / "ck"
    save(folder, 1, old_fmt, True, None)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    seen, real_unlink = [], os.unlink

    def checking_unlink(path, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(folder):
            seen.append((os.path.basename(path), values(folder)))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", checking_unlink)
    save(folder, 2, OTHER[old_fmt], True, None)
    monkeypatch.undo()
    assert len(seen) == 5  # the old index and four old shards
    assert seen[0][0].endswith(".index.json")
    assert values(folder) == 2


def test_save_pretrained_bin_after_safetensors_loads_the_new_weights(tmp_path):
    import pretrained

    config = pretrained.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = pretrained.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert "model.safetensors" not in os.listdir(tmp_path) and "pytorch_model.bin" in os.listdir(tmp_path)
    reloaded = pretrained.GPT2LMHeadModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.transformer.wte.weight, model.transformer.wte.weight)


def test_transformers_437_keeps_the_stale_safetensors_file(ref437):
    """The reference's behaviour, which we deliberately do not follow (docs/guide.md, Saving)."""
    out = ref437("""
        import json, torch
        config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
        model = transformers.GPT2LMHeadModel(config)
        model.save_pretrained(OUT / "ck")
        with torch.no_grad():
            model.transformer.wte.weight.add_(1.0)
        model.save_pretrained(OUT / "ck", safe_serialization=False)
        reloaded = transformers.GPT2LMHeadModel.from_pretrained(OUT / "ck")
        same = torch.equal(reloaded.transformer.wte.weight, model.transformer.wte.weight)
        (OUT / "result.json").write_text(json.dumps({"files": sorted(p.name for p in (OUT / "ck").iterdir()),
                                                     "loads_new": same}))
    """)
    result = json.loads((out / "result.json").read_text())
    assert {"model.safetensors", "pytorch_model.bin"} <= set(result["files"])
    assert result["loads_new"] is False
