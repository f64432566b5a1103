"""The tabular study's shortcut chain: a short ending the teacher agrees with (docs/results/tabular.md).

DistIL's summed future cost G_t = Σ_{i>t} c_i is lower wherever fewer tokens follow. Stop
credit ``local`` keeps future credit off the EOS logit, but not off a *content* token after which
the teacher itself would stop. SmolLM2-135M found such a token: the system prompt's format
placeholder ``<number>``, after which the frozen self-expert writes nothing more
(docs/results/smollm2.md). :func:`shortcut_instance` is that situation on an exact token tree,
and :func:`shortcut_section` runs the summed and the mean future cost (``loss.future_reduce``)
on it, and the mean on the study's other chains.
"""

from __future__ import annotations

import torch

from tabular import (
    CHAIN_DEPTH,
    CONTENT_SLOWDOWN,
    DTYPE,
    EOS,
    Instance,
    Trajectory,
    chain_instances,
    expected_length,
    logits_from_probs,
    run,
    sequence_probs,
    teacher_reward,
    variable_length_tree,
)
from tabular_report import report_steps, step_table

RIGHT, WRONG, SHORTCUT = 1, 2, 3
"""The shortcut chain's content tokens: the answer's, a wrong one and the placeholder."""
SHORTCUT_METHODS = ("forward_ce", "distil_kl_stop_local", "distil_kl_stop_local_mean", "jsd")
SHORTCUT_LABELS = {
    "forward_ce": "forward CE (DistIL local)",
    "distil_kl_stop_local": "DistIL, KL cost, stop local, summed (the default before)",
    "distil_kl_stop_local_mean": "DistIL, KL cost, stop local, mean (the default)",
    "jsd": "JSD β=0.5",
}


def shortcut_instance() -> Instance:
    """Depth 8, tokens (EOS, right, wrong, shortcut); the answer is 8 ``right`` tokens then EOS.

    The teacher writes the answer (0.95 on ``right``, 0.01 on the shortcut). Once the shortcut
    has been written, the teacher puts 0.97 on EOS: it agrees to end there, as SmolLM2's expert
    ends after ``<number>``. The starting student gives the right token 0.6, a wrong one 0.3 and
    the shortcut 0.05, and also stops after the shortcut (0.9). Its content logits (right,
    wrong) take steps :data:`~tabular.CONTENT_SLOWDOWN` times smaller than the EOS and shortcut
    logits: the answer is hard to learn, the shortcut (a copy of the prompt) is not.
    """
    depth = CHAIN_DEPTH
    answer = (RIGHT,) * depth + (EOS,)
    ended = (0.97, 0.01, 0.01, 0.01)

    def teacher(prefix):
        if SHORTCUT in prefix or len(prefix) == depth:
            return ended
        return (0.02, 0.95, 0.02, 0.01)

    def student(prefix):
        if SHORTCUT in prefix:
            return (0.9, 0.04, 0.03, 0.03)
        if len(prefix) == depth:
            return (0.4, 0.2, 0.2, 0.2)
        return (0.05, 0.6, 0.3, 0.05)

    tree = variable_length_tree(4, depth + 1, lambda seq: float(seq == answer), teacher, EOS)
    scale = torch.ones(4, dtype=DTYPE)
    scale[[RIGHT, WRONG]] = 1 / CONTENT_SLOWDOWN
    return Instance(
        "shortcut_chain", "Chain (depth 8) with a shortcut the teacher agrees to end after",
        tree, logits_from_probs([list(student(prefix)) for prefix in tree.states]),
        "the summed future cost credits a content token for the short, agreed ending it leads "
        "to; the mean over later tokens does not",
        success=tree.rewards > 0, step_scale=scale)


def shortcut_share(instance: Instance, probs: torch.Tensor) -> float:
    """P_θ(the sequence writes the shortcut somewhere)."""
    wrote = torch.tensor([SHORTCUT in seq for seq in instance.tree.terminals])
    return float(probs[wrote].sum())


def shortcut_section(lr: float, steps: int, chains: dict[str, dict[str, Trajectory]]) -> list[str]:
    """The markdown of the shortcut chain and of the mean future cost on the other chains, whose
    runs of the summed cost ``chains`` (the study's ``chain_runs`` at ``lr`` and ``steps``) holds."""
    instance = shortcut_instance()
    tree = instance.tree
    runs = {m: run(tree, instance.start, m, lr, steps, instance.step_scale) for m in SHORTCUT_METHODS}
    teacher = logits_from_probs(tree.teacher)
    lines = [SHORTCUT_INTRO.format(states=tree.num_states, sequences=len(tree.terminals),
                                   slowdown=CONTENT_SLOWDOWN), "",
             (f"Teacher on its own: J = {teacher_reward(tree):.4f}, E|y| = {expected_length(tree, teacher):.3f}, "
              f"P(shortcut) = {shortcut_share(instance, sequence_probs(tree, teacher)):.3f}."),
             "", f"Per step, η = {lr} (cells: J / E|y| / P(shortcut)):", ""]

    def cell(s: int, j: int) -> str:
        traj = runs[SHORTCUT_METHODS[j]]
        return f"{traj.rewards[s]:.3f} / {traj.lengths(tree)[s]:.2f} / {shortcut_share(instance, traj.probs[s]):.2f}"

    lines += step_table([SHORTCUT_LABELS[m] for m in SHORTCUT_METHODS], report_steps(steps), cell)
    summed, mean, local = (runs[m] for m in ("distil_kl_stop_local", "distil_kl_stop_local_mean", "forward_ce"))
    lines += ["", (
        f"With the summed cost the student learns the shortcut: after {steps} steps it writes it in "
        f"{shortcut_share(instance, summed.probs[-1]):.2f} of its sequences (from "
        f"{shortcut_share(instance, summed.probs[0]):.2f}), E|y| falls from {summed.lengths(tree)[0]:.2f} to "
        f"{summed.lengths(tree)[-1]:.2f} and J stays at {summed.rewards[-1]:.3f}. With the mean the shortcut "
        f"recedes ({shortcut_share(instance, mean.probs[-1]):.2f}), the length grows to "
        f"{mean.lengths(tree)[-1]:.2f} and J reaches {mean.rewards[-1]:.3f}, level with forward CE's "
        f"{local.rewards[-1]:.3f} (no future credit). Stop credit local leaves EOS alone in both: "
        "the shortcut is a content token, and only the sum rewards what follows it for being short."),
        "", OTHER_CHAINS_INTRO.format(steps=steps), "",
        "| chain | summed: J / E\\|y\\| / KL along the path | mean: J / E\\|y\\| / KL along the path |",
        "|---|---|---|"]
    for other in chain_instances():
        summed = chains[other.key]["distil_kl_stop_local"]
        mean = run(other.tree, other.start, "distil_kl_stop_local_mean", lr, steps, other.step_scale)
        cells = [f"{t.rewards[-1]:.4f} / {t.lengths(other.tree)[-1]:.3f} / {t.path_kls[-1]:.3f}" for t in (summed, mean)]
        lines.append(f"| `{other.key}` | " + " | ".join(cells) + " |")
    return lines + [""]


SHORTCUT_INTRO = """### A shortcut the teacher agrees to end after: sum or mean over the later tokens

`shortcut_chain`: depth 8, tokens (EOS, right, wrong, shortcut), {states} states and
{sequences} terminal sequences; the answer is eight `right` tokens then EOS. The teacher puts
0.95 on `right` and 0.01 on the shortcut, but once the shortcut has been written it puts 0.97
on EOS: it agrees to end there. The starting student gives `right` 0.6, `wrong` 0.3 and the
shortcut 0.05, and stops after the shortcut too. The answer's tokens learn {slowdown:g}× more
slowly than EOS and the shortcut (content logits take smaller steps, as in `copy_chain`): the
answer is hard, the shortcut is a copy. This is SmolLM2's `<number>` in miniature.

Both DistIL rows use the KL cost and stop credit local; they differ only in `G_t`: the sum of
the later KLs, or their mean per later token (`loss.future_reduce`). The mean is the gradient
of no single objective, so its row follows the estimator's exact expected update (every
sequence enumerated, weighted by P_θ(y))."""

OTHER_CHAINS_INTRO = """On the study's other chains, where no such shortcut exists, the mean
and the sum end close together (KL cost, stop credit local, {steps} steps):"""
