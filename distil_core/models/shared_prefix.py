"""One forward pass in which rows that continue the same prompt compute that prompt once.

GRPO samples n responses per prompt, and the update then runs the policy over n copies of
every prompt; so does the reference policy, the old log-probs of extra epochs, and a local
expert whose context is the student's own input. Here each distinct prompt but its last token
goes through the decoder once, with its keys and values cached; every row then selects its
prompt's cache entry and runs only ``[last prompt token] + response[:-1]``, whose outputs are
the hidden states that predict the response. For ``B`` rows over ``U`` distinct prompts of
length ``P`` and responses of width ``T`` that is ``U·(P − 1) + B·T`` token positions instead
of ``B·(P + T)``: about half, for 8 samples of a prompt as long as its responses.

Prefixes that only begin alike share their common beginning the same way: an expert's
contexts for one problem repeat the question and differ from each rollout's feedback on, so
the question is computed once and each row runs the rest of its context, then its response.

Selecting cache entries is differentiable, so gradients flow from every row into its prompt's
one pass, and values and gradients equal those of the single padded pass (the tests compare
them). Positions skip padding in both passes, as in :func:`~distil_core.models.padding.position_ids`.

The single pass is kept where sharing cannot help or would not be the same computation:

- no two prompts sharing a beginning, a saving under :data:`MIN_SAVING`, a one-token prompt;
- a model in training mode with gradient checkpointing (its layers drop the cache) or with
  dropout (the siblings would share one dropout draw of their prompt instead of each their own);
- a model sharded by FSDP (its root forward must be the one called; decided by the caller);
- without gradients, when the rows' selected keys and values would exceed
  :data:`NO_GRAD_CACHE_BYTES` (the single pass frees each layer's as it goes; with gradients it
  keeps them for the backward pass either way);
- a decoder whose cache is not one whose rows can be selected (only the dynamic full and
  sliding-window layers qualify, not linear-attention or static ones), or that does not hand
  the cache back as long as it should be after either pass: then the single pass runs, and a
  decoder whose cache is of the wrong kind is not tried again (with a warning, once).
"""

from __future__ import annotations

import math
import warnings
import weakref
from array import array
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from distil_core.models.activation_checkpointing import is_checkpointing
from distil_core.models.padding import pad_batch, position_ids

MIN_SAVING = 0.25
"""The least share of token positions sharing must save: below it, the second pass's fixed
cost (a small model's whole step is per-call overhead) outweighs the work saved."""

NO_GRAD_CACHE_BYTES = 1 << 29
"""Without gradients, the most the rows' selected keys and values may take (512 MiB)."""

SELECTABLE_LAYERS = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer"})
"""Cache layers (transformers ≥ 5) whose rows ``batch_select_indices`` selects whole."""

_UNABLE: "weakref.WeakSet[Any]" = weakref.WeakSet()  # decoders whose cache is of a kind rows cannot be selected from


@dataclass
class SharingPlan:
    """The heads computed once (each a prefix its rows share, left out of their tails), per row
    the index of its head, and the width of the rows' tails (the rest of the prefix, then the
    response but its last token)."""

    heads: list[list[int]]
    index: list[int]
    width: int


JOIN_FRACTIONS = (1.0, 0.75, 0.5)
"""How much of a family's first prefix a distinct prefix must share to join it; 1: none joins
(each distinct prefix is its own head). The plan takes whichever costs the fewest positions: a
shorter head lengthens every tail, and the tails of all rows are padded to the longest."""


def plan_sharing(prefixes: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> Optional[SharingPlan]:
    """The plan when sharing saves at least :data:`MIN_SAVING` of the single pass's padded
    positions, else None.

    Rows with the same prefix share it but its last token. Distinct prefixes that begin alike
    (an expert's contexts for one problem: the question, then each rollout's own feedback) may
    also share their longest common prefix, when it is long enough (:data:`JOIN_FRACTIONS`)."""
    distinct: dict[tuple[int, ...], int] = {}
    row_prefix = [distinct.setdefault(tuple(p), len(distinct)) for p in prefixes]
    if max((len(r) for r in responses), default=0) == 0 or any(len(p) < 2 for p in distinct):
        return None
    prefixes_in_order = list(distinct)
    # sorted, so that those beginning alike are neighbours: as fixed-width bytes, which sort and
    # compare in C (a token prefix is a byte prefix, so alike ones still come together)
    keys = [array("q", p).tobytes() for p in prefixes_in_order]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    neighbours = [0] + [common_length(keys[a], keys[b]) // TOKEN_BYTES for a, b in zip(order, order[1:])]
    best: Optional[tuple[int, list[tuple[int, int]], list[int], int]] = None
    for fraction in JOIN_FRACTIONS:
        heads, family = prefix_families([len(p) for p in prefixes_in_order], order, neighbours, fraction)
        index = [family[d] for d in row_prefix]
        if len(heads) == len(index):
            continue  # every row its own head: nothing shared
        tail = max(len(p) - heads[g][1] + max(len(r) - 1, 0) for p, r, g in zip(prefixes, responses, index))
        cost = len(heads) * max(n for _, n in heads) + len(index) * tail
        if best is None or cost < best[0]:
            best = (cost, heads, index, tail)
    single = len(prefixes) * max(len(p) + len(r) for p, r in zip(prefixes, responses))
    if best is None or best[0] > (1.0 - MIN_SAVING) * single:
        return None
    _, heads, index, tail = best
    return SharingPlan(heads=[list(prefixes_in_order[d][:n]) for d, n in heads], index=index, width=tail)


TOKEN_BYTES = 8
"""Bytes per token id in the keys :func:`plan_sharing` sorts and compares."""


def prefix_families(lengths: Sequence[int], order: Sequence[int], neighbours: Sequence[int],
                    fraction: float) -> tuple[list[tuple[int, int]], list[int]]:
    """(heads as (a member's index, length), per distinct prefix the index of its head), for
    distinct prefixes of ``lengths`` taken in ``order`` (sorted, so that those beginning alike
    are neighbours; ``neighbours[k]``: how many leading tokens the k-th shares with the one
    before it). Each joins the family of the one before it when they share at least
    ``fraction`` of that family's first prefix. A head is the common prefix of its family, at
    least one token short of each member."""
    heads: list[tuple[int, int]] = []
    first: list[int] = []  # per head, the length of its family's first prefix
    family = [0] * len(lengths)
    for k, d in enumerate(order):
        if heads:
            member, length = heads[-1]
            # the head is a prefix of the one before: what it shares with this one is the lesser
            common = min(length, neighbours[k])
            if common >= max(1, math.ceil(fraction * first[-1])):
                heads[-1] = (member, min(common, lengths[d] - 1))
                family[d] = len(heads) - 1
                continue
        heads.append((d, lengths[d] - 1))
        first.append(lengths[d])
        family[d] = len(heads) - 1
    return heads, family


def common_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items ``a`` and ``b`` have in common (a binary search over slice
    comparisons, which run in C: this is on every forward pass's path)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def can_share(model: Any, decoder: Any, plan: SharingPlan, positions: int) -> bool:
    """Whether this (unsharded) model's forward may run as two passes over a shared cache for
    ``plan`` with ``positions`` per row (see the module docstring for when it may not)."""
    if decoder in _UNABLE:
        return False
    if model.training and (is_checkpointing(model) or has_dropout(model)):
        return False
    if not torch.is_grad_enabled() and selected_cache_bytes(model, len(plan.index), positions) > NO_GRAD_CACHE_BYTES:
        return False
    return True


def has_dropout(model: Any) -> bool:
    """Whether any dropout of ``model`` is live: a dropout module in training mode with p > 0
    (peft's ``lora_dropout`` included), or a dropout rate in its config (attention dropout is
    applied functionally in training)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.training and module.p > 0:
            return True
    config = getattr(model, "config", None)
    rates = vars(config).items() if config is not None and hasattr(config, "__dict__") else ()
    return any("dropout" in name and isinstance(rate, (int, float)) and rate > 0 for name, rate in rates)


def selected_cache_bytes(model: Any, rows: int, positions: int) -> int:
    """Bytes of the keys and values of ``rows`` rows × ``positions`` positions, every layer."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 0) or 0
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (getattr(config, "hidden_size", 0) // max(heads, 1))
    size = next(model.parameters()).element_size()
    return 2 * layers * kv_heads * head_dim * size * rows * positions


def shared_prefix_hidden(decoder: Any, plan: SharingPlan, prefixes: Sequence[Sequence[int]],
                         responses: Sequence[Sequence[int]], pad_id: int, device: Any) -> Optional[Tensor]:
    """``[B, T, H]`` last hidden states, column t predicting ``responses[b][t]`` (responses
    start at column 0), from the two passes; None when the decoder's cache does not allow them
    (see the module docstring)."""
    head_ids, head_mask = pad_batch(plan.heads, pad_id, side="left", device=device)
    out = decoder(input_ids=head_ids, attention_mask=head_mask, position_ids=position_ids(head_mask), use_cache=True)
    name = "cache" if "cache" in out else "past_key_values"  # the decoder takes it back under the name it gave it
    cache = out.get(name)
    if not selectable(cache):
        _UNABLE.add(decoder)
        warnings.warn(f"{type(decoder).__name__}: its KV cache ({type(cache).__name__}) cannot be split by rows; "
                      "rows that share a prompt compute it once per row", RuntimeWarning, stacklevel=3)
        return None
    if cache.get_seq_length() != head_ids.shape[1]:
        return None
    index = torch.tensor(plan.index, device=device)
    cache.batch_select_indices(index)  # row b's entry is its head's: differentiable indexing
    cut = [len(plan.heads[g]) for g in plan.index]
    tails = [[*p[c:], *r[:-1]] for p, r, c in zip(prefixes, responses, cut)]
    tail_ids, tail_mask = pad_batch(tails, pad_id, side="right", device=device)
    mask = torch.cat([head_mask[index], tail_mask], dim=1)
    out = decoder(input_ids=tail_ids, attention_mask=mask, position_ids=position_ids(mask)[:, -tail_ids.shape[1]:],
                  use_cache=True, **{name: cache})
    grown = out.get(name)
    if grown is None or grown.get_seq_length() != mask.shape[1]:  # the cache was not read: not the same computation
        return None
    hidden = out.last_hidden_state
    starts = [len(p) - c - 1 for p, c in zip(prefixes, cut)]  # the column of each row's last prefix token
    if not any(starts):  # every tail begins with it (rows of the same prefix): responses start at column 0
        return hidden
    width = max(len(r) for r in responses)
    cols = (torch.arange(width, device=device).unsqueeze(0) + torch.tensor(starts, device=device).unsqueeze(1))
    cols = cols.clamp(max=hidden.shape[1] - 1)  # past a short row's response: padding, masked by the caller
    return hidden.gather(1, cols.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def selectable(cache: Any) -> bool:
    """Whether ``cache`` holds plain keys and values per layer whose rows can be selected."""
    if cache is None or not callable(getattr(cache, "batch_select_indices", None)):
        return False
    layers = getattr(cache, "layers", None)
    if layers is None:  # transformers < 5: a DynamicCache keeps key and value lists
        return type(cache).__name__ == "DynamicCache"
    return all(type(layer).__name__ in SELECTABLE_LAYERS for layer in layers)
