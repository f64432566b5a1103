"""The ``science`` suite: task ``science``, verifier ``mc_letter``, feedback ``worked_explanation``.

Procedural problems are four-choice questions whose answer takes one or two steps of
reasoning: unit conversion, stoichiometry (moles of a product), kinematics (distance, speed)
and density. Each keeps a worked explanation in ``metadata["explanation"]``. The reference is
the correct letter; a response answers with ``<answer>B</answer>`` (with ``worked_answer: true``
the tiny base learns to write the calculation first: ``3 x 1000 = 3000 <answer>B</answer>``).

Loaded files (``format: sciknoweval``): one multiple-choice question per line,

    {"question": "...", "choices": {"text": ["...", ...], "label": ["A", ...]},
     "answerKey": "B", "explanation": "...", "domain": "Chemistry"}

``choices`` may also be a plain list of texts (labelled A, B, C, ...); ``explanation``,
``domain``, ``type`` and ``id`` are optional.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any, Callable, Optional, Sequence

from distil_core import Feedback, Problem, Rollout, Verdict

from .common import Record, SuiteTask, choices, flag, last_answer_tag, split_procedural, whole
from .fields import Fields, Preset

INSTRUCTION = "Reply with the letter in <answer></answer> tags."
_LEAD = re.compile(  # the answer's letter at the start of a tag, as models write it
    r"(?:(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?(?:\s*:\s*|\s+))?"  # Answer: / The answer is
    r"[*_`'\"(\[{$]*(?:\\[A-Za-z]+\{)?"  # **B**, `B`, (B), [B], 'B', $B$, \boxed{B}
    r"([A-Za-z])[*_`'\")\]}$]*(?:[).:,]|\s|$)",
    re.I,
)
# a letter standing alone: an option named. Not one glued to an apostrophe and a letter (B's, I'm, it's).
_LONE_LETTER = re.compile(r"(?<![^\W_])(?<![A-Za-z]['’])[A-Za-z](?![^\W_]|['’][A-Za-z])")


def format_question(question: str, labels: Sequence[str], texts: Sequence[str], instruction: str = INSTRUCTION) -> str:
    options = " ".join(f"{label}) {text}" for label, text in zip(labels, texts))
    return f"{question}\n{options}\n{instruction}"


# -- loading ---------------------------------------------------------------------------------


def _sciknoweval(record: Record, problem: Problem) -> Problem:
    question = record.text("question")
    choices = record.data.get("choices")
    if isinstance(choices, dict):
        texts, labels = choices.get("text"), choices.get("label")
        if not isinstance(texts, list) or not texts:
            raise record.error("choices.text", "must be a non-empty list of option texts")
        if labels is None:
            labels = list(string.ascii_uppercase[: len(texts)])
        if not isinstance(labels, list) or len(labels) != len(texts):
            raise record.error("choices.label", f"must be a list of {len(texts)} letters, one per option")
    elif isinstance(choices, list) and choices:
        texts, labels = choices, list(string.ascii_uppercase[: len(choices)])
    else:
        raise record.error("choices", "missing: give {'text': [...], 'label': [...]} or a list of option texts")
    if len(texts) < 2 or len(texts) > 26:
        raise record.error("choices", f"a question needs 2 to 26 options (got {len(texts)})")
    shown = []  # each option as the prompt shows it
    for i, text in enumerate(texts):
        if not isinstance(text, (str, int, float)) or isinstance(text, bool) or not str(text).strip():
            raise record.error(f"choices.text[{i}]", "must be a non-empty string")
        field = f"choices.text[{i}]"
        shown.append(record.unicode(field, text) if isinstance(text, str) else record.number(field, text))
    for i, label in enumerate(labels):
        if not isinstance(label, str) or len(label.strip()) != 1 or not label.strip().isalpha():
            raise record.error(f"choices.label[{i}]", f"must be one letter (got {label!r})")
    labels = [label.strip().upper() for label in labels]
    if len(set(labels)) != len(labels):
        raise record.error("choices.label", "letters must be distinct")
    key = record.text("answerKey", required=False)
    if key is None:
        raise record.error("answerKey", "missing: the letter of the correct option")
    key = key.strip().upper()
    if key not in labels:
        raise record.error("answerKey", f"{key!r} is not one of the option letters {labels}")
    meta: dict[str, Any] = {"labels": labels, "choices": shown}
    explanation = record.text("explanation", required=False)
    if explanation:
        meta["explanation"] = explanation
    for name in ("domain", "type"):
        if record.has(name):
            meta[name] = record.unicode(name, record.data[name])
    return Problem(
        id=problem.id,
        prompt=format_question(question, labels, shown),
        reference=key,
        metadata=meta,
    )


# -- procedural questions ----------------------------------------------------------------------

UNITS = [  # (from, to, factor)
    ("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("L", "mL", 1000),
    ("h", "min", 60), ("min", "s", 60), ("cm", "mm", 10),
]
REACTIONS = [  # (equation, {species: coefficient}, reactants)
    ("2H2 + O2 -> 2H2O", {"H2": 2, "O2": 1, "H2O": 2}, ("H2", "O2")),
    ("N2 + 3H2 -> 2NH3", {"N2": 1, "H2": 3, "NH3": 2}, ("N2", "H2")),
    ("CH4 + 2O2 -> CO2 + 2H2O", {"CH4": 1, "O2": 2, "CO2": 1, "H2O": 2}, ("CH4", "O2")),
    ("2Na + Cl2 -> 2NaCl", {"Na": 2, "Cl2": 1, "NaCl": 2}, ("Na", "Cl2")),
    ("C + O2 -> CO2", {"C": 1, "O2": 1, "CO2": 1}, ("C", "O2")),
]


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _conversion(rng: random.Random) -> tuple[str, float, list[float], str, str, str]:
    src, dst, factor = rng.choice(UNITS)
    n = rng.randint(2, 30)
    if rng.random() < 0.5:
        answer = n * factor
        return (f"Convert {n} {src} to {dst}.", answer, [n * factor / 10, n * factor * 10, n, n + factor],
                f"1 {src} = {factor} {dst}, so {n} {src} = {n} x {factor} = {_fmt(answer)} {dst}.", dst, f"{n} x {factor}")
    answer = n
    return (f"Convert {n * factor} {dst} to {src}.", answer, [n * factor, n * 10, n * factor * factor, n + 1],
            f"1 {src} = {factor} {dst}, so {n * factor} {dst} = {n * factor} / {factor} = {n} {src}.", src, f"{n * factor} / {factor}")


def _stoichiometry(rng: random.Random) -> tuple[str, float, list[float], str, str, str]:
    equation, coef, reactants = rng.choice(REACTIONS)
    given = rng.choice(reactants)
    product = rng.choice([s for s in coef if s not in reactants])
    n = coef[given] * rng.randint(1, 8)
    answer = n * coef[product] // coef[given]
    wrong = [n, n * coef[given] * coef[product], answer + coef[product], max(1, answer - 1)]
    return (f"{equation}. Moles of {product} from {n} mol {given}?", answer, wrong,
            f"{coef[given]} mol {given} gives {coef[product]} mol {product}, so {n} mol gives "
            f"{n} x {coef[product]} / {coef[given]} = {answer} mol.", "mol", f"{n} x {coef[product]} / {coef[given]}")


def _kinematics(rng: random.Random) -> tuple[str, float, list[float], str, str, str]:
    kind = rng.randrange(3)
    t = rng.randint(2, 9)
    if kind == 0:
        v = rng.randint(2, 9)
        answer = v * t
        return (f"A car moves at {v} m/s for {t} s. Distance?", answer, [v + t, answer * 2, answer + v, abs(v - t) or 1],
                f"distance = speed x time = {v} x {t} = {answer} m.", "m", f"{v} x {t}")
    a = rng.randint(1, 4) * 2
    if kind == 1:
        answer = a * t
        return (f"From rest, a cart accelerates at {a} m/s2 for {t} s. Final speed?", answer,
                [a + t, answer * 2, answer // 2 or 1, a * t * t], f"v = a x t = {a} x {t} = {answer} m/s.", "m/s", f"{a} x {t}")
    answer = a * t * t // 2
    return (f"From rest, a cart accelerates at {a} m/s2 for {t} s. Distance?", answer,
            [a * t, a * t * t, answer + t, a * t // 2 or 1],
            f"d = a x t^2 / 2 = {a} x {t * t} / 2 = {answer} m.", "m", f"{a} x {t * t} / 2")


def _density(rng: random.Random) -> tuple[str, float, list[float], str, str, str]:
    d, v = rng.randint(2, 9), rng.randint(2, 9)
    answer = d * v
    return (f"A block has density {d} g/mL and volume {v} mL. Mass?", answer, [d + v, answer * 2, abs(d - v) or 1, answer + d],
            f"mass = density x volume = {d} x {v} = {answer} g.", "g", f"{d} x {v}")


KINDS: dict[str, Callable[[random.Random], tuple[str, float, list[float], str, str, str]]] = {
    "conversion": _conversion,
    "stoichiometry": _stoichiometry,
    "kinematics": _kinematics,
    "density": _density,
}


class ScienceTask(SuiteTask):
    """Procedural multiple-choice science (by default) or a SciKnowEval-style JSONL file.

    Procedural options: ``kinds`` (any of conversion, stoichiometry, kinematics, density),
    ``options`` (choices per question, 2-5), ``worked_answer`` (the tiny base learns to write the
    calculation before the letter), ``train_size``/``test_size``, ``seed``. There are
    about 700 distinct questions; no question of the test split is in the train split. Loading:
    ``path``, ``format: sciknoweval``, then ``test_path`` or ``test_fraction``.
    """

    name = "science"
    formats = {"sciknoweval": Preset(Fields(prompt_key="question", id_keys=("id", "question_id")), _sciknoweval)}

    def __init__(
        self,
        path: Optional[str] = None,
        format: Optional[str] = None,
        test_path: Optional[str] = None,
        test_fraction: float = 0.2,
        kinds: Optional[list[str]] = None,
        options: int = 4,
        worked_answer: bool = False,
        train_size: int = 500,
        test_size: int = 120,
        seed: int = 0,
    ):
        self.kinds = choices("science", "kinds", kinds, list(KINDS))
        self.options = whole("science", "options", options, 2, 5)
        self.worked_answer = flag("science", "worked_answer", worked_answer)
        super().__init__(path, format, test_path, test_fraction, train_size, test_size, seed)

    def generate(self, train_size: int, test_size: int, rng: random.Random) -> dict[str, list[Problem]]:
        return split_procedural(self.make, train_size, test_size, rng, "science")

    def make(self, rng: random.Random) -> Problem:
        kind = rng.choice(self.kinds)
        question, answer, candidates, explanation, unit, calc = KINDS[kind](rng)
        wrong: list[float] = []
        for value in candidates + [answer + k for k in (1, 2, 3, -1, 5, 10)]:
            if value != answer and value > 0 and value not in wrong:
                wrong.append(value)
        values = [answer] + wrong[: self.options - 1]
        order = list(range(self.options))
        rng.shuffle(order)
        shown = [values[i] for i in order]
        labels = list(string.ascii_uppercase[: self.options])
        letter = labels[order.index(0)]
        texts = [f"{_fmt(v)} {unit}" for v in shown]
        return Problem(
            id=f"sci-{question}",
            prompt=format_question(question, labels, texts),
            reference=letter,
            metadata={
                "labels": labels, "choices": texts, "explanation": f"{explanation} The answer is <answer>{letter}</answer>.",
                "kind": kind, "calc": calc, "values": [_fmt(v) for v in shown],
            },
        )

    def answer_text(self, problem: Problem) -> str:
        """The tagged letter; with ``worked_answer``, the calculation first:
        ``3 x 1000 = 3000 <answer>B</answer>``."""
        calc, values, labels = (problem.metadata.get(k) for k in ("calc", "values", "labels"))
        if self.worked_answer and calc and values and labels:
            return f"{calc} = {values[labels.index(problem.reference)]} <answer>{problem.reference}</answer>"
        return f"<answer>{problem.reference}</answer>"

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        """A wrong option reached by a wrong calculation, a right calculation with a wrong letter,
        or a letter without tags."""
        labels = problem.metadata.get("labels") or list("ABCD")
        wrong = rng.choice([l for l in labels if l != problem.reference] or labels)
        calc, values = problem.metadata.get("calc"), problem.metadata.get("values")
        kind = rng.random()
        if kind < 0.1:
            return wrong
        if self.worked_answer and calc and values:
            shown = values[labels.index(wrong if kind < 0.6 else problem.reference)]
            return f"{calc} = {shown} <answer>{wrong}</answer>"
        return f"<answer>{wrong}</answer>"


# -- verifier and feedback ----------------------------------------------------------------------


def extract_letter(
    text: str, labels: Optional[Sequence[str]] = None, require_tags: bool = True, choices: Optional[Sequence[Any]] = None
) -> Optional[str]:
    """The letter inside the last ``<answer>...</answer>`` (``B``, ``(B)``, ``B)``, ``B. text``,
    ``**B**``, ``Answer: B``, ``Option B``).

    A tag that names another option letter as well (``A or B``, ``A B C D``, ``A. No wait, C``)
    is a hedge, not an answer: None, else listing every letter would pass. Read as naming an
    option: a letter standing alone, in the case the answer's letter was written in (``a or b``
    is a hedge, the article in ``B. a ball`` is not). A letter in the other case is read as
    prose, even after "or": it is as often a symbol (``A. the speed of light, or c``) as a
    hedge (``A or b``), and the tag's leading letter is what is graded either way. Not read:
    the chosen option's own text from ``choices``, copied after its letter (``B) 5 A`` for 5
    amperes, ``A. vitamin C``, ``C. I and III only``), and a letter glued to an apostrophe
    (``because B's premise``).
    Other prose in the tag that names a letter (``A. Option B is wrong``) is refused: it cannot
    be told from a correction like ``A. No wait, C``; reasons belong outside the tags.
    Without tags, and only when ``require_tags`` is false, a response that is a lone letter counts.
    """
    valid = set(labels or string.ascii_uppercase)
    tag = last_answer_tag(text)
    if tag is not None:
        match = _LEAD.match(tag)
        if not match or match.group(1).upper() not in valid:
            return None
        written = match.group(1)
        letter = written.upper()
        rest = tag[match.end() :]
        order = list(labels or string.ascii_uppercase)
        if isinstance(choices, (list, tuple)) and order.index(letter) < len(choices):
            own = str(choices[order.index(letter)]).strip()
            rest = rest.lstrip(" \t\r\n(*_`'\"")
            if own and rest[: len(own)].casefold() == own.casefold():
                rest = rest[len(own) :]
        named = {other.upper() for other in _LONE_LETTER.findall(rest) if other.isupper() == written.isupper()}
        return None if (named & valid) - {letter} else letter
    if not require_tags:
        match = re.fullmatch(r"\s*\(?([A-Za-z])\)?\.?\s*", text)
        if match and match.group(1).upper() in valid:
            return match.group(1).upper()
    return None


class MCLetterVerifier:
    """Passes when the letter inside ``<answer>`` tags is the reference letter.

    Options: ``require_tags`` (default true; false also accepts a response that is a lone letter).
    """

    def __init__(self, require_tags: bool = True):
        self.require_tags = flag("mc_letter", "require_tags", require_tags)

    def verify(self, problem: Problem, rollout: Rollout) -> Verdict:
        expected = problem.reference_text("mc_letter").upper()
        meta = problem.metadata
        got = extract_letter(rollout.response_text, meta.get("labels"), self.require_tags, meta.get("choices"))
        passed = got == expected
        return Verdict(
            score=1.0 if passed else 0.0,
            passed=passed,
            answer=got,
            details={"expected": expected, "got": got, "tagged": last_answer_tag(rollout.response_text) is not None},
        )


class WorkedExplanationFeedback:
    """On a failed rollout: what was wrong with the choice, then the worked explanation.

    Kind ``worked_explanation``. Without an explanation in the problem (a loaded question that has
    none) it names the correct option. Options: ``show_answer`` (default true: the explanation
    ends with the letter), ``max_chars``.
    """

    def __init__(self, show_answer: bool = True, max_chars: int = 600):
        self.show_answer = flag("worked_explanation", "show_answer", show_answer)
        self.max_chars = whole("worked_explanation", "max_chars", max_chars, 40)

    def feedback(
        self, problem: Problem, rollout: Rollout, verdict: Verdict, group: Sequence[tuple[Rollout, Verdict]] = ()
    ) -> list[Feedback]:
        if verdict.passed:
            return []
        labels = problem.metadata.get("labels") or []
        choices = problem.metadata.get("choices") or []
        got = verdict.answer if verdict.answer is not None else extract_letter(rollout.response_text, labels, choices=choices)
        expected = problem.reference_text("worked_explanation").upper()
        if got is None:
            said = "Your response has no letter in <answer></answer> tags."
        elif got in labels and labels.index(got) < len(choices):
            said = f"Your answer {got} ({choices[labels.index(got)]}) is wrong."
        else:
            said = f"Your answer {got} is wrong."
        explanation = problem.metadata.get("explanation")
        if explanation and not self.show_answer:
            explanation = re.sub(r"\s*The answer is <answer>[A-Z]</answer>\.\s*$", "", str(explanation))
        if not explanation and self.show_answer and expected in labels and labels.index(expected) < len(choices):
            explanation = f"The correct option is {expected} ({choices[labels.index(expected)]})."
        text = said if not explanation else f"{said} {' '.join(str(explanation).split())}"
        if len(text) > self.max_chars:
            text = text[: self.max_chars - 3].rstrip() + "..."
        data = {"got": got, "expected": expected if self.show_answer else None}
        return [Feedback(source="worked_explanation", kind="worked_explanation", text=text, data=data)]
