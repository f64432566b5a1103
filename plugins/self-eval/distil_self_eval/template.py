"""The critique prompt: a ``str.format`` template over a fixed set of variables.

A template is checked when the feedback source is built (before any training): every
``{variable}`` must be one of :data:`VARIABLES`, braces must pair, and a trial rendering
must succeed, so a typo stops ``distil train`` at once with the nearest valid name.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

from distil_core import ConfigError, did_you_mean
from distil_core import Problem, Rollout, Verdict

VARIABLES = {
    "problem": "the problem's text (its last user message)",
    "response": "the student's response, as decoded",
    "verdict": "'correct' or 'incorrect'",
    "score": "the verifier's score, a number in [0, 1] (format it with {score:.2f})",
    "reference": "the problem's reference answer (JSON when it is not a string)",
    "answer": "the answer the verifier extracted from the response, '(none)' when it found none",
}

# Names a user may reasonably expect, with the reason they are not offered.
NOT_AVAILABLE = {
    "feedback": "feedback sources see the same rollout side by side, so a source cannot read "
    "what the others said about it; quote the verdict, score or answer instead",
}

DEFAULT_TEMPLATE = (
    "Here is a problem and an attempted answer. Point out the first mistake in the attempt, "
    "briefly, without giving the final answer.\n"
    "Problem: {problem}\n"
    "Attempt: {response}\n"
    "Verdict: {verdict}"
)

_SAMPLE = {"problem": "p", "response": "r", "verdict": "incorrect", "score": 0.5, "reference": "x", "answer": "y"}
_NAME = re.compile(r"[^.\[]*")


class CritiqueTemplate:
    """A validated template; :meth:`render` fills it for one graded rollout."""

    def __init__(self, text: str, where: str = "template"):
        self.text = text
        self.variables = check_template(text, where)

    def render(self, problem: Problem, rollout: Rollout, verdict: Verdict) -> str:
        return self.text.format(**values(problem, rollout, verdict))


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
    """The variables ``text`` uses, in order; :class:`ConfigError` naming the first problem."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where} must be a non-empty string with {{variables}}, for example {DEFAULT_TEMPLATE!r}.")
    try:
        fields = _fields(text)
    except ValueError as exc:
        raise ConfigError(
            f"{where}: braces do not pair: {_brace_problem(text) or exc}. Write a variable as "
            "{name} and a literal brace as {{ or }}."
        ) from None
    used: list[str] = []
    for field in fields:
        name = _NAME.match(field).group(0)
        if not name or name.isdigit():
            raise ConfigError(
                f"{where}: {{{field}}} is a positional placeholder; name a variable instead, for "
                f"example {{response}}. Valid: {', '.join(sorted(VARIABLES))}."
            )
        if name in NOT_AVAILABLE:
            raise ConfigError(
                f"{where}: {{{name}}} is not available to a feedback source ({NOT_AVAILABLE[name]}). "
                f"Valid: {', '.join(sorted(VARIABLES))}."
            )
        if name not in VARIABLES:
            raise ConfigError(f"{where} uses unknown variable {{{name}}}.{did_you_mean(name, VARIABLES)}")
        if name != field:
            raise ConfigError(
                f"{where}: {{{field}}} reaches into {{{name}}}; only plain variable names are "
                f"allowed ({{{name}}} is {VARIABLES[name]})."
            )
        if name not in used:
            used.append(name)
    try:
        text.format(**_SAMPLE)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ConfigError(
            f"{where} cannot be rendered: {exc}. Every variable is text except {{score}}, a number "
            "(so {score:.2f} works, {problem:.2f} does not)."
        ) from None
    return used


def _fields(text: str) -> list[str]:
    """Field names of every replacement field, including those nested in format specs."""
    out = []
    for _, field, spec, _ in string.Formatter().parse(text):
        if field is None:
            continue
        out.append(field)
        if spec and "{" in spec:
            out.extend(_fields(spec))
    return out


def _brace_problem(text: str) -> str:
    """Where the braces stop pairing, as a reader would count characters (1-based)."""
    depth, opened, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if depth == 0:
            if char in "{}" and text[i + 1 : i + 2] == char:
                i += 2
                continue
            if char == "}":
                return f"a lone '}}' at character {i + 1} (near {_excerpt(text, i)})"
            if char == "{":
                depth, opened = 1, i
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        i += 1
    if depth:
        return f"the '{{' at character {opened + 1} is never closed (near {_excerpt(text, opened)})"
    return ""


def _excerpt(text: str, at: int) -> str:
    return repr(text[max(0, at - 20) : at + 20])
