"""The ``math`` suite: task ``math``, verifier ``math_answer``, feedback source ``math_steps``.

Procedural problems are nested arithmetic, one operation per step: ``(7+5)-3 = ?`` → ``9``,
with the worked steps kept in ``metadata["steps"]`` (with ``worked_answer: true`` the tiny base
learns to write them, ``7+5=12; 12-3=9``; the final answer is the last number). Loaded files:

- ``gsm8k``: ``{"question": ..., "answer": "... <<48/2=24>> ... #### 72"}``; the number after
  ``####`` is the reference, the calculator annotations ``<<expr=value>>`` are the worked steps.
- ``math``: ``{"problem": ..., "solution": "... \\boxed{\\frac{1}{2}}"}`` with optional
  ``answer`` (else the last ``\\boxed{}`` of the solution), ``level`` and ``type``; the solution
  text is the worked solution.

Answers are compared with ``math-verify`` (``1/2`` = ``0.5`` = ``\\frac{1}{2}``), after a fast
exact path for plain numbers.
"""

from __future__ import annotations

import random
import re
import threading
from collections import OrderedDict
from fractions import Fraction
from typing import Any, Optional, Sequence

from distil_core import Feedback, Problem, Rollout, Verdict

from . import arith
from .common import Record, SuiteTask, flag, last_answer_tag, split_procedural, whole
from .fields import Fields, Preset
from .judge import math_verify_equal

# -- the task ------------------------------------------------------------------------------------

_GSM_STEP = re.compile(r"<<([^<>=]+)=([^<>]+)>>")


def _gsm8k(record: Record, problem: Problem) -> Problem:
    answer = record.text("answer")
    marker = answer.rfind("####")
    final = answer[marker + 4 :].strip() if marker >= 0 else ""
    if not final:
        raise record.error("answer", "must end with '#### <final answer>' (the GSM8K format)")
    if arith.number(final) is None:
        raise record.error("answer", f"the text after '####' must be a number (got {final!r})")
    steps = []
    for expr, value in _GSM_STEP.findall(answer):
        if arith.evaluate(expr) is not None:
            steps.append({"expr": expr.strip(), "value": value.strip()})
    worked = _GSM_STEP.sub("", answer[:marker]).strip()
    return problem.model_copy(update={
        "reference": arith.show(arith.number(final)),
        "metadata": {"steps": steps, "solution": worked},
    })


def _math(record: Record, problem: Problem) -> Problem:
    solution = record.text("solution")
    answer = record.text("answer", required=False)
    if answer is None:
        answer = last_boxed(solution)
        if answer is None:
            raise record.error("solution", "has no \\boxed{...} answer; add one or give an 'answer' field")
    if not answer.strip():
        raise record.error("answer", "is empty")
    meta: dict[str, Any] = {"solution": solution, **problem.metadata}
    return problem.model_copy(update={"reference": answer.strip(), "metadata": meta})


FORMATS = {
    # the text after '####' is the reference; the <<expr=value>> annotations are the worked steps
    "gsm8k": Preset(Fields(prompt_key="question", answer_key="answer", id_keys=("id", "task_id")), _gsm8k),
    # the reference is 'answer', else the last \boxed{} of the solution
    "math": Preset(Fields(prompt_key="problem", id_keys=("id", "unique_id", "task_id"),
                          metadata_keys=("level", "type", "subject")), _math),
}


class MathTask(SuiteTask):
    """Multi-step arithmetic (procedural, by default) or a GSM8K/MATH-style JSONL file.

    Procedural options: ``steps`` (operations per problem, 1-4), ``max_operand`` (operands are
    1..max_operand), ``ops`` (a subset of ``+-*``), ``worked_answer`` (the tiny base learns to
    write the steps, ``7+5=12; 12-3=9``, instead of the final answer alone), ``train_size``/
    ``test_size``, ``seed``.
    Loading: ``path``, ``format`` (``gsm8k`` or ``math``), then ``test_path`` or ``test_fraction``
    (see :mod:`distil_tasks.common` for the split rule).
    """

    name = "math"
    formats = FORMATS

    def __init__(
        self,
        path: Optional[str] = None,
        format: Optional[str] = None,
        test_path: Optional[str] = None,
        test_fraction: float = 0.2,
        steps: int = 2,
        max_operand: int = 9,
        ops: str = "+-",
        worked_answer: bool = False,
        train_size: int = 2500,
        test_size: int = 200,
        seed: int = 0,
    ):
        whole("math", "steps", steps, 1, 4)
        whole("math", "max_operand", max_operand, 2, 99)
        if not isinstance(ops, str) or not ops or set(ops) - set("+-*"):
            raise ValueError(f"math: option ops must be a non-empty string of the operators '+-*', e.g. '+-' (got {ops!r})")
        self.steps, self.max_operand, self.ops = steps, max_operand, "".join(dict.fromkeys(ops))
        self.worked_answer = flag("math", "worked_answer", worked_answer)
        super().__init__(path, format, test_path, test_fraction, train_size, test_size, seed)

    def generate(self, train_size: int, test_size: int, rng: random.Random) -> dict[str, list[Problem]]:
        return split_procedural(self.make, train_size, test_size, rng, "math")

    def make(self, rng: random.Random) -> Problem:
        expr = str(rng.randint(1, self.max_operand))
        value = Fraction(int(expr))
        steps = []
        for _ in range(self.steps):
            op, b = rng.choice(self.ops), rng.randint(1, self.max_operand)
            step = f"{arith.show(value)}{op}{b}"
            value = arith.evaluate(step)
            steps.append({"expr": step, "value": arith.show(value)})
            expr = f"{expr}{op}{b}" if expr.isdigit() else f"({expr}){op}{b}"
        return Problem(
            id=f"math-{expr}",
            prompt=f"{expr} = ?",
            reference=arith.show(value),
            metadata={"steps": steps, "expression": expr},
        )

    def answer_text(self, problem: Problem) -> str:
        """The final answer; with ``worked_answer``, a procedural problem is answered step by
        step (``7+5=12; 12-3=9``)."""
        steps = problem.metadata.get("steps") or []
        if self.worked_answer and problem.metadata.get("expression") and steps:
            return worked(steps)
        return str(problem.reference)

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        """A plausible slip: one step off by a little, carried through the later steps (or,
        for a loaded problem, the final answer with a digit changed)."""
        steps = problem.metadata.get("steps") or []
        if problem.metadata.get("expression") and steps:
            k = rng.randrange(len(steps))
            out = [dict(s) for s in steps]
            value = arith.number(out[k]["value"]) + rng.choice([-2, -1, 1, 1, 2, 10, -10])
            out[k]["value"] = arith.show(value)
            for later in out[k + 1 :]:
                rest = re.match(r"^-?[\d./]+(.*)$", later["expr"])
                later["expr"] = f"{arith.show(value)}{rest.group(1)}"
                value = arith.evaluate(later["expr"])
                later["value"] = arith.show(value)
            return worked(out) if self.worked_answer else out[-1]["value"]
        text = str(problem.reference)
        digits = [i for i, ch in enumerate(text) if ch.isdigit()]
        if not digits:
            return text + "1"
        i = rng.choice(digits)
        return text[:i] + rng.choice([d for d in "0123456789" if d != text[i]]) + text[i + 1 :]


def worked(steps: Sequence[dict[str, str]]) -> str:
    """Steps as a person writes them: ``7+5=12; 12*3=36``."""
    return "; ".join(f"{s['expr']}={s['value']}" for s in steps)


# -- the verifier --------------------------------------------------------------------------------

# A whole number token of running text, commas joining digits kept (``1,234``; ``1,2`` is a pair
# for arith.number to refuse): never part of one (the ``5`` of ``.5``, ``1e5`` or ``1.2.3``). A
# sign counts unless it follows an operand (the ``-`` of ``7-3`` is subtraction).
_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?:/\d+)?"
_NUMBER = re.compile(
    rf"(?<![\d.,])(?:(?<![\w)\]}}])[{arith.SIGNS}])?{_NUM}(?:,[{arith.SIGNS}]?{_NUM})*(?![\d]|[.,]\d)"
)


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; else None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        rest = text[start + len("\\boxed") :].strip().split()
        return rest[0].rstrip(".$") if rest else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_final(text: str) -> tuple[Optional[str], Optional[str]]:
    """(final answer, where it came from): ``\\boxed{}``, ``<answer>`` tags, ``####``, last number."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip(), "boxed"
    tag = last_answer_tag(text)
    if tag:
        return tag, "answer_tag"
    marker = text.rfind("####")
    while marker >= 0:  # the last '####' with text after it, as boxed and tagged answers take the last
        rest = text[marker + 4 :].strip()
        if rest:
            return rest.splitlines()[0].strip(), "####"
        marker = text.rfind("####", 0, marker)
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1], "last_number"
    return None, None


def normalize(answer: str) -> str:
    text = answer.strip().strip("$").strip().replace("\u2212", "-")
    text = re.sub(r"\\[,!;: ]|\\text\{\s*\}", "", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    return text


class MathAnswerVerifier:
    """Passes when the final answer equals the reference, as ``math-verify`` judges it.

    The final answer is the last ``\\boxed{}``, else the last ``<answer>...</answer>``, else the
    text after ``####``, else the last number of the response. Plain numbers are compared exactly
    first; anything else goes to ``math-verify``. Results are cached by (answer, reference).
    Options: ``cache_size`` (0: no cache), ``max_answer_chars`` (a longer final answer fails
    without parsing). Each math-verify judgement is bounded in time on any thread
    (:mod:`distil_tasks.judge`): one that does not finish fails.
    """

    def __init__(self, cache_size: int = 65536, max_answer_chars: int = 200):
        try:
            import math_verify  # noqa: F401
        except ImportError:
            raise ValueError("math_answer needs the math-verify package: pip install math-verify") from None
        self.cache_size = whole("math_answer", "cache_size", cache_size, 0)
        self.max_answer_chars = whole("math_answer", "max_answer_chars", max_answer_chars, 1)
        self._cache: "OrderedDict[tuple[str, str], bool]" = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, problem: Problem, rollout: Rollout) -> Verdict:
        expected = normalize(problem.reference_text("math_answer"))
        answer, where = extract_final(rollout.response_text)
        got = normalize(answer) if answer is not None else None
        passed = got is not None and self.equivalent(got, expected)
        return Verdict(
            score=1.0 if passed else 0.0,
            passed=passed,
            answer=got,
            details={"expected": expected, "got": got, "found_in": where, "finished": rollout.finished},
        )

    def equivalent(self, answer: str, reference: str) -> bool:
        if answer == reference:
            return True
        a, r = arith.number(answer), arith.number(reference)
        if a is not None and r is not None and (a == r or (a.denominator == 1 and r.denominator == 1)):
            return a == r
        if len(answer) > self.max_answer_chars:
            return False
        key = (answer, reference)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        result = math_verify_equal(answer, reference)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result


# -- the feedback source -------------------------------------------------------------------------


class MathStepsFeedback:
    """On a failed rollout: the first wrong ``expr = value`` the response wrote, the worked steps
    (or the worked solution, cut to ``max_chars``) and, with ``show_answer``, the answer.

    Kind ``worked_steps``. Options: ``show_answer`` (default true), ``max_steps`` (worked steps
    shown), ``max_chars`` (of a worked solution text).
    """

    def __init__(self, show_answer: bool = True, max_steps: int = 8, max_chars: int = 600):
        self.show_answer = flag("math_steps", "show_answer", show_answer)
        self.max_steps = whole("math_steps", "max_steps", max_steps, 1)
        self.max_chars = whole("math_steps", "max_chars", max_chars, 40)

    def feedback(
        self, problem: Problem, rollout: Rollout, verdict: Verdict, group: Sequence[tuple[Rollout, Verdict]] = ()
    ) -> list[Feedback]:
        if verdict.passed:
            return []
        expected = problem.reference_text("math_steps")
        got = verdict.answer if verdict.answer is not None else extract_final(rollout.response_text)[0]
        parts = []
        wrong = arith.first_wrong_claim(rollout.response_text)
        if wrong is not None:
            parts.append(f"Your step {wrong[0]}={wrong[1]} is wrong: {wrong[0]}={wrong[2]}.")
        elif got is not None:
            parts.append(f"Your answer {got} is wrong.")
        else:
            parts.append("Your response gave no final answer.")
        steps = problem.metadata.get("steps") or []
        solution = problem.metadata.get("solution")
        if steps:
            shown = worked(steps[: self.max_steps])
            parts.append(f"Steps: {shown}.")
        elif solution:
            text = " ".join(str(solution).split())
            if len(text) > self.max_chars:
                text = text[: self.max_chars - 3].rstrip() + "..."
            parts.append(f"Worked solution: {text}")
        if self.show_answer:
            parts.append(f"The answer is {expected}.")
        data = {
            "got": got,
            "first_wrong_step": list(wrong) if wrong else None,
            "steps": len(steps),
            "expected": expected if self.show_answer else None,
        }
        return [Feedback(source="math_steps", kind="worked_steps", text=" ".join(parts), data=data)]
