"""Feedback source ``code_exec``: what went wrong when the code ran, ready for the expert's context.

For a failed rollout it gives one ``execution_trace`` item: the first compile, load, runtime or
timeout error with its traceback (only the solution's frames, capped), or else up to
``max_failures`` failing tests with their input, expected and actual values and an excerpt of
the output. It reads the verdict's ``details`` when the ``code_exec`` verifier made them, and
runs the tests itself only when they are absent.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

from distil_core import Feedback, Problem, Rollout, Verdict

from .options import backend_name, flag, whole_number

SOURCE = "code_exec"
KIND = "execution_trace"
FIELD_CHARS = 300  # one input, value or output excerpt
TRACE_FRAMES = 6  # innermost frames of a traceback kept
_FRAME = re.compile(r'^\s*File "([^"]*)", line \d+')
_OWN_FILES = ("solution.py", "<test ")


class CodeExecFeedback:
    """The first error and its traceback, else the failing tests (input, expected, actual)."""

    run_options = frozenset({"backend"})
    """Where it grades a response the verifier did not: the traces are the same on every backend,
    so the tiny base's cache key leaves it out (as the verifier's own ``run_options`` do)."""

    def __init__(self, max_failures: int = 3, max_chars: int = 1200, show_expected: bool = True, backend: str = "auto"):
        who = "code_exec feedback"
        self.max_failures = whole_number("max_failures", max_failures, least=1, who=who)
        self.max_chars = whole_number("max_chars", max_chars, least=80, who=who)
        self.show_expected = flag("show_expected", show_expected, who=who)
        # checked by name only: it runs only where the verifier is not code_exec, so a backend
        # that cannot run here must not stop a run that never uses it
        self.backend = backend_name(backend, who=who)
        self._verifier: Any = None

    def feedback(
        self, problem: Problem, rollout: Rollout, verdict: Verdict, group: Sequence[tuple[Rollout, Verdict]] = ()
    ) -> list[Feedback]:
        if verdict.passed:
            return []
        details = verdict.details
        if details.get("grader") != "code_exec" or "tests" not in details:
            details = self._grade(problem, rollout).details
        if details.get("infrastructure_error") or not details.get("tests"):
            return []  # the sandbox failed, not the code: nothing to tell the expert
        text = render(details, max_failures=self.max_failures, show_expected=self.show_expected)
        data = {
            "passed": details.get("passed_count"),
            "total": details.get("total"),
            "first_error": details.get("first_error"),
            "failing": [t["index"] for t in details["tests"] if not t["passed"]][: self.max_failures],
        }
        return [Feedback(source=SOURCE, kind=KIND, text=truncate(text, self.max_chars), data=data)]

    def _grade(self, problem: Problem, rollout: Rollout) -> Verdict:
        if self._verifier is None:
            from .verifier import CodeExecVerifier

            self._verifier = CodeExecVerifier(backend=self.backend, workers=1)
        return self._verifier.grade(problem, rollout)

    def close(self) -> None:
        """Stop the grader this source made for itself (when the run's verifier was not code_exec);
        the trainer calls it when the run ends, and grading again starts a new one."""
        grader, self._verifier = self._verifier, None
        if grader is not None:
            grader.close()


def render(details: dict[str, Any], *, max_failures: int = 3, show_expected: bool = True) -> str:
    """The execution trace of a graded run as compact text."""
    tests = details["tests"]
    failed = [t for t in tests if not t["passed"]]
    summary = f"{len(failed)} of {len(tests)} tests failed."
    error = details.get("first_error")
    if error:
        return _render_error(error, tests, summary)
    blocks = [summary]
    for test in failed[:max_failures]:
        blocks.append(_render_failure(test, show_expected))
    if len(failed) > max_failures:
        blocks.append(f"({len(failed) - max_failures} more failing tests not shown.)")
    return "\n".join(blocks)


def _render_error(error: dict[str, Any], tests: list[dict[str, Any]], summary: str) -> str:
    stage = error.get("stage")
    trace = trim_traceback(error.get("traceback") or error.get("message") or "")
    index = error.get("test_index")
    test = tests[index] if isinstance(index, int) and 0 <= index < len(tests) else None
    if stage == "compile":
        head = "The code does not compile:"
    elif stage == "import":
        head = "The code failed while loading, before any test could run:"
    elif stage == "refused":
        return f"The code was not run: {error.get('message', '')}"
    elif stage == "setup":
        return f"The problem's own test setup failed; no test ran. {error.get('message', '')}".strip()
    elif stage == "timeout" and test is None:
        return f"The code did not finish loading in time. {summary}"
    elif stage == "timeout":
        head = f"Test {index + 1} timed out after {_seconds(test)}: the code ran too long (an infinite loop, or too slow an algorithm)."
        lines = [summary, head, f"Input: {_short(_input(test))}"]
        lines += _output_lines(test)
        return "\n".join(lines)
    elif stage == "invalid" and test is not None:
        head = f"Test {index + 1} got a value from the code that cannot be checked."
    else:
        head = f"Test {index + 1} raised an error." if test else "The code raised an error."
    lines = [summary, head]
    if test is not None:
        lines.append(f"Input: {_short(_input(test))}")
    lines.append(trace)
    if test is not None:
        lines += _output_lines(test, stderr=False)
    return "\n".join(lines)


def _render_failure(test: dict[str, Any], show_expected: bool) -> str:
    n = test["index"] + 1
    if test["status"] == "missing":
        return f"Test {n}: no result (the run was cut short before it finished)."
    lines = []
    if test["kind"] == "io":
        lines.append(f"Test {n} with input {_short(repr(test['input']))}:")
        if show_expected:
            lines.append(f"  expected output: {_short(_output(test['expected']))}")
        lines.append(f"  actual output:   {_short(_output(test.get('actual') or ''))}")
    elif test["kind"] == "call":
        lines.append(f"Test {n}: {_short(test['input'])}")
        if show_expected:
            lines.append(f"  expected: {_short(repr(test['expected']))}")
        lines.append(f"  returned: {_short(test.get('actual') or '')}")
    else:
        lines.append(f"Test {n}: {_short(test['input'])}")
        if test.get("actual") is not None and test.get("expected") is not None:
            if show_expected:
                lines.append(f"  expected (right side): {_short(test['expected'])}")
            lines.append(f"  actual (left side):    {_short(test['actual'])}")
    error = test.get("error")
    if error and test["status"] != "failed":  # raised, timed out, crashed, not run
        lines += ["  " + line for line in _short(trim_traceback(error), 3 * FIELD_CHARS).splitlines()]
    elif error:
        lines.append(f"  {_short(error)}")
    lines += _output_lines(test)
    return "\n".join(lines)


def _output_lines(test: dict[str, Any], stderr: bool = True) -> list[str]:
    lines = []
    out = (test.get("stdout") or "").strip()
    if out and test["kind"] != "io":
        lines.append(f"  printed: {_short(out)}")
    err = (test.get("stderr") or "").strip()
    if stderr and err:
        lines.append(f"  stderr: {_short(err)}")
    return lines


def _output(text: str) -> str:
    """A program's output on one line: as printed when it is one line, else quoted."""
    text = text.strip()
    return (text if "\n" not in text else repr(text)) if text else "(nothing)"


def _input(test: dict[str, Any]) -> str:
    return str(test["input"]) if test["kind"] != "io" else repr(test["input"])


def _seconds(test: dict[str, Any]) -> str:
    error = test.get("error") or ""
    match = re.search(r"after ([\d.]+) s", error)
    return f"{match.group(1)} s" if match else "the time limit"


def _short(text: Any, limit: int = FIELD_CHARS) -> str:
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 20] + f"... [{len(text) - limit + 20} more chars]"
    return text


def trim_traceback(text: str, frames: int = TRACE_FRAMES) -> str:
    """Only the solution's frames (and the test's line), the innermost ``frames`` of them."""
    lines = text.rstrip().splitlines()
    kept: list[list[str]] = []
    head: list[str] = []
    tail: list[str] = []
    current: Optional[list[str]] = None
    for line in lines:
        match = _FRAME.match(line)
        if match:
            current = [line] if match.group(1).endswith(_OWN_FILES) or match.group(1).startswith(_OWN_FILES) else None
            if current is not None:
                kept.append(current)
            continue
        if line.startswith("Traceback") and not kept:
            head.append(line)
        elif line.startswith((" ", "\t")) and not tail:
            if current is not None:
                current.append(line)
        else:
            current = None
            tail.append(line)
    dropped = len(kept) - frames
    body = [line for frame in kept[-frames:] for line in frame]
    if dropped > 0:
        body.insert(0, f"  ... {dropped} earlier frames ...")
    return "\n".join(head + body + tail) if (body or tail) else text.strip()


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars``, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    note = "\n... [feedback truncated]"
    return text[: max_chars - len(note)].rstrip() + note
