"""One forward pass in which rows that continue the same prompt compute that prompt once.

GRPO samples n responses per prompt, and the update then runs the policy over n copies of
every prompt; so does the reference policy, the old log-probs of extra epochs, and a local
expert whose context is the student's own input. Here each distinct prompt but its last token
goes through the decoder once, with its keys and values cached; every row then selects its
prompt's cache entry and runs only ``[last prompt token] + response[:-1]``, whose outputs are
the hidden states that predict the response. For ``B`` rows over ``U`` distinct prompts of
length ``P`` and responses of width ``T`` that is ``U·(P − 1) + B·T`` token positions instead
of ``B·(P + T)``: about half, for 8 samples of a prompt as long as its responses.

Selecting cache entries is differentiable, so gradients flow from every row into its prompt's
one pass, and values and gradients equal those of the single padded pass (the tests compare
them). Positions skip padding in both passes, as in :func:`~distil_core.models.padding.position_ids`.

The single pass is kept where sharing cannot help or cannot run: every prompt distinct, a
saving under :data:`MIN_SAVING`, a one-token prompt, gradient checkpointing (which drops the
cache in training), a model sharded by FSDP (whose root forward must be the one called), or a
decoder that returns no selectable cache.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from distil_core.models.activation_checkpointing import is_checkpointing
from distil_core.models.padding import pad_batch, position_ids

MIN_SAVING = 0.25
"""The least share of token positions sharing must save: below it, the second pass's fixed
cost (a small model's whole step is per-call overhead) outweighs the work saved."""

_UNABLE: "weakref.WeakSet[Any]" = weakref.WeakSet()  # decoders whose forward returned no usable cache


@dataclass
class SharingPlan:
    """Distinct prompts (without their last token) and, per row, the index of its prompt."""

    heads: list[list[int]]
    index: list[int]


def plan_sharing(prefixes: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> Optional[SharingPlan]:
    """The plan when sharing saves at least :data:`MIN_SAVING` of the single pass's padded
    positions, else None."""
    distinct: dict[tuple[int, ...], int] = {}
    index = [distinct.setdefault(tuple(p), len(distinct)) for p in prefixes]
    width = max((len(r) for r in responses), default=0)
    if len(distinct) == len(index) or width == 0 or any(len(p) < 2 for p in distinct):
        return None
    single = len(index) * max(len(p) + len(r) for p, r in zip(prefixes, responses))
    shared = len(distinct) * (max(len(p) for p in distinct) - 1) + len(index) * width
    if shared > (1.0 - MIN_SAVING) * single:
        return None
    return SharingPlan(heads=[list(p[:-1]) for p in distinct], index=index)


def can_share(model: Any, decoder: Any) -> bool:
    """Whether this (unsharded) model's forward may run as two passes over a shared cache (see
    the module docstring for when it may not)."""
    if decoder in _UNABLE:
        return False
    if model.training and torch.is_grad_enabled():
        return not is_checkpointing(model)
    return True


def shared_prefix_hidden(decoder: Any, plan: SharingPlan, prefixes: Sequence[Sequence[int]],
                         responses: Sequence[Sequence[int]], pad_id: int, device: Any) -> Optional[Tensor]:
    """``[B, T, H]`` last hidden states, column t predicting ``responses[b][t]`` (responses
    start at column 0), from the two passes; None (and the decoder remembered) when its
    forward returns no cache whose rows can be selected."""
    head_ids, head_mask = pad_batch(plan.heads, pad_id, side="left", device=device)
    out = decoder(input_ids=head_ids, attention_mask=head_mask, position_ids=position_ids(head_mask), use_cache=True)
    cache = out["cache"] if "cache" in out else out.get("past_key_values")
    if cache is None or not callable(getattr(cache, "batch_select_indices", None)):
        _UNABLE.add(decoder)
        return None
    index = torch.tensor(plan.index, device=device)
    cache.batch_select_indices(index)  # row b's entry is its prompt's: differentiable indexing
    tails = [[p[-1], *r[:-1]] for p, r in zip(prefixes, responses)]
    tail_ids, tail_mask = pad_batch(tails, pad_id, side="right", device=device)
    mask = torch.cat([head_mask[index], tail_mask], dim=1)
    out = decoder(input_ids=tail_ids, attention_mask=mask, position_ids=position_ids(mask)[:, -tail_ids.shape[1]:],
                  use_cache=True, **{cache_argument(decoder): cache})
    return out.last_hidden_state


def cache_argument(module: Any) -> str:
    """The name under which ``module``'s forward takes a KV cache: ``cache`` in recent
    transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

