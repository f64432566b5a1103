"""Tabular study: exact-gradient DistIL, forward CE, reverse KL and JSD on bandits and token trees.

    python benchmarks/tabular_study.py [--out docs/results] [--lr 0.5] [--steps 40] [--chain-steps 400]

Runs every method of ``benchmarks/tabular.py`` on every instance of
``study_instances()`` (``--steps``), of ``chain_instances()`` and of the shortcut chain of
``benchmarks/tabular_shortcut.py`` (variable-length, ``--chain-steps``) with plain gradient steps on the logit table, prints the
tables, and writes ``tabular.md`` (always) and ``tabular.png`` (when matplotlib imports) into
``--out``. Everything is exact (enumerated, float64); it takes well under a minute on one core.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import torch

from tabular import (
    CONTENT_SLOWDOWN,
    EOS,
    Instance,
    Trajectory,
    chain_instances,
    cross_entropy_rows,
    expected_length,
    expected_reward,
    first_order_gain,
    forward_ce_safe_step,
    forward_kl_rows,
    gradient_step,
    logits_from_probs,
    objective_gradient,
    pass_at_n,
    path_kl,
    run,
    sequence_probs,
    study_instances,
    success_log_lower_bound,
    teacher_reward,
)
from tabular_report import report_steps, step_table
from tabular_shortcut import shortcut_section

BANDIT_METHODS = ("forward_ce", "reverse_kl", "jsd")
TREE_METHODS = ("forward_ce", "distil", "distil_kl", "reverse_kl", "reverse_kl_seq", "jsd")
DISTIL_METHODS = ("forward_ce", "distil", "distil_kl", "distil_stop_local", "distil_kl_stop_local")
CHAIN_METHODS = DISTIL_METHODS + ("reverse_kl", "reverse_kl_seq", "jsd")
LABELS = {
    "forward_ce": "forward CE (DistIL local)",
    "distil": "DistIL, CE cost",
    "distil_kl": "DistIL, KL cost",
    "distil_stop_local": "DistIL, CE cost, stop local",
    "distil_kl_stop_local": "DistIL, KL cost, stop local",
    "reverse_kl": "reverse KL, per token",
    "reverse_kl_seq": "reverse KL, sequence",
    "jsd": "JSD β=0.5",
}
SWEEP = (0.05, 0.25, 0.5, 1.0, 2.0)


def methods_of(instance: Instance) -> tuple[str, ...]:
    return BANDIT_METHODS if instance.tree.horizon == 1 else TREE_METHODS


def monotone_until(rewards: list[float]) -> int | None:
    """Index of the first step that lowers J (None if J never drops)."""
    for step, (before, after) in enumerate(itertools.pairwise(rewards)):
        if after < before:
            return step
    return None


def describe_drop(rewards: list[float], target: float) -> str:
    """The first step that lowers J, noting when J had already passed the teacher's reward."""
    drop = monotone_until(rewards)
    if drop is None:
        return "none"
    before, after = rewards[drop], rewards[drop + 1]
    if before < target:
        return f"{drop} (J {before:.4f} → {after:.4f})"
    return f"{drop}, after passing E_Q[r] (J {before:.5f} → {after:.5f})"


def recovery(rewards: list[float]) -> str:
    """For a run whose first step lowers J: the first later step with J above J(θ₀)."""
    if rewards[1] >= rewards[0]:
        return "–"
    back = next((s for s, j in enumerate(rewards) if s > 0 and j > rewards[0]), None)
    return "not within the run" if back is None else str(back)


def mass_moved(instance: Instance, trajectory: Trajectory) -> tuple[float, float, float]:
    """(mass moved, mean reward where it came from, mean reward where it went) in step 1."""
    delta = trajectory.probs[1] - trajectory.probs[0]
    rewards = instance.tree.rewards
    gained, lost = delta.clamp(min=0), (-delta).clamp(min=0)
    moved = float(gained.sum())
    if moved == 0:
        return 0.0, math.nan, math.nan
    return moved, float((lost * rewards).sum() / lost.sum()), float((gained * rewards).sum() / moved)


def sequence_names(instance: Instance) -> list[str]:
    tree = instance.tree
    if tree.horizon == 1:
        return ["ABCDEFGH"[a] for a in range(tree.vocab)]
    return ["".join(str(int(t)) for t in seq) for seq in tree.sequences]


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def describe(instance: Instance) -> list[str]:
    tree = instance.tree
    names = sequence_names(instance)
    lines = [f"### {instance.title} (`{instance.key}`)", "", f"Built to show: {instance.shows}.", ""]
    p0 = torch.softmax(instance.start, dim=-1)
    if tree.horizon == 1:
        lines += ["| action | reward r | teacher q | student p₀ |", "|---|---|---|---|"]
        for a, name in enumerate(names):
            lines.append(f"| {name} | {fmt(float(tree.rewards[a]), 2)} | "
                         f"{float(tree.teacher[0, a]):g} | {float(p0[0, a]):g} |")
    else:
        lines += [f"Vocabulary {tree.vocab}, horizon {tree.horizon}. Rewards of the sequences:", "",
                  "| sequence | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|",
                  "| r | " + " | ".join(fmt(float(r), 2) for r in tree.rewards) + " |", "",
                  "| state (prefix) | teacher q | student p₀ |", "|---|---|---|"]
        for prefix in _prefixes(tree.vocab, tree.horizon):
            row = tree.state_index(prefix)
            label = "root" if not prefix else "".join(map(str, prefix))
            lines.append(f"| {label} | {_vec(tree.teacher[row])} | {_vec(p0[row])} |")
    j0 = fmt(float(expected_reward(tree, instance.start)))
    lines += ["", (f"Teacher's own expected reward E_Q[r] = {fmt(teacher_reward(tree))}; "
                   f"student's at step 0, J(θ₀) = {j0}."), ""]
    return lines


def _prefixes(vocab: int, horizon: int):
    for t in range(horizon):
        yield from itertools.product(range(vocab), repeat=t)


def _vec(row: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(x):.3g}" for x in row) + ")"


def study(lr: float, steps: int) -> tuple[list[str], dict[str, dict[str, Trajectory]]]:
    report_steps = sorted({s for s in (0, 1, 2, 3, 5, 10, 20, 40, steps) if s <= steps})
    lines: list[str] = []
    runs: dict[str, dict[str, Trajectory]] = {}
    for instance in study_instances():
        tree, start = instance.tree, instance.start
        methods = methods_of(instance)
        runs[instance.key] = {m: run(tree, start, m, lr, steps) for m in methods}
        lines += describe(instance)

        lines += [("| method | dJ/dη at η=0 | step-1 mass moved | mean r it left | mean r it reached "
                   "| J after step 1 | first step that lowers J | back above J(θ₀) at step |"),
                  "|---|---|---|---|---|---|---|---|"]
        for m in methods:
            traj = runs[instance.key][m]
            moved, r_from, r_to = mass_moved(instance, traj)
            lines.append(f"| {LABELS[m]} | {first_order_gain(tree, start, m):+.4f} | {fmt(moved)} | "
                         f"{fmt(r_from)} | {fmt(r_to)} | {fmt(traj.rewards[1], 4)} | "
                         f"{describe_drop(traj.rewards, teacher_reward(tree))} | "
                         f"{recovery(traj.rewards)} |")
        lines += ["", f"Expected reward J per step (η = {lr}):", "",
                  "| step | " + " | ".join(LABELS[m] for m in methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]
        for s in report_steps:
            lines.append(f"| {s} | " + " | ".join(fmt(runs[instance.key][m].rewards[s], 4)
                                                  for m in methods) + " |")
        j0 = fmt(float(expected_reward(tree, start)), 4)
        lines += ["", f"J after one step, by step size η (J(θ₀) = {j0}):", "",
                  "| η | " + " | ".join(LABELS[m] for m in methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]
        for eta in SWEEP:
            lines.append(f"| {eta} | " + " | ".join(
                fmt(float(expected_reward(tree, gradient_step(tree, start, m, eta))), 4)
                for m in methods) + " |")
        if tree.horizon == 1:
            lines += ["", *forward_certificate(instance, runs[instance.key]["forward_ce"], lr)]
        lines.append("")
    return lines, runs


def forward_certificate(instance: Instance, traj: Trajectory, lr: float) -> list[str]:
    """How the forward-CE run relates to the step-size certificate and to E_Q[r]."""
    tree = instance.tree
    theta = instance.start.clone()
    certified = 0
    safe0 = forward_ce_safe_step(tree.rewards, theta, tree.teacher)
    for _ in range(len(traj.rewards) - 1):
        if lr < forward_ce_safe_step(tree.rewards, theta, tree.teacher):
            certified += 1
        theta = gradient_step(tree, theta, "forward_ce", lr)
    target = teacher_reward(tree)
    crossed = next((s for s, j in enumerate(traj.rewards) if j > target), None)
    if safe0 > 0:
        head = f"Forward-CE step-size certificate at θ₀: any η < {safe0:.4f} raises J"
    else:
        head = ("Forward-CE step-size certificate at θ₀: none, Cov_p(r, q − p) ≤ 0, so every "
                "small enough step lowers J")
    lines = [head + f"; {certified} of the {len(traj.rewards) - 1} steps of the η = {lr} run "
             "were certified."]
    if crossed is not None:
        later = monotone_until(traj.rewards[crossed:])
        lines.append(f"The forward-CE run passes the teacher's reward at step {crossed} "
                     f"(J = {traj.rewards[crossed]:.5f} > E_Q[r] = {target:.5f}), peaks at "
                     f"{max(traj.rewards):.5f} and "
                     + ("never decreases after that." if later is None else
                        f"from step {crossed + later} on decreases back towards E_Q[r] (J = "
                        f"{traj.rewards[-1]:.5f} at the last step): the fixed point of forward "
                        "CE is p = q, so J can overshoot E_Q[r] and return."))
    return lines


def pass_at_n_section(runs: dict[str, dict[str, Trajectory]], lr: float) -> list[str]:
    lines = ["## Forward CE raises a lower bound on the success probability (bandits)", "",
             "Success = drawing action A (reward 1). For any student p and teacher q with q(S) > 0,",
             "",
             "    log p(S) ≥ (−CE(q, p) + q(S)·H(q_S)) / q(S),   q_S = q(·|S)",
             "",
             ("because Σ_{a∈S} q_a log p_a = q(S)·[log p(S) − CE(q_S, p(·|S))], CE(q_S, p(·|S)) ≥ "
              "H(q_S), and the failing actions only add non-negative terms to CE(q, p). Forward CE "
              "is gradient descent on CE(q, p), which is convex in the logits with curvature at "
              "most 1/2, so every step with η < 4 lowers CE(q, p) and raises this bound, and with "
              "it the bound 1 − (1 − exp(bound))^N on Pass@N = 1 − (1 − p(S))^N. Reverse KL and "
              "JSD do not descend CE(q, p) and carry no such guarantee. Cells: p(S) / the bound "
              "exp(·) / Pass@4."), "",
             ("| instance | method | step 0 | step 1 | last step | "
              "first step that lowers p(S) | … the bound |"), "|---|---|---|---|---|---|---|"]
    for instance in study_instances():
        if instance.success is None:
            continue
        for m in BANDIT_METHODS:
            traj = runs[instance.key][m]
            steps = len(traj.rewards) - 1
            bounds = [success_log_lower_bound(instance.tree.teacher, theta, instance.success)
                      for theta in _thetas(instance, m, lr, steps)]
            cells = []
            for s in (0, 1, steps):
                ps = float(traj.probs[s][instance.success].sum())
                cells.append(f"{ps:.3f} / {math.exp(bounds[s]):.3f} / {pass_at_n(ps, 4):.3f}")
            success = [float(probs[instance.success].sum()) for probs in traj.probs]
            drops = [monotone_until(success), monotone_until(bounds)]
            lines.append(f"| `{instance.key}` | {LABELS[m]} | " + " | ".join(cells) + " | "
                         + " | ".join("none" if d is None else str(d) for d in drops) + " |")
    return lines + [""]


def _thetas(instance: Instance, method: str, lr: float, steps: int) -> list[torch.Tensor]:
    thetas = [instance.start.clone()]
    for _ in range(steps):
        thetas.append(gradient_step(instance.tree, thetas[-1], method, lr))
    return thetas


# ---------------------------------------------------------------- variable-length chains


def chain_runs(lr: float, steps: int) -> dict[str, dict[str, Trajectory]]:
    return {inst.key: {m: run(inst.tree, inst.start, m, lr, steps, inst.step_scale)
                       for m in CHAIN_METHODS}
            for inst in chain_instances()}


def _word(tokens) -> str:
    return "".join("$" if t == EOS else str(t) for t in tokens) or "(root)"


def describe_chain(instance: Instance) -> list[str]:
    tree = instance.tree
    answer = tree.terminals[int(torch.nonzero(tree.rewards > 0)[0])]
    content = answer[:-1]
    p0 = torch.softmax(instance.start, dim=-1)
    q_logits = logits_from_probs(tree.teacher)
    lines = [f"### {instance.title} (`{instance.key}`)", "", f"Built to show: {instance.shows}.",
             "", (f"Answer {_word(answer)} (reward 1; every other sequence 0), horizon "
                  f"{tree.horizon}, {tree.num_states} states, {len(tree.terminals)} terminal "
                  "sequences. Rows are (EOS, 1, 2); the off-path column is the state reached by "
                  "writing the wrong token first and then the answer's tokens."), "",
             "| tokens written | state on the answer's path | teacher q | student p₀ | "
             "teacher q off the path |", "|---|---|---|---|---|"]
    for k in range(len(content) + 1):
        row = tree.state_index(content[:k])
        off = ""
        if k >= 1:
            wrong = (3 - content[0],) + tuple(content[1:k])
            off = _vec(tree.teacher[tree.state_index(wrong)])
        lines.append(f"| {k} | {_word(content[:k])} | {_vec(tree.teacher[row])} | "
                     f"{_vec(p0[row])} | {off} |")
    lines += ["", (f"Teacher on its own: J = P(success) = {teacher_reward(tree):.4f}, "
                   f"E|y| = {expected_length(tree, q_logits):.3f}. Student at step 0: J = "
                   f"{float(expected_reward(tree, instance.start)):.4f}, E|y| = "
                   f"{expected_length(tree, instance.start):.3f}, KL along its path = "
                   f"{path_kl(tree, instance.start):.3f}.")]
    if instance.step_scale is not None:
        lines += ["", (f"The content logits (tokens 1, 2) take steps {CONTENT_SLOWDOWN:g}× smaller "
                       "than the EOS logit, for every method: θ ← θ − η·s⊙∇, s = (1, 1/"
                       f"{CONTENT_SLOWDOWN:g}, 1/{CONTENT_SLOWDOWN:g}) on every row, which is "
                       "plain gradient descent for the parametrisation θ_content = φ/√"
                       f"{CONTENT_SLOWDOWN:g}: a student that learns when to stop much faster "
                       "than what to write.")]
    return lines + [""]


def chain_section(runs: dict[str, dict[str, Trajectory]], lr: float) -> list[str]:
    sequences = len(chain_instances()[0].tree.terminals)
    lines = [CHAIN_INTRO.format(lr=lr, steps=_steps_of(runs), sequences=sequences), ""]
    for instance in chain_instances():
        tree, traj = instance.tree, runs[instance.key]
        steps = _steps_of(runs)
        report = report_steps(steps)
        lines += describe_chain(instance)
        lines += [f"After {steps} steps (η = {lr}):", "",
                  "| method | J = P(success) | E\\|y\\| | lowest E\\|y\\| on the way | "
                  "KL along the path |", "|---|---|---|---|---|"]
        for m in CHAIN_METHODS:
            lengths = traj[m].lengths(tree)
            lines.append(f"| {LABELS[m]} | {traj[m].rewards[-1]:.4f} | {lengths[-1]:.3f} | "
                         f"{min(lengths):.3f} | {traj[m].path_kls[-1]:.3f} |")
        lines += ["", "J and E|y| per step (cells: J / E|y|):", ""]
        lines += step_table([LABELS[m] for m in CHAIN_METHODS], report, lambda s, j, traj=traj, tree=tree: (
            f"{traj[CHAIN_METHODS[j]].rewards[s]:.3f} / {traj[CHAIN_METHODS[j]].lengths(tree)[s]:.2f}"))
        lines.append("")
    return lines + chain_findings(runs) + fixed_point_section(lr, _steps_of(runs))


def chain_findings(runs: dict[str, dict[str, Trajectory]]) -> list[str]:
    """The chains' results in words, every number read off the runs."""
    inst = {i.key: i for i in chain_instances()}

    def at(key: str, m: str, step: int = -1) -> str:
        traj, tree = runs[key][m], inst[key].tree
        return f"J = {traj.rewards[step]:.3f}, E|y| = {traj.lengths(tree)[step]:.2f}"

    def teacher(key: str) -> str:
        tree = inst[key].tree
        return (f"J = {teacher_reward(tree):.3f}, E|y| = "
                f"{expected_length(tree, logits_from_probs(tree.teacher)):.2f}")

    copy, conf = runs["copy_chain"], runs["confused_chain"]
    copy_len = copy["distil_kl"].lengths(inst["copy_chain"].tree)
    peak = max(range(len(conf["distil_stop_local"].rewards)),
               key=conf["distil_stop_local"].rewards.__getitem__)
    steps = _steps_of(runs)
    return [
        "### What the chains show", "",
        (f"- `chain_stop`: after {steps} steps DistIL with the CE cost is at "
         f"{at('chain_stop', 'distil')}, against the teacher's {teacher('chain_stop')}; it "
         "learnt to stop early. With the KL cost it is at "
         f"{at('chain_stop', 'distil_kl')} (KL along the path "
         f"{runs['chain_stop']['distil_kl'].path_kls[-1]:.3f}), close to the teacher, as are "
         "forward CE and both stop-local variants; the KL-cost runs are still settling towards "
         "p = q (their J is a little above the teacher's and still falling towards it)."),
        (f"- `copy_chain`: with the KL cost and full stop credit E|y| falls from "
         f"{copy_len[0]:.2f} to {min(copy_len):.2f} while the KL along the path falls from "
         f"{copy['distil_kl'].path_kls[0]:.2f} to {copy['distil_kl'].path_kls[-1]:.2f}: the "
         "student lowers the KL by stopping, not by learning the content "
         f"({at('copy_chain', 'distil_kl')}). "
         f"With stop credit local the length stays ({at('copy_chain', 'distil_kl_stop_local')}, "
         f"KL {copy['distil_kl_stop_local'].path_kls[-1]:.2f}): the content is slowly being "
         f"learnt. The CE cost with full stop credit collapses too ({at('copy_chain', 'distil')}). "
         "Of the baselines, per-token reverse KL, which has no future credit, learns the content "
         f"fastest ({at('copy_chain', 'reverse_kl')}); sequence reverse KL, whose future credit "
         f"is the cost log p − log q, learns to stop within a few dozen steps "
         f"({at('copy_chain', 'reverse_kl_seq')})."),
        (f"- `confused_chain`: the teacher alone reaches {teacher('confused_chain')}. DistIL "
         f"with the CE cost and stop credit local peaks at J = "
         f"{conf['distil_stop_local'].rewards[peak]:.3f} (step {peak}) and ends at "
         f"{at('confused_chain', 'distil_stop_local')}: the entropy the teacher shows after a "
         "wrong token steers the content towards the answer, and the EOS logit stays with the "
         f"teacher's. With full stop credit the same cost collapses "
         f"({at('confused_chain', 'distil')}). The KL-cost variants converge to the teacher "
         f"({at('confused_chain', 'distil_kl')} full, "
         f"{at('confused_chain', 'distil_kl_stop_local')} local): at p = q the KL cost prefers no branch, so where it converges it does what the "
         "teacher does."),
        "",
    ]


def _steps_of(runs: dict[str, dict[str, Trajectory]]) -> int:
    return len(next(iter(next(iter(runs.values())).values())).rewards) - 1


def fixed_point_section(lr: float, steps: int) -> list[str]:
    """p = q: which DistIL variants leave it, and where the CE cost goes instead."""
    lines = [FIXED_POINT_INTRO, "",
             "| chain | method | max \\|∇θ\\| at p = q | ∂/∂θ(root, EOS) at p = q | "
             f"J after {steps} steps from p = q | E\\|y\\| | p_root(EOS) (q = 0.02) | "
             "q_root(EOS) / (1 − Ḡ_root) |", "|---|---|---|---|---|---|---|---|"]
    for instance in chain_instances():
        if instance.step_scale is not None:
            continue  # the same teacher shape as chain_stop; its speed-up does not matter here
        tree = instance.tree
        at_teacher = logits_from_probs(tree.teacher)
        for m in DISTIL_METHODS:
            grad = objective_gradient(tree, at_teacher, m)
            end = run(tree, at_teacher, m, lr, steps).final
            p_eos = float(torch.softmax(end[0], -1)[EOS])
            lines.append(f"| `{instance.key}` | {LABELS[m]} | {float(grad.abs().max()):.1e} | "
                         f"{round(float(grad[0, EOS]), 4) + 0.0:+.4f} | {float(expected_reward(tree, end)):.4f} | "
                         f"{expected_length(tree, end):.3f} | {p_eos:.4f} | "
                         f"{_stationary_eos(tree, end, m)} |")
    return lines + [""]


def _stationary_eos(tree, logits: torch.Tensor, method: str) -> str:
    """q(EOS) / (1 − Ḡ) at the root, Ḡ the expected future cost after the root's token: what
    p_root(EOS) equals at a fixed point of a full-stop-credit variant (n/a otherwise)."""
    if method not in ("distil", "distil_kl"):
        return "n/a"
    rows = cross_entropy_rows if method == "distil" else forward_kl_rows
    cost = rows(tree.teacher, logits)
    along = torch.where(tree.mask, cost[tree.rows], 0.0).sum(-1)
    future = float((sequence_probs(tree, logits) * along).sum() - cost[0])
    if future >= 1:
        return f"none (Ḡ = {future:.3f} ≥ 1)"
    return f"{float(tree.teacher[0, EOS]) / (1 - future):.4f}"


CHAIN_INTRO = """## Variable-length chains: the KL future cost and the stop option

A variable-length tree adds a token EOS (id 0) that ends the episode: a sequence has 1 to T
tokens, EOS counted, and at depth T the episode ends whether or not EOS was chosen (a sequence
truncated there is a terminal of its own). The chains below have content tokens 1 and 2, an
answer of 8 content tokens followed by EOS (reward 1, every other sequence 0, so J is the
success probability) and horizon T = 9, so the student can stop early, write a wrong token, or
run one token past the answer. Every terminal sequence is enumerated ({sequences} of them).

DistIL's future credit charges a token with the cost of everything after it, G_t = Σ_{{i>t}} c_i.
Two options of every DistIL loss are compared:

- **future cost** c_i: **CE** = CE(q_i, p_i) = H(q_i) + KL(q_i ‖ p_i), or **KL** = KL(q_i ‖ p_i).
  The local term stays CE(q_t, p_t) (its gradient on the logits, p − q, is KL's too). With the
  KL cost DistIL minimises E_P Σ_t KL(q_t ‖ p_t), which is 0 exactly when p = q on every
  state the student reaches. The CE cost adds
  E_P Σ_t H(q_t), the teacher's total entropy along the student's path, which the student
  lowers by stopping early and by steering into states where the teacher is confident.
- **stop credit**: **full**, the score of token t is log p_t(y_t); or **local**, it is
  1[y_t ≠ EOS]·log p̃_t(y_t) with p̃_t = p_t / (1 − p_t(EOS)) the content distribution, per token
  ℓ_t = CE_t + 1[y_t ≠ EOS]·sg(G_t − b_t)·[log p_t(y_t) − log(1 − p_t(EOS))]. The derivative of
  log p̃_t with respect to the EOS logit is 0, so the future credit moves what is written and
  never when to stop; the EOS logit gets only the local pull p(EOS) − q(EOS). Exact objective:
  Σ_y sg(P_θ(y)) Σ_t CE_t + Σ_y P̂_θ(y) Σ_t sg(c_t), log P̂(y) = Σ_t [sg(log p_t(y_t)) +
  1[y_t≠EOS](log p̃_t(y_t) − sg(log p̃_t(y_t)))]. On a tree without EOS (the fixed-horizon
  instances above) local and full are the same.

Every method takes {steps} plain gradient steps with η = {lr} from the same θ₀. "KL along the
path" is Σ_y P_θ(y) Σ_t KL(q_t ‖ p_t), the forward KL to the teacher summed over the states the
student visits; E|y| is the expected length."""

FIXED_POINT_INTRO = """### p = q: a fixed point for the KL cost, not for the CE cost

At a state s reached with probability P(s) > 0, every full-stop-credit variant's gradient on
the logit of token b is P(s)·[p_b − q_b + p_b (G(s, b) − Ḡ(s))], with G(s, b) the expected
future cost after writing b (0 after EOS) and Ḡ(s) = Σ_b p_b G(s, b). At p = q the local part
vanishes. With the KL cost every future cost is then 0 too, so p = q is a fixed point. With the
CE cost G(s, b) is the teacher's expected future entropy, and the EOS logit gets
−P(s)·q(EOS)·Ḡ(s) < 0: gradient descent raises p(EOS) wherever any entropy lies ahead. At a
fixed point of the CE cost the EOS component reads p(EOS)·(1 − Ḡ(s)) = q(EOS), so
p(EOS) = q(EOS)/(1 − Ḡ(s)) > q(EOS) wherever Ḡ(s) > 0 (and no fixed point has Ḡ(s) ≥ 1 at a
state where q(EOS) > 0). With stop credit local the EOS logit feels only p(EOS) − q(EOS): it
stays at q(EOS), while the CE cost still moves content wherever the entropy ahead depends on
the token (in `confused_chain`, not in `chain_stop`, whose teacher rows depend only on the
number of tokens written). The table starts every variant at p = q; the last column is the
fixed-point value of p_root(EOS) computed from the run's final table, equal to the column
before it when the run has converged."""


HEADER = """# Tabular study: which updates move probability towards the better actions

Exact gradients on small bandits and token trees, fixed-horizon and variable-length (with an
EOS token), for DistIL (forward cross-entropy on the student's states, with and without
future credit, with the CE or the KL future cost and with full or local stop credit) and the
distillation baselines it is compared with (reverse KL, generalised JSD). Regenerate with
`python benchmarks/tabular_study.py` (about {seconds:.0f} s on one CPU core; library:
`benchmarks/tabular.py`; the claims below are asserted in `tests/test_tabular.py`).

## Setting and update rules

Policy: a table θ of logits, one row per state (prefix) of a token tree of vocabulary V and
horizon T; p_t = softmax(θ[s_t]). A bandit is T = 1. Each full sequence y has reward r(y);
J(θ) = Σ_y P_θ(y) r(y). The teacher is a fixed table q (one distribution per state), queried
on the student's states. All sums run over the V^T sequences exactly, in float64; nothing is
sampled.

| method | objective (minimised) | gradient on a state's logits (T = 1) |
|---|---|---|
| forward CE = DistIL local | Σ_y sg(P_θ(y)) Σ_t CE(q_t, p_t) | p − q |
| DistIL, CE cost (future credit) | Σ_y P_θ(y) Σ_t CE(q_t, p_t) | p − q (+ REINFORCE with cost G_t = Σ_{{i>t}} CE_i when T > 1) |
| DistIL, KL cost | Σ_y P_θ(y) Σ_t KL(q_t ‖ p_t) | p − q (+ REINFORCE with cost G_t = Σ_{{i>t}} KL_i when T > 1) |
| DistIL, stop credit local (CE or KL cost c) | Σ_y sg(P_θ(y)) Σ_t CE(q_t, p_t) + Σ_y P̂_θ(y) Σ_t sg(c_t) | p − q (+ REINFORCE on the content distribution p̃ = p/(1 − p(EOS)) only; see the chains section) |
| reverse KL, per token | Σ_y sg(P_θ(y)) Σ_t KL(p_t ‖ q_t) | p ⊙ (ℓ − E_p ℓ), ℓ = log p − log q |
| reverse KL, sequence | Σ_y P_θ(y) Σ_t KL(p_t ‖ q_t) = KL(P_θ ‖ Q) | same |
| JSD, β = 0.5 | Σ_y sg(P_θ(y)) Σ_t [β KL(q_t‖M_t) + (1−β) KL(p_t‖M_t)], M_t = (1−β)p_t + βq_t | p ⊙ (h − E_p h), h = (1−β) log(p / M) |

sg is stop-gradient. On a bandit every DistIL variant is forward CE; on a tree without EOS
the stop-local variants are the full ones, so the fixed-horizon instances show the CE and KL
costs only. The per-token versions are what the sampled losses of
`distil_core/losses/` estimate on the student's own rollouts (`distil_loss` with
`future_credit=False`, `reverse_kl_sampled` with γ = 0, `generalized_jsd`); `distil_loss` with
future credit (`future_cost` "ce" or "kl", `stop_credit` "full" or "local") and
`reverse_kl_sampled` with γ = 1 estimate the differentiated ones. The tests check each of
these equalities by enumeration (the expected per-token loss gradient, Σ_y P_θ(y) Σ_t ∇ℓ_t,
against the exact gradient), and the JSD values against `generalized_jsd`. The toolkit
averages over tokens; for a fixed horizon that is the sum above divided by T, which only
rescales η.

**Update:** every method takes plain gradient steps on the whole logit table,
θ ← θ − η ∇_θ objective(θ), with the same **η = {lr}** for every method and instance,
for **{steps} steps**, from the same θ₀. Since ∇J on one state is p ⊙ (r − J), the change of J
per unit of a small step is

- forward CE: dJ/dη = Σ_a p_a (r_a − J)(q_a − p_a) = Cov_p(r, q − p);
- reverse KL / JSD: dJ/dη = −Σ_a p_a² (r_a − J)(g_a − E_p g), with g = ℓ or h.

The reverse-KL and JSD pushes are scaled by p_a twice (once from the softmax, once from J):
an action the student rarely takes cannot be raised much however strongly the teacher prefers
it, while the action the teacher rules out (q ≈ 0, large ℓ) is pushed down hard, and the
freed mass goes to the other actions in proportion to their current probability. Forward
CE's pull q_a − p_a is weighted by p_a only once (from ∇J), so a teacher's preference for a
rare action still counts, though only in proportion to p_a (see `forward_dip`). The
"dJ/dη" column below is the exact first-order change (−⟨∇J, ∇objective⟩), independent of η.
"Mass moved" in step 1 is Σ_y max(ΔP(y), 0); the mean reward it left and reached are
weighted by the probability lost and gained. J falls exactly when the reached mean is below
the left one.

## Instances and results

"""


CONCLUSION = """## Conclusion

- **(a) Reverse KL and JSD can lower J while the teacher is better.** On `two_mode` and
  `tree_recover` (and, for reverse KL, `zero_tail`) the teacher's expected reward is far above
  the student's, yet the first step of reverse KL (per token and sequence) and of JSD lowers
  J for every step size in the sweep (0.05 to 2), and the probability that moves goes to worse
  actions: the mean reward of where it went is below that of where it came from, and on
  `two_mode` the worst action C gains the most. The mechanism is the p-weighted push described
  above: the student's favourite action, which the teacher nearly excludes, is emptied into the
  actions the student already takes rather than into the teacher's best action, which the
  student rarely takes. On `zero_tail` JSD does not fail: its log-ratio saturates at
  (1−β)·log(1/(1−β)) on a zero-mass action, so it pushes the favourite down only mildly and
  the pull towards A wins. The damage is transient: the teacher is every method's fixed point
  on a bandit, and at η = 0.5 the reverse-KL and JSD runs are back above J(θ₀) after 4 to 32
  steps (last column of each instance's first table). On `zero_tail` reverse KL even ends
  slightly ahead of forward CE, its gradients being larger; JSD is slow throughout.
- **(b) Forward CE / DistIL raise J at every step on these instances**: forward CE on
  `zero_tail` and on `tree_recover`, DistIL with the CE and with the KL cost on
  `tree_recover` (checked for η = 0.25, 0.5 and 1), and forward CE on `two_mode` until J
  passes the teacher's own reward.
  This is not a theorem about gradient steps on logits, and the study shows where it stops:
  1. *First-order condition.* One small forward-CE step raises J iff Cov_p(r, q − p) > 0. This
     holds for two actions whenever E_q[r] > E_p[r], and for 0/1 rewards when q = p(·|success)
     (the tests check both on random bandits). It fails on `forward_dip`: the pull q_A − p_A on
     the best action counts only through p_A = 0.05, so the first step lowers J for η up to
     0.5 (η = 1 and 2 jump past the dip) although E_q[r] > E_p[r]. The dip is one step long,
     and the success probability p(A) rises at every step even there.
  2. *Step size.* With c = Cov_p(r, q − p) > 0 a step is certified to raise J when
     η < 8c / (R·range(q − p)²), R = max r − min r. The certificate is conservative: η = 0.5
     exceeds it on several steps that still raised J.
  3. *Overshoot.* The fixed point of forward CE is p = q, so J can pass E_Q[r] and then decrease
     back towards it (`two_mode`, `forward_dip`; by less than 0.005, and never below E_Q[r]).
  4. *Future credit's entropy cost.* DistIL's future credit with the CE cost charges a token
     with the future **cross-entropy**, which includes the teacher's entropy. On
     `entropy_trap` it steers the student away from the branch where every ending is correct
     but the teacher is 50/50, and J falls at every step, while forward CE (local), reverse KL
     and JSD all raise J. With the **KL cost** only disagreement is charged: on `entropy_trap`
     the future KL is 0 on both branches (the student already matches the teacher there), so
     DistIL with the KL cost takes forward CE's steps and J rises at every step to the
     teacher's reward. On `tree_recover` the CE cost's entropy term helps: the best branch has
     the lowest future cross-entropy (the most confident teacher and the least disagreement),
     so the future credit tilts the root towards it, and DistIL with the CE cost ends above the
     teacher's own reward (the KL cost, whose fixed point is the teacher, does not).
- **Variable-length chains.** With an EOS token the CE cost's entropy term also rewards
  stopping: p = q is not a fixed point, p(EOS) is pushed above q(EOS), and on `chain_stop`
  DistIL with the CE cost ends far below the teacher's success and length while the KL cost
  converges to the teacher. The KL cost alone is not enough when the content is learnt slowly
  (`copy_chain`): stopping is then the fastest way to lower the KL along the student's own
  path, and the length collapses; with stop credit local the EOS logit follows only the local
  pull towards q(EOS) and the length stays. On `confused_chain` the teacher's entropy marks the
  wrong branch, so the CE cost's entropy term carries useful information there; with stop
  credit local DistIL with the CE cost uses it (success well above the teacher's) without
  stopping early, while with full stop credit it collapses. The numbers are in the chains
  section.
- **§5 (lower bound, Pass@N).** On bandits, forward CE provably raises a lower bound on
  log p(success) at every step with η < 4, hence a lower bound on Pass@N; reverse KL lowered
  both p(success) and the bound on `forward_dip`. We have not shown a corresponding bound for
  DistIL's on-policy loss when T > 1: its states are the student's, not the teacher's, so the
  chain rule that turns a sum of per-state KLs into KL(Q‖P) does not apply.

Caveats: the instances were constructed to exhibit these effects, not drawn at random; they
show that the effects exist and why, not how often they happen in language-model training,
where the policy is a shared network, the updates are Adam steps on sampled estimates and the
teacher is itself the (feedback-conditioned) student. All methods use the same η although
their gradient scales differ (reverse KL's is largest near a zero-mass teacher action); the
first-order column does not depend on η, and the sweep shows the reverse-KL and JSD drops for
every η from 0.05 to 2.
"""


COLORS = {"forward_ce": "tab:blue", "distil": "tab:cyan", "distil_kl": "tab:green",
          "distil_stop_local": "tab:olive", "distil_kl_stop_local": "tab:brown",
          "reverse_kl": "tab:red", "reverse_kl_seq": "tab:orange", "jsd": "tab:purple"}
DASHED = ("reverse_kl_seq", "distil", "distil_stop_local")


def write_plot(runs: dict[str, dict[str, Trajectory]], chains: dict[str, dict[str, Trajectory]],
               path: Path) -> bool:
    """J per step for every instance, and E|y| per step for the chains."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    instances, chain_list = study_instances(), chain_instances()
    fig, grid = plt.subplots(4, 3, figsize=(14, 14))
    panels = [(ax, inst, runs[inst.key], "J") for ax, inst in zip(grid[:2].reshape(-1), instances)]
    panels += [(ax, inst, chains[inst.key], "J") for ax, inst in zip(grid[2], chain_list)]
    panels += [(ax, inst, chains[inst.key], "len") for ax, inst in zip(grid[3], chain_list)]
    for ax, inst, by_method, what in panels:
        for m, traj in by_method.items():
            values = traj.rewards if what == "J" else traj.lengths(inst.tree)
            ax.plot(values, label=LABELS[m], lw=1.5, color=COLORS[m],
                    ls="--" if m in DASHED else "-")
        teacher = logits_from_probs(inst.tree.teacher)
        ax.axhline(teacher_reward(inst.tree) if what == "J" else expected_length(inst.tree, teacher),
                   color="grey", lw=0.8, ls=":")
        ax.set_title(f"{inst.key}: " + ("J" if what == "J" else "E|y|") + " (dotted: teacher)",
                     fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("expected reward J" if what == "J" else "expected length E|y|")
    legend_ax = grid[1, 2]
    legend_ax.axis("off")
    handles, labels = grid[2, 0].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results", help="folder for tabular.md / tabular.png")
    parser.add_argument("--lr", type=float, default=0.5, help="step size η for every method")
    parser.add_argument("--steps", type=int, default=40, help="gradient steps per run")
    parser.add_argument("--chain-steps", type=int, default=400,
                        help="gradient steps per run on the variable-length chains")
    args = parser.parse_args(argv)
    if args.lr <= 0 or args.steps < 10 or args.chain_steps < 10:
        parser.error("--lr must be positive and --steps and --chain-steps at least 10")
    torch.set_num_threads(1)
    started = time.perf_counter()
    body, runs = study(args.lr, args.steps)
    body += pass_at_n_section(runs, args.lr)
    chains = chain_runs(args.lr, args.chain_steps)
    body += chain_section(chains, args.lr)
    body += shortcut_section(args.lr, args.chain_steps, chains)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plotted = write_plot(runs, chains, out / "tabular.png")
    seconds = time.perf_counter() - started
    text = HEADER.format(seconds=max(seconds, 1.0), lr=args.lr, steps=args.steps) + "\n".join(body)
    if plotted:
        text += ("\n![expected reward per step, per method and instance; expected length on the "
                 "chains](tabular.png)\n\n")
    else:
        text += "\n(matplotlib is not installed, so no plot was drawn.)\n\n"
    text += CONCLUSION
    (out / "tabular.md").write_text(text, encoding="utf-8")
    print("\n".join(body))
    print(f"wrote {out / 'tabular.md'}" + (f" and {out / 'tabular.png'}" if plotted else "")
          + f" in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
