"""The tabular study (docs/results/tabular.md): exact objectives, their gradients, and the claims.

Part 1 checks distil_core.tabular against finite differences, closed forms and the sampled
losses of distil_core.losses (whose expectation over all enumerated sequences must give the
exact gradients). Part 2 asserts, on the study's instances, each claim the doc's conclusion
makes; part 3 checks the general statements behind them on random bandits.
"""

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distil_core import tabular
from distil_core.losses import distil_loss, generalized_jsd, reverse_kl_sampled
from distil_core.tabular import (
    METHODS,
    bandit,
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
)

SWEEP = (0.05, 0.25, 0.5, 1.0, 2.0)
LR, STEPS = 0.5, 40  # the study's defaults (benchmarks/tabular_study.py)
INSTANCES = {instance.key: instance for instance in study_instances()}


def random_tree(vocab, horizon, seed):
    g = torch.Generator().manual_seed(seed)
    num_states = sum(vocab ** t for t in range(horizon))
    teacher = torch.softmax(1.5 * torch.randn(num_states, vocab, generator=g, dtype=torch.float64), -1)
    rewards = torch.rand(vocab ** horizon, generator=g, dtype=torch.float64)
    theta = torch.randn(num_states, vocab, generator=g, dtype=torch.float64)
    return token_tree(vocab, horizon, rewards, teacher), theta


def strictly_increasing(values):
    return all(after > before for before, after in itertools.pairwise(values))


# ------------------------------------------------------------------ 1. exact machinery


@pytest.mark.parametrize("vocab,horizon", [(4, 1), (3, 2), (2, 3)])
def test_gradients_match_finite_differences(vocab, horizon):
    """Central differences of J, of the differentiated objectives, and of the frozen-weight
    ones with the state weights held at θ (that is what their gradient is of)."""
    tree, theta = random_tree(vocab, horizon, seed=vocab + 10 * horizon)
    weights = tabular.sequence_probs(tree, theta).detach()
    logq = torch.log(tree.teacher)

    def frozen(per_state):
        return lambda tr, th: (weights * per_state(th)[tr.rows].sum(-1)).sum()

    functions = {
        "reward": expected_reward,
        "distil": METHODS["distil"],
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
    if horizon > 1:  # freezing the weights matters on a tree
        assert not torch.allclose(objective_gradient(tree, theta, "distil"),
                                  objective_gradient(tree, theta, "forward_ce"), atol=1e-3)


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


def sequence_inputs(tree, theta, i):
    rows, tokens = tree.rows[i], tree.sequences[i]
    student = theta[rows][None]
    teacher = torch.log(tree.teacher[rows])[None]
    return student, teacher, tokens[None], torch.ones(1, tree.horizon, dtype=torch.float64)


@pytest.mark.parametrize("future_credit,method", [(True, "distil"), (False, "forward_ce")])
def test_distil_exact_gradient_is_the_expected_surrogate_gradient(future_credit, method):
    tree, theta = random_tree(3, 2, seed=7)

    def loss(th, i):
        student, teacher, tokens, mask = sequence_inputs(tree, th, i)
        # distil_loss is a token mean; the study's objectives sum over the T steps
        return tree.horizon * distil_loss(student, teacher, tokens, mask, future_credit=future_credit)

    _, surrogate = weighted_surrogate_gradient(tree, theta, loss)
    assert torch.allclose(surrogate, objective_gradient(tree, theta, method), atol=1e-12)
    if future_credit:  # the future credit really contributes on this tree
        assert not torch.allclose(surrogate, objective_gradient(tree, theta, "forward_ce"), atol=1e-3)


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
                                        ("tree_recover", "distil")])
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


# ------------------------------------------------- 3. the general statements, at random


def random_bandit(g, k, binary=False):
    rewards = (torch.rand(k, generator=g) < 0.5).double() if binary else torch.rand(k, generator=g,
                                                                                  dtype=torch.float64)
    teacher = torch.softmax(2 * torch.randn(k, generator=g, dtype=torch.float64), -1)
    theta = 2 * torch.randn(1, k, generator=g, dtype=torch.float64)
    return rewards, teacher, theta


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
        assert module.main(["--out", str(tmp_path), "--steps", "12"]) == 0
    finally:
        torch.set_num_threads(threads)
    text = (tmp_path / "tabular.md").read_text(encoding="utf-8")
    assert not (tmp_path / "tabular.png").exists()
    assert "matplotlib is not installed" in text
    for instance in study_instances():
        assert f"`{instance.key}`" in text
    assert "| 12 |" in text and "η = 0.5" in text
