"""Built-in components, registered through the same hooks as any plugin.

- task ``digits``: procedural digit puzzles (sort, reverse, add) with a fixed held-out split;
  the embedded default trains on it.
- task ``ring``: write a ring of distinct digits starting after its largest one; the first
  digit written decides the whole answer (the bench's sparse, early-choice suite).
- task ``column_add``: add two numbers whose columns never carry (the bench's sparse math suite).
- task ``two_ways``: a number answered by its digits sorted or by a multiple, the first digit
  naming the way; sorting is learnable and multiplying is not (the bench's suite where only
  sequence-level credit can learn the choice).
- verifier ``exact_match``: the first number (or, failing that, the first line) of the
  response equals the problem's reference answer.
- verifier ``two_ways``: the answer is right for the way its first digit names.
- feedback source ``answer_check``: on a failed rollout, reports the answer found and the
  expected one — the information a failing unit test gives.
- the experts ``self`` and ``hf`` are registered by :mod:`distil_core.models.experts`, a second
  built-in plugin (they need torch; this module does not).
"""

from __future__ import annotations

import math
import random
import re
from typing import Optional, Sequence

from distil_core.errors import ConfigError
from distil_core.hookspecs import hookimpl
from distil_core.types import Feedback, Problem, Rollout, Verdict

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class _DrawnSplits:
    """Problems drawn without replacement from ``space`` codes; the first ``test_size`` held out.

    A task names itself (``name``, for errors), checks its own options, calls :meth:`_draw`,
    and turns a code into a :class:`Problem` in ``problem(code)``.
    """

    name = "task"

    def _draw(self, space: int, train_size: int, test_size: int, seed: int, options: str) -> None:
        if train_size < 1 or test_size < 1:
            raise ValueError(f"{self.name}: train_size and test_size must be at least 1 (got {train_size} and {test_size})")
        if train_size + test_size > space:
            raise ValueError(f"{self.name}: train_size + test_size must be at most {space} for {options}")
        codes = random.Random(seed).sample(range(space), test_size + train_size)
        self._splits = {"test": codes[:test_size], "train": codes[test_size:]}

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; use 'train' or 'test'")
        return [self.problem(code) for code in self._splits[split]]

    def problem(self, code: int) -> Problem:
        raise NotImplementedError


class DigitsTask(_DrawnSplits):
    """Procedural digit puzzles with a fixed held-out split.

    ``op``: ``sort`` ("sort 48310" → "01348"), ``reverse`` ("reverse 48310" → "01384") or
    ``add`` ("add 37 58" → "95", two numbers of ``length`` digits). Problems are drawn without
    replacement from every possible input; the first ``test_size`` are held out.
    """

    name = "digits"

    def __init__(self, op: str = "sort", length: int = 5, train_size: int = 5000, test_size: int = 200, seed: int = 0):
        if op not in ("sort", "reverse", "add"):
            raise ValueError(f"digits: op must be 'sort', 'reverse' or 'add' (got {op!r})")
        if not 1 <= length <= 9:
            raise ValueError(f"digits: length must be between 1 and 9 (got {length})")
        self.op, self.length = op, length
        self._draw(10 ** (2 * length if op == "add" else length), train_size, test_size, seed,
                   f"op={op!r}, length={length}")

    def problem(self, code: int) -> Problem:
        if self.op == "add":
            a, b = divmod(code, 10**self.length)
            return Problem(id=f"add-{a}-{b}", prompt=f"add {a} {b}", reference=str(a + b))
        digits = str(code).zfill(self.length)
        answer = "".join(sorted(digits)) if self.op == "sort" else digits[::-1]
        return Problem(id=f"{self.op}-{digits}", prompt=f"{self.op} {digits}", reference=answer)


class RingTask(_DrawnSplits):
    """A ring of distinct digits, written out so that it ends at its largest digit.

    "ring 4831907" → "0748319": the answer is the rotation of the input whose last digit is
    the largest (9), so it starts with the digit after it. The first digit written is a plan —
    it fixes the rotation — and the rest is a copy of the ring from there: once a wrong first
    digit is written no continuation is correct, and the feedback cannot repair it later in the
    sequence. The digits of a problem are distinct, so every rotation starts differently.
    Problems are drawn without replacement from every arrangement; the first ``test_size``
    are held out. ``wrong_answer`` (used to pretrain the tiny base) is mostly another rotation:
    a wrong plan, carried out correctly.
    """

    name = "ring"

    def __init__(self, length: int = 7, train_size: int = 5000, test_size: int = 200, seed: int = 0):
        if not 3 <= length <= 10:
            raise ValueError(f"ring: length must be between 3 and 10 (got {length})")
        self.length = length
        self._draw(math.perm(10, length), train_size, test_size, seed, f"length={length}")

    def problem(self, code: int) -> Problem:
        pool, digits = list("0123456789"), []
        for k in range(self.length):  # the code-th arrangement, in a mixed radix
            code, i = divmod(code, 10 - k)
            digits.append(pool.pop(i))
        ring = "".join(digits)
        return Problem(id=f"ring-{ring}", prompt=f"ring {ring}", reference=self.solve(ring))

    @staticmethod
    def solve(ring: str) -> str:
        """The rotation of ``ring`` that ends at its largest digit."""
        start = (ring.index(max(ring)) + 1) % len(ring)
        return ring[start:] + ring[:start]

    @staticmethod
    def rotations(ring: str) -> list[str]:
        return [ring[i:] + ring[:i] for i in range(len(ring))]

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        """Another rotation (a wrong first choice) most of the time, else a digit or two changed."""
        reference = str(problem.reference)
        if rng.random() < 0.7:
            return rng.choice([r for r in self.rotations(reference) if r != reference])
        while True:  # two changes to one position can restore it
            wrong = wrong_answer(reference, rng)
            if wrong != reference:
                return wrong


class ColumnAddTask(_DrawnSplits):
    """Addition of two numbers of ``length`` digits whose columns never carry.

    "add 314 252" → "566": every digit of the sum is the sum of the two digits above it (at
    most 9), so the answer is written column by column, left to right, with one shared skill —
    a single-digit sum — and no carry to plan ahead for. Problems are drawn without replacement
    from every carry-free pair (55 digit pairs per column); the first ``test_size`` are held out.
    """

    name = "column_add"

    PAIRS = [(x, y) for x in range(10) for y in range(10 - x)]

    def __init__(self, length: int = 3, train_size: int = 5000, test_size: int = 200, seed: int = 0):
        if not 1 <= length <= 9:
            raise ValueError(f"column_add: length must be between 1 and 9 (got {length})")
        self.length = length
        self._draw(len(self.PAIRS) ** length, train_size, test_size, seed, f"length={length}")

    def problem(self, code: int) -> Problem:
        a = b = ""
        for _ in range(self.length):
            code, i = divmod(code, len(self.PAIRS))
            a, b = a + str(self.PAIRS[i][0]), b + str(self.PAIRS[i][1])
        return Problem(id=f"column_add-{a}-{b}", prompt=f"add {a} {b}", reference=str(int(a) + int(b)).zfill(self.length))


class TwoWaysTask(_DrawnSplits):
    """A number answered one of two ways, the first digit of the answer naming the way.

    "ways 4831" → "11348" (way 1: the digits sorted) or "23817" (way 2: the last ``length``
    digits of ``multiplier`` × the number, 7 × 4831 = 33817). Both are right (verifier
    ``two_ways``). Sorting is a skill the tiny student learns in the bench's budget;
    multiplying, with a carry through every digit, is not. The problem's ``reference`` — the
    answer the tiny base is pretrained on — is written the second way for a share
    ``second_way_share`` of the problems (drawn per problem from ``seed``), so the base
    prefers the way it cannot carry out.

    With feedback on the student's own attempt (``answer_check`` reports the right answer for
    the way the attempt took), the expert completes whichever way the student chose: its
    next-token distribution at the first digit repeats the student's choice, and only the
    tokens after it show which way the student can carry out. A method learns to choose the
    learnable way only if it sends that later disagreement — or the final success — back to
    the first token.
    """

    name = "two_ways"

    def __init__(self, length: int = 4, multiplier: int = 7, second_way_share: float = 0.6,
                 train_size: int = 5000, test_size: int = 200, seed: int = 0):
        if not 2 <= length <= 9:
            raise ValueError(f"two_ways: length must be between 2 and 9 (got {length})")
        if not 2 <= multiplier <= 99:
            raise ValueError(f"two_ways: multiplier must be between 2 and 99 (got {multiplier})")
        if not 0.0 <= second_way_share <= 1.0:
            raise ValueError(f"two_ways: second_way_share must be between 0 and 1 (got {second_way_share})")
        self.length, self.multiplier, self.share, self.seed = length, multiplier, second_way_share, seed
        self._draw(10**length, train_size, test_size, seed, f"length={length}")

    def answers(self, digits: str) -> dict[str, str]:
        """The right answer for each way, keyed by the way's digit."""
        product = str(int(digits) * self.multiplier).zfill(self.length)[-self.length:]
        return {"1": "1" + "".join(sorted(digits)), "2": "2" + product}

    def problem(self, code: int) -> Problem:
        digits = str(code).zfill(self.length)
        answers = self.answers(digits)
        way = "2" if random.Random(f"{self.seed}-{code}").random() < self.share else "1"
        return Problem(id=f"two_ways-{digits}", prompt=f"ways {digits}", reference=answers[way],
                       metadata={"answers": answers})

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        """A wrong answer the same way as the reference: one or two of its digits changed."""
        reference = str(problem.reference)
        while True:
            wrong = reference[0] + wrong_answer(reference[1:], rng)
            if wrong != reference:
                return wrong


class TwoWaysVerifier:
    """Passes when the answer is right for the way its first digit names (task ``two_ways``).

    ``details["expected"]`` and ``details["expected_for_attempt"]`` are the right answer for the
    way the attempt took (the problem's reference when it names no way), so ``answer_check``
    reports what this attempt should have said, not an answer the other way.
    """

    def verify(self, problem: Problem, rollout: Rollout) -> Verdict:
        answers = problem.metadata.get("answers")
        if not isinstance(answers, dict) or not answers:
            raise ConfigError(f"two_ways: problem {problem.id!r} needs metadata.answers, a mapping from each "
                              f"way's first digit to its answer (got {type(answers).__name__}); this "
                              "verifier grades the two_ways task")
        answers = {str(way): str(text) for way, text in answers.items()}
        answer = extract_answer(rollout.response_text)
        expected = answers.get(answer[:1]) if answer else None
        expected = expected if expected is not None else problem.reference_text("two_ways")
        passed = answer is not None and answer == expected
        return Verdict(score=float(passed), passed=passed, answer=answer,
                       details={"expected": expected, "expected_for_attempt": expected, "got": answer,
                                "finished": rollout.finished})


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: one or two characters changed, or the answer cut short."""
    chars = list(answer) or ["0"]
    if len(chars) > 1 and rng.random() < 0.15:
        return "".join(chars[: rng.randrange(1, len(chars))])
    for _ in range(1 + (rng.random() < 0.3)):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice([d for d in "0123456789" if d != chars[i]])
    return "".join(chars)


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
        expected = problem.reference_text("exact_match")
        answer = extract_answer(rollout.response_text)
        passed = answer is not None and answer == expected
        return Verdict(
            score=1.0 if passed else 0.0,
            passed=passed,
            answer=answer,
            details={"expected": expected, "got": answer, "finished": rollout.finished},
        )


class AnswerCheckFeedback:
    """On a failed rollout: the answer found and the expected one, like a failing test.

    The expected answer is the problem's reference, or, for a problem with several right
    answers, the one this attempt was aiming at when the verifier names it as text in
    ``details["expected_for_attempt"]`` (as ``two_ways`` does).
    """

    def __init__(self, include_expected: bool = True):
        self.include_expected = include_expected

    def feedback(self, problem: Problem, rollout: Rollout, verdict: Verdict,
                 group: Sequence[tuple[Rollout, Verdict]] = ()) -> list[Feedback]:
        if verdict.passed:
            return []
        expected = verdict.details.get("expected_for_attempt")  # a verifier's word for this attempt
        if not isinstance(expected, str):
            expected = problem.reference_text("answer_check")
        got = verdict.answer if verdict.answer is not None else extract_answer(rollout.response_text)
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
    register("ring", RingTask)
    register("column_add", ColumnAddTask)
    register("two_ways", TwoWaysTask)


@hookimpl
def register_verifiers(register):
    register("exact_match", ExactMatchVerifier)
    register("two_ways", TwoWaysVerifier)


@hookimpl
def register_feedback_sources(register):
    register("answer_check", AnswerCheckFeedback)
