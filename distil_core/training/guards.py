"""When a run must stop rather than go on: an expert whose answers mostly fail, or an update
that keeps producing NaN.

Single bad moments are absorbed where they happen — a bad expert answer becomes a failed
signal (:mod:`~distil_core.training.signals`), a non-finite step is skipped without moving the
optimizer (:func:`~distil_core.training.update.optimizer_step`) — and both are counted in the
step's metrics row. :class:`RunGuard` reads those rows and stops the run, with one line that
says what went wrong and what to change, when the bad moments are no longer moments: training
on by then would spend the budget learning from nothing, or not learning at all.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from distil_core.config import RunConfig, method_expert_temperature
from distil_core.errors import DistilError, PluginError
from distil_core.losses.methods import method_named

EXPERT_WINDOW_STEPS = 5
"""The steps over which ``train.max_expert_failed_fraction`` is measured (the most recent ones)."""

EXPERT_MIN_ANSWERS = 8
"""Answers the window must hold before it is judged, unless it spans all its steps: two failed
answers out of three are no verdict on an expert."""


class RunGuard:
    """Reads each step's metrics row (:meth:`observe`) and raises when the run should stop."""

    def __init__(self, config: RunConfig):
        self.expert = config.expert.name
        self.max_failed = config.train.max_expert_failed_fraction
        self.max_nonfinite = config.train.max_nonfinite_steps
        self.window: deque[tuple[int, float, float, list[str]]] = deque(maxlen=EXPERT_WINDOW_STEPS)
        self.nonfinite_run = 0
        self.remedies = nonfinite_remedies(config)

    def observe(self, row: dict[str, Any]) -> None:
        """Raise :class:`PluginError` or :class:`DistilError` (one line) when ``row``, the
        step just logged, makes the run one that should stop."""
        self.check_nonfinite(row)
        self.check_expert(row)

    def check_expert(self, row: dict[str, Any]) -> None:
        failed = float(row.get("expert_failed", 0))
        answered = failed + float(row.get("signal_rollouts", 0))
        if answered == 0:
            return  # the expert was not asked: no evidence either way
        self.window.append((int(row["step"]), answered, failed, list(row.get("expert_fail_reasons", []))))
        total = sum(w[1] for w in self.window)
        bad = sum(w[2] for w in self.window)
        judged = total >= EXPERT_MIN_ANSWERS or len(self.window) == self.window.maxlen
        if not judged or bad <= self.max_failed * total:
            return
        reasons = list(dict.fromkeys(r for w in self.window for r in w[3]))[:2]
        first, last = self.window[0][0], self.window[-1][0]
        steps = f"step {last}" if first == last else f"steps {first}-{last}"
        raise PluginError(
            f"expert {self.expert!r}: {bad:g} of {total:g} answers failed over {steps}, more than "
            f"train.max_expert_failed_fraction = {self.max_failed:g}; first reasons: "
            f"{' | '.join(reasons) or 'none given'}. Fix the expert or its endpoint, or raise "
            "train.max_expert_failed_fraction (1 never stops).")

    def check_nonfinite(self, row: dict[str, Any]) -> None:
        # a step of several optimizer steps (optim.epochs, optim.minibatches) that took any of
        # them moved the weights: only a step that took none counts towards the run
        if row.get("skipped_nonfinite", 0) < row.get("optimizer_steps", 1):
            self.nonfinite_run = 0
            return
        self.nonfinite_run += 1
        if self.nonfinite_run < self.max_nonfinite:
            return
        step, run = int(row["step"]), self.nonfinite_run
        loss, norm = row.get("loss", math.nan), row.get("grad_norm", math.nan)
        raise DistilError(
            f"step {step}: the loss or gradient norm was not finite for {run} steps in a row (last: loss "
            f"{loss:.4g}, grad_norm {norm:.4g}); none of them moved the weights, which are those after step "
            f"{step - run}. {self.remedies}, or raise train.max_nonfinite_steps.")


def nonfinite_remedies(config: RunConfig) -> str:
    """What to change when updates keep coming out non-finite. A method that reads an expert is
    told its τ by value: left unset (null), ``loss.expert_temperature`` is the method's own, which
    the user may not know to be below 1."""
    if not method_named(config.method).needs_expert:
        return "Lower optim.lr"
    tau = config.loss.expert_temperature
    said = f"{tau:g}" if tau is not None else f"unset, so {config.method}'s own {method_expert_temperature(config.method):g}"
    return f"Lower optim.lr, raise loss.expert_temperature (now {said}) or check the expert's signals"
