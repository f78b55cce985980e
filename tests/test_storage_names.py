"""File-name rules of Hugging Face checkpoints (spec §2.3)."""

import pytest

from pretrained.storage.names import (
    add_variant,
    index_name,
    is_family_file,
    shard_names,
    weights_name,
)


@pytest.mark.parametrize(
    "name, variant, expected",
    [
        ("model.safetensors", "fp16", "model.fp16.safetensors"),
        ("pytorch_model.bin", "fp16", "pytorch_model.fp16.bin"),
        ("model.safetensors.index.json", "fp16", "model.safetensors.index.fp16.json"),
        ("pytorch_model.bin.index.json", "v1", "pytorch_model.bin.index.v1.json"),
        ("model.safetensors", None, "model.safetensors"),
        ("model.safetensors", "", "model.safetensors"),
    ],
)
def test_add_variant(name, variant, expected):
    assert add_variant(name, variant) == expected


def test_weights_and_index_names():
    assert weights_name("safetensors") == "model.safetensors"
    assert weights_name("bin", "fp16") == "pytorch_model.fp16.bin"
    assert index_name("safetensors") == "model.safetensors.index.json"
    assert index_name("safetensors", "fp16") == "model.safetensors.index.fp16.json"
    assert index_name("bin", "fp16") == "pytorch_model.bin.index.fp16.json"


def test_shard_names():
    assert shard_names("safetensors", None, 1) == ["model.safetensors"]
    assert shard_names("safetensors", None, 3) == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    assert shard_names("safetensors", "fp16", 3)[0] == "model.fp16-00001-of-00003.safetensors"
    assert shard_names("bin", None, 3)[2] == "pytorch_model-00003-of-00003.bin"
    assert shard_names("bin", "v1", 8)[2] == "pytorch_model.v1-00003-of-00008.bin"


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_shard_names_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        shard_names("safetensors", None, bad)


def test_bad_format_and_variant():
    with pytest.raises(ValueError, match="format"):
        weights_name("pt")
    with pytest.raises(ValueError, match="variant"):
        weights_name("safetensors", "../x")


@pytest.mark.parametrize(
    "filename, fmt, variant, expected",
    [
        ("model.safetensors", "safetensors", None, True),
        ("model-00001-of-00003.safetensors", "safetensors", None, True),
        ("model-00007-of-00009.safetensors", "safetensors", None, True),
        ("model.safetensors.index.json", "safetensors", None, True),
        # other variants / formats / unrelated files are never family
        ("model.fp16.safetensors", "safetensors", None, False),
        ("model.fp16-00001-of-00002.safetensors", "safetensors", None, False),
        ("model.safetensors.index.fp16.json", "safetensors", None, False),
        ("pytorch_model.bin", "safetensors", None, False),
        ("pytorch_model-00001-of-00002.bin", "safetensors", None, False),
        ("pytorch_model.bin.index.json", "safetensors", None, False),
        ("config.json", "safetensors", None, False),
        ("tokenizer.json", "safetensors", None, False),
        ("model-1-of-2.safetensors", "safetensors", None, False),
        ("adapter_model.safetensors", "safetensors", None, False),
        ("xmodel.safetensors", "safetensors", None, False),
        # the variant family
        ("model.fp16.safetensors", "safetensors", "fp16", True),
        ("model.fp16-00001-of-00002.safetensors", "safetensors", "fp16", True),
        ("model.safetensors.index.fp16.json", "safetensors", "fp16", True),
        ("model.safetensors", "safetensors", "fp16", False),
        ("model-00001-of-00002.safetensors", "safetensors", "fp16", False),
        ("model.safetensors.index.json", "safetensors", "fp16", False),
        ("model.bf16.safetensors", "safetensors", "fp16", False),
        # pickle family
        ("pytorch_model.bin", "bin", None, True),
        ("pytorch_model-00002-of-00002.bin", "bin", None, True),
        ("pytorch_model.bin.index.json", "bin", None, True),
        ("model.safetensors", "bin", None, False),
        ("pytorch_model.fp16.bin", "bin", None, False),
        ("pytorch_model.fp16.bin", "bin", "fp16", True),
        ("pytorch_model.bin.index.fp16.json", "bin", "fp16", True),
    ],
)
def test_is_family_file(filename, fmt, variant, expected):
    assert is_family_file(filename, fmt, variant) is expected


def test_every_shard_name_is_family():
    for fmt in ("safetensors", "bin"):
        for variant in (None, "fp16"):
            for name in shard_names(fmt, variant, 12) + [index_name(fmt, variant)]:
                assert is_family_file(name, fmt, variant)
                other = "bf16" if variant else "fp16"
                assert not is_family_file(name, fmt, other)
                assert not is_family_file(name, "bin" if fmt == "safetensors" else "safetensors", variant)
