"""Chunked losses: the student's ``[B, T, V]`` logits are never held whole.

The reference losses in :mod:`distil_core.losses.reference` take full logits. Here the student enters as
its last hidden states ``[B, T, H]`` and its output projection (``lm_head``); logits are made
one chunk of positions at a time, the chunk's loss and its gradients with respect to the hidden
states and the projection are computed at once, and the logits are freed before the next chunk.
The backward pass only scales the stored gradients. Peak memory for logits is one chunk
(``B × chunk × V`` floats for the student, as much for the expert) instead of the whole batch.

The expert enters as full logits, as top-k ids and log-probs, or as a local model's hidden
states and projection (see :mod:`distil_core.losses.chunk_terms`, which also holds each
method's terms on one chunk).

Terms that couple positions (DistIL's future credit G_t, the discounted reverse-KL return) are
detached sums over *later* positions, so chunks run from the last position to the first and
carry the running sum: each chunk is processed exactly once, and values and gradients equal the
reference implementations (tests/test_chunked.py checks both in float64).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.config import LossConfig
from distil_core.errors import ConfigError
from distil_core.losses import baselines, credit
from distil_core.losses.chunk_terms import Chunk, ChunkTerms, Expert, ExpertHead, ExpertTopK
from distil_core.losses.expert_batch import DIVERGENCE_KEYS, ExpertBatch, LossOutput, RowContext, tempered
from distil_core.losses.importance import importance_weights
from distil_core.losses.reference import token_logprobs
from distil_core.losses.methods import METHODS, Method, credit_options, method_named

__all__ = ["chunked_loss", "chunked_distillation_loss", "ExpertHead", "ExpertTopK", "Expert"]


def chunked_loss(
    method: Union[str, Method],
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    mask: Tensor,
    expert: Expert,
    *,
    bias: Optional[Tensor] = None,
    chunk_size: int = 256,
    stats: Optional[dict] = None,
    **options,
) -> Tensor:
    """The loss of ``method`` from student hidden states, chunk by chunk; a scalar with a graph.

    ``hidden`` ``[B, T, H]`` is the student's last hidden state at the positions whose logits
    predict ``tokens`` ``[B, T]`` (already shifted, as in :mod:`distil_core.losses.reference`); ``weight``
    ``[V, H]`` and ``bias`` are its output projection. ``chunk_size`` counts positions per chunk.
    The ``options`` mean what they mean in :mod:`distil_core.losses.reference` (defaults in
    :data:`CHUNK_DEFAULTS`): ``future_credit``, ``future_cost``, ``stop_credit``, ``eos_id``, ``credit_floor``,
    ``baseline``, ``gamma``, ``future_reduce``, ``group_size``, ``baseline_exclude``, ``rewards``, ``reward_weight``,
    ``reward_decay``
    and ``response_mask`` for ``distil``; ``beta`` and ``temperature`` for ``jsd``;
    ``reverse_kl_gamma`` for ``reverse_kl``. Logits are computed in float32 (float64 inputs stay
    float64). A ``stats`` dict, when given, receives the token means of CE and KL to the expert
    (``ce_to_expert``, ``kl_to_expert``; over the k+1 buckets for a top-k expert), as the trainer logs.
    ``old_logprobs`` ``[B, T]`` (the sampling policy's, when a batch is optimised more than once)
    weighs each position's gradient by ``min(π/π_old, is_clip)`` (:mod:`distil_core.losses.importance`).
    """
    terms = _terms(method)
    if chunk_size < 1:
        raise ValueError(f"chunked_loss: chunk_size must be at least 1 (got {chunk_size})")
    unknown = set(options) - set(CHUNK_DEFAULTS)
    if unknown:
        raise TypeError(f"chunked_loss: unexpected options {', '.join(sorted(unknown))}")
    o = _options(method_named(method), terms, {**CHUNK_DEFAULTS, **options}, mask, hidden.shape[0],
                 compute_dtype(hidden))
    o.update(chunk_size=chunk_size, stats={"ce": 0.0, "kl": 0.0} if stats is not None else None, ratios=[0.0, 0.0])
    loss = _ChunkedLoss.apply(hidden, weight, bias, terms, tokens, mask, expert, o)
    if stats is not None:
        n = max(float(mask.bool().sum()), 1.0)
        ce_key, kl_key = DIVERGENCE_KEYS
        stats[ce_key], stats[kl_key] = o["stats"]["ce"] / n, o["stats"]["kl"] / n
        if options.get("old_logprobs") is not None:  # over the positions the weights apply to
            counted = max(float(o["counted"].sum()), 1.0)
            stats["ratio_mean"], stats["is_truncated_fraction"] = (v / counted for v in o["ratios"])
    return loss


CHUNK_DEFAULTS = dict(
    future_credit=True, future_cost="kl", stop_credit="full", eos_id=None, credit_floor=0.0, baseline="none", gamma=1.0,
    future_reduce="sum", group_size=None, baseline_exclude=None, rewards=None, reward_weight=0.0, reward_decay=False,
    response_mask=None,
    beta=0.5, temperature=1.0, reverse_kl_gamma=0.0, old_logprobs=None, is_clip=2.0,
)
"""The options of :func:`chunked_loss` and their defaults."""


def _terms(method: Union[str, Method]) -> ChunkTerms:
    spec = method if isinstance(method, Method) else METHODS.get(method)
    if spec is None or spec.chunk is None:
        chunkable = ", ".join(name for name, m in METHODS.items() if m.chunkable)
        raise ValueError(f"chunked_loss: no chunked loss for method {method!r}; choose one of {chunkable}")
    return spec.chunk


def _options(method: Method, terms: ChunkTerms, given: dict, mask: Tensor, batch: int, dtype: torch.dtype) -> dict:
    """The options every chunk reads, checked: credit only for a method with future credit."""
    on = given["future_credit"] and method.future_credit
    rewarded = on and given["reward_weight"] > 0
    if on:
        credit.check_future_credit(given["baseline"], given["group_size"], batch, given["gamma"])
        credit.check_credit(given["future_cost"], given["stop_credit"], given["eos_id"], given["credit_floor"])
        credit.check_reduce(given["future_reduce"])
        if rewarded:
            baselines.check_rewarded(given["rewards"], given["group_size"], given["baseline"])
    response_mask = given["response_mask"]
    o = dict(given, future_credit=on, exclude=given["baseline_exclude"], centred_rewards=None,
             counted=mask.bool() | response_mask.bool() if rewarded and response_mask is not None else mask.bool())
    # the mean future cost divides each chunk's carried sums by the whole sequence's weights
    o["future_weight"] = (credit.future_weight(mask.bool(), given["gamma"], dtype)
                          if on and given["future_reduce"] == "mean" else None)
    terms.check(o, batch)
    if rewarded:
        o["centred_rewards"] = given["reward_weight"] * baselines.centred_rewards(
            torch.as_tensor(given["rewards"]), given["group_size"], given["baseline"], given["reward_decay"])
    return o


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, terms, tokens, mask, expert, options):  # type: ignore[override]
        loss, grads = _forward_and_grads(terms, hidden, weight, bias, tokens, mask, expert, options)
        ctx.save_for_backward(*grads)
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output
        if not scale.requires_grad and float(scale) == 1.0:  # the usual case: no scaled copies
            return grad_hidden, grad_weight, grad_bias if ctx.has_bias else None, None, None, None, None, None
        return (
            grad_hidden * scale.to(grad_hidden.dtype),
            grad_weight * scale.to(grad_weight.dtype),
            grad_bias * scale.to(grad_bias.dtype) if ctx.has_bias else None,
            None, None, None, None, None,
        )


def compute_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype the chunked losses compute in: float64 for float64 inputs, else float32."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _forward_and_grads(terms, hidden, weight, bias, tokens, mask, expert, o):
    compute = compute_dtype(hidden)
    batch, length = tokens.shape
    keep = mask.bool()
    count = o["counted"].sum().clamp(min=1).to(compute)
    grad_hidden = torch.zeros_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=compute, device=weight.device)
    grad_bias = torch.zeros(bias.shape, dtype=compute, device=bias.device) if bias is not None else torch.zeros(0)
    total = torch.zeros((), dtype=compute, device=hidden.device)
    # carried sums over later positions, one per row: DistIL's Σ_{i≥b} γ^(i-b) CE_i and the
    # reverse-KL return Σ_{i≥b} γ^(i-b) (log p_i - log q_i)
    carry = torch.zeros(batch, dtype=compute, device=hidden.device)
    w = weight.detach().to(compute)
    b_ = bias.detach().to(compute) if bias is not None else None
    stops = list(range(length, 0, -o["chunk_size"]))
    for stop in stops:
        start = max(0, stop - o["chunk_size"])
        h = hidden[:, start:stop].detach().to(compute)
        with torch.no_grad():
            logits = F.linear(h, w, b_)
        logits.requires_grad_(True)
        with torch.enable_grad():
            chunk = Chunk(logits, tokens[:, start:stop], keep[:, start:stop], o["counted"][:, start:stop], expert,
                          start, stop, carry)
            part, carry = terms.total(chunk, o)
            part = part / count
            (grad_logits,) = torch.autograd.grad(part, [logits])
        if o["old_logprobs"] is not None:
            grad_logits = _importance_weighted(grad_logits, logits, chunk, o)
        total = total + part.detach()
        # the projection's gradients by hand, accumulated in place: no [V, H] temporary per chunk
        grad_hidden[:, start:stop] = (grad_logits @ w).to(hidden.dtype)
        grad_weight.addmm_(grad_logits.flatten(0, 1).T, h.flatten(0, 1))
        if b_ is not None:
            grad_bias += grad_logits.sum((0, 1))
        del logits, part, grad_logits, chunk
    return total, (
        grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype) if bias is not None else grad_bias,
    )


def _importance_weighted(grad_logits: Tensor, logits: Tensor, chunk: Chunk, o: dict) -> Tensor:
    """The chunk's logit gradients times the truncated importance weights; adds the chunk's sums
    of the (untruncated) ratio and of truncated positions over its counted positions (those the
    loss averages over, as the full-logit path's ``ratio_stats``) to ``o["ratios"]``."""
    current = token_logprobs(logits.detach(), chunk.tokens)
    old = o["old_logprobs"][:, chunk.start : chunk.stop].to(current.dtype)
    ratio = torch.where(chunk.counted, (current - old).exp(), 0.0)
    o["ratios"][0] += float(ratio.sum())
    o["ratios"][1] += float((ratio > o["is_clip"]).sum())
    return grad_logits * importance_weights(current, old, o["is_clip"]).unsqueeze(-1)


def chunked_distillation_loss(
    method: Union[str, Method],
    cfg: LossConfig,
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    tokens: Tensor,
    mask: Tensor,
    expert: ExpertBatch,
    rows: RowContext,
    old_logprobs: Optional[Tensor] = None,
) -> LossOutput:
    """:func:`~distil_core.losses.methods.distillation_loss` from the student's hidden states and
    output projection, the logits made ``cfg.chunk_size`` positions at a time; ``old_logprobs``
    as in :func:`chunked_loss`."""
    spec = method_named(method)
    response_mask = mask
    mask = mask * expert.rows.unsqueeze(1).to(mask.dtype)
    expert = tempered(expert, spec.target_temperature(cfg, expert.access))
    if expert.access == "none":  # every row masked out of the expert terms: the student's own head
        expert = ExpertBatch("hidden", expert.rows, hidden=hidden.detach(), head=(weight.detach(), bias))
    if expert.access == "topk":
        target = ExpertTopK(expert.topk_ids, expert.topk_logprobs)
    elif expert.access == "hidden":
        target = ExpertHead(expert.hidden, *expert.head)
    elif expert.access == "dense":
        target = expert.logits
    else:
        raise ConfigError(f"the chunked losses take dense, hidden or top-k experts, not {expert.access!r}")
    stats: dict[str, float] = {}
    loss = chunked_loss(
        spec, hidden, weight, tokens, mask, target, bias=bias, chunk_size=cfg.chunk_size,
        beta=cfg.beta, temperature=cfg.temperature, reverse_kl_gamma=cfg.reverse_kl_gamma, stats=stats,
        old_logprobs=old_logprobs, is_clip=cfg.is_clip, **credit_options(spec, cfg, rows, response_mask),
    )
    stats["signal_tokens"] = float(mask.bool().sum())
    return LossOutput(loss, stats)
