"""The losses at their numerical and structural edges: masked vocabularies, empty responses,
padding that overflows, ratios past exp's range, and impossible group or clip arguments.

Each value is checked against a float64 reference written out here (not through the code under
test), and each gradient for finiteness and against the reference's autograd gradient.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from distil_core.losses import (
    distil_loss,
    future_sum_with_carry,
    generalized_jsd,
    group_advantages,
    group_baseline,
    grpo_loss,
    leave_one_out_rewards,
    reverse_kl_sampled,
)
from distil_core.losses.chunked import chunked_loss
from distil_core.losses.importance import importance_weights
from distil_core.losses.reference_kl import kl_penalty_sum

B, T, V = 2, 3, 5
MASKED = 0  # the vocabulary entry the student (and maybe the expert) can never emit


def _jsd_reference(student_support_logits, teacher_logits, support, beta):
    """Generalised JSD per position in float64 by its definition, the student's distribution
    formed on ``support`` only (0 elsewhere) and every 0 · log 0 left out by hand."""
    p = torch.zeros(*student_support_logits.shape[:-1], V, dtype=torch.float64)
    p[..., support] = F.softmax(student_support_logits, dim=-1)
    q = F.softmax(teacher_logits.double(), dim=-1)
    m = (1 - beta) * p + beta * q
    def kl(a, b):
        ratio = torch.where(a > 0, a / torch.where(a > 0, b, 1.0), 1.0)
        return (a * ratio.log()).sum(-1)
    if beta == 0.0:
        return kl(q, p)
    if beta == 1.0:
        return kl(p, q)
    return beta * kl(q, m) + (1 - beta) * kl(p, m)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("expert_masks_it_too", [True, False])
def test_jsd_with_a_masked_student_vocabulary_has_the_reference_value_and_a_finite_gradient(beta, expert_masks_it_too):
    if beta == 0.0 and not expert_masks_it_too:
        pytest.skip("KL(q‖p) is infinite where only the student masks")
    torch.manual_seed(0)
    support = [a for a in range(V) if a != MASKED]
    student = torch.randn(B, T, V)
    student[..., MASKED] = -math.inf
    teacher = torch.randn(B, T, V)
    if expert_masks_it_too:
        teacher[..., MASKED] = -math.inf
    z = student.clone().requires_grad_(True)
    loss = generalized_jsd(z, teacher, beta=beta)
    loss.backward()
    zs = student[..., support].double().requires_grad_(True)
    ref = _jsd_reference(zs, teacher, support, beta).mean()
    ref.backward()
    assert torch.isfinite(z.grad).all()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    assert torch.allclose(z.grad[..., support].double(), zs.grad, atol=1e-6)
    assert (z.grad[..., MASKED] == 0).all()


def test_chunked_jsd_with_a_masking_bias_has_a_finite_gradient_equal_to_the_full_logits():
    torch.manual_seed(1)
    hidden, weight = torch.randn(B, 7, 4, dtype=torch.float64), torch.randn(V, 4, dtype=torch.float64)
    bias = torch.zeros(V, dtype=torch.float64)
    bias[MASKED] = -math.inf
    teacher = torch.randn(B, 7, V, dtype=torch.float64)
    teacher[..., MASKED] = -math.inf
    tokens, mask = torch.randint(1, V, (B, 7)), torch.ones(B, 7)
    h1 = hidden.clone().requires_grad_(True)
    chunked = chunked_loss("jsd", h1, weight, tokens, mask, teacher, bias=bias, chunk_size=3)
    chunked.backward()
    h2 = hidden.clone().requires_grad_(True)
    full = generalized_jsd(F.linear(h2, weight, bias), teacher, mask)
    full.backward()
    assert torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()
    assert float(chunked) == pytest.approx(float(full), rel=1e-12)
    assert torch.allclose(h1.grad, h2.grad, atol=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_empty_responses_give_a_zero_loss_with_a_graph(gamma):
    logits = torch.randn(B, 0, V, requires_grad=True)
    tokens, mask = torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0)
    loss = distil_loss(logits, torch.randn(B, 0, V), tokens, mask, gamma=gamma)
    loss.backward()
    assert float(loss) == 0.0 and logits.grad.shape == logits.shape
    lps = torch.zeros(B, 0, requires_grad=True)
    assert float(reverse_kl_sampled(lps, torch.zeros(B, 0), mask, gamma=gamma)) == 0.0
    # an empty block passes the later blocks' carry through unchanged
    carry = torch.tensor([1.0, 2.0])
    future, before = future_sum_with_carry(torch.zeros(B, 0), mask, gamma, carry)
    assert future.shape == (B, 0) and torch.equal(before, carry)


def test_k3_penalty_ignores_padding_whose_log_ratio_overflows():
    # padding holds the reference's 0 and whatever the policy gives the pad token, here far below
    # exp's range: r = exp(0 - (-100)) overflows to inf there
    for pad in (-100.0, -math.inf):
        logprobs = torch.tensor([[-1.0, pad]], requires_grad=True)
        ref = torch.tensor([[-1.2, 0.0]])
        total = kl_penalty_sum(logprobs, ref, torch.tensor([[1.0, 0.0]]), "k3")
        total.backward()
        r = math.exp(-1.2 + 1.0)
        assert float(total) == pytest.approx(r - 1 - math.log(r), rel=1e-6)
        assert logprobs.grad[0, 0] == pytest.approx(1 - r, rel=1e-6)
        assert logprobs.grad[0, 1] == 0.0


def _grpo_reference(logprobs, old, advantages, eps=0.2):
    """The clipped objective per token, by its formula, in float64 (exp(95) is finite there)."""
    ratio = torch.exp(logprobs - old)
    return -torch.minimum(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)


@pytest.mark.parametrize("advantage", [1.0, 0.0, -1.0])
def test_grpo_with_a_ratio_past_exps_range_matches_the_float64_reference(advantage):
    # token 0: old log-prob 95 below the new one (ρ = e^95 overflows float32); token 1 ordinary;
    # token 2 masked out, with an old log-prob 200 below
    new = torch.tensor([[-1.0, -1.0, -1.0]])
    old = torch.tensor([[-96.0, -1.1, -201.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    z = new.clone().requires_grad_(True)
    loss = grpo_loss(z, old, torch.tensor([advantage]), mask, loss_type="bnpo")
    loss.backward()
    z64 = new.double().requires_grad_(True)
    per_token = _grpo_reference(z64, old.double(), advantage)
    ref = (per_token * mask.double())[:, :2].sum() / 2
    ref.backward()
    assert torch.isfinite(z.grad[:, 1:]).all()
    if advantage < 0:  # -A·ρ with ρ = e^95: the value itself is past float32's range
        assert float(loss) == math.inf
        return
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert torch.allclose(z.grad.double(), z64.grad, rtol=1e-6, atol=0)


def test_group_arguments_that_cannot_hold_groups_are_refused_by_name():
    with pytest.raises(ValueError, match="group_size"):
        leave_one_out_rewards(torch.tensor([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="group_size"):
        leave_one_out_rewards(torch.tensor([1.0, 0.0, 1.0, 0.0]), 3)
    with pytest.raises(ValueError, match="group_size"):
        group_baseline(torch.ones(4, 2), torch.ones(4, 2), 3)
    # a group whose every sibling is masked, and a group of one, have a baseline of 0
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(group_baseline(values, torch.tensor([[1.0, 1.0], [0.0, 0.0]]), 2),
                       torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
    assert torch.equal(group_baseline(values, torch.ones(2, 2), 1), torch.zeros(2, 2))


def test_batch_scaled_advantage_of_a_single_reward_is_zero_not_nan():
    assert torch.equal(group_advantages(torch.tensor([0.7]), 1, "batch"), torch.tensor([0.0]))


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_importance_weights_refuse_a_clip_that_is_not_positive(clip):
    with pytest.raises(ValueError, match="is_clip"):
        importance_weights(torch.zeros(1, 2), torch.zeros(1, 2), clip)
