"""The tabular study (docs/results/tabular.md): exact objectives, their gradients, and the claims.

Part 1 checks benchmarks/tabular.py against finite differences, closed forms, the per-token
DistIL loss written out for each future cost and stop credit, and the sampled losses of
distil_core.losses.reference (whose expectation over all enumerated sequences, fixed-horizon or
variable-length, must give the exact gradients). Part 2 asserts, on the study's instances
(bandits, fixed-horizon trees and variable-length chains), each claim the doc makes; part 3
checks the general statements behind them on random bandits.
"""

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tabular
from distil_core.losses.reference import distil_loss, generalized_jsd, reverse_kl_sampled
from tabular import (
    CHAIN_DEPTH,
    EOS,
    METHODS,
    bandit,
    chain_instances,
    distil_objective,
    expected_length,
    expected_reward,
    first_order_gain,
    forward_ce_safe_step,
    gradient_step,
    jsd_objective,
    jsd_rows,
    logits_from_probs,
    objective_gradient,
    reward_gradient,
    run,
    study_instances,
    success_log_lower_bound,
    teacher_reward,
    token_tree,
    variable_length_tree,
)
from tabular_shortcut import shortcut_instance, shortcut_share

SWEEP = (0.05, 0.25, 0.5, 1.0, 2.0)
LR, STEPS = 0.5, 40  # the study's defaults (benchmarks/tabular_study.py)
INSTANCES = {instance.key: instance for instance in study_instances() + chain_instances()}
CHAIN_STEPS = 400  # the study's default --chain-steps
DISTIL_VARIANTS = {("ce", "full"): "distil", ("kl", "full"): "distil_kl",
                   ("ce", "local"): "distil_stop_local", ("kl", "local"): "distil_kl_stop_local"}


def random_tree(vocab, horizon, seed):
    g = torch.Generator().manual_seed(seed)
    num_states = sum(vocab ** t for t in range(horizon))
    teacher = torch.softmax(1.5 * torch.randn(num_states, vocab, generator=g, dtype=torch.float64), -1)
    rewards = torch.rand(vocab ** horizon, generator=g, dtype=torch.float64)
    theta = torch.randn(num_states, vocab, generator=g, dtype=torch.float64)
    return token_tree(vocab, horizon, rewards, teacher), theta


def random_variable_tree(vocab, horizon, seed, eos=0):
    """A variable-length tree with random rewards, a random positive teacher and random θ."""
    g = torch.Generator().manual_seed(seed)
    teacher_rows, rewards = {}, {}

    def teacher(prefix):
        return teacher_rows.setdefault(prefix, torch.softmax(
            1.5 * torch.randn(vocab, generator=g, dtype=torch.float64), -1).tolist())

    def reward(seq):
        return rewards.setdefault(seq, float(torch.rand(1, generator=g, dtype=torch.float64)))

    tree = variable_length_tree(vocab, horizon, reward, teacher, eos=eos)
    theta = torch.randn(tree.num_states, vocab, generator=g, dtype=torch.float64)
    return tree, theta


def strictly_increasing(values):
    return all(after > before for before, after in itertools.pairwise(values))


# ------------------------------------------------------------------ 1. exact machinery


@pytest.mark.parametrize("vocab,horizon,eos", [(4, 1, None), (3, 2, None), (2, 3, None),
                                              (3, 3, 0), (3, 2, 2)])
def test_gradients_match_finite_differences(vocab, horizon, eos):
    """Central differences of J, of the differentiated objectives, and of the frozen-weight
    ones with the state weights held at θ (that is what their gradient is of)."""
    if eos is None:
        tree, theta = random_tree(vocab, horizon, seed=vocab + 10 * horizon)
    else:
        tree, theta = random_variable_tree(vocab, horizon, seed=vocab + 10 * horizon, eos=eos)
    weights = tabular.sequence_probs(tree, theta).detach()
    logq = torch.log(tree.teacher)

    def frozen(per_state):
        def along(tr, th):
            return (weights * torch.where(tr.mask, per_state(th)[tr.rows], 0.0).sum(-1)).sum()
        return along

    functions = {
        "reward": expected_reward,
        "distil": METHODS["distil"],
        "distil_kl": METHODS["distil_kl"],  # E_P Σ_t KL(q_t‖p_t), all of it differentiated
        "reverse_kl_seq": METHODS["reverse_kl_seq"],
        "forward_ce": frozen(lambda th: tabular.cross_entropy_rows(tree.teacher, th)),
        "reverse_kl": frozen(lambda th: tabular.kl_rows(F.log_softmax(th, -1), logq)),
        "jsd": frozen(lambda th: jsd_rows(tree.teacher, th, 0.5)),
    }
    h = 1e-6
    for name, fn in functions.items():
        exact = (reward_gradient(tree, theta) if name == "reward"
                 else objective_gradient(tree, theta, name))
        numeric = torch.zeros_like(theta)
        for index in range(theta.numel()):
            bump = torch.zeros(theta.numel(), dtype=theta.dtype)
            bump[index] = h
            bump = bump.view_as(theta)
            numeric.view(-1)[index] = (fn(tree, theta + bump) - fn(tree, theta - bump)) / (2 * h)
        assert torch.allclose(exact, numeric, atol=1e-7, rtol=1e-6), name
    if horizon > 1:  # freezing the weights matters on a tree, and so does the future cost
        assert not torch.allclose(objective_gradient(tree, theta, "distil"),
                                  objective_gradient(tree, theta, "forward_ce"), atol=1e-3)
        assert not torch.allclose(objective_gradient(tree, theta, "distil"),
                                  objective_gradient(tree, theta, "distil_kl"), atol=1e-3)


def test_bandit_gradients_have_the_closed_forms_in_the_doc():
    tree, theta = random_tree(5, 1, seed=3)
    p, q = torch.softmax(theta[0], -1), tree.teacher[0]
    ell = torch.log(p) - torch.log(q)
    beta = 0.5
    h = (1 - beta) * torch.log(p / ((1 - beta) * p + beta * q))
    expected = {
        "forward_ce": p - q,
        "distil": p - q,
        "reverse_kl": p * (ell - (p * ell).sum()),
        "reverse_kl_seq": p * (ell - (p * ell).sum()),
        "jsd": p * (h - (p * h).sum()),
    }
    for method, grad in expected.items():
        assert torch.allclose(objective_gradient(tree, theta, method)[0], grad, atol=1e-12), method
    r = tree.rewards
    assert torch.allclose(reward_gradient(tree, theta)[0], p * (r - (p * r).sum()), atol=1e-12)


def weighted_surrogate_gradient(tree, theta, per_sequence_loss):
    """Σ_y sg(P_θ(y)) ∇ loss(y): the expectation of a sampled loss's gradient, exactly."""
    theta = theta.detach().clone().requires_grad_()
    weights = tabular.sequence_probs(tree, theta).detach()
    total = sum(weights[i] * per_sequence_loss(theta, i) for i in range(len(weights)))
    (grad,) = torch.autograd.grad(total, theta)
    return total.detach(), grad


def per_token_surrogate_gradient(tree, theta, future_cost, stop_credit, baseline=None):
    """Σ_y P_θ(y) Σ_t ∇ℓ_t(y), one sequence at a time, with the per-token loss written out:

        ℓ_t = CE(q_t, p_t) + sg(G_t - b_t) · s_t,   G_t = Σ_{i>t} c_i,
        s_t = log p_t(y_t)                                      (stop credit full)
        s_t = 1[y_t ≠ EOS] · (log p_t(y_t) - log(1 - p_t(EOS)))   (stop credit local)

    ``baseline`` (one value per state, any values) gives b_t = baseline[s_t]; the expectation
    must not depend on it.
    """
    theta = theta.detach().clone().requires_grad_()
    logp = F.log_softmax(theta, -1)
    q = tree.teacher
    ce = -(q * logp).sum(-1)
    cost = (ce if future_cost == "ce" else ce + (q * torch.log(q)).sum(-1)).detach()
    total = 0.0
    for seq in tree.terminals:
        states = [tree.state_index(seq[:t]) for t in range(len(seq))]
        weight = torch.stack([logp[s, a] for s, a in zip(states, seq)]).sum().exp().detach()
        for t, (s, a) in enumerate(zip(states, seq)):
            credit = sum((cost[i] for i in states[t + 1:]), torch.tensor(0.0, dtype=torch.float64))
            if baseline is not None:
                credit = credit - baseline[s]
            if stop_credit == "local" and tree.eos is not None:
                score = (0.0 if a == tree.eos
                         else logp[s, a] - torch.log1p(-logp[s, tree.eos].exp()))
            else:
                score = logp[s, a]
            total = total + weight * (ce[s] + credit * score)
    (grad,) = torch.autograd.grad(total, theta)
    return grad


@pytest.mark.parametrize("future_cost,stop_credit", list(DISTIL_VARIANTS))
@pytest.mark.parametrize("shape", ["fixed", "eos"])
def test_each_distil_variant_is_the_expectation_of_its_per_token_loss(future_cost, stop_credit,
                                                                      shape):
    if shape == "fixed":
        tree, theta = random_tree(3, 2, seed=7)
    else:
        tree, theta = random_variable_tree(3, 3, seed=8)
    method = DISTIL_VARIANTS[future_cost, stop_credit]
    exact = objective_gradient(tree, theta, method)
    baseline = torch.randn(tree.num_states, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
    for b in (None, baseline):
        surrogate = per_token_surrogate_gradient(tree, theta, future_cost, stop_credit, b)
        assert torch.allclose(surrogate, exact, atol=1e-12)
    # the options really change the gradient where they can
    others = {m for m in DISTIL_VARIANTS.values() if m != method}
    if shape == "fixed":  # no EOS: local is full, the costs differ
        twin = DISTIL_VARIANTS[future_cost, "full" if stop_credit == "local" else "local"]
        assert torch.allclose(objective_gradient(tree, theta, twin), exact, atol=1e-14)
        others.discard(twin)
    for other in others:
        assert not torch.allclose(objective_gradient(tree, theta, other), exact, atol=1e-4), other


def test_stop_local_leaves_the_eos_logit_to_the_local_term():
    tree, theta = random_variable_tree(3, 3, seed=9)
    forward = objective_gradient(tree, theta, "forward_ce")
    for method in ("distil_stop_local", "distil_kl_stop_local"):
        grad = objective_gradient(tree, theta, method)
        assert torch.allclose(grad[:, EOS], forward[:, EOS], atol=1e-14), method
        assert not torch.allclose(grad, forward, atol=1e-4), method
    for method in ("distil", "distil_kl"):
        assert not torch.allclose(objective_gradient(tree, theta, method)[:, EOS],
                                  forward[:, EOS], atol=1e-4), method


def sequence_inputs(tree, theta, i):
    n = int(tree.mask[i].sum())
    rows, tokens = tree.rows[i, :n], tree.sequences[i, :n]
    student = theta[rows][None]
    teacher = torch.log(tree.teacher[rows])[None]
    return student, teacher, tokens[None], torch.ones(1, n, dtype=torch.float64)


@pytest.mark.parametrize("future_credit,future_cost,stop_credit,method,reduce",
                         [(False, "ce", "full", "forward_ce", "sum"), (True, "ce", "full", "distil", "sum"),
                          (True, "kl", "full", "distil_kl", "sum"),
                          (True, "ce", "local", "distil_stop_local", "sum"),
                          (True, "kl", "local", "distil_kl_stop_local", "sum"),
                          (True, "kl", "local", "distil_kl_stop_local_mean", "mean")])
def test_distil_loss_of_the_losses_module_estimates_the_exact_gradient(future_credit, future_cost,
                                                                      stop_credit, method, reduce):
    """distil_loss on every enumerated sequence, weighted by P_θ(y): the exact gradient (for the
    mean future cost, the exact expected update: it is the gradient of no single objective)."""
    tree, theta = random_variable_tree(3, 3, seed=12)
    options = dict(future_credit=future_credit, future_cost=future_cost, stop_credit=stop_credit,
                   eos_id=EOS, future_reduce=reduce)

    def loss(th, i):
        student, teacher, tokens, mask = sequence_inputs(tree, th, i)
        # distil_loss is a token mean; the study's objectives sum over the steps of a sequence
        return mask.sum() * distil_loss(student, teacher, tokens, mask, **options)

    _, surrogate = weighted_surrogate_gradient(tree, theta, loss)
    assert torch.allclose(surrogate, objective_gradient(tree, theta, method), atol=1e-10)
    if reduce == "mean":  # and it is not the summed cost's update
        assert not torch.allclose(surrogate, objective_gradient(tree, theta, "distil_kl_stop_local"), atol=1e-4)


@pytest.mark.parametrize("gamma,method", [(0.0, "reverse_kl"), (1.0, "reverse_kl_seq")])
def test_reverse_kl_exact_gradient_is_the_expected_sampled_gradient(gamma, method):
    tree, theta = random_tree(2, 3, seed=11)

    def loss(th, i):
        student, teacher, tokens, mask = sequence_inputs(tree, th, i)
        logp = F.log_softmax(student, -1).gather(-1, tokens[..., None])[..., 0]
        logq = F.log_softmax(teacher, -1).gather(-1, tokens[..., None])[..., 0]
        return tree.horizon * reverse_kl_sampled(logp, logq, mask, gamma=gamma)

    _, sampled = weighted_surrogate_gradient(tree, theta, loss)
    assert torch.allclose(sampled, objective_gradient(tree, theta, method), atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_jsd_matches_generalized_jsd_of_the_losses_module(beta):
    g = torch.Generator().manual_seed(5)
    student = torch.randn(6, 7, generator=g, dtype=torch.float64)
    teacher = torch.randn(6, 7, generator=g, dtype=torch.float64)
    mine = jsd_rows(torch.softmax(teacher, -1), student, beta)
    theirs = torch.stack([generalized_jsd(student[i][None, None], teacher[i][None, None], beta=beta)
                          for i in range(6)])
    assert torch.allclose(mine, theirs, atol=1e-12)

    tree, theta = random_tree(3, 2, seed=13)

    def loss(th, i):
        student_i, teacher_i, _, mask = sequence_inputs(tree, th, i)
        return tree.horizon * generalized_jsd(student_i, teacher_i, mask, beta=beta)

    value, grad = weighted_surrogate_gradient(tree, theta, loss)
    exact = theta.detach().clone().requires_grad_()
    objective = jsd_objective(tree, exact, beta)
    (exact_grad,) = torch.autograd.grad(objective, exact)
    assert torch.allclose(value, objective.detach(), atol=1e-12)
    assert torch.allclose(grad, exact_grad, atol=1e-12)


def test_bad_input_is_refused_with_a_message_that_says_what_to_fix():
    with pytest.raises(ValueError, match="rewards must hold one value per sequence"):
        token_tree(3, 2, [0.0] * 8, [[1 / 3] * 3] * 4)
    with pytest.raises(ValueError, match=r"teacher must be \[num_states=4, vocab=3\]"):
        token_tree(3, 2, [0.0] * 9, [[1 / 3] * 3] * 3)
    with pytest.raises(ValueError, match="normalise each row"):
        bandit([1.0, 0.0], [0.7, 0.7])
    zero_teacher = bandit([1.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="positive probability on every action"):
        objective_gradient(zero_teacher, logits_from_probs([0.5, 0.5]), "reverse_kl")
    with pytest.raises(ValueError, match="unknown method 'kl'"):
        objective_gradient(zero_teacher, logits_from_probs([0.5, 0.5]), "kl")
    with pytest.raises(ValueError, match="future_cost must be one of"):
        distil_objective(zero_teacher, logits_from_probs([0.5, 0.5]), future_cost="entropy")
    with pytest.raises(ValueError, match="probability distribution over the 3 tokens"):
        variable_length_tree(3, 2, lambda seq: 0.0, lambda prefix: (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="is not a state of this tree"):
        INSTANCES["chain_stop"].tree.state_index((1, EOS))
    # forward CE is fine with a teacher that has zeros (0 · log p = 0)
    grad = objective_gradient(zero_teacher, logits_from_probs([0.5, 0.5]), "forward_ce")
    assert torch.allclose(grad, torch.tensor([[-0.5, 0.5]], dtype=torch.float64))


# --------------------------------------------------------------- 2. the doc's claims

FAILING = [("zero_tail", "reverse_kl"), ("two_mode", "reverse_kl"), ("two_mode", "jsd"),
           ("tree_recover", "reverse_kl"), ("tree_recover", "reverse_kl_seq"),
           ("tree_recover", "jsd")]


@pytest.mark.parametrize("key,method", FAILING)
def test_reverse_kl_and_jsd_lower_the_reward_of_a_student_below_a_better_teacher(key, method):
    instance = INSTANCES[key]
    tree, theta = instance.tree, instance.start
    j0 = float(expected_reward(tree, theta))
    assert teacher_reward(tree) > j0 + 0.25
    assert first_order_gain(tree, theta, method) < 0
    for eta in SWEEP:
        stepped = gradient_step(tree, theta, method, eta)
        assert float(expected_reward(tree, stepped)) < j0, eta
        # the probability that moved went to sequences worth less than those it left
        delta = tabular.sequence_probs(tree, stepped) - tabular.sequence_probs(tree, theta)
        gained, lost = delta.clamp(min=0), (-delta).clamp(min=0)
        assert (gained * tree.rewards).sum() / gained.sum() < (lost * tree.rewards).sum() / lost.sum()


@pytest.mark.parametrize("method", ["reverse_kl", "jsd"])
def test_on_the_two_mode_bandit_the_worst_action_gains_the_most(method):
    instance = INSTANCES["two_mode"]
    trajectory = run(instance.tree, instance.start, method, LR, 1)
    delta = trajectory.probs[1] - trajectory.probs[0]
    worst = int(torch.argmin(instance.tree.rewards))
    assert int(torch.argmax(delta)) == worst and delta[worst] > 0


def test_jsd_does_not_fail_on_the_zero_tail_bandit():
    instance = INSTANCES["zero_tail"]
    assert first_order_gain(instance.tree, instance.start, "jsd") > 0
    assert strictly_increasing(run(instance.tree, instance.start, "jsd", LR, STEPS).rewards)


@pytest.mark.parametrize("key,method", [("zero_tail", "forward_ce"), ("tree_recover", "forward_ce"),
                                        ("tree_recover", "distil"), ("tree_recover", "distil_kl")])
@pytest.mark.parametrize("lr", [0.25, 0.5, 1.0])
def test_forward_ce_and_distil_raise_the_reward_at_every_step(key, method, lr):
    instance = INSTANCES[key]
    rewards = run(instance.tree, instance.start, method, lr, STEPS).rewards
    assert strictly_increasing(rewards)
    assert rewards[-1] > rewards[0] + 0.3


def test_forward_ce_on_two_mode_rises_until_it_passes_the_teacher_then_settles_above_it():
    instance = INSTANCES["two_mode"]
    target = teacher_reward(instance.tree)
    rewards = run(instance.tree, instance.start, "forward_ce", LR, 200).rewards
    crossed = next(s for s, j in enumerate(rewards) if j > target)
    assert strictly_increasing(rewards[:crossed + 1])
    assert min(rewards[crossed:]) > target                  # the overshoot never undershoots
    assert not strictly_increasing(rewards[crossed:])       # ... but it does come back down
    assert abs(rewards[-1] - target) < 2e-3


def test_forward_ce_first_step_can_lower_the_reward_forward_dip():
    instance = INSTANCES["forward_dip"]
    tree, theta = instance.tree, instance.start
    j0 = float(expected_reward(tree, theta))
    assert teacher_reward(tree) > j0 + 0.25
    assert first_order_gain(tree, theta, "forward_ce") < 0
    assert forward_ce_safe_step(tree.rewards, theta, tree.teacher) == 0.0
    for eta in (0.05, 0.25, 0.5):
        assert float(expected_reward(tree, gradient_step(tree, theta, "forward_ce", eta))) < j0
    trajectory = run(tree, theta, "forward_ce", LR, STEPS)
    crossed = next(s for s, j in enumerate(trajectory.rewards) if j > teacher_reward(tree))
    assert strictly_increasing(trajectory.rewards[1:crossed + 1])  # the dip is one step long
    assert min(trajectory.rewards[crossed:]) > teacher_reward(tree)
    success = [float(p[instance.success].sum()) for p in trajectory.probs]
    assert strictly_increasing(success)                      # while p(A) rises throughout


def test_distil_future_credit_falls_into_the_entropy_trap_while_the_others_climb():
    instance = INSTANCES["entropy_trap"]
    tree, theta = instance.tree, instance.start
    assert teacher_reward(tree) > float(expected_reward(tree, theta))
    distil = run(tree, theta, "distil", LR, STEPS).rewards
    assert distil[1] < distil[0]
    assert all(after <= before for before, after in itertools.pairwise(distil))
    assert distil[-1] < distil[0] - 0.01
    for method in ("forward_ce", "reverse_kl", "reverse_kl_seq", "jsd"):
        climbing = run(tree, theta, method, LR, STEPS).rewards
        assert all(b >= a for a, b in itertools.pairwise(climbing)), method
        assert climbing[-1] > climbing[0] + 0.005, method


def test_distil_ends_above_the_teacher_on_tree_recover():
    instance = INSTANCES["tree_recover"]
    rewards = run(instance.tree, instance.start, "distil", LR, STEPS).rewards
    assert rewards[-1] > teacher_reward(instance.tree)
    # the KL cost, whose fixed point is the teacher, does not get there
    assert run(instance.tree, instance.start, "distil_kl", LR, STEPS).rewards[-1] < teacher_reward(
        instance.tree)


def test_distil_with_the_kl_cost_climbs_out_of_the_entropy_trap_to_the_teacher():
    instance = INSTANCES["entropy_trap"]
    tree, theta = instance.tree, instance.start
    kl = run(tree, theta, "distil_kl", LR, STEPS).rewards
    assert strictly_increasing(kl)
    assert kl[-1] >= teacher_reward(tree) - 1e-3
    ce = run(tree, theta, "distil", LR, STEPS).rewards
    assert ce[-1] < ce[0] - 0.01


def chain_run(key, method, steps=CHAIN_STEPS, start=None):
    instance = INSTANCES[key]
    theta = instance.start if start is None else start
    return run(instance.tree, theta, method, LR, steps, instance.step_scale)


@pytest.mark.parametrize("make_tree", [lambda: random_variable_tree(3, 4, seed=21),
                                       lambda: (INSTANCES["chain_stop"].tree, None)],
                         ids=["random", "chain_stop"])
def test_p_equals_q_is_a_fixed_point_of_the_kl_cost_and_not_of_the_ce_cost(make_tree):
    tree, _ = make_tree()
    at_teacher = logits_from_probs(tree.teacher)
    for method in ("forward_ce", "distil_kl", "distil_kl_stop_local"):
        assert objective_gradient(tree, at_teacher, method).abs().max() < 1e-12, method
    ce = objective_gradient(tree, at_teacher, "distil")
    ce_local = objective_gradient(tree, at_teacher, "distil_stop_local")
    stepped = torch.softmax(gradient_step(tree, at_teacher, "distil", LR), -1)
    for row, prefix in enumerate(tree.states):
        if len(prefix) + 1 < tree.horizon:  # some entropy lies ahead: EOS is pushed up
            assert ce[row, EOS] < 0, prefix
            assert stepped[row, EOS] > tree.teacher[row, EOS], prefix
        else:                               # the last token: nothing ahead, nothing to push
            assert abs(float(ce[row, EOS])) < 1e-12, prefix
    assert ce_local[:, EOS].abs().max() < 1e-12  # stop local: EOS stays with q


def test_at_a_fixed_point_of_the_ce_cost_p_eos_is_q_eos_over_one_minus_future_cost():
    """p_root(EOS) = q_root(EOS) / (1 − Ḡ_root), Ḡ the expected future CE after the root."""
    tree = variable_length_tree(3, 3, lambda seq: 0.0,
                                lambda prefix: (0.1, 0.85, 0.05) if prefix else (0.2, 0.7, 0.1))
    theta = run(tree, logits_from_probs(tree.teacher), "distil", 2.0, 600).final
    assert objective_gradient(tree, theta, "distil")[0].abs().max() < 1e-9  # the root is stationary
    ce = tabular.cross_entropy_rows(tree.teacher, theta)
    weights = tabular.sequence_probs(tree, theta)
    future = float((weights * torch.where(tree.mask, ce[tree.rows], 0.0).sum(-1)).sum() - ce[0])
    p_eos = float(torch.softmax(theta[0], -1)[EOS])
    assert 0 < future < 1
    assert p_eos == pytest.approx(0.2 / (1 - future), abs=1e-9)
    assert p_eos > 0.2 + 0.01


def test_chain_stop_the_ce_cost_learns_to_stop_the_kl_cost_reaches_the_teacher():
    instance = INSTANCES["chain_stop"]
    tree = instance.tree
    assert tabular.success_probability(tree, instance.start, instance.success) == pytest.approx(
        float(expected_reward(tree, instance.start)), abs=1e-15)  # 0/1 reward: J = P(success)
    teacher_length = expected_length(tree, logits_from_probs(tree.teacher))
    ce, kl = chain_run("chain_stop", "distil"), chain_run("chain_stop", "distil_kl")
    assert kl.rewards[-1] > 3 * ce.rewards[-1]
    assert kl.rewards[-1] > teacher_reward(tree) - 0.02
    assert ce.lengths(tree)[-1] < 0.5 * teacher_length
    assert abs(kl.lengths(tree)[-1] - teacher_length) < 0.2
    assert kl.path_kls[-1] < 0.1 < ce.path_kls[-1]


def test_copy_chain_the_kl_cost_escapes_by_stopping_stop_local_keeps_the_length():
    tree = INSTANCES["copy_chain"].tree
    full = chain_run("copy_chain", "distil_kl")
    assert full.lengths(tree)[0] > 8
    assert min(full.lengths(tree)) < 0.4 * CHAIN_DEPTH          # it stops early ...
    assert full.path_kls[-1] < 0.5 * full.path_kls[0]           # ... which lowers its KL ...
    assert full.rewards[-1] < full.rewards[0]                    # ... without learning the content
    for method in ("distil_kl_stop_local", "distil_stop_local"):
        local = chain_run("copy_chain", method)
        assert min(local.lengths(tree)) >= 0.8 * CHAIN_DEPTH, method
        assert strictly_increasing(local.rewards[1:]), method
        assert local.rewards[-1] > 10 * full.rewards[-1], method


def test_confused_chain_stop_local_keeps_the_ce_cost_useful_the_kl_cost_follows_the_teacher():
    tree = INSTANCES["confused_chain"].tree
    target = teacher_reward(tree)
    ce_local = chain_run("confused_chain", "distil_stop_local")
    assert ce_local.rewards[-1] > 2 * target
    assert min(ce_local.lengths(tree)) >= 0.8 * CHAIN_DEPTH
    ce_full = chain_run("confused_chain", "distil")
    assert ce_full.rewards[-1] < 0.5 * target and ce_full.lengths(tree)[-1] < 0.3 * CHAIN_DEPTH
    for method in ("distil_kl", "distil_kl_stop_local"):
        assert abs(chain_run("confused_chain", method).rewards[-1] - target) < 0.02, method


# ------------------------------------------------- 3. the general statements, at random


def random_bandit(g, k, binary=False):
    rewards = (torch.rand(k, generator=g) < 0.5).double() if binary else torch.rand(k, generator=g,
                                                                                  dtype=torch.float64)
    teacher = torch.softmax(2 * torch.randn(k, generator=g, dtype=torch.float64), -1)
    theta = 2 * torch.randn(1, k, generator=g, dtype=torch.float64)
    return rewards, teacher, theta


def test_shortcut_chain_the_summed_cost_takes_the_shortcut_the_mean_learns_as_forward_ce():
    """A content token after which the teacher agrees to stop: the summed future cost credits it
    for the short ending (SmolLM2's `<number>`), the mean over later tokens does not."""
    instance = shortcut_instance()
    tree = instance.tree
    runs = {m: run(tree, instance.start, m, 0.5, 200, instance.step_scale)
            for m in ("forward_ce", "distil_kl_stop_local", "distil_kl_stop_local_mean")}
    summed, mean, local = (runs[m] for m in ("distil_kl_stop_local", "distil_kl_stop_local_mean", "forward_ce"))
    assert shortcut_share(instance, summed.probs[-1]) > 0.75 > 0.4 > shortcut_share(instance, summed.probs[0])
    assert summed.lengths(tree)[-1] < 4.0 and summed.rewards[-1] < summed.rewards[0]
    assert shortcut_share(instance, mean.probs[-1]) < shortcut_share(instance, mean.probs[0])
    assert mean.lengths(tree)[-1] > 7.2 and mean.rewards[-1] > 5 * mean.rewards[0]
    assert abs(mean.rewards[-1] - local.rewards[-1]) < 0.1 * local.rewards[-1]


def test_forward_ce_first_order_change_is_the_covariance_and_two_actions_follow_the_teacher():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        k = 2 if trial % 2 else 5
        rewards, teacher, theta = random_bandit(g, k)
        tree = bandit(rewards, teacher)
        p = torch.softmax(theta[0], -1)
        cov = float((p * (rewards - (p * rewards).sum()) * (teacher - p)).sum())
        gain = first_order_gain(tree, theta, "forward_ce")
        assert gain == pytest.approx(cov, abs=1e-12)
        if k == 2:
            assert math.copysign(1, gain) == math.copysign(1, teacher_reward(tree)
                                                           - float(expected_reward(tree, theta)))


def test_forward_ce_towards_the_success_conditioned_student_always_helps_binary_rewards():
    g = torch.Generator().manual_seed(1)
    checked = 0
    for _ in range(200):
        rewards, _, theta = random_bandit(g, 6, binary=True)
        success = rewards > 0
        if success.all() or not success.any():
            continue
        p = torch.softmax(theta[0], -1)
        teacher = torch.where(success, p, 0.0) / p[success].sum()
        assert first_order_gain(bandit(rewards, teacher), theta, "forward_ce") > 0
        checked += 1
    assert checked > 100


def test_steps_below_the_certificate_raise_the_reward():
    g = torch.Generator().manual_seed(2)
    certified = 0
    for _ in range(300):
        rewards, teacher, theta = random_bandit(g, 4)
        safe = forward_ce_safe_step(rewards, theta, teacher)
        if not 0 < safe < math.inf:
            continue
        tree = bandit(rewards, teacher)
        j0 = float(expected_reward(tree, theta))
        for eta in (0.999 * safe, 0.5 * safe):
            assert float(expected_reward(tree, gradient_step(tree, theta, "forward_ce", eta))) > j0
        certified += 1
    assert certified > 100


def test_success_bound_holds_and_forward_ce_raises_it_for_steps_below_four():
    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        rewards, teacher, theta = random_bandit(g, 5, binary=True)
        success = rewards > 0
        if not success.any():
            continue
        tree = bandit(rewards, teacher)
        for _step in range(5):
            log_ps = math.log(float(torch.softmax(theta[0], -1)[success].sum()))
            bound = success_log_lower_bound(teacher, theta, success)
            assert bound <= log_ps + 1e-12
            theta_next = gradient_step(tree, theta, "forward_ce", 3.9)
            assert success_log_lower_bound(teacher, theta_next, success) >= bound - 1e-12
            theta = theta_next


# ---------------------------------------------------------------- 4. the study script


def test_study_script_writes_the_markdown_even_without_matplotlib(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tabular_study.py"
    spec = importlib.util.spec_from_file_location("tabular_study_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    threads = torch.get_num_threads()
    try:
        assert module.main(["--out", str(tmp_path), "--steps", "12", "--chain-steps", "12"]) == 0
    finally:
        torch.set_num_threads(threads)
    text = (tmp_path / "tabular.md").read_text(encoding="utf-8")
    assert not (tmp_path / "tabular.png").exists()
    assert "matplotlib is not installed" in text
    for instance in study_instances() + chain_instances():
        assert f"`{instance.key}`" in text
    assert "| 12 |" in text and "η = 0.5" in text
    assert "## Variable-length chains" in text and "DistIL, KL cost, stop local" in text
