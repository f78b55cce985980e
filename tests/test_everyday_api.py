"""Small 4.37 API pieces: ``config.to_diff_dict()``, ``add_model_tags``, ``framework``, ``is_parallelizable``."""

import json

import pytest

from pretrained import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, T5Config

CASES = {  # name -> (class name, keywords); built the same way on both sides
    "bert": ("BertConfig", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=37, pad_token_id=1,
                                architectures=["BertModel"])),
    "bert_default": ("BertConfig", {}),
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=32, bos_token_id=98, tie_word_embeddings=False)),
    "llama": ("LlamaConfig", dict(hidden_size=32, rope_scaling={"type": "linear", "factor": 2.0})),
    "t5": ("T5Config", dict(d_model=32, is_decoder=True)),
}
OURS = {"BertConfig": BertConfig, "GPT2Config": GPT2Config, "LlamaConfig": LlamaConfig, "T5Config": T5Config}


def test_to_diff_dict_keeps_what_transformers_437_keeps(ref437):
    out = ref437(f"""
        import json, transformers
        cases = {CASES!r}
        result = {{}}
        for name, (cls, kwargs) in cases.items():
            config = getattr(transformers, cls)(**kwargs)
            result[name] = [config.to_diff_dict(), config.to_dict()]
        (OUT / "diff.json").write_text(json.dumps(result))
    """)
    ref = json.loads((out / "diff.json").read_text())
    for name, (cls, kwargs) in CASES.items():
        config = OURS[cls](**kwargs)
        ours, full = config.to_diff_dict(), config.to_dict()
        ref_diff, ref_full = ref[name]
        # Fields both libraries have with the same value must be kept or dropped alike
        # (fields only one side has, or with other defaults, are class differences).
        same = [k for k in set(full) & set(ref_full) if full[k] == ref_full[k] and k != "transformers_version"]
        assert sorted(k for k in same if k in ours) == sorted(k for k in same if k in ref_diff), name
        assert all(ours[k] == full[k] for k in ours), name
        assert "model_type" in ours and ours["model_type"] == ref_diff["model_type"]


def test_to_diff_dict_drops_base_defaults_and_keeps_class_fields():
    config = BertConfig(hidden_size=32, output_hidden_states=True)
    diff = config.to_diff_dict()
    assert diff["hidden_size"] == 32 and diff["output_hidden_states"] is True
    assert diff["vocab_size"] == 30522                     # a field BertConfig adds: kept even at its default
    assert "tie_word_embeddings" not in diff and "return_dict" not in diff and "is_decoder" not in diff
    assert diff["pad_token_id"] == 0                       # BERT's default differs from the base's None
    assert json.loads(config.to_json_string(use_diff=True)) == diff
    assert json.loads(config.to_json_string()) == config.to_dict()
    config.transformers_version = "4.37.2"
    assert config.to_diff_dict()["transformers_version"] == "4.37.2"


def test_add_model_tags_dedups_and_keeps_order():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert model.model_tags is None
    model.add_model_tags("custom")
    model.add_model_tags(["a", "custom", "b", "a"])
    assert model.model_tags == ["custom", "a", "b"]
    other = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert other.model_tags is None                        # the list is per model, not shared by the class
    with pytest.raises(TypeError, match="add_model_tags"):
        model.add_model_tags([3])


def test_framework_and_is_parallelizable_as_437(ref437):
    out = ref437("""
        import json, transformers as t
        names = ["BertModel", "GPT2LMHeadModel", "LlamaForCausalLM", "T5ForConditionalGeneration"]
        flags = {n: getattr(t, n).is_parallelizable for n in names}
        flags["framework"] = t.PreTrainedModel.framework.fget(None)
        (OUT / "flags.json").write_text(json.dumps(flags))
    """)
    ref = json.loads((out / "flags.json").read_text())
    import pretrained

    for name in ("BertModel", "GPT2LMHeadModel", "LlamaForCausalLM", "T5ForConditionalGeneration"):
        assert getattr(pretrained, name).is_parallelizable is ref[name], name
    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    assert model.framework == ref["framework"] == "pt"
    assert LlamaForCausalLM.is_parallelizable is False and GPT2LMHeadModel.is_parallelizable is True
