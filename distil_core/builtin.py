"""Built-in components, registered through the same hooks as any plugin.

- task ``arith``: procedural integer arithmetic (``"37+58="`` → ``"95"``) with a fixed
  held-out split; the embedded default trains on it.
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


class ArithmeticTask:
    """Integer arithmetic ``a op b`` with operands in [0, max_operand]; test split held out."""

    def __init__(self, max_operand: int = 99, operations: str = "+", test_size: int = 200, seed: int = 0):
        if max_operand < 1:
            raise ValueError("arith: max_operand must be at least 1")
        bad = set(operations) - set("+-*")
        if not operations or bad:
            raise ValueError(f"arith: operations must be made of '+', '-', '*' (got {operations!r})")
        self.max_operand = max_operand
        self.operations = operations
        pairs = [(a, op, b) for op in operations for a in range(max_operand + 1) for b in range(max_operand + 1)]
        rng = random.Random(seed)
        rng.shuffle(pairs)
        if not 0 < test_size < len(pairs):
            raise ValueError(f"arith: test_size must be between 1 and {len(pairs) - 1}")
        self._splits = {"test": pairs[:test_size], "train": pairs[test_size:]}

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"arith: unknown split {split!r}; use 'train' or 'test'")
        return [self.problem(a, op, b) for a, op, b in self._splits[split]]

    @staticmethod
    def problem(a: int, op: str, b: int) -> Problem:
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return Problem(id=f"{a}{op}{b}", prompt=f"{a}{op}{b}=", reference=str(value))


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
    register("arith", ArithmeticTask)


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
