"""BERT ``position_embedding_type="relative_key"|"relative_key_query"`` against Transformers 4.37.2.

Transformers 5 ignores these types, so the reference is 4.37.2 from the side
environment (the ``ref437`` fixture): it builds tiny models at seed 0, saves
them and their outputs; we load the checkpoints and compare (fp32, 1e-4).
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

from pretrained import BertConfig, BertForMaskedLM, BertModel

ATOL = 1e-4
KINDS = ("relative_key", "relative_key_query")

SCRIPT = """
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

ids = torch.randint(1, 99, (2, 9), generator=torch.Generator().manual_seed(0))
mask = torch.ones(2, 9, dtype=torch.long)
mask[1, 6:] = 0
for kind in ("relative_key", "relative_key_query"):
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                        vocab_size=99, max_position_embeddings=16, position_embedding_type=kind)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(config).eval()
    mlm.save_pretrained(OUT / kind)
    with torch.no_grad():
        hidden = mlm.bert(ids).last_hidden_state
        hidden_masked = mlm.bert(ids, attention_mask=mask).last_hidden_state
        logits = mlm(ids, attention_mask=mask).logits
        attentions = mlm(ids, attention_mask=mask, output_attentions=True).attentions
    torch.save({"ids": ids, "mask": mask, "hidden": hidden, "hidden_masked": hidden_masked, "logits": logits,
                "attentions": attentions}, OUT / kind / "outputs.pt")

    config.is_decoder = True
    torch.manual_seed(0)
    decoder = BertModel(config).eval()
    decoder.save_pretrained(OUT / (kind + "_decoder"))
    with torch.no_grad():
        torch.save({"hidden": decoder(ids, use_cache=False).last_hidden_state},
                   OUT / (kind + "_decoder") / "outputs.pt")
"""


@pytest.fixture(scope="module")
def ref_dirs(request):
    """The 4.37.2 checkpoints and outputs, written once for the module."""
    return request.getfixturevalue("ref437")(SCRIPT)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", KINDS)
def test_relative_positions_equal_transformers_437(ref_dirs, kind, impl):
    expected = torch.load(ref_dirs / kind / "outputs.pt")
    ours, info = BertForMaskedLM.from_pretrained(ref_dirs / kind, attn_implementation=impl, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert ours.config.position_embedding_type == kind
    layer = ours.bert.encoder.layer[0].attention.self
    assert layer.distance_embedding.weight.shape == (2 * 16 - 1, 8)
    ids, mask = expected["ids"], expected["mask"]
    real = mask.bool()
    with torch.no_grad():
        assert_close(ours.bert(ids).last_hidden_state, expected["hidden"], atol=ATOL)
        assert_close(ours.bert(ids, attention_mask=mask).last_hidden_state[real], expected["hidden_masked"][real],
                     atol=ATOL)
        assert_close(ours(ids, attention_mask=mask).logits[real], expected["logits"][real], atol=ATOL)
        ours.bert.unpad_inputs = True                      # the padding-free path must not be taken
        assert_close(ours.bert(ids, attention_mask=mask).last_hidden_state[real], expected["hidden_masked"][real],
                     atol=ATOL)
        attentions = ours(ids, attention_mask=mask, output_attentions=True).attentions
    for a, b in zip(attentions, expected["attentions"]):
        assert_close(a, b, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_relative_positions_in_a_causal_bert_equal_transformers_437(ref_dirs, kind):
    expected = torch.load(ref_dirs / f"{kind}_decoder" / "outputs.pt")
    for impl in ("eager", "sdpa"):
        ours = BertModel.from_pretrained(ref_dirs / f"{kind}_decoder", attn_implementation=impl)
        assert ours.config.is_decoder
        ids = torch.randint(1, 99, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert_close(ours(ids).last_hidden_state, expected["hidden"], atol=ATOL)


def test_relative_positions_change_the_output_and_skip_absolute_embeddings():
    ids = torch.randint(1, 99, (1, 7), generator=torch.Generator().manual_seed(1))
    outputs = {}
    for kind in ("absolute",) + KINDS:
        torch.manual_seed(0)
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                            vocab_size=99, max_position_embeddings=16, position_embedding_type=kind,
                            initializer_range=0.3)
        model = BertModel(config).eval()
        with torch.no_grad():
            outputs[kind] = model(ids).last_hidden_state
            model.embeddings.position_embeddings.weight.zero_()   # unused by the relative types
            outputs[kind + "_zeroed"] = model(ids).last_hidden_state
    assert float((outputs["relative_key"] - outputs["relative_key_query"]).abs().max()) > 1e-3
    for kind in KINDS:
        assert torch.equal(outputs[kind], outputs[kind + "_zeroed"])
    assert not torch.equal(outputs["absolute"], outputs["absolute_zeroed"])


def test_unknown_position_embedding_type_is_refused():
    with pytest.raises(NotImplementedError, match="position_embedding_type='rotary'"):
        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                             position_embedding_type="rotary"))
