"""`GenerationMixin.generate`: greedy decoding, sampling and beam search with a key/value cache.

Shape notation: B batch, S prompt length, L length so far (prompt + new tokens),
V vocabulary.

The loop, as in Transformers: run the prompt once (prefill), then one token per
step; each step takes the last position's logits in float32, applies the
logits processors (the repetition penalty and the minimum length, then, when
sampling, temperature, top-k and top-p), picks the arg-max or samples, and
appends.  With EOS ids, a row that produced one is finished: it receives
``pad_token_id`` from then on, and the loop stops when every row is finished
or ``max_new_tokens`` were produced.  Beam search (``num_beams > 1``) keeps
several continuations per row instead, see :mod:`pretrained.modeling.generation.beam`.

The package: ``config`` (:class:`GenerationConfig`), ``settings`` (the frozen
settings of one call, validated once), ``logits_process`` (the processor
pipeline), ``steps`` (the ``step(ids, cache) -> (logits, cache)`` closure),
``decoding`` (greedy and sampling), ``beam`` (beam search), ``mixin``
(:class:`GenerationMixin`), ``outputs``, ``checks`` and ``stopping_criteria``.

Defaults come from ``model.generation_config`` (a :class:`GenerationConfig`,
read from the checkpoint's ``generation_config.json`` by ``from_pretrained``);
arguments of ``generate`` override it.

Hook contract — what a model must provide to use :meth:`GenerationMixin.generate`
-------------------------------------------------------------------------------
* ``prepare_inputs_for_generation(input_ids, past_key_values=None,
  use_cache=True, **model_kwargs) -> dict``: the keyword arguments of
  ``forward`` for one step.  ``input_ids`` (B, L) is the whole sequence so far
  (the decoder's, for an encoder-decoder); the hook drops what the cache
  already holds (``past_key_values.get_seq_length()`` tokens) and passes on
  what its ``forward`` needs from ``model_kwargs``, which holds:

  - decoder-only: ``attention_mask`` (B, L) or None (no padding) and, when
    ``forward`` takes ``position_ids``, ``position_ids`` (B, L): from the
    mask's cumulative sum (padding gets 0), as Transformers' ``generate`` does;
    ``generate`` grows both by one column per step;
  - encoder-decoder: ``encoder_outputs`` (the encoder's output, run once) and
    ``attention_mask`` (B, S), the *encoder's* mask, fixed;
  - ``logits_to_keep=1`` when ``forward`` takes ``logits_to_keep``;
  - whatever else the caller passed to ``generate`` (e.g. ``token_type_ids``,
    grown with its last column).

  ``can_generate()`` is true for a class that defines this hook.
* ``forward(**inputs, return_dict=True)`` returns ``.logits`` (B, T, V) and, with
  ``use_cache``, ``.past_key_values``: a cache object (``get_seq_length()``)
  that is handed back to the hook on the next step.
* Encoder-decoder models (``config.is_encoder_decoder``) also provide
  ``get_encoder()``, a module called once as ``encoder(input_ids=...,
  attention_mask=..., return_dict=True)``; decoding starts from
  ``config.decoder_start_token_id`` and ``generate`` returns the decoder ids,
  start token first, as Transformers does.

Example:
    >>> import torch
    >>> from pretrained import LlamaConfig, LlamaForCausalLM
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                                      num_hidden_layers=1, num_attention_heads=4)).eval()
    >>> model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, eos_token_id=None).shape
    torch.Size([1, 7])"""

from __future__ import annotations

from ..losses import causal_lm_loss
from .beam import beam_search
from .checks import as_generation_config_dict, check_model_kwargs, check_new_options, generation_lengths, recorded_outputs
from .config import _OPTIONS, _TOKEN_IDS, GENERATION_CONFIG_NAME, GenerationConfig
from .decoding import DecodeSettings, decode
from .logits_process import (_apply_processors, _penalize_repetitions, ban_repeated_ngrams, build_logits_processor,
                             min_p_filter, process_logits)
from .mixin import GenerationMixin, logger
from .outputs import (GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerateDecoderOnlyOutput,
                      GenerateEncoderDecoderOutput)
from .settings import (_DEFAULTS, _LENGTH_PAIRS, _UNSUPPORTED, DEFAULT_MAX_NEW_TOKENS, GenerationSettings, _as_id_list,
                       _check_beams, _check_penalties, _check_sampling, _is_neutral, build_settings)
from .steps import make_step, repeat_rows as _repeat_rows
from .stopping_criteria import MaxLengthCriteria, StoppingCriteria, StoppingCriteriaList

__all__ = ["GenerationConfig", "GenerationMixin", "process_logits"]
