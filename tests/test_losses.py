"""Losses checked against their definitions (docs/guide.md, "Methods").

The DistIL gradient is checked on a tabular autoregressive policy small enough to enumerate
every sequence, so the exact gradient of E_{y~π_θ} Σ_t CE(q_t, p_t) comes from autograd
through the enumeration, independently of the surrogate under test. Everything else is
checked against numbers written out by hand.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from distil_core.losses import (
    distil_loss,
    distil_loss_sampled,
    distil_loss_topk,
    distil_surrogate,
    future_cost,
    generalized_jsd,
    generalized_jsd_topk,
    group_advantages,
    group_baseline,
    grpo_loss,
    reverse_kl_sampled,
    sequence_ce_loss,
    temper_topk,
    token_logprobs,
    topk_with_tail,
    support_score,
)


@pytest.fixture(autouse=True)
def float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ------------------------------------------------------------- tabular policy, enumerated

V, T = 3, 3
SEQUENCES = list(itertools.product(range(V), repeat=T))
NUM_PREFIXES = sum(V**t for t in range(T))  # one logits row per prefix of length 0..T-1


def prefix_row(prefix):
    """Row of the table that holds the logits for the state after ``prefix``."""
    code = 0
    for token in prefix:
        code = code * V + token
    return sum(V**t for t in range(len(prefix))) + code


def state_rows(sequence):
    return [prefix_row(sequence[:t]) for t in range(len(sequence))]


def make_tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(NUM_PREFIXES, V, generator=g).requires_grad_()
    expert_logits = 1.5 * torch.randn(NUM_PREFIXES, V, generator=g)
    return theta, expert_logits


def exact_gradient(theta, expert_logits):
    """∇ Σ_y P_θ(y) Σ_t CE(q(s_t), p_θ(s_t)), by autograd through all V^T sequences."""
    logp = F.log_softmax(theta, dim=-1)
    q = F.softmax(expert_logits, dim=-1)
    objective = 0.0
    for y in SEQUENCES:
        rows = state_rows(y)
        log_prob_y = sum(logp[r, a] for r, a in zip(rows, y))
        total_ce = sum(-(q[r] * logp[r]).sum() for r in rows)
        objective = objective + log_prob_y.exp() * total_ce
    (grad,) = torch.autograd.grad(objective, theta)
    return grad


def discounted_gradient(theta, expert_logits, gamma):
    """Exact gradient with the step-t decision's effect on the cost at step i scaled by γ^(i-t-1).

    Each decision step t gets its own copy of the table and the CE evaluation another; the
    partial derivative of E[CE_i] with respect to step t's copy is the influence of decision t
    on cost i. At γ = 1 the weighted sum is the ordinary gradient.
    """
    ce_table = theta.detach().clone().requires_grad_()
    step_tables = [theta.detach().clone().requires_grad_() for _ in range(T)]
    q = F.softmax(expert_logits, dim=-1)
    step_logp = [F.log_softmax(table, dim=-1) for table in step_tables]
    ce_logp = F.log_softmax(ce_table, dim=-1)
    total = torch.zeros_like(theta)
    for i in range(T):
        expected_ce_i = 0.0
        for prefix in itertools.product(range(V), repeat=i):
            rows = state_rows(prefix)
            log_prob_prefix = sum((step_logp[t][r, a] for t, (r, a) in enumerate(zip(rows, prefix))),
                                  torch.tensor(0.0))
            state = prefix_row(prefix)
            expected_ce_i = expected_ce_i + log_prob_prefix.exp() * -(q[state] * ce_logp[state]).sum()
        grads = torch.autograd.grad(expected_ce_i, [ce_table, *step_tables[:i]], retain_graph=True)
        total += grads[0] + sum((gamma ** (i - t - 1) * g for t, g in enumerate(grads[1:])),
                                torch.zeros_like(theta))
    return total


def state_rows_tensor(tokens):
    """Table rows of every state of a batch of sequences ``[N, T]``."""
    rows, code = [], torch.zeros(tokens.shape[0], dtype=torch.long)
    for t in range(tokens.shape[1]):
        rows.append(sum(V**s for s in range(t)) + code)
        code = code * V + tokens[:, t]
    return torch.stack(rows, dim=1)


def surrogate_gradient(theta, expert_logits, sequences, **options):
    """Gradient of the mean per-sequence surrogate Σ_t ℓ_t over one batch of sequences.

    The exact gradient these are compared with is that of E Σ_t CE: the "ce" future cost.
    """
    options.setdefault("future_cost", "ce")
    tokens = torch.tensor(sequences, dtype=torch.long)
    rows = state_rows_tensor(tokens)
    loss = distil_loss(theta[rows], expert_logits[rows], tokens, torch.ones(tokens.shape), **options)
    (grad,) = torch.autograd.grad(T * loss, theta)  # distil_loss averages over B·T tokens
    return grad


def per_batch_gradients(theta, expert_logits, batches, **options):
    """surrogate_gradient of many equal-sized batches at once, stacked ``[num_batches, ...]``.

    Each batch reads its own copy of the table, so one backward pass keeps them apart; the
    batches sit side by side as contiguous rows, which keeps groups within their batch.
    """
    options.setdefault("future_cost", "ce")
    num_batches, batch_size = len(batches), len(batches[0])
    tables = theta.detach().expand(num_batches, *theta.shape).clone().requires_grad_()
    tokens = torch.tensor(batches, dtype=torch.long).reshape(-1, T)
    rows = state_rows_tensor(tokens)
    batch_of_row = torch.arange(num_batches).repeat_interleave(batch_size)
    student = tables[batch_of_row[:, None], rows]
    loss = distil_loss(student, expert_logits[rows], tokens, torch.ones(tokens.shape), **options)
    # the joint token mean has num_batches times the denominator of one batch's own mean
    (grads,) = torch.autograd.grad(num_batches * T * loss, tables)
    return grads


def expectation(weights, values):
    return torch.einsum("n,n...->...", weights, values)


def sequence_probabilities(theta):
    """P_θ(y) of every sequence in SEQUENCES, as a tensor in that order."""
    logp = F.log_softmax(theta.detach(), dim=-1)
    tokens = torch.tensor(SEQUENCES)
    return logp[state_rows_tensor(tokens), tokens].sum(-1).exp()


def sample_sequences(theta, n, generator):
    probs = F.softmax(theta.detach(), dim=-1)
    tokens = torch.zeros(n, T, dtype=torch.long)
    code = torch.zeros(n, dtype=torch.long)
    for t in range(T):
        rows = sum(V**s for s in range(t)) + code
        tokens[:, t] = torch.multinomial(probs[rows], 1, generator=generator).squeeze(-1)
        code = code * V + tokens[:, t]
    return tokens.tolist()


SINGLE_SEQUENCE_BATCHES = [[y] for y in SEQUENCES]
PAIR_BATCHES = [[y1, y2] for y1, y2 in itertools.product(SEQUENCES, repeat=2)]


def test_enumerated_surrogate_gradient_is_the_exact_gradient():
    theta, expert_logits = make_tables()
    exact = exact_gradient(theta, expert_logits)
    weights = sequence_probabilities(theta)
    grads = per_batch_gradients(theta, expert_logits, SINGLE_SEQUENCE_BATCHES)
    expected = expectation(weights, grads)
    torch.testing.assert_close(expected, exact, atol=1e-9, rtol=0)
    # without future credit the gradient is off by about its own size in this instance
    local_only = expectation(weights, per_batch_gradients(
        theta, expert_logits, SINGLE_SEQUENCE_BATCHES, future_credit=False))
    assert (local_only - exact).norm() > 0.5 * exact.norm()


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_discounted_surrogate_gradient_matches_discounted_influence(gamma):
    theta, expert_logits = make_tables(seed=1)
    reference = discounted_gradient(theta, expert_logits, gamma)
    exact = exact_gradient(theta, expert_logits)
    if gamma == 1.0:
        torch.testing.assert_close(reference, exact, atol=1e-12, rtol=0)
    else:
        assert (reference - exact).norm() > 0.05 * exact.norm()  # γ changes the target
    weights = sequence_probabilities(theta)
    expected = expectation(weights, per_batch_gradients(
        theta, expert_logits, SINGLE_SEQUENCE_BATCHES, gamma=gamma))
    torch.testing.assert_close(expected, reference, atol=1e-9, rtol=0)


def test_monte_carlo_surrogate_gradient_converges():
    theta, expert_logits = make_tables()
    exact = exact_gradient(theta, expert_logits)
    # E‖g_y - ∇J‖² of a one-sequence estimate: an N-sample mean has 1/N of it
    deviations = per_batch_gradients(theta, expert_logits, SINGLE_SEQUENCE_BATCHES) - exact
    per_sequence_variance = expectation(sequence_probabilities(theta), deviations.pow(2).sum((1, 2)))
    generator = torch.Generator().manual_seed(1234)
    errors = {}
    for n in (250, 4000):
        estimate = surrogate_gradient(theta, expert_logits, sample_sequences(theta, n, generator))
        errors[n] = ((estimate - exact).norm() / exact.norm()).item()
        expected_rms = ((per_sequence_variance / n).sqrt() / exact.norm()).item()
        assert errors[n] < 3 * expected_rms  # about 0.32 at N=250 and 0.08 at N=4000
    # 16 times the samples: the error should shrink about 4-fold (0.18 -> 0.03 with this seed)
    assert errors[4000] < 0.1
    assert errors[4000] < errors[250] / 2


def test_group_loo_baseline_is_unbiased_and_lowers_variance():
    theta, expert_logits = make_tables()
    exact = exact_gradient(theta, expert_logits)
    probs = sequence_probabilities(theta)
    pair_weights = (probs[:, None] * probs[None, :]).reshape(-1)  # same order as PAIR_BATCHES
    variance = {}
    for baseline in ("none", "group_loo"):
        grads = per_batch_gradients(theta, expert_logits, PAIR_BATCHES,
                                    baseline=baseline, group_size=2)
        torch.testing.assert_close(expectation(pair_weights, grads), exact, atol=1e-9, rtol=0)
        # exact variance over the pair distribution, not a Monte-Carlo estimate of it
        variance[baseline] = expectation(pair_weights, (grads - exact).pow(2).sum((1, 2))).item()
    assert variance["group_loo"] < 0.5 * variance["none"]  # 1.6 vs 5.0 here


# ----------------------------------------------------------------------- DistIL pieces


def random_batch(B=2, T_=4, V_=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T_, V_, generator=g).requires_grad_()
    teacher = 2 * torch.randn(B, T_, V_, generator=g)
    tokens = torch.randint(0, V_, (B, T_), generator=g)
    mask = torch.ones(B, T_)
    mask[0, -1] = 0
    mask[-1, :2] = 0
    return student, teacher, tokens, mask


def test_future_cost_discounts_by_position_and_skips_masked_tokens():
    ce = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    expected = torch.tensor([[2.0 + 0.25 * 8, 0.5 * 8, 0.0, 0.0]])
    torch.testing.assert_close(future_cost(ce, mask, gamma=0.5), expected)
    torch.testing.assert_close(future_cost(ce, mask), torch.tensor([[10.0, 8.0, 0.0, 0.0]]))


def test_mean_future_cost_is_the_discounted_mean_over_later_tokens():
    ce = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    # t = 0: (2 + 0.25 * 8) / (1 + 0.25); t = 1: 0.5 * 8 / 0.5; the last kept token has no future
    expected = torch.tensor([[4.0 / 1.25, 8.0, 0.0, 0.0]])
    torch.testing.assert_close(future_cost(ce, mask, gamma=0.5, reduce="mean"), expected)
    torch.testing.assert_close(future_cost(ce, mask, reduce="mean"), torch.tensor([[5.0, 8.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="unknown future_reduce 'max'; choose one of sum, mean"):
        future_cost(ce, mask, reduce="max")


def test_mean_future_cost_gives_a_shorter_ending_no_credit_for_its_length():
    # two rollouts of one prompt, the same cost per token; the second ends three tokens sooner.
    # The summed future cost credits the first token of the short one for its shortness alone
    ce = torch.ones(2, 6)
    mask = torch.tensor([[1.0] * 6, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    grads = {}
    for reduce in ("sum", "mean"):
        logprobs = torch.zeros(2, 6, requires_grad=True)
        distil_surrogate(ce, logprobs, mask, baseline="group_loo", group_size=2, future_reduce=reduce).backward()
        grads[reduce] = logprobs.grad
    assert grads["sum"][1, 0] < 0 < grads["sum"][0, 0]  # descent raises the short row's first token
    torch.testing.assert_close(grads["mean"][:, 0], torch.zeros(2))


def test_local_ablation_gradient_is_p_minus_q_per_token():
    student, teacher, tokens, mask = random_batch()
    distil_loss(student, teacher, tokens, mask, future_credit=False).backward()
    p, q = F.softmax(student.detach(), -1), F.softmax(teacher, -1)
    expected = (p - q) * mask[..., None] / mask.sum()
    torch.testing.assert_close(student.grad, expected, atol=1e-12, rtol=0)
    assert torch.all(student.grad[mask == 0] == 0)


def test_topk_with_all_ids_equals_dense():
    student, teacher, tokens, mask = random_batch()
    ids, logprobs = topk_with_tail(teacher, k=teacher.shape[-1])
    for options in ({}, {"future_credit": False}, {"baseline": "group_loo", "group_size": 2}):
        dense = distil_loss(student, teacher, tokens, mask, **options)
        (dense_grad,) = torch.autograd.grad(dense, student)
        topk = distil_loss_topk(student, ids, logprobs, tokens, mask, **options)
        (topk_grad,) = torch.autograd.grad(topk, student)
        torch.testing.assert_close(topk, dense, atol=1e-10, rtol=0)
        torch.testing.assert_close(topk_grad, dense_grad, atol=1e-10, rtol=0)
        assert torch.isfinite(topk_grad).all()


def test_topk_with_all_ids_is_finite_in_float32():
    student, teacher, tokens, mask = random_batch()
    student, teacher, mask = student.detach().float().requires_grad_(), teacher.float(), mask.float()
    ids, logprobs = topk_with_tail(teacher, k=teacher.shape[-1])
    topk = distil_loss_topk(student, ids, logprobs, tokens, mask)
    topk.backward()
    assert torch.isfinite(student.grad).all()
    dense = distil_loss(student, teacher, tokens, mask)
    assert topk.item() == pytest.approx(dense.item(), abs=1e-5)


def test_topk_hand_computed():
    q = [0.5, 0.3, 0.15, 0.05]
    p = [0.4, 0.1, 0.3, 0.2]
    student = torch.tensor([[[math.log(x) for x in p]]], requires_grad=True)
    ids, logprobs = topk_with_tail(torch.tensor([[[math.log(x) for x in q]]]), k=2)
    assert ids.tolist() == [[[0, 1]]]
    loss = distil_loss_topk(student, ids, logprobs, torch.tensor([[0]]), torch.ones(1, 1))
    # buckets {0}, {1}, tail: expert 0.5, 0.3, 0.2; student 0.4, 0.1, 0.5; one token, no future
    expected = -(0.5 * math.log(0.4) + 0.3 * math.log(0.1) + 0.2 * math.log(0.5))
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # the same buckets written out from the student's softmax give the same gradient
    (grad,) = torch.autograd.grad(loss, student)
    probs = F.softmax(student, -1)[0, 0]
    by_hand = -(0.5 * probs[0].log() + 0.3 * probs[1].log() + 0.2 * (probs[2] + probs[3]).log())
    (expected_grad,) = torch.autograd.grad(by_hand, student)
    torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)
    jsd = generalized_jsd_topk(student, ids, logprobs, beta=0.0)
    expected_kl = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.1) + 0.2 * math.log(0.2 / 0.5)
    assert jsd.item() == pytest.approx(expected_kl, abs=1e-12)


def test_sampled_expectation_over_all_samples_equals_dense():
    student, teacher, tokens, mask = random_batch(B=1, T_=3, V_=3, seed=3)
    mask = torch.ones(1, 3)
    q = F.softmax(teacher, -1)[0]
    dense = distil_loss(student, teacher, tokens, mask, future_cost="ce")  # samples estimate CE
    (dense_grad,) = torch.autograd.grad(dense, student)
    expected_loss, expected_grad = 0.0, torch.zeros_like(student)
    for samples in itertools.product(range(3), repeat=3):
        weight = math.prod(q[t, a].item() for t, a in enumerate(samples))
        loss = distil_loss_sampled(student, torch.tensor(samples).reshape(1, 3, 1), tokens, mask)
        (grad,) = torch.autograd.grad(loss, student)
        expected_loss += weight * loss.item()
        expected_grad += weight * grad
    assert expected_loss == pytest.approx(dense.item(), abs=1e-10)
    torch.testing.assert_close(expected_grad, dense_grad, atol=1e-10, rtol=0)


def test_sampled_with_many_samples_approaches_dense_value():
    student, teacher, tokens, mask = random_batch()
    g = torch.Generator().manual_seed(7)
    q = F.softmax(teacher, -1)
    samples = torch.multinomial(q.reshape(-1, q.shape[-1]), 20000, replacement=True, generator=g)
    samples = samples.reshape(*q.shape[:2], -1)
    sampled = distil_loss_sampled(student, samples, tokens, mask, future_credit=False)
    dense = distil_loss(student, teacher, tokens, mask, future_credit=False)
    assert sampled.item() == pytest.approx(dense.item(), abs=0.02)


def test_sampled_ignores_missing_samples():
    student, _, tokens, mask = random_batch(B=1, T_=2, V_=4)
    mask = torch.ones(1, 2)
    logp = F.log_softmax(student.detach(), -1)[0]
    samples = torch.tensor([[[2, -100], [-100, -100]]])
    loss = distil_loss_sampled(student, samples, tokens, mask, future_credit=False)
    # the second position has no sample: no CE term, but it still counts as a token
    assert loss.item() == pytest.approx(-logp[0, 2].item() / 2, abs=1e-12)


def test_sequence_ce_is_token_mean_nll():
    student, _, targets, mask = random_batch()
    logp = F.log_softmax(student.detach(), -1)
    nll = [-logp[b, t, targets[b, t]].item() for b in range(2) for t in range(4) if mask[b, t]]
    assert sequence_ce_loss(student, targets, mask).item() == pytest.approx(sum(nll) / len(nll))
    expected = logp.gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(student, targets), expected)


def test_expert_side_gets_no_gradient():
    student, teacher, tokens, mask = random_batch()
    teacher.requires_grad_()
    ids, logprobs = topk_with_tail(teacher.detach(), k=3)
    logprobs.requires_grad_()
    teacher_lp = token_logprobs(teacher.detach(), tokens).requires_grad_()
    losses = [
        distil_loss(student, teacher, tokens, mask),
        distil_loss_topk(student, ids, logprobs, tokens, mask),
        generalized_jsd(student, teacher, mask),
        generalized_jsd_topk(student, ids, logprobs, mask),
        reverse_kl_sampled(token_logprobs(student, tokens), teacher_lp, mask, gamma=0.5),
    ]
    sum(losses).backward()
    assert teacher.grad is None and logprobs.grad is None and teacher_lp.grad is None
    assert student.grad is not None


def test_all_masked_batch_gives_zero_with_a_graph():
    student, teacher, tokens, _ = random_batch()
    mask = torch.zeros(2, 4)
    for loss in (distil_loss(student, teacher, tokens, mask),
                 generalized_jsd(student, teacher, mask)):
        assert loss.item() == 0.0
        loss.backward()
        assert torch.all(student.grad == 0)


def test_group_loo_needs_valid_groups():
    student, teacher, tokens, mask = random_batch(B=4)
    mask = torch.ones(4, 4)
    with pytest.raises(ValueError, match="group_size"):
        distil_loss(student, teacher, tokens, mask, baseline="group_loo")
    with pytest.raises(ValueError, match="groups of 3"):
        distil_loss(student, teacher, tokens, mask, baseline="group_loo", group_size=3)
    with pytest.raises(ValueError, match=">= 2"):
        distil_loss(student, teacher, tokens, mask, baseline="group_loo", group_size=1)
    with pytest.raises(ValueError, match="unknown baseline"):
        distil_loss(student, teacher, tokens, mask, baseline="mean")


# -------------------------------------------------------------------------------- JSD

P, Q = [0.9, 0.1], [0.5, 0.5]


def two_token_logits(probs, scale=1.0):
    return torch.tensor([[[scale * math.log(x) for x in probs]]])


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


@pytest.mark.parametrize("beta", [0.3, 0.5, 0.8])
def test_generalized_jsd_by_hand(beta):
    mixture = [(1 - beta) * p + beta * q for p, q in zip(P, Q)]
    expected = beta * kl(Q, mixture) + (1 - beta) * kl(P, mixture)
    got = generalized_jsd(two_token_logits(P), two_token_logits(Q), beta=beta)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_generalized_jsd_endpoints_are_forward_and_reverse_kl():
    forward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)   # KL(q‖p)
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)   # KL(p‖q)
    student, teacher = two_token_logits(P), two_token_logits(Q)
    assert generalized_jsd(student, teacher, beta=0.0).item() == pytest.approx(forward, abs=1e-12)
    assert generalized_jsd(student, teacher, beta=1.0).item() == pytest.approx(reverse, abs=1e-12)
    classic = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) \
        + 0.5 * (0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3))
    assert generalized_jsd(student, teacher, beta=0.5).item() == pytest.approx(classic, abs=1e-12)


def test_generalized_jsd_temperature_mask_and_symmetry():
    student, teacher = two_token_logits(P), two_token_logits(Q)
    plain = generalized_jsd(student, teacher, beta=0.3).item()
    # logits scaled by 2 and divided by temperature 2 give the same distributions
    scaled = generalized_jsd(two_token_logits(P, 2.0), two_token_logits(Q, 2.0), beta=0.3,
                             temperature=2.0)
    assert scaled.item() == pytest.approx(plain, abs=1e-12)
    assert generalized_jsd(two_token_logits(P, 2.0), two_token_logits(Q, 2.0), beta=0.3).item() != \
        pytest.approx(plain, abs=1e-3)
    # second token has identical distributions, so its loss is 0
    students = torch.cat([student, teacher], dim=1)
    teachers = torch.cat([teacher, teacher], dim=1)
    assert generalized_jsd(students, teachers, beta=0.3).item() == pytest.approx(plain / 2, abs=1e-12)
    assert generalized_jsd(students, teachers, torch.tensor([[1, 0]]), beta=0.3).item() == \
        pytest.approx(plain, abs=1e-12)
    swapped = generalized_jsd(teacher, student, beta=0.5)
    original = generalized_jsd(student, teacher, beta=0.5)
    assert swapped.item() == pytest.approx(original.item(), abs=1e-12)


def test_generalized_jsd_topk_with_all_ids_equals_dense():
    student, teacher, _, mask = random_batch()
    ids, logprobs = topk_with_tail(teacher, k=5)
    for beta in (0.0, 0.5, 1.0):
        dense = generalized_jsd(student, teacher, mask, beta=beta)
        topk = generalized_jsd_topk(student, ids, logprobs, mask, beta=beta)
        assert topk.item() == pytest.approx(dense.item(), abs=1e-10)


# ------------------------------------------------------------------------------- GRPO

# ρ per token (old log-probs 0); the third token of row 1 is padding
RATIOS = [[1.0, 1.5, 0.5], [1.3, 0.7, 5.0]]
GRPO_MASK = [[1, 1, 1], [1, 1, 0]]
ADVANTAGES = [1.0, -2.0]
# row 0, A=+1: ρ=1 → -1; ρ=1.5 clipped to 1.2 → -1.2; ρ=0.5 → -0.5 (low clip idle for A>0)
# row 1, A=-2: ρ=1.3 → +2.6 (high clip inactive for A<0); ρ=0.7 clipped to 0.8 → +1.6
TOKEN_LOSSES = [[-1.0, -1.2, -0.5], [2.6, 1.6]]


def grpo_inputs():
    logprobs = torch.tensor(RATIOS).log().requires_grad_()
    return logprobs, torch.zeros(2, 3), torch.tensor(ADVANTAGES), torch.tensor(GRPO_MASK)


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", ((-1.0 - 1.2 - 0.5) / 3 + (2.6 + 1.6) / 2) / 2),
    ("bnpo", 1.5 / 5),
    ("dr_grpo", 1.5 / 6),
    ("dapo", 1.5 / 5),
])
def test_grpo_aggregations_by_hand(loss_type, expected):
    assert grpo_loss(*grpo_inputs(), loss_type=loss_type).item() == pytest.approx(expected, abs=1e-12)


def test_grpo_dapo_normalizer_and_asymmetric_clip():
    assert grpo_loss(*grpo_inputs(), normalizer=10).item() == pytest.approx(0.15, abs=1e-12)
    # ε_high = 0.28: the ρ=1.5 token now clips at 1.28
    got = grpo_loss(*grpo_inputs(), eps_high=0.28, loss_type="bnpo").item()
    assert got == pytest.approx((-1.0 - 1.28 - 0.5 + 2.6 + 1.6) / 5, abs=1e-12)


@pytest.mark.parametrize("normalizer", [0, 0.0, -3.0, float("nan")])
def test_a_normalizer_that_is_not_a_positive_count_is_refused_not_a_nan(normalizer):
    """0/0 would make the loss and every gradient NaN; the error says what to pass instead."""
    with pytest.raises(ValueError, match="normalizer must be a positive token count"):
        grpo_loss(*grpo_inputs(), normalizer=normalizer)
    ce, mask = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="pass None to divide by this micro-batch's own token count"):
        distil_surrogate(ce, torch.zeros(2, 3), mask, normalizer=normalizer)


def test_grpo_clipped_tokens_get_no_gradient():
    logprobs, old, advantages, mask = grpo_inputs()
    grpo_loss(logprobs, old, advantages, mask, loss_type="bnpo").backward()
    # d(-ρA)/d logp = -ρA for unclipped tokens
    expected = torch.tensor([[-1.0, 0.0, -0.5], [2.6, 0.0, 0.0]]) / 5
    torch.testing.assert_close(logprobs.grad, expected)


def test_grpo_on_policy_dapo_is_minus_mean_advantage():
    logprobs = torch.randn(2, 3)
    advantages = torch.tensor([[0.5, -1.0, 2.0], [3.0, 1.0, 7.0]])
    mask = torch.tensor(GRPO_MASK)
    got = grpo_loss(logprobs, logprobs.clone(), advantages, mask)
    assert got.item() == pytest.approx(-(0.5 - 1.0 + 2.0 + 3.0 + 1.0) / 5, abs=1e-12)


def test_grpo_mean_skips_empty_sequences():
    logprobs = torch.zeros(3, 2)
    got = grpo_loss(logprobs, logprobs, torch.tensor([1.0, 3.0, 100.0]),
                    torch.tensor([[1, 1], [1, 0], [0, 0]]), loss_type="grpo")
    assert got.item() == pytest.approx(-(1.0 + 3.0) / 2, abs=1e-12)


def test_grpo_unknown_loss_type():
    with pytest.raises(ValueError, match="dr_grpo"):
        grpo_loss(*grpo_inputs(), loss_type="ppo")


REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_group_advantages_by_hand():
    centred = [0.25, -0.75, 0.25, 0.25, -0.25, -0.25, -0.25, 0.75]
    group_std = math.sqrt((3 * 0.25**2 + 0.75**2) / 3)  # 0.5 in both groups, n-1 denominator
    batch_std = math.sqrt(8 * 0.5**2 / 7)
    rewards = torch.tensor(REWARDS)
    for scale, divisor in (("none", 1.0), ("group", group_std + 1e-4), ("batch", batch_std + 1e-4)):
        expected = torch.tensor([a / divisor for a in centred])
        torch.testing.assert_close(group_advantages(rewards, 4, scale=scale), expected)


def test_group_advantages_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.tensor(REWARDS), 3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.tensor(REWARDS), 1, scale="group")
    with pytest.raises(ValueError, match="unknown scale"):
        group_advantages(torch.tensor(REWARDS), 4, scale="rank")


# ------------------------------------------------------------------ reverse KL, sampled


def test_reverse_kl_per_token_gradient():
    student = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -3.0, -0.7]], requires_grad=True)
    teacher = torch.tensor([[-1.0, -0.2, -2.5], [-0.3, -1.0, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss = reverse_kl_sampled(student, teacher, mask)
    loss.backward()
    log_ratio = student.detach() - teacher
    torch.testing.assert_close(student.grad, log_ratio * mask / 5)
    assert loss.item() == pytest.approx((log_ratio * student.detach() * mask).sum().item() / 5)


def test_reverse_kl_discounted_cost_to_go():
    student = torch.tensor([[-0.5, -1.0, -2.0, -0.3]], requires_grad=True)
    teacher = torch.tensor([[-1.0, -0.2, -2.5, -0.1]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    reverse_kl_sampled(student, teacher, mask, gamma=0.5).backward()
    d = [0.5, None, 0.5, -0.2]  # log p - log q; position 1 is masked out
    expected = [d[0] + 0.25 * d[2] + 0.125 * d[3], 0.0, d[2] + 0.5 * d[3], d[3]]
    torch.testing.assert_close(student.grad, torch.tensor([expected]) / 3)


# ------------------------------------------- variable-length responses: future cost, stops

# Token 0 ends a response (EOS); a response stops at EOS or after L_MAX tokens. Every response
# and every state (a prefix of content tokens) is enumerated, so expectations are exact sums.
EOS, V_VAR, L_MAX = 0, 3, 3
RESPONSES = [
    prefix + (EOS,) if len(prefix) < L_MAX else prefix
    for n in range(L_MAX + 1) for prefix in itertools.product(range(1, V_VAR), repeat=n)
]
VAR_STATES = [p for n in range(L_MAX) for p in itertools.product(range(1, V_VAR), repeat=n)]
VAR_ROW = {p: i for i, p in enumerate(VAR_STATES)}


def var_tables(seed=3):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(len(VAR_STATES), V_VAR, generator=g).requires_grad_()
    teacher = 2.0 * torch.randn(len(VAR_STATES), V_VAR, generator=g)
    return theta, teacher


def var_batch(responses):
    """(state rows, tokens, mask) ``[B, L_MAX]`` of responses padded after their end."""
    rows = torch.zeros(len(responses), L_MAX, dtype=torch.long)
    tokens = torch.zeros(len(responses), L_MAX, dtype=torch.long)
    mask = torch.zeros(len(responses), L_MAX)
    for b, y in enumerate(responses):
        for t, token in enumerate(y):
            rows[b, t], tokens[b, t], mask[b, t] = VAR_ROW[tuple(y[:t])], token, 1.0
    return rows, tokens, mask


def response_logprobs(theta, responses):
    rows, tokens, mask = var_batch(responses)
    logp = F.log_softmax(theta, -1)[rows].gather(-1, tokens[..., None]).squeeze(-1)
    return torch.where(mask.bool(), logp, 0.0).sum(-1)


def exact_objective(theta, teacher, future_cost, stop_credit, floor=0.0):
    """The objective whose gradient the estimator's expectation is, by enumeration.

    Σ_y sg(P(y)) Σ_t CE_t, plus Σ_y P̂(y) Σ_t sg(c_t) with P̂ differentiated through the path:
    through every factor (stop_credit full) or only through the content factors p̃ = p / (1 - p(EOS))
    (stop_credit local). The CE reading differentiates its own cost in place: Σ_y P(y) Σ_t CE_t.
    With ``floor`` > 0 the path is differentiated only through p(y_t) / p(S_t), S_t the tokens
    the student gives at least ``floor`` (EOS left out under stop_credit local), and not at all
    through a token outside S_t.
    """
    rows, tokens, mask = var_batch(RESPONSES)
    logp = F.log_softmax(theta, -1)[rows]
    q = F.softmax(teacher, -1)[rows]
    logq = F.log_softmax(teacher, -1)[rows]
    ce = -(q * logp).sum(-1)
    kl = (q * (logq - logp)).sum(-1)
    token_lp = logp.gather(-1, tokens[..., None]).squeeze(-1)
    keep = mask.bool()
    if floor > 0:
        inside = logp.detach().exp() >= floor
        if stop_credit == "local":
            inside[..., EOS] = False
        support = torch.logsumexp(torch.where(inside, logp, -math.inf), -1)
        content = token_lp - support
        chosen = inside.gather(-1, tokens[..., None]).squeeze(-1)
        path_lp = token_lp.detach() + torch.where(chosen, content - content.detach(), 0.0)
    elif stop_credit == "local":
        content = token_lp - torch.log1p(-logp[..., EOS].exp())
        path_lp = token_lp.detach() + torch.where(tokens == EOS, 0.0, content - content.detach())
    else:
        path_lp = token_lp
    path = torch.where(keep, path_lp, 0.0).sum(-1).exp()
    probs = path.detach()
    if future_cost == "ce" and stop_credit == "full":
        return (path * torch.where(keep, ce, 0.0).sum(-1)).sum()
    cost = (ce if future_cost == "ce" else kl).detach()
    local = (probs * torch.where(keep, ce, 0.0).sum(-1)).sum()
    return local + (path * torch.where(keep, cost, 0.0).sum(-1)).sum()


def expected_estimator_gradient(theta, teacher, groups, **options):
    """Σ over groups of P(group) · ∇ (summed surrogate of the group), one backward pass."""
    flat = [y for group in groups for y in group]
    rows, tokens, mask = var_batch(flat)
    tables = theta.detach().expand(len(groups), *theta.shape).clone().requires_grad_()
    size = len(groups[0])
    group_of_row = torch.arange(len(groups)).repeat_interleave(size)
    student = tables[group_of_row[:, None], rows]
    weights = response_logprobs(theta.detach(), flat).reshape(len(groups), size).sum(-1).exp()
    loss_per_group = []
    for g in range(len(groups)):
        part = slice(g * size, (g + 1) * size)
        loss_per_group.append(distil_loss(student[part], teacher[rows[part]], tokens[part], mask[part],
                                          eos_id=EOS, normalizer=1.0, **options))
    (grads,) = torch.autograd.grad((weights * torch.stack(loss_per_group)).sum(), tables)
    return grads.sum(0), grads, weights


VARIANTS = [("ce", "full"), ("kl", "full"), ("kl", "local"), ("ce", "local")]


@pytest.mark.parametrize("future_cost, stop_credit", VARIANTS)
def test_variable_length_estimator_is_the_exact_gradient(future_cost, stop_credit):
    theta, teacher = var_tables()
    (exact,) = torch.autograd.grad(exact_objective(theta, teacher, future_cost, stop_credit), theta)
    got, _, _ = expected_estimator_gradient(theta, teacher, [[y] for y in RESPONSES],
                                            future_cost=future_cost, stop_credit=stop_credit)
    torch.testing.assert_close(got, exact, atol=1e-10, rtol=0)


@pytest.mark.parametrize("future_cost, stop_credit", VARIANTS)
def test_masked_group_baseline_is_unbiased_on_variable_lengths(future_cost, stop_credit):
    theta, teacher = var_tables(seed=5)
    (exact,) = torch.autograd.grad(exact_objective(theta, teacher, future_cost, stop_credit), theta)
    pairs = [[a, b] for a, b in itertools.product(RESPONSES, repeat=2)]
    got, _, _ = expected_estimator_gradient(
        theta, teacher, pairs, future_cost=future_cost, stop_credit=stop_credit,
        baseline="group_loo", group_size=2)
    torch.testing.assert_close(got, 2 * exact, atol=1e-10, rtol=0)  # two rollouts per pair


@pytest.mark.parametrize("future_cost, stop_credit", VARIANTS)
def test_batch_baseline_is_unbiased_with_one_sample_per_problem(future_cost, stop_credit):
    """Two problems of one rollout each: each row's baseline is the other problem's future cost,
    which cannot depend on it, so the expected gradient is still the exact one (twice)."""
    theta, teacher = var_tables(seed=5)
    (exact,) = torch.autograd.grad(exact_objective(theta, teacher, future_cost, stop_credit), theta)
    pairs = [[a, b] for a, b in itertools.product(RESPONSES, repeat=2)]
    options = dict(future_cost=future_cost, stop_credit=stop_credit, group_size=1)
    got, _, _ = expected_estimator_gradient(theta, teacher, pairs, baseline="batch", **options)
    torch.testing.assert_close(got, 2 * exact, atol=1e-10, rtol=0)
    # and the baseline is there: the same expectation, a different estimator than none
    _, per_pair, _ = expected_estimator_gradient(theta, teacher, pairs, baseline="batch", **options)
    _, plain, _ = expected_estimator_gradient(theta, teacher, pairs, baseline="none", **options)
    assert (per_pair - plain).abs().max() > 1e-4


def test_kl_future_cost_has_the_expert_as_a_fixed_point_and_ce_pushes_towards_stopping():
    _, teacher = var_tables()
    theta = teacher.clone().requires_grad_()  # p = q at every state
    for stop_credit in ("full", "local"):
        grad, _, _ = expected_estimator_gradient(theta, teacher, [[y] for y in RESPONSES],
                                                 future_cost="kl", stop_credit=stop_credit)
        assert grad.abs().max() < 1e-12
    grad, _, _ = expected_estimator_gradient(theta, teacher, [[y] for y in RESPONSES], future_cost="ce")
    assert grad.abs().max() > 1e-3
    # a descent step raises p(EOS) at the first state: the CE cost pays for ending early
    p_before = F.softmax(theta.detach()[VAR_ROW[()]], -1)[EOS]
    p_after = F.softmax((theta.detach() - 0.1 * grad)[VAR_ROW[()]], -1)[EOS]
    assert p_after > p_before


def test_stop_credit_local_gives_the_stop_logit_no_future_credit():
    theta, teacher = var_tables()
    runs = {name: expected_estimator_gradient(theta, teacher, [[y] for y in RESPONSES], **options)[0]
            for name, options in (("full", {"stop_credit": "full"}), ("local", {"stop_credit": "local"}),
                                  ("none", {"future_credit": False}))}
    # the future credit is the policy gradient of the content distribution p / (1 - p(EOS)) alone:
    # nothing of it reaches the EOS logit, whereas the full score pushes on it
    assert (runs["local"] - runs["none"])[:, EOS].abs().max() < 1e-12
    assert (runs["full"] - runs["none"])[:, EOS].abs().max() > 1e-3


FLOOR = 0.25


def test_var_tables_put_tokens_on_both_sides_of_the_floor():
    theta, _ = var_tables()
    p = F.softmax(theta.detach(), -1)
    assert (p < FLOOR).any() and (p[:, 1:] >= FLOOR).sum(-1).ge(1).all()


@pytest.mark.parametrize("future_cost, stop_credit", VARIANTS)
def test_credit_floor_estimator_is_the_exact_gradient(future_cost, stop_credit):
    theta, teacher = var_tables()
    (exact,) = torch.autograd.grad(exact_objective(theta, teacher, future_cost, stop_credit, FLOOR), theta)
    got, _, _ = expected_estimator_gradient(theta, teacher, [[y] for y in RESPONSES], future_cost=future_cost,
                                            stop_credit=stop_credit, credit_floor=FLOOR)
    torch.testing.assert_close(got, exact, atol=1e-10, rtol=0)
    # and the floor changes the estimator: the plain score's gradient is another one
    plain, _, _ = expected_estimator_gradient(theta, teacher, [[y] for y in RESPONSES],
                                              future_cost=future_cost, stop_credit=stop_credit)
    assert (plain - got).abs().max() > 1e-4


def test_credit_floor_keeps_the_group_baseline_unbiased():
    theta, teacher = var_tables(seed=5)
    (exact,) = torch.autograd.grad(exact_objective(theta, teacher, "kl", "local", FLOOR), theta)
    pairs = [[a, b] for a, b in itertools.product(RESPONSES, repeat=2)]
    got, _, _ = expected_estimator_gradient(theta, teacher, pairs, future_cost="kl", stop_credit="local",
                                            credit_floor=FLOOR, baseline="group_loo", group_size=2)
    torch.testing.assert_close(got, 2 * exact, atol=1e-10, rtol=0)


def test_credit_floor_gives_tokens_under_it_no_future_credit():
    theta, teacher = var_tables()
    runs = {name: expected_estimator_gradient(theta, teacher, [[y] for y in RESPONSES], **options)[0]
            for name, options in (("floor", {"credit_floor": FLOOR}), ("plain", {}),
                                  ("none", {"future_credit": False}))}
    under = F.softmax(theta.detach(), -1) < FLOOR
    # a token the student gives less than the floor is moved by the per-token term alone ...
    assert (runs["floor"] - runs["none"])[under].abs().max() < 1e-12
    # ... whereas the plain score sends future credit to it too
    assert (runs["plain"] - runs["none"])[under].abs().max() > 1e-3


def test_a_floor_above_every_token_leaves_the_per_token_term_alone_and_finite():
    # uniform students over 20 tokens: each gets 0.05, all under a floor of 0.5, so S_t is empty
    student = torch.zeros(4, 5, 20, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(1))
    tokens[0, 2] = -100  # an ignored label inside the mask's zeros
    mask = torch.ones(4, 5, dtype=torch.float64)
    mask[0, 2:] = 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    options = dict(eos_id=0, stop_credit="local", baseline="group_loo", group_size=2,
                   rewards=rewards, reward_weight=1.0)
    (floored,) = torch.autograd.grad(distil_loss(student, teacher, tokens, mask, credit_floor=0.5, **options), student)
    (local,) = torch.autograd.grad(distil_loss(student, teacher, tokens, mask, future_credit=False), student)
    (plain,) = torch.autograd.grad(distil_loss(student, teacher, tokens, mask, **options), student)
    assert torch.isfinite(floored).all()
    # token mean over the same counted positions: the future credit and success term add nothing
    torch.testing.assert_close(floored, local, atol=1e-12, rtol=0)
    assert (plain - local).abs().max() > 1e-3
    with pytest.raises(ValueError, match="floor"):
        support_score(F.log_softmax(student.detach(), -1), tokens.clamp(min=0), 0.0)


@pytest.mark.parametrize("floor", [-0.1, 1.0, float("nan")])
def test_credit_floor_outside_its_range_is_refused(floor):
    theta, teacher = var_tables()
    rows, tokens, mask = var_batch(RESPONSES)
    with pytest.raises(ValueError, match="credit_floor"):
        distil_loss(theta[rows], teacher[rows], tokens, mask, eos_id=EOS, credit_floor=floor)


def test_batch_baseline_averages_the_other_problems_rows_that_still_contribute():
    from distil_core.losses import batch_baseline

    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0], [11.0, 12.0]])
    mask = torch.ones(6, 2)
    mask[4, 1] = 0.0  # row 4 has ended at t = 1
    got = batch_baseline(values, mask, 2)  # problems: rows {0, 1}, {2, 3}, {4, 5}
    assert got[0, 0] == (5 + 7 + 9 + 11) / 4 and got[0, 1] == (6 + 8 + 12) / 3  # never its sibling
    assert got[2, 1] == (2 + 4 + 12) / 3
    # a batch of one problem has no other rows: no baseline rather than a sibling's
    assert torch.equal(batch_baseline(values[:2], mask[:2], 2), torch.zeros(2, 2))
    # the same baseline whatever row 0 holds: it cannot depend on its own rollout
    moved = values.clone()
    moved[0] = -100.0
    assert torch.equal(batch_baseline(moved, mask, 2)[0], got[0])


def test_the_success_term_centres_on_the_other_problems_under_the_batch_baseline():
    from distil_core.losses.baselines import centred_rewards

    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    assert torch.allclose(centred_rewards(rewards, 1, "batch"), rewards - (rewards.sum() - rewards) / 5)
    grouped = centred_rewards(rewards, 2, "batch")  # other problems: the rows outside i's pair
    assert grouped[0] == 1.0 - 2.0 / 4 and grouped[2] == 0.0 - 3.0 / 4
    assert torch.equal(centred_rewards(rewards, 2, "group_loo"), torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0, 0.0]))
    # one problem: no other to be centred on, so its siblings (as group_loo); a lone rollout: nothing
    assert torch.equal(centred_rewards(rewards[:2], 2, "batch"), torch.tensor([1.0, -1.0]))
    assert torch.equal(centred_rewards(rewards[:1], 1, "batch"), torch.zeros(1))
    with pytest.raises(ValueError, match="baseline='batch'"):
        distil_surrogate(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2, 1), baseline="none", group_size=1,
                         rewards=rewards[:2], reward_weight=1.0)


def test_the_success_term_decays_with_the_rewards_it_is_centred_on():
    """``reward_decay`` weighs r - r̄ by 1 - r̄, r̄ the same mean the term is centred on (the other
    problems' under ``batch``, the siblings' otherwise), never reading the row's own reward."""
    from distil_core.losses.baselines import centred_rewards

    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    others = (rewards.sum() - rewards) / 5
    assert torch.allclose(centred_rewards(rewards, 1, "batch", decay=True), (rewards - others) * (1 - others))
    pairs = rewards.view(3, 2).flip(1).reshape(-1)  # each row's one sibling
    assert torch.allclose(centred_rewards(rewards, 2, "group_loo", decay=True), (rewards - pairs) * (1 - pairs))
    assert torch.equal(centred_rewards(rewards, 2, "group_loo"), rewards - pairs)
    # the factor is the same whatever row i's own reward: flipping it moves only r_i
    flipped = rewards.clone()
    flipped[0] = 0.0
    assert torch.allclose(centred_rewards(flipped, 1, "batch", decay=True)[0], (0.0 - others[0]) * (1 - others[0]))

    torch.manual_seed(0)
    ce = torch.rand(6, 3)
    logprobs = torch.randn(6, 3, requires_grad=True)
    mask = torch.ones(6, 3)

    def grad(reward_weight=2.0, **options):
        logprobs.grad = None
        distil_surrogate(ce, logprobs, mask, baseline="batch", group_size=1, rewards=rewards,
                         reward_weight=reward_weight, **options).backward()
        return logprobs.grad.clone()

    assert not torch.allclose(grad(reward_decay=True), grad())
    # the decayed term is the plain one with each row's λ scaled by 1 - r̄_{-i}
    plain, decayed = grad(), grad(reward_decay=True)
    local = grad(reward_weight=0.0)
    assert torch.allclose((decayed - local), (plain - local) * (1 - others)[:, None], atol=1e-6)


def test_the_batch_baseline_over_one_problem_falls_back_to_its_siblings_in_a_direct_call_too():
    """A batch of one problem has no other problem to measure against: ``batch`` then measures each
    row against its siblings, with their exclusions, as the trainer does; a lone rollout gets no
    baseline and no success term. With two problems it reads the other problem, not the siblings."""
    torch.manual_seed(0)
    ce = torch.rand(4, 3)
    logprobs = torch.randn(4, 3, requires_grad=True)
    mask = torch.ones(4, 3)
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[0, 1] = True
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])

    def grad(baseline, group_size, rows=4, **options):
        logprobs.grad = None
        distil_surrogate(ce[:rows], logprobs[:rows], mask[:rows], baseline=baseline, group_size=group_size,
                         **options).backward()
        return logprobs.grad.clone()

    rewarded = dict(rewards=rewards, reward_weight=1.0)
    one = grad("batch", 4, baseline_exclude=exclude, **rewarded)
    assert torch.equal(one, grad("group_loo", 4, baseline_exclude=exclude, **rewarded))
    assert not torch.allclose(one, grad("group_loo", 4, **rewarded))  # the exclusion is kept
    assert not torch.allclose(one, grad("none", 4, **rewarded))
    assert not torch.allclose(grad("batch", 2, **rewarded), grad("group_loo", 2, **rewarded))
    lone = grad("batch", 1, rows=1, rewards=rewards[:1], reward_weight=1.0)
    assert torch.equal(lone, grad("none", None, rows=1))


def test_group_baseline_averages_only_siblings_that_still_contribute():
    # three rollouts of one prompt; the third ends after one token, so it has no G past t = 0
    ce = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    logprobs = torch.zeros(3, 3, requires_grad=True)
    distil_surrogate(ce, logprobs, mask, baseline="group_loo", group_size=3).backward()
    G = [[5.0, 3.0, 0.0], [11.0, 6.0, 0.0], [0.0, 0.0, 0.0]]
    baseline = [[(G[1][0] + G[2][0]) / 2, G[1][1], G[1][2]],
                [(G[0][0] + G[2][0]) / 2, G[0][1], G[0][2]],
                [(G[0][0] + G[1][0]) / 2, 0.0, 0.0]]
    advantage = torch.tensor(G) - torch.tensor(baseline)
    torch.testing.assert_close(logprobs.grad, advantage * mask / 7)


def test_group_baseline_leaves_out_siblings_that_read_the_row_and_rows_without_signal():
    values = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    mask = torch.ones(4, 1)
    mask[3] = 0.0  # no expert signal for row 3
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[0, 1] = True  # row 1's context showed row 0 as its demonstration
    got = group_baseline(values, mask, 4, exclude)
    torch.testing.assert_close(got, torch.tensor([[4.0], [2.5], [1.5], [7.0 / 3]]))
    exclude[0, 2] = True
    assert group_baseline(values, mask, 4, exclude)[0, 0] == 0.0  # no sibling qualifies


def test_reward_term_teaches_a_lone_success_without_an_expert_signal():
    logits = torch.zeros(2, 2, 3, requires_grad=True)
    teacher = torch.zeros(2, 2, 3)
    tokens = torch.tensor([[1, 0], [2, 0]])
    signal = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # row 0 succeeded and has no signal
    response = torch.ones(2, 2)
    loss = distil_loss(logits, teacher, tokens, signal, baseline="group_loo", group_size=2,
                       rewards=torch.tensor([1.0, 0.0]), reward_weight=0.5, response_mask=response)
    loss.backward()
    # row 0: A = -0.5 · (1 - 0): descent raises log p(y) of its tokens
    assert logits.grad[0, 0, 1] < 0 and logits.grad[0, 1, 0] < 0
    without = torch.zeros(2, 2, 3, requires_grad=True)
    distil_loss(without, teacher, tokens, signal, baseline="group_loo", group_size=2).backward()
    assert without.grad[0].abs().max() == 0.0
    with pytest.raises(ValueError, match="reward_weight"):
        distil_loss(logits, teacher, tokens, signal, reward_weight=0.5)


def test_sampled_expert_refuses_the_kl_future_cost():
    student, teacher, tokens, mask = random_batch()
    samples = torch.zeros(*tokens.shape, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="future_cost='kl' needs the expert's log-probs"):
        distil_loss_sampled(student, samples, tokens, mask, future_cost="kl")
    distil_loss_sampled(student, samples, tokens, mask, future_cost="ce")


def test_topk_kl_future_cost_with_all_ids_equals_dense():
    student, teacher, tokens, mask = random_batch()
    ids, logprobs = topk_with_tail(teacher, k=teacher.shape[-1])
    for options in ({"future_cost": "kl"}, {"future_cost": "kl", "stop_credit": "local", "eos_id": 1}):
        dense = distil_loss(student, teacher, tokens, mask, **options)
        topk = distil_loss_topk(student, ids, logprobs, tokens, mask, **options)
        torch.testing.assert_close(topk, dense)


def test_bad_credit_options_are_refused():
    student, teacher, tokens, mask = random_batch()
    with pytest.raises(ValueError, match="unknown future_cost"):
        distil_loss(student, teacher, tokens, mask, future_cost="entropy")
    with pytest.raises(ValueError, match="needs eos_id"):
        distil_loss(student, teacher, tokens, mask, stop_credit="local")


def test_temper_topk_with_all_ids_equals_tempered_dense():
    _, teacher, _, _ = random_batch()
    ids, logprobs = topk_with_tail(teacher, k=teacher.shape[-1])
    torch.testing.assert_close(temper_topk(logprobs, 2.0),
                               F.log_softmax(teacher / 2.0, -1).gather(-1, ids))


def test_jsd_topk_applies_the_temperature_to_both_sides_as_the_dense_loss():
    student, teacher, tokens, mask = random_batch()
    ids, logprobs = topk_with_tail(teacher, k=teacher.shape[-1])
    for temperature in (0.5, 2.0):
        dense = generalized_jsd(student, teacher, mask, beta=0.3, temperature=temperature)
        topk = generalized_jsd_topk(student, ids, logprobs, mask, beta=0.3, temperature=temperature)
        torch.testing.assert_close(topk, dense)


def test_dr_grpo_divides_by_a_constant_so_micro_batches_add_up_to_the_whole_batch():
    logprobs = torch.randn(4, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    advantages = torch.tensor([1.0, -1.0, 0.5, 2.0])
    whole = grpo_loss(logprobs, logprobs.detach(), advantages, mask, loss_type="dr_grpo", max_completion_length=6)
    (g_whole,) = torch.autograd.grad(whole, logprobs)
    # two micro-batches, the second trimmed to its own longest response, each weighted by its rows
    first = grpo_loss(logprobs[:2], logprobs[:2].detach(), advantages[:2], mask[:2],
                      loss_type="dr_grpo", max_completion_length=6)
    second = grpo_loss(logprobs[2:, :2], logprobs[2:, :2].detach(), advantages[2:], mask[2:, :2],
                       loss_type="dr_grpo", max_completion_length=6)
    (g_parts,) = torch.autograd.grad(first / 2 + second / 2, logprobs)
    torch.testing.assert_close(g_parts, g_whole)
    assert whole.item() == pytest.approx(-(advantages * mask.sum(-1)).sum().item() / (4 * 6))


def test_group_baseline_takes_the_exclusions_to_the_costs_device():
    """The trainer builds the exclusions on the CPU; the costs live where the logits do."""
    values = torch.zeros(4, 3, device="meta")
    exclude = torch.zeros(4, 2, dtype=torch.bool)
    assert group_baseline(values, torch.ones(4, 3, device="meta"), 2, exclude).device.type == "meta"


def test_temper_topk_does_not_inflate_an_empty_tail():
    one_hot = torch.full((1, 4), -1e4)
    one_hot[0, 2] = 0.0
    ids, logprobs = topk_with_tail(one_hot.float(), k=4)
    tempered = temper_topk(logprobs, 4.0)
    assert tempered.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_distil_local_needs_no_group_layout():
    student, teacher, tokens, mask = random_batch()
    distil_loss(student, teacher, tokens, mask, future_credit=False, baseline="group_loo")
