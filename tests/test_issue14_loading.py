"""Issue 14, loading: the request object, every load keyword honoured or refused,
``offload_buffers``, ``save_pretrained`` on a copy of the config, one table of auto class names."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap

import pytest
import torch
from torch import nn

import pretrained
from helpers import assert_close
from pretrained import BertForMaskedLM, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel
from pretrained.modeling.load_request import LoadRequest


class BufferConfig(PretrainedConfig):
    model_type = "buffer-toy"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.register_buffer("scale", torch.full((width,), 2.0))              # persistent: in the checkpoint
        self.register_buffer("shift", torch.ones(width), persistent=False)    # not saved

    def forward(self, x):
        return self.lin(x) * self.scale + self.shift


class BufferModel(PreTrainedModel):
    config_class = BufferConfig

    def __init__(self, config):
        super().__init__(config)
        self.a, self.b = Block(config.width), Block(config.width)
        self.post_init()

    def forward(self, x):
        return self.b(self.a(x))


DISK_MAP = {"a": "cpu", "b": "disk"}


@pytest.fixture(scope="module")
def buffer_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = BufferModel(BufferConfig())
    with torch.no_grad():
        model.b.scale.copy_(torch.arange(4.0))  # not the constructor's value: it must come from the file
    folder = tmp_path_factory.mktemp("buffers")
    model.save_pretrained(folder)
    return folder, model


# --------------------------------------------------------------------------- offload_buffers


@pytest.mark.parametrize("offload_buffers", [False, True])
def test_offload_buffers_offloads_persistent_buffers_as_accelerate_does(buffer_dir, tmp_path, offload_buffers):
    import accelerate

    folder, original = buffer_dir
    x = torch.randn(3, 4)
    expected = original(x)
    reference = BufferModel.from_pretrained(folder)
    accelerate.dispatch_model(reference, device_map=DISK_MAP, main_device="cpu", offload_dir=tmp_path / "acc",
                              offload_buffers=offload_buffers)
    model = BufferModel.from_pretrained(folder, device_map=DISK_MAP, offload_buffers=offload_buffers)
    for name in ("b.scale", "b.shift", "b.lin.weight", "a.scale"):
        ours, theirs = model.get_buffer(name) if "lin" not in name else model.get_parameter(name), \
            reference.get_buffer(name) if "lin" not in name else reference.get_parameter(name)
        assert ours.device.type == theirs.device.type, name
    assert (model.b.scale.device.type == "meta") is offload_buffers
    with torch.no_grad():
        assert_close(model(x), expected, atol=1e-6)
        assert_close(model(x), reference(x), atol=1e-6)
    assert (model.b.scale.device.type == "meta") is offload_buffers  # released again after the forward


def test_offload_buffers_of_a_bin_checkpoint_go_to_the_offload_folder(buffer_dir, tmp_path):
    folder, original = buffer_dir
    original.save_pretrained(tmp_path / "bin", safe_serialization=False)
    model = BufferModel.from_pretrained(tmp_path / "bin", device_map=DISK_MAP, offload_buffers=True,
                                        offload_folder=tmp_path / "offload")
    assert (tmp_path / "offload" / "b.scale.safetensors").is_file()
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert_close(model(x), original(x), atol=1e-6)


# --------------------------------------------------------------------------- the request


def test_from_pretrained_reads_as_its_phases():
    source = textwrap.dedent(inspect.getsource(PreTrainedModel.from_pretrained))
    function = ast.parse(source).body[0]
    body = function.body[1:]  # the docstring not counted
    assert body[-1].end_lineno - body[0].lineno + 1 <= 40
    called = [node.func.id for node in ast.walk(function) if isinstance(node, ast.Call) and
              isinstance(node.func, ast.Name)]
    for phase in ("resolve_config", "open_weights", "build_model", "plan_model_placement", "load_model_weights",
                  "finish_loading"):
        assert phase in called, phase


def test_request_is_frozen_and_parses_every_keyword():
    request = LoadRequest.parse(None, (), {"torch_dtype": "bfloat16", "device_map": "cpu"},
                                {"offload_buffers": True, "verify": True, "subfolder": "sub", "hidden_size": 8,
                                 "use_auth_token": "x", "load_in_8bit": True})
    assert request.dtype is torch.bfloat16 and request.device_map == "cpu" and request.verify
    assert request.offload_buffers and request.hub["subfolder"] == "sub"
    assert dict(request.quantization) == {"load_in_8bit": True} and dict(request.extra) == {"hidden_size": 8}
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.device_map = "auto"
    with pytest.raises(ValueError, match="TensorFlow"):
        LoadRequest.parse(None, (), {}, {"from_tf": True})


@pytest.mark.parametrize("keyword", ["offload_bufers", "max_new_tokns"])
def test_unknown_load_keywords_are_refused_by_name(hf_gpt2_dirs, keyword):
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{keyword}'"):
        GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], **{keyword: 1})
    config = pretrained.GPT2Config.from_pretrained(hf_gpt2_dirs["single"])
    with pytest.raises(TypeError, match=keyword):
        GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"], config=config, **{keyword: 1})


def test_config_fields_and_init_arguments_still_pass(hf_bert_dirs):
    model = BertForMaskedLM.from_pretrained(hf_bert_dirs["single"], hidden_dropout_prob=0.0)
    assert model.config.hidden_dropout_prob == 0.0
    base = pretrained.BertModel.from_pretrained(hf_bert_dirs["base"], add_pooling_layer=False)
    assert base.pooler is None


def test_every_api_load_keyword_is_a_parameter_or_a_request_field():
    signature = inspect.signature(PreTrainedModel.from_pretrained).parameters
    fields = {f.name for f in dataclasses.fields(LoadRequest)}
    for keyword in ("config", "cache_dir", "ignore_mismatched_sizes", "force_download", "local_files_only", "token",
                    "revision", "use_safetensors", "torch_dtype", "dtype", "device_map", "max_memory",
                    "offload_folder", "offload_state_dict", "low_cpu_mem_usage", "variant", "output_loading_info",
                    "trust_remote_code", "attn_implementation"):
        assert keyword in signature, keyword
    for keyword in ("offload_buffers", "state_dict", "verify", "tp_plan", "device_mesh", "quantization"):
        assert keyword in fields, keyword


# --------------------------------------------------------------------------- save_pretrained


def test_save_pretrained_leaves_the_config_alone(hf_gpt2_dirs, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"])
    model.config.architectures = None
    model.config.torch_dtype = None
    before = model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert model.config.to_dict() == before
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["GPT2LMHeadModel"] and written["torch_dtype"] == "float32"


def test_save_pretrained_refuses_unknown_keywords_before_writing(hf_gpt2_dirs, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(hf_gpt2_dirs["single"])
    with pytest.raises(TypeError, match="'safe_serialisation'"):
        model.save_pretrained(tmp_path / "out", safe_serialisation=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- one table of auto class names


def test_auto_class_names_are_one_table():
    from pretrained import auto
    from pretrained.modeling.custom_code import AUTO_MODEL_CLASSES

    assert set(auto._MODELS) == set(AUTO_MODEL_CLASSES)
    assert all(getattr(auto, name)._auto_name == name for name in AUTO_MODEL_CLASSES)
    with pytest.raises(ValueError, match="AutoTokenizer is not a valid auto class"):
        BufferModel.register_for_auto_class("AutoTokenizer")


def test_modeling_does_not_import_auto():
    import pathlib

    folder = pathlib.Path(pretrained.__file__).parent / "modeling"
    for file in folder.glob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                assert not (node.level == 2 and ("auto" in names or (node.module or "").startswith("auto"))), file
                assert not (node.module or "").startswith("pretrained.auto"), file
