"""Legacy checkpoint key names, matched the way Transformers renames them on load.

Old checkpoints name some tensors differently from the modules that hold them
today; Transformers renames them while loading:

* ``gamma`` -> ``weight`` and ``beta`` -> ``bias``: LayerNorm parameters of
  checkpoints written by TensorFlow-era code (Google's original BERT, as
  ``bert-base-uncased`` is still published). Transformers 4.x renames every key
  holding these words; 5.x only ``LayerNorm.gamma``/``LayerNorm.beta``.
* ``weight_g``/``weight_v`` <-> ``parametrizations.weight.original0``/``original1``:
  weight-norm parameters of ``torch.nn.utils.weight_norm`` versus the
  parametrization API (both directions).

Here a legacy name is only used for a model tensor that the checkpoint does
not hold under its current name, and only as its last name segment(s) — so a
module that really owns a parameter called ``gamma`` keeps it. This covers
4.x's broader rule (``ln_1.gamma`` of a GPT-2 checkpoint too) without its
false matches. Saving always writes the current names.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

# (legacy suffix, current suffix); each pair also applies in reverse for weight norm.
_SUFFIX_RENAMES = (
    ("gamma", "weight"),
    ("beta", "bias"),
    ("weight_g", "parametrizations.weight.original0"),
    ("weight_v", "parametrizations.weight.original1"),
    ("parametrizations.weight.original0", "weight_g"),
    ("parametrizations.weight.original1", "weight_v"),
)


def current_name(key: str) -> Optional[str]:
    """The name ``key`` has in today's modules, or ``None`` when it is not a legacy name."""
    for old, new in _SUFFIX_RENAMES:
        if key == old or key.endswith("." + old):
            return key[: len(key) - len(old)] + new
    return None


def legacy_aliases(checkpoint_keys: Iterable[str]) -> Dict[str, str]:
    """``{current name: checkpoint key}`` for every legacy key whose current name
    is not itself in the checkpoint (the current name wins when both are there)."""
    keys = set(checkpoint_keys)
    aliases: Dict[str, str] = {}
    for key in keys:
        new = current_name(key)
        if new is not None and new not in keys:
            aliases.setdefault(new, key)
    return aliases
