"""Exact-gradient tabular study of DistIL and its baselines (ALGORITHMS.md sections 1, 2, 5).

A policy here is a table of logits, one softmax row per state of a token tree: vocabulary
``V``, fixed horizon ``T``, a state is a prefix ``(y_1..y_{t-1})`` and every full sequence
``y`` of length ``T`` ends the episode with a reward ``r(y)``. ``T = 1`` is a bandit. The
tree is small enough to enumerate all ``V**T`` sequences, so every expectation below is an
exact sum and every gradient is autograd through that sum, in float64. Nothing is sampled.

With ``P_θ(y) = Π_t p_t(y_t)`` the student's sequence distribution, ``p_t = softmax(θ[s_t])``,
``q_t`` the teacher's row at the same state and ``sg`` stop-gradient, the objectives are
(each a sum over the ``T`` steps of a sequence; the toolkit's token mean is this divided by
``T`` for fixed-length sequences, which only rescales the step size):

    expected reward       J(θ)       = Σ_y P_θ(y) r(y)
    DistIL                L(θ)       = Σ_y P_θ(y) Σ_t CE(q_t, p_t)          (state weights differentiated)
    DistIL local / fwd CE L_loc(θ)   = Σ_y sg(P_θ(y)) Σ_t CE(q_t, p_t)      (state weights frozen)
    reverse KL, per token            = Σ_y sg(P_θ(y)) Σ_t KL(p_t ‖ q_t)
    reverse KL, sequence             = Σ_y P_θ(y) Σ_t KL(p_t ‖ q_t) = KL(P_θ ‖ Q)
    generalised JSD(β), per token    = Σ_y sg(P_θ(y)) Σ_t [β KL(q_t‖M_t) + (1-β) KL(p_t‖M_t)],
                                       M_t = (1-β) p_t + β q_t

The frozen-weight versions are what the sampled losses in :mod:`distil_core.losses` estimate:
``distil_surrogate(future_credit=False)``, ``reverse_kl_sampled(gamma=0)`` and
``generalized_jsd`` on the student's own rollouts; ``distil_surrogate`` with future credit and
``reverse_kl_sampled(gamma=1)`` estimate the differentiated ones (tests/test_tabular.py checks
each of these equalities by enumeration).

Every method takes plain gradient steps on the logit table with a fixed step size ``lr``:
``θ ← θ - lr · ∇_θ objective(θ)``. For one state (the bandit) the per-row gradients are

    forward CE:  p - q
    reverse KL:  p ⊙ (ℓ - E_p ℓ),  ℓ = log p - log q
    JSD(β):      p ⊙ (h - E_p h),  h = (1-β) log(p / M)

and the reward's gradient is ``p ⊙ (r - J)``, so the first-order change of ``J`` per unit
step is ``-⟨∇J, ∇objective⟩`` (:func:`first_order_gain`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

DTYPE = torch.float64


# ------------------------------------------------------------------------------ the tree


@dataclass(frozen=True)
class TokenTree:
    """A finite-horizon token tree: ``vocab`` actions per state, ``horizon`` steps, a reward
    per full sequence and a fixed teacher distribution at every state.

    ``rewards`` is ``[vocab**horizon]`` in lexicographic order of the sequences (the order of
    :attr:`sequences`); ``teacher`` is ``[num_states, vocab]``, row :meth:`state_index` of a
    prefix holding ``q`` at that prefix. Build one with :func:`bandit` or :func:`token_tree`.
    """

    vocab: int
    horizon: int
    rewards: Tensor
    teacher: Tensor
    sequences: Tensor = field(init=False, repr=False)  # [N, T] token ids
    rows: Tensor = field(init=False, repr=False)       # [N, T] state row of each step

    def __post_init__(self) -> None:
        seqs = torch.tensor(list(itertools.product(range(self.vocab), repeat=self.horizon)),
                            dtype=torch.long).reshape(-1, self.horizon)
        rows = torch.stack([torch.tensor([self.state_index(tuple(s[:t].tolist())) for s in seqs])
                            for t in range(self.horizon)], dim=1)
        object.__setattr__(self, "sequences", seqs)
        object.__setattr__(self, "rows", rows)

    @property
    def num_states(self) -> int:
        return sum(self.vocab ** t for t in range(self.horizon))

    def state_index(self, prefix: Sequence[int]) -> int:
        """Row of the state reached after ``prefix`` (states are numbered level by level)."""
        code = 0
        for token in prefix:
            code = code * self.vocab + int(token)
        return sum(self.vocab ** t for t in range(len(prefix))) + code

    def sequence_index(self, sequence: Sequence[int]) -> int:
        code = 0
        for token in sequence:
            code = code * self.vocab + int(token)
        return code


def bandit(rewards: Sequence[float] | Tensor, teacher: Sequence[float] | Tensor) -> TokenTree:
    """A one-state tree: K actions with ``rewards[a]`` and teacher probabilities ``teacher``."""
    teacher_row = torch.as_tensor(teacher, dtype=DTYPE).reshape(1, -1)
    return token_tree(len(rewards), 1, rewards, teacher_row)


def token_tree(vocab: int, horizon: int, rewards: Sequence[float] | Tensor,
               teacher: Sequence[Sequence[float]] | Tensor) -> TokenTree:
    """Validate and build a :class:`TokenTree` (see its docstring for the layout)."""
    if vocab < 2 or horizon < 1:
        raise ValueError(f"token_tree needs vocab >= 2 and horizon >= 1, got vocab={vocab}, "
                         f"horizon={horizon}")
    rewards_t = torch.as_tensor(rewards, dtype=DTYPE)
    teacher_t = torch.as_tensor(teacher, dtype=DTYPE)
    num_states = sum(vocab ** t for t in range(horizon))
    if rewards_t.shape != (vocab ** horizon,):
        raise ValueError(f"rewards must hold one value per sequence, vocab**horizon = "
                         f"{vocab ** horizon}, in lexicographic order; got shape "
                         f"{tuple(rewards_t.shape)}")
    if teacher_t.shape != (num_states, vocab):
        raise ValueError(f"teacher must be [num_states={num_states}, vocab={vocab}] (one "
                         f"distribution per prefix, level by level); got {tuple(teacher_t.shape)}")
    if (teacher_t < 0).any() or not torch.allclose(teacher_t.sum(-1), torch.ones(num_states,
                                                                                 dtype=DTYPE)):
        raise ValueError("teacher rows must be probability distributions (non-negative, "
                         "summing to 1); normalise each row")
    return TokenTree(vocab, horizon, rewards_t, teacher_t)


def logits_from_probs(probs: Sequence[Sequence[float]] | Tensor) -> Tensor:
    """A logit table whose softmax rows are ``probs`` (all entries must be positive)."""
    probs_t = torch.as_tensor(probs, dtype=DTYPE)
    if probs_t.dim() == 1:
        probs_t = probs_t[None]
    if (probs_t <= 0).any():
        raise ValueError("student probabilities must be positive to have finite logits")
    return torch.log(probs_t / probs_t.sum(-1, keepdim=True))


# ---------------------------------------------------------------------- exact quantities


def sequence_logprobs(tree: TokenTree, logits: Tensor) -> Tensor:
    """log P_θ(y) for every sequence, ``[N]``."""
    return step_logprobs(tree, logits).sum(-1)


def step_logprobs(tree: TokenTree, logits: Tensor) -> Tensor:
    """log p_t(y_t) for every sequence and step, ``[N, T]``."""
    logp = F.log_softmax(logits, dim=-1)
    return logp[tree.rows, tree.sequences]


def expected_reward(tree: TokenTree, logits: Tensor) -> Tensor:
    """J(θ) = Σ_y P_θ(y) r(y)."""
    return (sequence_logprobs(tree, logits).exp() * tree.rewards).sum()


def teacher_reward(tree: TokenTree) -> float:
    """E_{y~Q} r(y): the reward of the teacher run on its own."""
    logq = torch.log(tree.teacher)
    return float((logq[tree.rows, tree.sequences].sum(-1).exp() * tree.rewards).sum())


def sequence_probs(tree: TokenTree, logits: Tensor) -> Tensor:
    return sequence_logprobs(tree, logits).exp()


def _state_weighted(tree: TokenTree, logits: Tensor, per_state: Tensor, differentiate_states: bool
                    ) -> Tensor:
    """Σ_y P_θ(y) Σ_t f(s_t(y)), with P_θ detached unless ``differentiate_states``."""
    weights = sequence_logprobs(tree, logits).exp()
    if not differentiate_states:
        weights = weights.detach()
    return (weights * per_state[tree.rows].sum(-1)).sum()


def cross_entropy_rows(teacher: Tensor, logits: Tensor) -> Tensor:
    """CE(q_s, p_s) for every state, 0·log 0 taken as 0."""
    logp = F.log_softmax(logits, dim=-1)
    return -torch.where(teacher > 0, teacher * logp, 0.0).sum(-1)


def kl_rows(logp_a: Tensor, logp_b: Tensor) -> Tensor:
    """KL(a ‖ b) row by row from log-probabilities, 0·log 0 taken as 0."""
    probs_a = logp_a.exp()
    return torch.where(probs_a > 0, probs_a * (logp_a - logp_b), 0.0).sum(-1)


def jsd_rows(teacher: Tensor, logits: Tensor, beta: float) -> Tensor:
    """β·KL(q‖M) + (1-β)·KL(p‖M), M = (1-β)p + βq, per state; β=0 forward KL, β=1 reverse."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    logp = F.log_softmax(logits, dim=-1)
    logq = torch.log(teacher)
    if beta == 0.0:
        return kl_rows(logq, logp)
    if beta == 1.0:
        return kl_rows(logp, logq)
    log_m = torch.log((1 - beta) * logp.exp() + beta * teacher)
    return beta * kl_rows(logq, log_m) + (1 - beta) * kl_rows(logp, log_m)


def distil_objective(tree: TokenTree, logits: Tensor, future_credit: bool = True) -> Tensor:
    """E_{y~P_θ} Σ_t CE(q_t, p_t); without ``future_credit`` the state weights are frozen, so
    the gradient is the local term alone (forward CE on the student's states)."""
    return _state_weighted(tree, logits, cross_entropy_rows(tree.teacher, logits), future_credit)


def reverse_kl_objective(tree: TokenTree, logits: Tensor, sequence: bool = False) -> Tensor:
    """E_{y~P_θ} Σ_t KL(p_t ‖ q_t); ``sequence=True`` differentiates the state weights too,
    which makes it KL(P_θ ‖ Q). The teacher must be positive wherever the student is."""
    if (tree.teacher <= 0).any():
        raise ValueError("reverse KL needs a teacher with positive probability on every action "
                         "(KL(p‖q) is infinite where q = 0 < p)")
    per_state = kl_rows(F.log_softmax(logits, dim=-1), torch.log(tree.teacher))
    return _state_weighted(tree, logits, per_state, sequence)


def jsd_objective(tree: TokenTree, logits: Tensor, beta: float = 0.5) -> Tensor:
    """E_{y~P_θ} Σ_t JSD_β(p_t, q_t) with the state weights frozen (as GKD / SDPO use it)."""
    return _state_weighted(tree, logits, jsd_rows(tree.teacher, logits, beta), False)


# ------------------------------------------------------------------------- the methods

Objective = Callable[[TokenTree, Tensor], Tensor]

METHODS: dict[str, Objective] = {
    "distil": lambda tree, logits: distil_objective(tree, logits, future_credit=True),
    "forward_ce": lambda tree, logits: distil_objective(tree, logits, future_credit=False),
    "reverse_kl": lambda tree, logits: reverse_kl_objective(tree, logits, sequence=False),
    "reverse_kl_seq": lambda tree, logits: reverse_kl_objective(tree, logits, sequence=True),
    "jsd": lambda tree, logits: jsd_objective(tree, logits, beta=0.5),
}
"""Method name -> objective. ``forward_ce`` is DistIL's local term ("distil_local"); on a
bandit it equals ``distil`` and ``reverse_kl_seq`` equals ``reverse_kl``."""


def objective_gradient(tree: TokenTree, logits: Tensor, method: str) -> Tensor:
    """∇_θ of the method's objective at ``logits``, exact."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    theta = logits.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(METHODS[method](tree, theta), theta)
    return grad


def reward_gradient(tree: TokenTree, logits: Tensor) -> Tensor:
    theta = logits.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(expected_reward(tree, theta), theta)
    return grad


def gradient_step(tree: TokenTree, logits: Tensor, method: str, lr: float) -> Tensor:
    """One plain gradient step on the logit table: θ - lr · ∇ objective(θ)."""
    return logits.detach() - lr * objective_gradient(tree, logits, method)


def first_order_gain(tree: TokenTree, logits: Tensor, method: str) -> float:
    """d J(θ - η ∇objective) / dη at η = 0, i.e. -⟨∇J, ∇objective⟩: the sign of the change
    in expected reward for every small enough step size."""
    return float(-(reward_gradient(tree, logits) * objective_gradient(tree, logits, method)).sum())


@dataclass
class Trajectory:
    """What a run of ``steps`` gradient steps recorded, one entry per step 0..steps."""

    method: str
    lr: float
    rewards: list[float]
    probs: list[Tensor]  # sequence distribution P_θ(y) at each step


def run(tree: TokenTree, logits: Tensor, method: str, lr: float, steps: int) -> Trajectory:
    """``steps`` gradient steps of ``method`` from ``logits``, recording J and P_θ."""
    if lr <= 0 or steps < 0:
        raise ValueError(f"run needs lr > 0 and steps >= 0, got lr={lr}, steps={steps}")
    theta = logits.detach().clone()
    rewards, probs = [], []
    for step in range(steps + 1):
        rewards.append(float(expected_reward(tree, theta)))
        probs.append(sequence_probs(tree, theta).detach())
        if step < steps:
            theta = gradient_step(tree, theta, method, lr)
    return Trajectory(method, lr, rewards, probs)


# ------------------------------------------------------ bandit certificates and bounds


def forward_ce_safe_step(rewards: Tensor, logits: Tensor, teacher: Tensor) -> float:
    """A step size below which one forward-CE step on a bandit cannot lower J (0 if none).

    Along θ + t·v, v = q - p, the exponential-family identities give dJ/dt = Cov_p(r, v) and
    d²J/dt² = E_p[(r - J)(v - E_p v)²], whose size is at most R·range(v)²/4 for any p
    (R = max r - min r, range(v) = max v - min v, Popoviciu's bound on Var_p(v)). So
    J(θ + η v) - J(θ) >= η c - η² R range(v)² / 8 with c = Cov_p(r, v), which is positive for
    0 < η < 8 c / (R · range(v)²). When c <= 0 no step size is certified.
    """
    p = torch.softmax(logits.reshape(-1), dim=-1)
    r = torch.as_tensor(rewards, dtype=DTYPE).reshape(-1)
    v = teacher.reshape(-1) - p
    c = float((p * (r - (p * r).sum()) * v).sum())
    spread = float(r.max() - r.min()) * float(v.max() - v.min()) ** 2
    if c <= 0:
        return 0.0
    return math.inf if spread == 0 else 8 * c / spread


def success_log_lower_bound(teacher: Tensor, logits: Tensor, success: Tensor) -> float:
    """Lower bound on log p(S) from the forward cross-entropy (bandit, ALGORITHMS.md §5).

    With q_S = q(·|S): Σ_{a∈S} q_a log p_a = q(S)[log p(S) - CE(q_S, p(·|S))] and
    CE(q_S, p(·|S)) >= H(q_S); the failing actions only add -q_a log p_a >= 0 to CE(q, p). So

        log p(S) >= (-CE(q, p) + q(S) · H(q_S)) / q(S),

    and minimising the forward CE raises this bound. When q(S) = 1 it reads
    log p(S) >= -KL(q ‖ p).
    """
    q = teacher.reshape(-1)
    mask = torch.as_tensor(success, dtype=torch.bool).reshape(-1)
    q_s = float(q[mask].sum())
    if q_s <= 0:
        raise ValueError("the teacher puts no mass on the success set; the bound needs q(S) > 0")
    cond = q[mask] / q_s
    entropy = float(-torch.where(cond > 0, cond * torch.log(cond), 0.0).sum())
    ce = float(cross_entropy_rows(q[None], logits.reshape(1, -1))[0])
    return (-ce + q_s * entropy) / q_s


def pass_at_n(success_prob: float, n: int) -> float:
    """Probability that at least one of n independent samples succeeds: 1 - (1 - s)^n."""
    return 1.0 - (1.0 - success_prob) ** n


# ------------------------------------------------------------------ the study's instances


@dataclass(frozen=True)
class Instance:
    """One setting of the study: a tree, the student's starting table and what it shows."""

    key: str
    title: str
    tree: TokenTree
    start: Tensor            # initial logit table θ_0
    shows: str               # one sentence: what the instance is built to exhibit
    success: Tensor | None = None  # bandit actions that count as correct, for Pass@N


def study_instances() -> list[Instance]:
    """The instances of docs/results/tabular.md, built by reasoning (the doc explains each).

    Bandit actions are named A, B, C with rewards 1 > r_B > 0. Token-tree sequences are
    listed in lexicographic order (for vocab 3, horizon 2: 00, 01, 02, 10, ..., 22) and the
    rows of a table are the root, then the states after tokens 0, 1, 2.
    """
    return [
        Instance(
            "zero_tail", "Bandit: teacher's near-zero tail on the student's favourite",
            bandit([1.0, 0.3, 0.0], [0.9, 1e-4, 0.0999]),
            logits_from_probs([0.1, 0.5, 0.4]),
            "reverse KL moves the mass it takes off B (r=0.3, q_B=1e-4) mostly onto the worst "
            "action C, because its per-action push p_a(ℓ_a - E_p ℓ) is scaled by the student's "
            "own small p_A; forward CE pulls A up by q_A - p_A",
            success=torch.tensor([True, False, False])),
        Instance(
            "two_mode", "Bandit: two-mode teacher (best and worst action), student in between",
            bandit([1.0, 0.6, 0.0], [0.6, 0.01, 0.39]),
            logits_from_probs([0.1, 0.35, 0.55]),
            "reverse KL and JSD both empty B (r=0.6) into the teacher's other mode C (r=0) "
            "faster than into A (r=1)",
            success=torch.tensor([True, False, False])),
        Instance(
            "forward_dip", "Bandit: forward CE's first step lowers J",
            bandit([1.0, 0.5, 0.0], [0.6, 0.001, 0.399]),
            logits_from_probs([0.05, 0.45, 0.5]),
            "a counterexample for forward CE on logits: Cov_p(r, q - p) < 0, because the pull "
            "q_A - p_A on the best action is weighted by its tiny p_A",
            success=torch.tensor([True, False, False])),
        Instance(
            "tree_recover", "Token tree (V=3, T=2): good branch, flat branch, recoverable branch",
            token_tree(3, 2,
                       [1.0, 0.2, 0.2, 0.6, 0.6, 0.6, 0.5, 0.0, 0.0],
                       [[0.6, 0.01, 0.39], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3],
                        [0.8, 0.1, 0.1]]),
            logits_from_probs([[0.1, 0.35, 0.55], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3],
                               [0.2, 0.4, 0.4]]),
            "the two-mode root inside a sequence task: per-token and sequence reverse KL and "
            "JSD first lower J, forward CE and DistIL raise it at every step"),
        Instance(
            "entropy_trap", "Token tree (V=2, T=2): the good branch has an uncertain teacher",
            token_tree(2, 2, [1.0, 1.0, 0.8, 0.0],
                       [[0.6, 0.4], [0.5, 0.5], [0.99, 0.01]]),
            logits_from_probs([[0.5, 0.5], [0.5, 0.5], [0.99, 0.01]]),
            "a counterexample for DistIL's future credit: its cost is the CE, which includes "
            "the teacher's entropy, so it steers away from branch 0 (both endings correct, "
            "teacher 50/50) towards branch 1 (reward 0.8 at best)"),
    ]
