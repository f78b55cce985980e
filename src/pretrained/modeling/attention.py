"""Scaled dot-product attention, shared by every architecture, and the masks it takes.

Shape notation:
    B batch, H heads, Sq query length, Sk key length, D head size,
    T tokens of a packed (padding-free) batch, Hkv key/value heads.

Grouped-query attention (GQA, MQA): keys and values may have fewer heads than
the queries (Hkv divides H); each key/value head serves H / Hkv consecutive
query heads.  SDPA then runs without copying the keys where it can (one query:
the head groups are folded into the query axis; no mask: ``enable_gqa``), else
the keys and values are repeated (:func:`repeat_kv`), as eager always does.

One entry point, :func:`attention`, runs either

* ``"eager"``: ``softmax(q k^T * scale + mask) v`` written out, the only path
  that can return the attention weights or apply a head mask, or
* ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention`, which
  falls back to eager when weights or a head mask are asked for.

Masks are *additive* float tensors (0 where a key is visible, the dtype's
minimum where it is not) broadcastable to (B, H, Sq, Sk), or ``None``.  The
dtype minimum rather than ``-inf`` keeps fully masked rows (a left-padded
query) finite; their outputs are meaningless but equal across paths.

A third kind of "mask" is a :class:`PackedSequences`: the padding of a batch
taken out, tokens of all sequences laid end to end.  Encoders (BERT) run their
token-wise layers on (T, C) and attention per sequence, which on CPU skips
both the matmuls on pad tokens and the quadratic attention over them.  Outputs
at real tokens equal the padded computation's; pad tokens are not computed
(:meth:`PackedSequences.unpack` fills them with zeros).

Example:
    >>> import torch
    >>> from pretrained.modeling.attention import attention
    >>> q = k = v = torch.randn(1, 2, 4, 8)                     # (B, H, S, D)
    >>> out, weights = attention(q, k, v, is_causal=True, implementation="eager", output_attentions=True)
    >>> out.shape, weights.shape
    (torch.Size([1, 2, 4, 8]), torch.Size([1, 2, 4, 4]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "attention",
    "eager_attention",
    "additive_mask",
    "expanded_mask",
    "causal_mask",
    "padding_mask",
    "repeat_kv",
    "PackedSequences",
    "find_pruneable_heads_and_indices",
    "prune_linear_layer",
]

IMPLEMENTATIONS = ("eager", "sdpa")


# --------------------------------------------------------------------------- attention
def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Union[Tensor, "PackedSequences", None] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    head_mask: Optional[Tensor] = None,
    implementation: str = "sdpa",
    output_attentions: bool = False,
    upcast: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Multi-head attention of ``query`` over ``key``/``value``.

    Args:
        query, key, value: (B, H, Sq|Sk, D), keys and values possibly with
            Hkv heads (GQA, Hkv dividing H); for a packed batch (``mask`` a
            :class:`PackedSequences`), (H, T, D).
        mask: additive float mask broadcastable to (B, H, Sq, Sk) that already
            contains any causal part; or a :class:`PackedSequences`; or ``None``.
        is_causal: with ``mask=None``, query i sees keys ``j <= i + Sk - Sq``
            (aligned bottom-right, so cached keys stay visible).
        dropout_p: dropout on the attention weights (pass 0.0 in eval mode).
        scale: multiplies ``q k^T``; default ``D ** -0.5``.
        head_mask: broadcastable to (B, H, Sq, Sk); multiplies the weights after
            dropout (1 keeps a head, 0 silences it).  Forces the eager path.
        implementation: ``"eager"`` or ``"sdpa"``.
        output_attentions: also return the weights.  Forces the eager path.
        upcast: eager only: compute ``q k^T`` in float32 (GPT-2's
            ``reorder_and_upcast_attn``); the softmax is always float32.

    Returns:
        ``(out, weights)``: out (B, H, Sq, D) (packed: (H, T, D)); weights
        (B, H, Sq, Sk) or ``None``.

    Raises:
        ValueError: an unknown ``implementation``; weights or a head mask asked
            of a packed batch.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if isinstance(mask, PackedSequences):
        if output_attentions or head_mask is not None:
            raise ValueError("a packed batch cannot return attention weights or take a head mask; pass it padded")
        return mask.attention(query, key, value, dropout_p=dropout_p, scale=scale), None
    if implementation == "eager" or output_attentions or head_mask is not None:
        return eager_attention(query, key, value, mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                               scale=scale, head_mask=head_mask, upcast=upcast)
    q_len, k_len = query.shape[-2], key.shape[-2]
    causal = is_causal and mask is None and q_len > 1
    if causal and q_len != k_len:  # SDPA aligns is_causal top-left; we want bottom-right
        mask, causal = causal_mask(None, q_len, k_len, dtype=query.dtype, device=query.device), False
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)
    groups = query.shape[1] // key.shape[1]
    gqa = {}
    if groups > 1:  # as Transformers 5.25 calls it, so decode steps are bit-identical to its own
        if mask is None:
            gqa = {"enable_gqa": True}
        else:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p,
                                         is_causal=causal, scale=scale, **gqa)
    return out, None


def eager_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Optional[Tensor] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    head_mask: Optional[Tensor] = None,
    upcast: bool = False,
) -> Tuple[Tensor, Tensor]:
    """The written-out attention; see :func:`attention` for the arguments."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if key.dim() == 4 and key.shape[1] != query.shape[1]:
        groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if upcast:
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale          # (B, H, Sq, Sk)
    if mask is None and is_causal and query.shape[-2] > 1:
        mask = causal_mask(None, query.shape[-2], key.shape[-2], dtype=scores.dtype, device=scores.device)
    if mask is not None:
        scores = scores + mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    if head_mask is not None:
        weights = weights * head_mask
    return torch.matmul(weights, value), weights                         # (B, H, Sq, D)


def repeat_kv(hidden_states: Tensor, groups: int) -> Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * groups, S, D), each head repeated ``groups`` times in place
    (``repeat_interleave`` on dim 1)."""
    if groups == 1:
        return hidden_states
    batch, kv_heads, seq, dim = hidden_states.shape
    expanded = hidden_states[:, :, None, :, :].expand(batch, kv_heads, groups, seq, dim)
    return expanded.reshape(batch, kv_heads * groups, seq, dim)


# --------------------------------------------------------------------------- masks
# The 0/1 -> additive helpers of the 4.37 API (``get_extended_attention_mask``,
# ``invert_attention_mask``) are ModuleUtilsMixin's, in modeling/mixin.py; they
# compute ``(1 - mask) * min`` as Transformers does.  Masks built here start from
# booleans (True: attend) and go through :func:`additive_mask`.
def additive_mask(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean ``keep`` (True where a key is visible) -> additive: 0 there, ``finfo(dtype).min`` elsewhere."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def expanded_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A mask the caller expanded already (4-D, (B|1, 1|H, Sq, Sk)) as an additive one of ``dtype``:
    a boolean mask (True: attend) is converted, a float mask is taken as additive and cast."""
    if mask.dtype == torch.bool:
        return additive_mask(mask, dtype)
    return mask.to(dtype)


def padding_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, Sk) of 1 (attend) / 0 (pad) -> additive (B, 1, 1, Sk)."""
    return additive_mask(attention_mask[:, None, None, :].to(torch.bool), dtype)


def causal_mask(
    attention_mask: Optional[Tensor],
    q_len: int,
    k_len: int,
    *,
    dtype: torch.dtype,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Additive causal mask, combined with a padding mask when one is given.

    Query i (the last ``q_len`` of ``k_len`` positions) sees key j when
    ``j <= i + k_len - q_len`` and ``attention_mask[b, j] == 1``.  Rows that
    see nothing (left padding) are all ``finfo(dtype).min``.

    Shapes:
        attention_mask (B, Sk) or None -> (B or 1, 1, Sq, Sk).
    """
    if attention_mask is not None:
        device = attention_mask.device
    rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    keep = torch.arange(k_len, device=device)[None, :] <= rows             # (Sq, Sk)
    keep = keep[None, None]                                                  # (1, 1, Sq, Sk)
    if attention_mask is not None:
        keep = keep & attention_mask[:, None, None, :].to(torch.bool)        # (B, 1, Sq, Sk)
    return additive_mask(keep, dtype)


def packed_sequence_mask(
    position_ids: Tensor,
    batch: int,
    *,
    causal: bool,
    dtype: torch.dtype,
) -> Optional[Tensor]:
    """The additive mask that keeps sequences packed into one row apart, or None.

    Transformers 5 reads ``position_ids`` that do not step by one from token to
    token as the start of another sequence packed into the same row
    (padding-free batches): token i then attends only to the tokens of its own
    sequence (and, when ``causal``, only to those not after it). Callers apply
    this only when no attention mask is given and no key/value cache is in use,
    the same conditions under which Transformers looks for packed rows. When
    every row holds a single sequence the result is None and nothing changes.

    Shapes:
        position_ids (B|1, T) -> (B, 1, T, T), or None.
    """
    positions = position_ids.expand(batch, -1)
    steps = torch.diff(positions, prepend=positions[:, :1] - 1, dim=-1)
    sequence = (steps != 1).cumsum(-1)                                      # (B, T): which packed sequence
    if not bool(sequence[:, -1].any()):
        return None
    keep = sequence[:, None, :, None] == sequence[:, None, None, :]        # (B, 1, T, T)
    if causal:
        keep = keep & torch.ones(keep.shape[-2:], dtype=torch.bool, device=keep.device).tril()
    return additive_mask(keep, dtype)


# --------------------------------------------------------------------------- packed batches
@dataclass(frozen=True)
class _Group:
    """Sequences attended in one SDPA call.

    ``start``/``end``: one sequence, a contiguous range of packed tokens.
    Otherwise ``gather`` (g*P,) packed positions laid out as g rows of P (short
    rows repeat their first token), ``keep`` (g, 1, 1, P) key mask or None when
    all rows are full, ``valid`` (g*P,) which slots are real, ``dest`` their
    packed positions.
    """

    start: int = 0
    end: int = 0
    rows: int = 1
    gather: Optional[Tensor] = None
    keep: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    dest: Optional[Tensor] = None


@dataclass(frozen=True)
class PackedSequences:
    """A padded batch with its padding taken out.

    Build it from a (B, S) 0/1 mask; ``pack`` turns (B, S, ...) into (T, ...)
    keeping the tokens whose mask is 1 in order, ``unpack`` goes back with zeros
    at the padding.  Pass it as the ``mask`` of :func:`attention` with q, k, v
    of shape (H, T, D): each sequence attends to its own tokens only, which is
    what the padded computation does for every non-pad query.

    Sequences of similar length share one SDPA call (padded to the longest of
    them, with a key mask); see :meth:`from_mask`.

    Example:
        >>> import torch
        >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
        >>> packed = PackedSequences.from_mask(mask)
        >>> x = torch.arange(6.).view(2, 3, 1)
        >>> packed.pack(x).flatten().tolist(), packed.unpack(packed.pack(x)).flatten().tolist()
        ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0, 0.0, 0.0])
    """

    indices: Tensor                    # (T,) flat positions in (B*S) of the kept tokens
    lengths: Tuple[int, ...]           # (B,) tokens per sequence
    batch_size: int
    seq_len: int
    groups: Tuple[_Group, ...]

    @classmethod
    def from_mask(cls, attention_mask: Tensor, *, merge_cost: int = 32 * 32,
                  slack: float = 0.125) -> "PackedSequences":
        """Plan a packed batch from a (B, S) mask of 1 (token) / 0 (padding).

        Sequences are taken longest first; one joins the current group (led by
        length m, c members) when the group's padded attention work stays within
        ``slack`` of its real work plus ``merge_cost`` — the per-call overhead of
        SDPA in units of tokens²: ``(c + 1) m² <= (1 + slack) Σ l² + merge_cost``.
        Exact: grouping never changes the outputs, only the number of calls.
        """
        if attention_mask.dim() != 2:
            raise ValueError(f"a packed batch needs a (batch, seq) mask, got shape {tuple(attention_mask.shape)}")
        keep = attention_mask.to(torch.bool)
        batch, seq = keep.shape
        indices = keep.reshape(-1).nonzero().squeeze(1)
        lengths = tuple(int(n) for n in keep.sum(dim=1).tolist())
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        device = attention_mask.device

        order = sorted((i for i in range(batch) if lengths[i] > 0), key=lambda i: -lengths[i])
        plans: List[List[int]] = []
        work = 0  # Σ l² of the current group
        for i in order:
            l2 = lengths[i] ** 2
            if plans and (len(plans[-1]) + 1) * lengths[plans[-1][0]] ** 2 <= (1 + slack) * (work + l2) + merge_cost:
                plans[-1].append(i)
                work += l2
            else:
                plans.append([i])
                work = l2
        groups = []
        for members in plans:
            if len(members) == 1:
                i = members[0]
                groups.append(_Group(start=starts[i], end=starts[i] + lengths[i]))
                continue
            width = lengths[members[0]]
            slots = torch.arange(width)
            rows = [lengths[i] for i in members]
            valid = (slots[None, :] < torch.tensor(rows)[:, None])                       # (g, P)
            gather = torch.tensor([starts[i] for i in members])[:, None] + slots[None, :]
            gather = torch.where(valid, gather, gather[:, :1])
            uniform = all(r == width for r in rows)
            groups.append(_Group(
                rows=len(members),
                gather=gather.reshape(-1).to(device),
                keep=None if uniform else valid[:, None, None, :].to(device),
                valid=valid.reshape(-1).to(device),
                dest=gather[valid].to(device),
            ))
        return cls(indices=indices, lengths=lengths, batch_size=batch, seq_len=seq, groups=tuple(groups))

    @property
    def num_tokens(self) -> int:
        return int(self.indices.numel())

    def pack(self, x: Tensor) -> Tensor:
        """(B, S, ...) -> (T, ...)."""
        return x.reshape(self.batch_size * self.seq_len, *x.shape[2:]).index_select(0, self.indices)

    def unpack(self, x: Tensor) -> Tensor:
        """(T, ...) -> (B, S, ...), zeros at the padding."""
        out = x.new_zeros(self.batch_size * self.seq_len, *x.shape[1:])
        out = out.index_copy(0, self.indices, x)
        return out.view(self.batch_size, self.seq_len, *x.shape[1:])

    def attention(self, query: Tensor, key: Tensor, value: Tensor, *, dropout_p: float = 0.0,
                  scale: Optional[float] = None) -> Tensor:
        """Per-sequence SDPA over packed (H, T, D) tensors -> (H, T, Dv).

        Works token-major, (T, H, D) — the layout the projections produce, of
        which the (H, T, D) inputs are transposed views — so a sequence is a
        contiguous slice, a group one row gather, and the result (a transposed
        view of a (T, H, Dv) tensor) reshapes to (T, H * Dv) without a copy.
        """
        q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)  # (T, H, D)
        out = value.new_empty(q.shape[0], q.shape[1], value.shape[-1])                # (T, H, Dv)
        for g in self.groups:
            if g.gather is None:
                s, e = g.start, g.end
                o = F.scaled_dot_product_attention(
                    q[s:e].unsqueeze(0).transpose(1, 2), k[s:e].unsqueeze(0).transpose(1, 2),
                    v[s:e].unsqueeze(0).transpose(1, 2), dropout_p=dropout_p, scale=scale)  # (1, H, L, Dv)
                out[s:e] = o[0].transpose(0, 1)
                continue

            def rows(t: Tensor) -> Tensor:                                   # (T, H, D) -> (g, H, P, D)
                return t.index_select(0, g.gather).view(g.rows, -1, *t.shape[1:]).transpose(1, 2)

            o = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), attn_mask=g.keep,
                                               dropout_p=dropout_p, scale=scale)  # (g, H, P, Dv)
            o = o.transpose(1, 2).reshape(-1, o.shape[1], o.shape[-1])         # (g*P, H, Dv)
            out.index_copy_(0, g.dest, o[g.valid])
        return out.transpose(0, 1)                                            # (H, T, Dv)


# --------------------------------------------------------------------------- head pruning
def find_pruneable_heads_and_indices(
    heads: Sequence[int], n_heads: int, head_size: int, already_pruned_heads: Set[int]
) -> Tuple[Set[int], Tensor]:
    """Heads still to prune and the flat (n_heads*head_size) indices to keep.

    ``heads`` and ``already_pruned_heads`` use the original numbering; ``n_heads``
    is the current count.
    """
    # On the CPU whatever the default device: under ``torch.device("meta")`` (a model
    # built from its config alone) a boolean mask cannot be applied.
    keep = torch.ones(n_heads, head_size, device="cpu")
    heads = set(heads) - set(already_pruned_heads)
    for head in heads:
        shifted = head - sum(1 for h in already_pruned_heads if h < head)
        keep[shifted] = 0
    index = torch.arange(n_heads * head_size, device="cpu")[keep.view(-1).eq(1)].long()
    return heads, index


def prune_linear_layer(layer: nn.Linear, index: Tensor, dim: int = 0) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` of its weight (0: outputs, with
    the bias; 1: inputs, bias unchanged)."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = None
    if layer.bias is not None:
        bias = (layer.bias if dim == 1 else layer.bias[index]).detach().clone()
    size = list(layer.weight.size())
    size[dim] = len(index)
    new = nn.Linear(size[1], size[0], bias=bias is not None, device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new
