"""Feedback for negative controls: the bench's ``*_noanswer`` suites.

``answer_withheld`` is ``answer_check`` without the expected answer ("Your answer 01358 is
wrong."). Its factory takes the ``runtime``, which keeps it out of the tiny base's pretraining
(:func:`distil_core.training.runtime.base_feedback_components` skips runtime-bound sources and falls back
to ``answer_check``): a control suite therefore starts from exactly the same base model as the
suite it controls, and only the feedback the expert reads at training time differs. (Plain
``answer_check`` with ``include_expected: false`` would instead pretrain another base on the
withheld feedback, one that learns the task itself from those examples.)
"""

from __future__ import annotations

from typing import Any, Sequence

from distil_core import Feedback, Problem, Rollout, Verdict, get_host


class AnswerWithheldFeedback:
    """On a failed rollout: only that the answer found is wrong, never the expected one."""

    def __init__(self, runtime: Any = None):
        host = getattr(runtime, "host", None) or get_host()  # the run's host: the built-in answer_check
        self._check = host.build("feedback_source", "answer_check", {"include_expected": False})

    def feedback(
        self,
        problem: Problem,
        rollout: Rollout,
        verdict: Verdict,
        group: Sequence[tuple[Rollout, Verdict]] = (),
    ) -> list[Feedback]:
        return self._check.feedback(problem, rollout, verdict, group)
