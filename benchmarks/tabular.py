"""Exact-gradient tabular study of DistIL and its baselines (docs/guide.md, "Methods"; docs/results/tabular.md).

A policy here is a table of logits, one softmax row per state of a token tree: vocabulary
``V``, horizon ``T``, a state is a prefix ``(y_1..y_{t-1})`` that has not ended, and every
terminal sequence ``y`` ends the episode with a reward ``r(y)``. On a fixed-horizon tree every
sequence has ``T`` tokens (``T = 1`` is a bandit); on a variable-length tree an EOS token also
ends it, so sequences have 1..T tokens (:class:`TokenTree`). The trees are small enough to
enumerate every terminal sequence, so every expectation below is an exact sum and every
gradient is autograd through that sum, in float64. Nothing is sampled.

With ``P_θ(y) = Π_t p_t(y_t)`` the student's sequence distribution, ``p_t = softmax(θ[s_t])``,
``q_t`` the teacher's row at the same state and ``sg`` stop-gradient, the objectives are
(each a sum over the steps of a sequence; the toolkit's token mean is this divided by ``T``
for fixed-length sequences, which only rescales the step size):

    expected reward       J(θ)       = Σ_y P_θ(y) r(y)
    DistIL, CE cost       L(θ)       = Σ_y P_θ(y) Σ_t CE(q_t, p_t)          (state weights differentiated)
    DistIL, KL cost       L_KL(θ)    = Σ_y P_θ(y) Σ_t KL(q_t ‖ p_t)         (state weights differentiated)
    DistIL, stop local    Σ_y sg(P_θ(y)) Σ_t CE(q_t, p_t) + Σ_y P̂_θ(y) Σ_t sg(c_t)   (see distil_objective)
    DistIL local / fwd CE L_loc(θ)   = Σ_y sg(P_θ(y)) Σ_t CE(q_t, p_t)      (state weights frozen)
    reverse KL, per token            = Σ_y sg(P_θ(y)) Σ_t KL(p_t ‖ q_t)
    reverse KL, sequence             = Σ_y P_θ(y) Σ_t KL(p_t ‖ q_t) = KL(P_θ ‖ Q)
    generalised JSD(β), per token    = Σ_y sg(P_θ(y)) Σ_t [β KL(q_t‖M_t) + (1-β) KL(p_t‖M_t)],
                                       M_t = (1-β) p_t + β q_t

The CE and KL costs differ by E_P Σ_t H(q_t), the teacher's entropy along the student's path:
the CE cost also rewards stopping early and steering into states where the teacher is
confident, and p = q is a fixed point of the KL cost only.

The frozen-weight versions are what the sampled losses in :mod:`distil_core.losses.reference` estimate:
``distil_surrogate(future_credit=False)``, ``reverse_kl_sampled(gamma=0)`` and
``generalized_jsd`` on the student's own rollouts; ``distil_loss`` with future credit (and its
``future_cost`` / ``stop_credit`` options) and ``reverse_kl_sampled(gamma=1)`` estimate the
differentiated ones (tests/test_tabular.py checks each of these equalities by enumeration).

Every method takes plain gradient steps on the logit table with a fixed step size ``lr``:
``θ ← θ - lr · ∇_θ objective(θ)`` (optionally scaled per logit, :func:`gradient_step`). For
one state (the bandit) the per-row gradients are

    forward CE:  p - q
    reverse KL:  p ⊙ (ℓ - E_p ℓ),  ℓ = log p - log q
    JSD(β):      p ⊙ (h - E_p h),  h = (1-β) log(p / M)

and the reward's gradient is ``p ⊙ (r - J)``, so the first-order change of ``J`` per unit
step is ``-⟨∇J, ∇objective⟩`` (:func:`first_order_gain`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.losses import FUTURE_COSTS, FUTURE_REDUCES, STOP_CREDITS  # the same names the real losses accept

DTYPE = torch.float64


# ------------------------------------------------------------------------------ the tree


def _enumerate(vocab: int, horizon: int, eos: int | None
               ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(states, terminal sequences) of a tree, states level by level and lexicographic within a
    level, sequences lexicographic. A state is a prefix that has not ended: shorter than
    ``horizon`` and free of ``eos``; a prefix ends at ``eos`` or when it reaches ``horizon``."""
    levels = [[()]]
    for _ in range(horizon - 1):
        levels.append([p + (a,) for p in levels[-1] for a in range(vocab) if a != eos])
    states = [p for level in levels for p in level]
    terminals = sorted(p + (a,) for p in states for a in range(vocab)
                       if a == eos or len(p) + 1 == horizon)
    return states, terminals


@dataclass(frozen=True)
class TokenTree:
    """A finite token tree: ``vocab`` actions per state, at most ``horizon`` steps, a reward
    per terminal sequence and a fixed teacher distribution at every state.

    Without ``eos`` every sequence has exactly ``horizon`` tokens (the fixed-horizon tree of
    sections 1-2). With ``eos`` (a token id) the episode also ends when ``eos`` is drawn, so
    sequences have 1..horizon tokens, the ``eos`` counted; at depth ``horizon`` the episode
    ends whether or not ``eos`` was chosen, and a sequence truncated there is a terminal of its
    own with its own reward. Either way every terminal sequence is listed, so every expectation
    stays an exact sum.

    ``rewards`` is ``[N]`` in lexicographic order of the terminal sequences (the order of
    :attr:`sequences`; for a fixed horizon, ``N = vocab**horizon``); ``teacher`` is
    ``[num_states, vocab]``, row :meth:`state_index` of a prefix holding ``q`` at that prefix.
    Build one with :func:`bandit`, :func:`token_tree` or :func:`variable_length_tree`.
    """

    vocab: int
    horizon: int
    rewards: Tensor
    teacher: Tensor
    eos: int | None = None
    sequences: Tensor = field(init=False, repr=False)  # [N, T] token ids, 0 past the end
    rows: Tensor = field(init=False, repr=False)       # [N, T] state row of each step, 0 after
    mask: Tensor = field(init=False, repr=False)       # [N, T] True on the steps of the sequence
    states: tuple[tuple[int, ...], ...] = field(init=False, repr=False)     # row -> prefix
    terminals: tuple[tuple[int, ...], ...] = field(init=False, repr=False)  # index -> sequence
    _row_of: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        states, terminals = _enumerate(self.vocab, self.horizon, self.eos)
        row_of = {prefix: row for row, prefix in enumerate(states)}
        pad = [[0] * (self.horizon - len(seq)) for seq in terminals]
        seqs = torch.tensor([list(seq) + tail for seq, tail in zip(terminals, pad)],
                            dtype=torch.long).reshape(-1, self.horizon)
        rows = torch.tensor([[row_of[seq[:t]] for t in range(len(seq))] + tail
                             for seq, tail in zip(terminals, pad)],
                            dtype=torch.long).reshape(-1, self.horizon)
        mask = torch.tensor([[True] * len(seq) + [False] * len(tail)
                             for seq, tail in zip(terminals, pad)]).reshape(-1, self.horizon)
        for name, value in (("sequences", seqs), ("rows", rows), ("mask", mask),
                            ("states", tuple(states)), ("terminals", tuple(terminals)),
                            ("_row_of", row_of)):
            object.__setattr__(self, name, value)

    @property
    def num_states(self) -> int:
        return len(self.states)

    @property
    def lengths(self) -> Tensor:
        """Number of tokens of every terminal sequence (``eos`` included), ``[N]``."""
        return self.mask.sum(-1)

    def state_index(self, prefix: Sequence[int]) -> int:
        """Row of the state reached after ``prefix`` (states are numbered level by level)."""
        key = tuple(int(token) for token in prefix)
        if key not in self._row_of:
            raise ValueError(f"{key} is not a state of this tree (it has ended or is too long)")
        return self._row_of[key]


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


def variable_length_tree(vocab: int, horizon: int,
                         reward: Callable[[tuple[int, ...]], float],
                         teacher: Callable[[tuple[int, ...]], Sequence[float]],
                         eos: int = 0) -> TokenTree:
    """A :class:`TokenTree` whose episodes end at ``eos`` or after ``horizon`` tokens.

    ``reward(sequence)`` gives r of each terminal sequence (``eos`` included where drawn) and
    ``teacher(prefix)`` the teacher's row at each state; the tree asks for every one of them,
    so neither needs to know the enumeration order.
    """
    if vocab < 2 or horizon < 1 or not 0 <= eos < vocab:
        raise ValueError(f"variable_length_tree needs vocab >= 2, horizon >= 1 and 0 <= eos < "
                         f"vocab, got vocab={vocab}, horizon={horizon}, eos={eos}")
    states, terminals = _enumerate(vocab, horizon, eos)
    rewards_t = torch.tensor([float(reward(seq)) for seq in terminals], dtype=DTYPE)
    teacher_t = torch.tensor([list(teacher(prefix)) for prefix in states], dtype=DTYPE)
    if teacher_t.shape != (len(states), vocab) or (teacher_t < 0).any() or not torch.allclose(
            teacher_t.sum(-1), torch.ones(len(states), dtype=DTYPE)):
        raise ValueError("teacher(prefix) must return a probability distribution over the "
                         f"{vocab} tokens (non-negative, summing to 1) for every state")
    return TokenTree(vocab, horizon, rewards_t, teacher_t, eos)


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
    """log p_t(y_t) for every sequence and step, ``[N, T]``; 0 past a sequence's end."""
    logp = F.log_softmax(logits, dim=-1)
    return torch.where(tree.mask, logp[tree.rows, tree.sequences], 0.0)


def expected_reward(tree: TokenTree, logits: Tensor) -> Tensor:
    """J(θ) = Σ_y P_θ(y) r(y)."""
    return (sequence_logprobs(tree, logits).exp() * tree.rewards).sum()


def teacher_reward(tree: TokenTree) -> float:
    """E_{y~Q} r(y): the reward of the teacher run on its own."""
    return float((sequence_logprobs(tree, torch.log(tree.teacher)).exp() * tree.rewards).sum())


def sequence_probs(tree: TokenTree, logits: Tensor) -> Tensor:
    return sequence_logprobs(tree, logits).exp()


def expected_length(tree: TokenTree, logits: Tensor) -> float:
    """E_{y~P_θ} |y|, tokens counted with the ``eos`` (the horizon on a fixed-horizon tree)."""
    return float((sequence_probs(tree, logits) * tree.lengths).sum())


def success_probability(tree: TokenTree, logits: Tensor, success: Tensor) -> float:
    """P_θ(y ∈ S) for a boolean mask ``success`` over the terminal sequences."""
    return float(sequence_probs(tree, logits)[success].sum())


def path_kl(tree: TokenTree, logits: Tensor) -> float:
    """Σ_y P_θ(y) Σ_t KL(q_t ‖ p_t): the forward KL to the teacher summed along the student's
    own path (0 exactly when p = q on every state the student reaches)."""
    per_state = forward_kl_rows(tree.teacher, logits)
    return float(_state_weighted(tree, logits, per_state, False))


def _state_weighted(tree: TokenTree, logits: Tensor, per_state: Tensor, differentiate_states: bool
                    ) -> Tensor:
    """Σ_y P_θ(y) Σ_t f(s_t(y)), with P_θ detached unless ``differentiate_states``."""
    weights = sequence_logprobs(tree, logits).exp()
    if not differentiate_states:
        weights = weights.detach()
    return (weights * _along_path(tree, per_state)).sum()


def _along_path(tree: TokenTree, per_state: Tensor) -> Tensor:
    """Σ_t f(s_t(y)) for every sequence, ``[N]``, from a per-state value ``f``."""
    return torch.where(tree.mask, per_state[tree.rows], 0.0).sum(-1)


def cross_entropy_rows(teacher: Tensor, logits: Tensor) -> Tensor:
    """CE(q_s, p_s) for every state, 0·log 0 taken as 0."""
    logp = F.log_softmax(logits, dim=-1)
    return -torch.where(teacher > 0, teacher * logp, 0.0).sum(-1)


def forward_kl_rows(teacher: Tensor, logits: Tensor) -> Tensor:
    """KL(q_s ‖ p_s) = CE(q_s, p_s) - H(q_s) for every state; its gradient is CE's, p - q."""
    entropy = -torch.where(teacher > 0, teacher * torch.log(teacher), 0.0).sum(-1)
    return cross_entropy_rows(teacher, logits) - entropy


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




def distil_objective(tree: TokenTree, logits: Tensor, future_credit: bool = True,
                     future_cost: str = "ce", stop_credit: str = "full", future_reduce: str = "sum") -> Tensor:
    """DistIL's exact objective: its gradient is the expectation of the sampled per-token loss

        ℓ_t = CE(q_t, p_t) + sg(G_t) · s_t,    G_t = Σ_{i>t} c_i,

    over the student's own sequences. ``future_cost`` picks the cost c_i propagated to
    earlier tokens: "ce" c_i = CE(q_i, p_i) = H(q_i) + KL(q_i ‖ p_i), "kl" c_i = KL(q_i ‖ p_i).
    ``stop_credit`` picks the score s_t: "full" log p_t(y_t); "local"
    1[y_t ≠ EOS] · log p̃_t(y_t) with p̃_t = p_t / (1 - p_t(EOS)) the content distribution, so
    the future credit moves what is written but never the EOS logit (its derivative of
    log p̃_t is 0). Exactly:

        full:   Σ_y P_θ(y) Σ_t c_t                     (with c = CE: E_P Σ_t CE_t, all differentiated;
                                                         with c = KL: E_P Σ_t KL_t, all differentiated,
                                                         since ∇CE_t = ∇KL_t)
        local:  Σ_y sg(P_θ(y)) Σ_t CE_t + Σ_y P̂_θ(y) Σ_t sg(c_t),
                log P̂(y) = Σ_t [sg(log p_t(y_t)) + 1[y_t≠EOS](log p̃_t(y_t) - sg(log p̃_t(y_t)))].

    Every variant's value is E_P Σ_t c_t; the "local" one is written so that its value is that
    and its autograd gradient the estimator's (its finite differences are not). On a tree
    without ``eos`` no token stops early, so "local" is "full". Without ``future_credit`` the
    state weights are frozen and only the local term is left (forward CE on the student's
    states); ``future_cost`` and ``stop_credit`` then do not matter.

    ``future_reduce="mean"`` makes G_t the mean of the later costs, Ḡ_t = Σ_{i>t} c_i / #{i > t}
    (the toolkit's ``loss.future_reduce: mean``). That is the gradient of no single objective,
    so the expected estimator is written out instead:
    Σ_y sg(P_θ(y)) [Σ_t CE_t + Σ_t (s_t - sg(s_t)) · sg(Ḡ_t)], with s_t the score of the stop
    credit; its value is the local term's.
    """
    if future_cost not in FUTURE_COSTS or stop_credit not in STOP_CREDITS or future_reduce not in FUTURE_REDUCES:
        raise ValueError(f"future_cost must be one of {FUTURE_COSTS}, stop_credit one of {STOP_CREDITS} and "
                         f"future_reduce one of {FUTURE_REDUCES}; got {future_cost!r}, {stop_credit!r}, "
                         f"{future_reduce!r}")
    ce = cross_entropy_rows(tree.teacher, logits)
    if not future_credit:
        return _state_weighted(tree, logits, ce, False)
    cost = ce if future_cost == "ce" else forward_kl_rows(tree.teacher, logits)
    if future_reduce == "mean":
        score = step_logprobs(tree, logits) if stop_credit == "full" else content_step_scores(tree, logits)
        credit = torch.where(tree.mask, (score - score.detach()) * _future_mean(tree, cost.detach()), 0.0)
        return _state_weighted(tree, logits, ce, False) + (sequence_probs(tree, logits).detach() * credit.sum(-1)).sum()
    if stop_credit == "full" or tree.eos is None:
        return _state_weighted(tree, logits, cost, True)
    local = _state_weighted(tree, logits, ce - ce.detach(), False)  # value 0, gradient Σ ∇CE_t
    return local + (content_path_probs(tree, logits) * _along_path(tree, cost.detach())).sum()


def content_path_probs(tree: TokenTree, logits: Tensor) -> Tensor:
    """P̂_θ(y), ``[N]``: equal to P_θ(y), differentiable only through the content factors
    p̃_t(y_t) = p_t(y_t) / (1 - p_t(EOS)) of its non-EOS tokens (``stop_credit="local"``)."""
    return content_step_scores(tree, logits).sum(-1).exp()


def content_step_scores(tree: TokenTree, logits: Tensor) -> Tensor:
    """log p_t(y_t) per step, ``[N, T]``, differentiable only through the content factor
    log p̃_t(y_t) of a non-EOS token (0 past the end): the score of ``stop_credit="local"``."""
    if tree.eos is None:
        return step_logprobs(tree, logits)
    eos_column = torch.arange(tree.vocab) == tree.eos
    log_content = F.log_softmax(logits.masked_fill(eos_column, -math.inf), dim=-1)
    writes = tree.mask & (tree.sequences != tree.eos)
    safe = torch.where(writes, tree.sequences, int(tree.eos == 0))  # never gather the -inf column
    score = log_content[tree.rows, safe]
    return step_logprobs(tree, logits).detach() + torch.where(writes, score - score.detach(), 0.0)


def _future_mean(tree: TokenTree, per_state: Tensor) -> Tensor:
    """Ḡ_t = Σ_{i>t} f(s_i) / #{i > t} along every sequence, ``[N, T]``; 0 at its last step."""
    along = torch.where(tree.mask, per_state[tree.rows], 0.0)
    later = along.flip(-1).cumsum(-1).flip(-1) - along
    count = tree.mask.flip(-1).cumsum(-1).flip(-1) - tree.mask.to(torch.long)
    return torch.where(count > 0, later / count.clamp(min=1), 0.0)


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
    "distil_kl": lambda tree, logits: distil_objective(tree, logits, future_cost="kl"),
    "distil_stop_local": lambda tree, logits: distil_objective(tree, logits,
                                                               stop_credit="local"),
    "distil_kl_stop_local": lambda tree, logits: distil_objective(
        tree, logits, future_cost="kl", stop_credit="local"),
    "distil_kl_stop_local_mean": lambda tree, logits: distil_objective(
        tree, logits, future_cost="kl", stop_credit="local", future_reduce="mean"),
    "forward_ce": lambda tree, logits: distil_objective(tree, logits, future_credit=False),
    "reverse_kl": lambda tree, logits: reverse_kl_objective(tree, logits, sequence=False),
    "reverse_kl_seq": lambda tree, logits: reverse_kl_objective(tree, logits, sequence=True),
    "jsd": lambda tree, logits: jsd_objective(tree, logits, beta=0.5),
}
"""Method name -> objective. ``distil*`` are DistIL's four variants (future cost CE or KL,
stop credit full or ``stop_local``); ``forward_ce`` is DistIL's local term ("distil_local").
On a bandit every DistIL variant equals ``forward_ce`` and ``reverse_kl_seq`` equals
``reverse_kl``; on a tree without EOS the ``stop_local`` variants equal the full ones."""


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


def gradient_step(tree: TokenTree, logits: Tensor, method: str, lr: float,
                  step_scale: Tensor | None = None) -> Tensor:
    """One plain gradient step on the logit table: θ - lr · s ⊙ ∇ objective(θ).

    ``step_scale`` s (broadcast to the table, default 1) gives some logits a smaller step:
    that is plain gradient descent in φ for the parametrisation θ = √s ⊙ φ, e.g. content
    logits that a network learns more slowly than the decision to stop."""
    grad = objective_gradient(tree, logits, method)
    return logits.detach() - lr * (grad if step_scale is None else step_scale * grad)


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
    path_kls: list[float] = field(default_factory=list)  # Σ_y P_θ(y) Σ_t KL(q_t ‖ p_t)
    final: Tensor | None = None  # the logit table after the last step

    def lengths(self, tree: TokenTree) -> list[float]:
        """Expected sequence length E_P |y| at each step."""
        return [float((probs * tree.lengths).sum()) for probs in self.probs]


def run(tree: TokenTree, logits: Tensor, method: str, lr: float, steps: int,
        step_scale: Tensor | None = None) -> Trajectory:
    """``steps`` gradient steps of ``method`` from ``logits``, recording J, P_θ and the KL to
    the teacher along the student's path (``step_scale``: see :func:`gradient_step`)."""
    if lr <= 0 or steps < 0:
        raise ValueError(f"run needs lr > 0 and steps >= 0, got lr={lr}, steps={steps}")
    theta = logits.detach().clone()
    rewards, probs, kls = [], [], []
    for step in range(steps + 1):
        rewards.append(float(expected_reward(tree, theta)))
        probs.append(sequence_probs(tree, theta).detach())
        kls.append(path_kl(tree, theta))
        if step < steps:
            theta = gradient_step(tree, theta, method, lr, step_scale)
    return Trajectory(method, lr, rewards, probs, kls, theta)


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
    """Lower bound on log p(S) from the forward cross-entropy (bandit).

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
    success: Tensor | None = None  # sequences (bandit actions) that count as correct
    step_scale: Tensor | None = None  # per-logit step factor, see gradient_step


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


# --------------------------------------------------------------- variable-length chains

EOS = 0
"""The EOS token of the chains; their content tokens are 1 and 2."""
CHAIN_DEPTH = 8
CONTENT_SLOWDOWN = 50.0
"""``copy_chain``'s content logits take steps this many times smaller than its EOS logits."""


def chain_tree(target: Sequence[int], teacher: Callable[[tuple[int, ...]], Sequence[float]],
               vocab: int = 3) -> TokenTree:
    """A variable-length chain: ``target`` (content tokens, never :data:`EOS`) followed by EOS
    earns 1, every other sequence 0.

    The horizon is ``len(target) + 1``: the student can stop early, write a wrong token (the
    episode goes on, its reward is already 0), or write one token past the answer (truncated
    there, reward 0). The reward is 0/1, so J is the success probability.
    """
    answer = tuple(target) + (EOS,)
    if EOS in target:
        raise ValueError("the target's tokens are content; EOS (0) only ends it")
    return variable_length_tree(vocab, len(answer), lambda seq: float(seq == answer), teacher,
                                EOS)


def _chain_row(eos: float, right: float, token: int) -> tuple[float, float, float]:
    """A row over (EOS, 1, 2) with ``eos`` on EOS, ``right`` on ``token``, the rest on the other."""
    row = [eos, 0.0, 0.0]
    row[token], row[3 - token] = right, 1.0 - eos - right
    return tuple(row)


def _table(tree: TokenTree, row: Callable[[tuple[int, ...]], Sequence[float]]) -> Tensor:
    return logits_from_probs([list(row(prefix)) for prefix in tree.states])


def chain_instances() -> list[Instance]:
    """The variable-length chains of docs/results/tabular.md (depth 8, horizon 9, EOS = 0).

    In all three the answer is 8 content tokens then EOS, and a row of the teacher or of the
    starting student depends only on how many tokens were written and, in ``confused_chain``,
    on whether a wrong token was among them.
    """
    depth = CHAIN_DEPTH
    stop_row = (0.98, 0.01, 0.01)  # after `depth` tokens the answer is complete: stop

    def chain_teacher(prefix):
        return _chain_row(0.02, 0.95, 1) if len(prefix) < depth else stop_row

    def weak_student(prefix):
        return _chain_row(0.05, 0.8, 1) if len(prefix) < depth else (1 / 3, 1 / 3, 1 / 3)

    plain = chain_tree((1,) * depth, chain_teacher)

    copy_target = (1, 2) * (depth // 2)

    def copy_teacher(prefix):
        if len(prefix) == depth:
            return stop_row
        return _chain_row(0.02, 0.975, copy_target[len(prefix)])

    def copy_student(prefix):  # stops like the teacher, writes either token about half the time
        if len(prefix) == depth:
            return stop_row
        return _chain_row(0.02, 0.5, copy_target[len(prefix)])

    copy = chain_tree(copy_target, copy_teacher)
    slow_content = torch.ones(3, dtype=DTYPE)
    slow_content[1:] = 1 / CONTENT_SLOWDOWN

    forks = (2, 5)

    def confused_teacher(prefix):
        if 2 in prefix:                 # after a wrong token the teacher is lost
            return (1 / 3, 1 / 3, 1 / 3)
        if len(prefix) == depth:
            return stop_row
        return (0.02, 0.49, 0.49) if len(prefix) in forks else _chain_row(0.02, 0.975, 1)

    confused = chain_tree((1,) * depth, confused_teacher)
    return [
        Instance(
            "chain_stop", "Chain (depth 8): a teacher that rarely stops before the answer ends",
            plain, _table(plain, weak_student),
            "the CE future cost charges every later token the teacher's entropy, so stopping "
            "early lowers it: DistIL with the CE cost learns to stop, with the KL cost it "
            "converges to the teacher",
            success=plain.rewards > 0),
        Instance(
            "copy_chain", "Copy-like chain (depth 8): content learns 50× more slowly than EOS",
            copy, _table(copy, copy_student),
            "a student whose content is far from the teacher's can lower the KL along its own "
            "path fastest by stopping; with stop credit local the future credit cannot move "
            "EOS, so only learning the content lowers it",
            success=copy.rewards > 0, step_scale=slow_content),
        Instance(
            "confused_chain", "Chain (depth 8) with a confused teacher",
            confused, _table(confused, weak_student),
            "at two states the teacher puts equal mass on the right and a wrong token, and "
            "after a wrong token it is uniform over (EOS, 1, 2): the teacher's entropy now "
            "marks the wrong branch, which the CE cost can use only if it does not also move EOS",
            success=confused.rewards > 0),
    ]
