"""The KL penalty to a reference policy (``loss.kl_to_reference``), per sampled token.

Schulman's estimators of ``KL(π‖π_ref)`` from a token ``y ~ π`` need only the two log-probs of
``y``; with ``r = π_ref(y) / π(y)``:

* ``k1 = log π(y) - log π_ref(y) = -log r``: unbiased, but a single value can be negative.
  As a loss its gradient is ``∇log π(y)``, whose expectation under ``y ~ π`` is zero: k1 added to
  a loss on sampled tokens changes nothing on average (the score-function part of the KL's
  gradient is missing); only its sample noise remains.
* ``k3 = r - 1 - log r``: unbiased too, never negative (``log r ≤ r - 1``), lower variance. Its
  gradient is ``(1 - r) ∇log π(y)``, whose expectation is ``Σ_y (π - π_ref) ∇log π = ∇KL(π_ref‖π)``:
  it pulls towards the reference as the *forward* KL does, and is zero where π = π_ref.

docs/algorithms.md ("KL penalty to a reference policy") derives both.
"""

from __future__ import annotations

import torch
from torch import Tensor

ESTIMATORS = ("k1", "k3")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of ``KL(π‖π_ref)`` at the sampled tokens, ``[B, T]``; the gradient flows
    through ``logprobs`` only (the reference is detached)."""
    log_r = ref_logprobs.detach() - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k3":
        return log_r.exp() - 1 - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def kl_penalty_sum(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str) -> Tensor:
    """Σ over the masked tokens of :func:`kl_estimate` (``where``, not multiplication: padding
    may hold -inf log-probs). Padding is zeroed before the estimate too: k3's ``exp`` of a
    padded position's log-ratio may overflow, and 0 · inf would make the gradient NaN."""
    keep = mask.bool()
    per_token = kl_estimate(torch.where(keep, logprobs, 0.0), torch.where(keep, ref_logprobs.detach(), 0.0), estimator)
    return torch.where(keep, per_token, 0.0).sum()
