"""The critique prompt: a ``str.format`` template over a fixed set of variables.

A template is checked when the feedback source is built (before any training): every
``{variable}`` must be one of :data:`VARIABLES`, braces must pair, and a trial rendering
must succeed, so a typo stops ``distil train`` at once with the nearest valid name.
"""

from __future__ import annotations

import json
from typing import Any

from distil_core import Problem, Rollout, Verdict, check_format_template

VARIABLES = {
    "problem": "the problem's text (its last user message)",
    "response": "the student's response, as decoded",
    "verdict": "'correct' or 'incorrect'",
    "score": "the verifier's score, a number in [0, 1] (format it with {score:.2f})",
    "reference": "the problem's reference answer (JSON when it is not a string)",
    "answer": "the answer the verifier extracted from the response, '(none)' when it found none",
}

# Names a user may reasonably expect, with the reason they are not offered (it completes
# "{name} is not available ...").
NOT_AVAILABLE = {
    "feedback": "to a feedback source (feedback sources see the same rollout side by side, so a source cannot "
    "read what the others said about it; quote the verdict, score or answer instead)",
}

DEFAULT_TEMPLATE = (
    "Here is a problem and an attempted answer. Point out the first mistake in the attempt, "
    "briefly, without giving the final answer.\n"
    "Problem: {problem}\n"
    "Attempt: {response}\n"
    "Verdict: {verdict}"
)

_SAMPLE = {"problem": "p", "response": "r", "verdict": "incorrect", "score": 0.5, "reference": "x", "answer": "y"}


class CritiqueTemplate:
    """A validated template; :meth:`render` fills it for one graded rollout."""

    def __init__(self, text: str, where: str = "template"):
        self.text = text
        self.variables = check_template(text, where)

    def render(self, problem: Problem, rollout: Rollout, verdict: Verdict) -> str:
        return self.text.format(**values(problem, rollout, verdict))

    def sample(self) -> str:
        """The template filled with stand-in values: a request to try the critic's chat template on."""
        return self.text.format(**_SAMPLE)


def values(problem: Problem, rollout: Rollout, verdict: Verdict) -> dict[str, Any]:
    """Every template variable for one graded rollout."""
    ref = problem.reference
    if ref is None:
        reference = ""
    elif isinstance(ref, str):
        reference = ref
    else:
        reference = json.dumps(ref, ensure_ascii=False, default=str)
    return {
        "problem": problem.user_text(),
        "response": rollout.response_text,
        "verdict": "correct" if verdict.passed else "incorrect",
        "score": verdict.score,
        "reference": reference,
        "answer": verdict.answer if verdict.answer is not None else "(none)",
    }


def check_template(text: Any, where: str = "template") -> list[str]:
    """The variables ``text`` uses, in order; :class:`ConfigError` naming the first problem. A
    template must show the attempt (``{response}``): a critic that never sees it, as under a
    Jinja-style ``{{response}}`` (a literal brace pair in ``str.format``), critiques nothing.

    The checks themselves are the core's (:func:`distil_core.check_format_template`, which also
    checks the expert context templates); this binds them to the critique's variables."""
    return check_format_template(
        text, VARIABLES, where, required=("response",), unavailable=NOT_AVAILABLE, sample=_SAMPLE,
        example=DEFAULT_TEMPLATE,
        render_hint="Every variable is text except {score}, a number (so {score:.2f} works, {problem:.2f} does not).",
    )
