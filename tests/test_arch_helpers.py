"""The helpers every architecture shares (issue 14): output flags, cache preparation, masks."""

import inspect

import pytest
import torch

from pretrained import GPT2Config, LlamaConfig, PretrainedConfig, T5Config
from pretrained.modeling.attention import additive_mask, expanded_mask, padding_mask
from pretrained.modeling.cache import DynamicCache, EncoderDecoderCache, prepare_cache
from pretrained.modeling.decoder import decoder_mask
from pretrained.modeling.outputs import output_flags
from pretrained.models.gpt2 import GPT2Model
from pretrained.models.llama import LlamaModel
from pretrained.models.t5 import T5Stack
from pretrained.models.t5_heads import _encode_decode


def test_output_flags_read_the_config_only_where_not_given():
    config = PretrainedConfig(output_attentions=True, return_dict=False)
    assert output_flags(config) == (True, False, False, False)
    assert output_flags(config, False, True, True, True) == (False, True, True, True)
    config.use_cache = True
    assert output_flags(config).use_cache is True


def test_prepare_cache_from_none_tuples_and_objects():
    assert prepare_cache(None, use_cache=False) == (None, 0)
    cache, past = prepare_cache(None, use_cache=True, encoder_decoder=True)
    assert isinstance(cache, EncoderDecoderCache) and past == 0
    kv = torch.zeros(1, 2, 3, 4)
    cache, past = prepare_cache(((kv, kv),), use_cache=False)
    assert isinstance(cache, DynamicCache) and past == 3
    own = DynamicCache()
    own.update(kv, kv, 0)
    cache, past = prepare_cache(own, use_cache=True, encoder_decoder=True)   # self-attention only: wrapped
    assert isinstance(cache, EncoderDecoderCache) and cache.self_attention_cache is own and past == 3


def test_expanded_mask_bool_and_float():
    keep = torch.tensor([[[[True, False]]]])
    assert expanded_mask(keep, torch.float16).tolist() == [[[[0.0, -65504.0]]]]
    assert torch.equal(expanded_mask(keep, torch.float32), additive_mask(keep, torch.float32))
    additive = torch.tensor([[[[0.0, -5.0]]]])
    assert torch.equal(expanded_mask(additive, torch.float64), additive.double())
    assert torch.equal(padding_mask(torch.tensor([[1, 0]]), torch.float32), additive_mask(keep, torch.float32))


def _t5_stack(is_decoder):
    torch.manual_seed(0)
    config = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    return T5Stack(config, is_decoder=is_decoder).eval()


@pytest.mark.parametrize("is_decoder", [False, True])
def test_t5_takes_a_4d_bool_mask_as_keep_drop(is_decoder):
    """As the other architectures do: True attends, False is masked (before, the bool was added as 0/1)."""
    stack = _t5_stack(is_decoder)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 1]])
    keep = torch.ones(2, 1, 4, 4, dtype=torch.bool).tril()
    keep[1, :, :, 0] = False
    keep[1, :, 0, 0] = True                                  # every query sees something
    extra = {}
    if is_decoder:
        encoder = torch.randn(2, 3, 16)
        cross_keep = torch.tensor([True, True, False]).view(1, 1, 1, 3).expand(2, 1, 1, 3)
        extra = dict(encoder_hidden_states=encoder, encoder_attention_mask=cross_keep)
        extra_float = dict(encoder_hidden_states=encoder,
                           encoder_attention_mask=additive_mask(cross_keep, torch.float32))
    with torch.no_grad():
        got = stack(ids, attention_mask=keep, use_cache=False, **extra).last_hidden_state
        want = stack(ids, attention_mask=additive_mask(keep, torch.float32), use_cache=False,
                     **(extra_float if is_decoder else {})).last_hidden_state
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoders_read_a_4d_bool_mask_as_its_additive_twin(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)).eval()
    else:
        model = LlamaModel(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2)).eval()
    ids = torch.tensor([[3, 4, 5]])
    keep = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    with torch.no_grad():
        got = model(ids, attention_mask=keep).last_hidden_state
        want = model(ids, attention_mask=additive_mask(keep, torch.float32)).last_hidden_state
    assert torch.equal(got, want)
    assert torch.equal(decoder_mask(keep, 3, 0, window=None, dtype=torch.float32, device=torch.device("cpu")),
                       additive_mask(keep, torch.float32))


def test_t5_encode_decode_takes_keywords_only():
    params = list(inspect.signature(_encode_decode).parameters.values())
    assert params[0].name == "model"
    assert len(params) > 10 and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])


def test_rms_norm_check_is_by_type_for_ours_and_by_name_for_custom_code():
    from torch import nn

    from pretrained import PreTrainedModel
    from pretrained.modeling.norms import RMSNorm, is_rms_norm

    class MyRMSNorm(nn.Module):                 # custom code: Transformers 5 knows it by its name
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.full((3,), 7.0))

    class Sub(RMSNorm):
        pass

    assert is_rms_norm(RMSNorm(3)) and is_rms_norm(Sub(3)) and is_rms_norm(MyRMSNorm())
    assert not is_rms_norm(nn.LayerNorm(3)) and not is_rms_norm(nn.Linear(3, 3))

    class Custom(PreTrainedModel):
        config_class = PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.norm = MyRMSNorm()
            self.post_init()

    assert torch.equal(Custom(PretrainedConfig()).norm.weight.detach(), torch.ones(3))
