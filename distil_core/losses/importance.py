"""Off-policy corrections when the policy that learns is not the one that sampled.

With ``optim.epochs`` or ``optim.minibatches`` above 1, every optimizer step after the first
learns from rollouts that an older policy ``π_old`` sampled; under ``rollout.overlap_grading``
every step does (its batch was sampled before the previous step's update). GRPO corrects with its own clipped
ratio (:func:`~distil_core.losses.reference.grpo_loss`, given the recorded old log-probs). The
distillation losses weigh each token's term by a *truncated per-token importance weight*

    w_t = min(π(y_t | s_t) / π_old(y_t | s_t), c),   c = ``loss.is_clip``, detached

(docs/algorithms.md, "Several passes per batch", says why per token and why truncated).

Every distillation loss is a sum of per-position terms, each reading only the logits at its own
position (the terms that couple positions — future credit, the reverse-KL return — are
detached), so the gradient of ``Σ_t w_t ℓ_t`` is the gradient of ``Σ_t ℓ_t`` with the gradient
reaching position t's logits scaled by ``w_t``. :func:`weighted_gradient` does exactly that,
which lets the losses themselves stay as they are, on full logits and in chunks alike.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def importance_weights(logprobs: Tensor, old_logprobs: Tensor, clip: float) -> Tensor:
    """``min(exp(logprobs - old_logprobs), clip)``, detached, ``[B, T]``."""
    if not clip > 0:  # a weight of 0 or below would drop or reverse every token's gradient
        raise ValueError(f"clip (loss.is_clip) must be positive, got {clip}")
    return (logprobs.detach() - old_logprobs.detach()).exp().clamp(max=clip)


class _WeightedGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, weights):  # type: ignore[override]
        ctx.save_for_backward(weights)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        return grad * weights.unsqueeze(-1).to(grad.dtype), None


def weighted_gradient(logits: Tensor, weights: Optional[Tensor]) -> Tensor:
    """``logits`` ``[B, T, V]`` unchanged in value; the gradient reaching position ``[b, t]`` is
    multiplied by ``weights[b, t]``. ``weights=None`` returns ``logits`` itself."""
    if weights is None:
        return logits
    return _WeightedGradient.apply(logits, weights.detach())


def ratio_stats(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, clip: float) -> dict[str, float]:
    """Token means over ``mask`` of the ratio π/π_old and of the share truncated at ``clip``
    (``ratio_mean``, ``is_truncated_fraction``)."""
    keep = mask.bool()
    count = max(int(keep.sum()), 1)
    ratio = (logprobs.detach() - old_logprobs.detach()).exp()
    return {"ratio_mean": float(ratio[keep].sum()) / count,
            "is_truncated_fraction": float((ratio[keep] > clip).sum()) / count}


def clip_stats(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
               eps_low: float, eps_high: float) -> dict[str, float]:
    """GRPO's ``clip_fraction`` (share of tokens whose clipped branch is the minimum: no gradient)
    and ``ratio_mean``, token means over ``mask``."""
    keep = mask.bool()
    count = max(int(keep.sum()), 1)
    ratio = (logprobs.detach() - old_logprobs.detach()).exp()
    adv = advantages.detach()
    adv = adv[:, None].expand_as(ratio) if adv.dim() == 1 else adv
    clipped = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))
    return {"clip_fraction": float((clipped & keep).sum()) / count, "ratio_mean": float(ratio[keep].sum()) / count}
