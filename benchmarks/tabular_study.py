"""Tabular study: exact-gradient DistIL, forward CE, reverse KL and JSD on bandits and token trees.

    python benchmarks/tabular_study.py [--out docs/results] [--lr 0.5] [--steps 40]

Runs every method of :mod:`distil_core.tabular` on every instance of
``distil_core.tabular.study_instances()`` with plain gradient steps on the logit table, prints
the tables, and writes ``tabular.md`` (always) and ``tabular.png`` (when matplotlib imports)
into ``--out``. Everything is exact (enumerated, float64); it takes a few seconds on one core.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import torch

from distil_core.tabular import (
    Instance,
    Trajectory,
    expected_reward,
    first_order_gain,
    forward_ce_safe_step,
    gradient_step,
    pass_at_n,
    run,
    study_instances,
    success_log_lower_bound,
    teacher_reward,
)

BANDIT_METHODS = ("forward_ce", "reverse_kl", "jsd")
TREE_METHODS = ("forward_ce", "distil", "reverse_kl", "reverse_kl_seq", "jsd")
LABELS = {
    "forward_ce": "forward CE (DistIL local)",
    "distil": "DistIL (future credit)",
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


HEADER = """# Tabular study: which updates move probability towards the better actions

Exact gradients on small bandits and token trees, for DistIL (forward cross-entropy on the
student's states, with and without future credit) and the distillation baselines it is
compared with (reverse KL, generalised JSD). Regenerate with
`python benchmarks/tabular_study.py` (about {seconds:.0f} s on one CPU core; library:
`distil_core/tabular.py`; the claims below are asserted in `tests/test_tabular.py`).

## Setting and update rules

Policy: a table θ of logits, one row per state (prefix) of a token tree of vocabulary V and
horizon T; p_t = softmax(θ[s_t]). A bandit is T = 1. Each full sequence y has reward r(y);
J(θ) = Σ_y P_θ(y) r(y). The teacher is a fixed table q (one distribution per state), queried
on the student's states. All sums run over the V^T sequences exactly, in float64; nothing is
sampled.

| method | objective (minimised) | gradient on a state's logits (T = 1) |
|---|---|---|
| forward CE = DistIL local | Σ_y sg(P_θ(y)) Σ_t CE(q_t, p_t) | p − q |
| DistIL (future credit) | Σ_y P_θ(y) Σ_t CE(q_t, p_t) | p − q (+ REINFORCE with cost G_t = Σ_{{i>t}} CE_i when T > 1) |
| reverse KL, per token | Σ_y sg(P_θ(y)) Σ_t KL(p_t ‖ q_t) | p ⊙ (ℓ − E_p ℓ), ℓ = log p − log q |
| reverse KL, sequence | Σ_y P_θ(y) Σ_t KL(p_t ‖ q_t) = KL(P_θ ‖ Q) | same |
| JSD, β = 0.5 | Σ_y sg(P_θ(y)) Σ_t [β KL(q_t‖M_t) + (1−β) KL(p_t‖M_t)], M_t = (1−β)p_t + βq_t | p ⊙ (h − E_p h), h = (1−β) log(p / M) |

sg is stop-gradient. The per-token versions are what the sampled losses of
`distil_core/losses.py` estimate on the student's own rollouts (`distil_loss` with
`future_credit=False`, `reverse_kl_sampled` with γ = 0, `generalized_jsd`); `distil_loss` with
future credit and `reverse_kl_sampled` with γ = 1 estimate the sequence versions. The tests
check each of these equalities by enumeration, and the JSD values against
`generalized_jsd`. The toolkit averages over tokens; for a fixed horizon that is the sum above
divided by T, which only rescales η.

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
  `zero_tail` and on `tree_recover`, DistIL with future credit on `tree_recover` (checked for
  η = 0.25, 0.5 and 1), and forward CE on `two_mode` until J passes the teacher's own reward.
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
  4. *Future credit's entropy cost.* DistIL's future credit charges a token with the future
     **cross-entropy**, which includes the teacher's entropy. On `entropy_trap` it steers the
     student away from the branch where every ending is correct but the teacher is 50/50, and J
     falls at every step, while forward CE (local), reverse KL and JSD all raise J. On
     `tree_recover` the same mechanism helps: the best branch has the lowest future
     cross-entropy (the most confident teacher and the least disagreement), so the future
     credit tilts the root towards it, and DistIL ends above the teacher's own reward.
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


def write_plot(runs: dict[str, dict[str, Trajectory]], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    colors = {"forward_ce": "tab:blue", "distil": "tab:cyan", "reverse_kl": "tab:red",
              "reverse_kl_seq": "tab:orange", "jsd": "tab:purple"}
    instances = study_instances()
    fig, grid = plt.subplots(2, 3, figsize=(13, 7))
    axes = grid.reshape(-1)
    for ax, instance in zip(axes, instances):
        for m, traj in runs[instance.key].items():
            ax.plot(traj.rewards, label=LABELS[m], lw=1.6, color=colors[m],
                    ls="--" if m in ("reverse_kl_seq", "distil") else "-")
        ax.axhline(teacher_reward(instance.tree), color="grey", lw=0.8, ls=":")
        ax.set_title(f"{instance.key} (dotted: teacher E_Q[r])", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("expected reward J")
    handles, labels = axes[len(instances) - 1].get_legend_handles_labels()
    for ax in axes[len(instances):]:
        ax.axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results", help="folder for tabular.md / tabular.png")
    parser.add_argument("--lr", type=float, default=0.5, help="step size η for every method")
    parser.add_argument("--steps", type=int, default=40, help="gradient steps per run")
    args = parser.parse_args(argv)
    if args.lr <= 0 or args.steps < 10:
        parser.error("--lr must be positive and --steps at least 10")
    torch.set_num_threads(1)
    started = time.perf_counter()
    body, runs = study(args.lr, args.steps)
    body += pass_at_n_section(runs, args.lr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plotted = write_plot(runs, out / "tabular.png")
    seconds = time.perf_counter() - started
    text = HEADER.format(seconds=max(seconds, 1.0), lr=args.lr, steps=args.steps) + "\n".join(body)
    if plotted:
        text += "\n![expected reward per step, per method and instance](tabular.png)\n\n"
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
