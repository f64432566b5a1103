"""Built-in components, registered through the same hooks as any plugin.

- task ``digits``: procedural digit puzzles (sort, reverse, add) with a fixed held-out split;
  the embedded default trains on it.
- verifier ``exact_match``: the first number (or, failing that, the first line) of the
  response equals the problem's reference answer.
- feedback source ``answer_check``: on a failed rollout, reports the answer found and the
  expected one — the information a failing unit test gives.
- experts ``self`` and ``hf`` (see :mod:`distil_core.experts`).
"""

from __future__ import annotations

import random
import re
from typing import Optional, Sequence

from .hookspecs import hookimpl
from .types import Feedback, Problem, Rollout, Verdict

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class DigitsTask:
    """Procedural digit puzzles with a fixed held-out split.

    ``op``: ``sort`` ("sort 48310" → "01348"), ``reverse`` ("reverse 48310" → "01384") or
    ``add`` ("add 37 58" → "95", two numbers of ``length`` digits). Problems are drawn without
    replacement from every possible input; the first ``test_size`` are held out.
    """

    def __init__(self, op: str = "sort", length: int = 5, train_size: int = 5000, test_size: int = 200, seed: int = 0):
        if op not in ("sort", "reverse", "add"):
            raise ValueError(f"digits: op must be 'sort', 'reverse' or 'add' (got {op!r})")
        if not 1 <= length <= 9:
            raise ValueError(f"digits: length must be between 1 and 9 (got {length})")
        space = 10 ** (2 * length if op == "add" else length)
        if train_size < 1 or test_size < 1 or train_size + test_size > space:
            raise ValueError(
                f"digits: train_size + test_size must be at most {space} for op={op!r}, length={length}"
            )
        self.op, self.length = op, length
        codes = random.Random(seed).sample(range(space), test_size + train_size)
        self._splits = {"test": codes[:test_size], "train": codes[test_size:]}

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"digits: unknown split {split!r}; use 'train' or 'test'")
        return [self.problem(code) for code in self._splits[split]]

    def problem(self, code: int) -> Problem:
        if self.op == "add":
            a, b = divmod(code, 10**self.length)
            return Problem(id=f"add-{a}-{b}", prompt=f"add {a} {b}", reference=str(a + b))
        digits = str(code).zfill(self.length)
        answer = "".join(sorted(digits)) if self.op == "sort" else digits[::-1]
        return Problem(id=f"{self.op}-{digits}", prompt=f"{self.op} {digits}", reference=answer)


def extract_answer(text: str) -> Optional[str]:
    """The first number in ``text``; else its first non-empty line; else None."""
    match = _NUMBER.search(text)
    if match:
        return match.group(0)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


class ExactMatchVerifier:
    """Passes when the extracted answer equals the problem's reference (as strings)."""

    def verify(self, problem: Problem, rollout: Rollout) -> Verdict:
        answer = extract_answer(rollout.response_text)
        expected = str(problem.reference).strip()
        passed = answer is not None and answer == expected
        return Verdict(
            score=1.0 if passed else 0.0,
            passed=passed,
            answer=answer,
            details={"expected": expected, "got": answer, "finished": rollout.finished},
        )


class AnswerCheckFeedback:
    """On a failed rollout: the answer found and the expected one, like a failing test."""

    def __init__(self, include_expected: bool = True):
        self.include_expected = include_expected

    def feedback(
        self,
        problem: Problem,
        rollout: Rollout,
        verdict: Verdict,
        group: Sequence[tuple[Rollout, Verdict]] = (),
    ) -> list[Feedback]:
        if verdict.passed:
            return []
        got = verdict.answer if verdict.answer is not None else extract_answer(rollout.response_text)
        expected = str(problem.reference).strip()
        said = f"Your answer {got} is wrong." if got is not None else "Your response gave no answer."
        text = f"{said} The expected answer is {expected}." if self.include_expected else said
        return [
            Feedback(
                source="answer_check",
                kind="answer_check",
                text=text,
                data={"got": got, "expected": expected if self.include_expected else None},
            )
        ]


@hookimpl
def register_tasks(register):
    register("digits", DigitsTask)


@hookimpl
def register_verifiers(register):
    register("exact_match", ExactMatchVerifier)


@hookimpl
def register_feedback_sources(register):
    register("answer_check", AnswerCheckFeedback)


@hookimpl
def register_experts(register):
    from .experts import HFExpert, SelfExpert

    register("self", SelfExpert, description="The policy itself, with feedback in its context.")
    register("hf", HFExpert, description="Another local HF model with the student's tokenizer.")
