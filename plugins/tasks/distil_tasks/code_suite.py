"""The ``code`` suite: task ``code``, graded and explained by the code-execution plugin.

Problems carry their tests in ``reference`` in the ``code_exec`` format (``calls``, ``asserts``
or ``io``; see distil-code-exec), so the run uses ``verifier: code_exec`` and
``feedback: code_exec``. A known-good solution, when there is one, is ``metadata["solution"]``.

Procedural problems are one-line functions described step by step:

    Write f(x): add 3, then multiply by 2.   →   def f(x): return (x + 3) * 2
    Write f(x): multiply by 2 after adding 3. →   def f(x): return (x + 3) * 2

tested on a few calls. Loaded files:

- ``humaneval``: ``task_id``, ``prompt``, ``test`` (defines ``check(candidate)``),
  ``entry_point``, optional ``canonical_solution``. The asserts inside ``check`` become one test
  each (``candidate`` renamed to the entry point); a ``check`` with anything but asserts is one
  test, ``check(<entry_point>)``.
- ``mbpp``: ``task_id``, ``text``, ``test_list`` (assert statements), optional ``code``,
  ``test_setup_code`` and ``test_imports`` (the sanitized release's import statements, run
  before the tests).
- ``livecodebench``: ``question_id``, ``question_content``, ``public_test_cases`` and optional
  ``private_test_cases`` (lists, or JSON strings of lists, of ``{"input", "output",
  "testtype"}``), optional ``starter_code`` and ``metadata`` (``{"func_name": ...}`` for
  ``functional`` tests, whose input is one JSON value per line). ``stdin`` tests run the whole
  program; ``functional`` tests call a top-level function ``func_name``.
"""

from __future__ import annotations

import ast
import random
import re
from typing import Any, Optional

from distil_core import Problem

from .common import Record, SuiteTask, choices, split_procedural, whole
from .fields import Fields, Preset, parse_python

# -- procedural ------------------------------------------------------------------------------

OPS = {  # name: (words, python operator, precedence, words after "after")
    "add": ("add {a}", "+", 1, "adding {a}"),
    "sub": ("subtract {a}", "-", 1, "subtracting {a}"),
    "mul": ("multiply by {a}", "*", 2, "multiplying by {a}"),
    "div": ("floor-divide by {a}", "//", 2, "floor-dividing by {a}"),
    "mod": ("take it mod {a}", "%", 2, "taking it mod {a}"),
}
TEST_INPUTS = (0, 3, 7, 12)


def one_liner(steps: list[tuple[str, int]]) -> str:
    """``def f(x): return ...`` applying ``steps`` in order, with parentheses where needed."""
    expr, prec = "x", 3
    for op, a in steps:
        _, symbol, p, _ = OPS[op]
        if prec < p:
            expr = f"({expr})"
        expr, prec = f"{expr} {symbol} {a}", p
    return f"def f(x): return {expr}"


def _apply(steps: list[tuple[str, int]], x: int) -> int:
    for op, a in steps:
        x = {"add": x + a, "sub": x - a, "mul": x * a, "div": x // a, "mod": x % a}[op]
    return x


# -- loaders -----------------------------------------------------------------------------------


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == self.old:
            node.id = self.new
        return node


def _identifier(record: Record, field: str) -> str:
    name = record.text(field).strip()
    if not name.isidentifier():
        raise record.error(field, f"must be a Python function name (got {name!r})")
    return name


FENCE_NOTE = "Reply with the whole program in a ```python block."


def _humaneval(record: Record, problem: Problem) -> Problem:
    prompt = record.text("prompt")
    test = record.text("test")
    entry = _identifier(record, "entry_point")
    tree = parse_python(record, "test", test)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or not check.args.args:
        raise record.error("test", "must define check(candidate), the HumanEval test function")
    param = check.args.args[0].arg
    body = [n for n in check.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if body and all(isinstance(n, ast.Assert) for n in body):
        asserts = [ast.unparse(_Rename(param, entry).visit(n)) for n in body]
    else:
        asserts = [f"check({entry})"]
    solution = record.text("canonical_solution", required=False)
    if solution is not None:
        parse_python(record, "canonical_solution", prompt + solution)
    return Problem(
        id=problem.id,
        prompt=f"Complete this Python function. {FENCE_NOTE}\n```python\n{prompt}```",
        reference={"asserts": asserts, "setup": test},
        metadata={"entry_point": entry, "solution": prompt + solution if solution is not None else None},
    )


def _mbpp(record: Record, problem: Problem) -> Problem:
    text = problem.prompt  # the description, from text or (the sanitized release) prompt
    if not isinstance(text, str):
        raise record.error("text" if record.has("text") else "prompt", "must be a string: the problem's description")
    tests = problem.reference.get("asserts")
    if tests is None:
        raise record.error("test_list", "must be a list of assert statements")
    setup = record.text("test_setup_code", required=False, default="") or ""
    parse_python(record, "test_setup_code", setup)
    # the sanitized MBPP lists the imports its asserts use (math.isclose, re) apart from them;
    # without them every test of such a problem fails alike, right solution or not
    imports = record.listing("test_imports", required=False) or []
    for i, line in enumerate(imports):
        if not isinstance(line, str) or not all(isinstance(n, (ast.Import, ast.ImportFrom))
                                                 for n in parse_python(record, f"test_imports[{i}]", line).body):
            raise record.error(f"test_imports[{i}]", "must be an import statement, such as 'import math'")
    setup = "\n".join([*imports, setup]) if imports else setup
    code = record.text("code", required=False)
    if code is not None:
        parse_python(record, "code", code)
    listed = "\n".join(tests)
    return Problem(
        id=problem.id,
        prompt=f"{text.strip()}\nYour code should pass these tests:\n{listed}\n{FENCE_NOTE}",
        reference={"asserts": tests, "setup": setup},
        metadata={"solution": code},
    )


def _lcb_cases(record: Record, field: str, required: bool) -> list[dict[str, Any]]:
    cases = record.listing(field, required=required) or []
    for i, case in enumerate(cases):
        where = f"{field}[{i}]"
        if not isinstance(case, dict):
            raise record.error(where, "must be an object with input, output and testtype")
        for key in ("input", "output"):
            if not isinstance(case.get(key), str):
                raise record.error(f"{where}.{key}", "must be a string")
        if case.get("testtype", "stdin") not in ("stdin", "functional"):
            raise record.error(f"{where}.testtype", f"must be 'stdin' or 'functional' (got {case.get('testtype')!r})")
    return cases


def _livecodebench(record: Record, problem: Problem) -> Problem:
    content = record.text("question_content")
    cases = _lcb_cases(record, "public_test_cases", True) + _lcb_cases(record, "private_test_cases", False)
    types = {case.get("testtype", "stdin") for case in cases}
    if len(types) != 1:
        raise record.error("public_test_cases", "mixes stdin and functional tests; a problem needs one kind")
    starter = record.text("starter_code", required=False, default="") or ""
    prompt = content.strip()
    if types == {"stdin"}:
        reference: dict[str, Any] = {"io": [{"stdin": c["input"], "stdout": c["output"]} for c in cases]}
        prompt += "\nRead the input from standard input and print the answer."
    else:
        meta = record.data.get("metadata")
        if isinstance(meta, str):
            meta = record.json("metadata", meta, "JSON")
        func = meta.get("func_name") if isinstance(meta, dict) else None
        if not isinstance(func, str) or not func.isidentifier():
            raise record.error("metadata.func_name", "functional tests need the name of the function to call")
        calls = []
        for i, case in enumerate(cases):
            what = "JSON (functional input and output are JSON, one value per line)"
            args = [record.json(f"test case {i}", line, what) for line in case["input"].splitlines() if line.strip()]
            expected = record.json(f"test case {i}", case["output"], what)
            calls.append({"args": args, "expected": expected})
        reference = {"entry_point": func, "calls": calls}
        prompt += f"\nDefine a top-level function {func}."
    if starter.strip():
        prompt += f"\nStarter code:\n```python\n{starter}```"
    solution = record.text("solution", required=False)
    return Problem(
        id=problem.id,
        prompt=f"{prompt}\n{FENCE_NOTE}",
        reference=reference,
        metadata={"solution": solution, **{k: record.data[k] for k in ("platform", "difficulty") if record.has(k)}},
    )


FORMATS = {
    # check(candidate)'s asserts become one test each; the prompt is the function to complete
    "humaneval": Preset(Fields(prompt_key="prompt", id_keys=("task_id", "id")), _humaneval),
    # test_list is the generic tests key (assert statements); test_setup_code runs first; the
    # sanitized release names the description prompt and lists its imports in test_imports
    "mbpp": Preset(Fields(prompt_key="text", prompt_alias="prompt", tests_key="test_list", id_keys=("task_id", "id")),
                   _mbpp),
    # public and private test cases, stdin or functional, become io or calls tests
    "livecodebench": Preset(Fields(prompt_key="question_content", id_keys=("question_id", "id", "question_title")),
                            _livecodebench),
}


class CodeTask(SuiteTask):
    """One-line Python functions (procedural, by default) or a HumanEval/MBPP/LiveCodeBench JSONL.

    Procedural options: ``steps`` (operations per function, 1-3), ``ops`` (any of add, sub, mul,
    div, mod), ``max_constant`` (constants are 2..max_constant), ``phrasing`` (``mixed``: half
    the problems name the last step first, "multiply by 2 after adding 3"; ``then``: always in
    order), ``train_size``/``test_size``, ``seed``. Loading: ``path``, ``format`` (``humaneval``, ``mbpp``, ``livecodebench``), then
    ``test_path`` or ``test_fraction``.
    """

    name = "code"
    formats = FORMATS

    def __init__(
        self,
        path: Optional[str] = None,
        format: Optional[str] = None,
        test_path: Optional[str] = None,
        test_fraction: float = 0.2,
        steps: int = 2,
        ops: Optional[list[str]] = None,
        max_constant: int = 9,
        phrasing: str = "mixed",
        train_size: int = 1200,
        test_size: int = 100,
        seed: int = 0,
    ):
        ops = choices("code", "ops", ops, list(OPS))
        whole("code", "steps", steps, 1, 3)
        whole("code", "max_constant", max_constant, 2, 99)
        if phrasing not in ("mixed", "then"):
            raise ValueError(f"code: option phrasing must be 'mixed' or 'then' (got {phrasing!r})")
        self.steps, self.ops, self.max_constant, self.phrasing = steps, ops, max_constant, phrasing
        super().__init__(path, format, test_path, test_fraction, train_size, test_size, seed)

    def generate(self, train_size: int, test_size: int, rng: random.Random) -> dict[str, list[Problem]]:
        return split_procedural(self.make, train_size, test_size, rng, "code")

    def make(self, rng: random.Random) -> Problem:
        steps = [(rng.choice(self.ops), rng.randint(2, self.max_constant)) for _ in range(self.steps)]
        if self.steps > 1 and self.phrasing == "mixed" and rng.random() < 0.5:
            *first, (last, b) = steps  # "multiply by 2 after adding 3": the last step is named first
            words = f"{OPS[last][0].format(a=b)} after " + ", then ".join(OPS[op][3].format(a=a) for op, a in first)
        else:
            words = ", then ".join(OPS[op][0].format(a=a) for op, a in steps)
        solution = one_liner(steps)
        calls = [{"args": [x], "expected": _apply(steps, x)} for x in TEST_INPUTS]
        return Problem(
            id="code-" + "-".join(f"{op}{a}" for op, a in steps) + ("-after" if " after " in words else ""),
            prompt=f"Write f(x): {words}.",
            reference={"entry_point": "f", "calls": calls},
            metadata={"solution": solution, "entry_point": "f"},
        )

    def answer_text(self, problem: Problem) -> Optional[str]:
        return problem.metadata.get("solution")

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        """A plausible mistake: a constant or operator changed, parentheses lost, a wrong name,
        a missing ``return`` or a line cut short."""
        solution = problem.metadata.get("solution") or "def f(x): return x"
        head, _, expr = solution.partition("return ")
        kind = rng.random()
        if kind < 0.35 and re.search(r"\d", expr):
            spots = [m.start() for m in re.finditer(r"\d", expr)]
            i = rng.choice(spots)
            expr = expr[:i] + rng.choice([d for d in "23456789" if d != expr[i]]) + expr[i + 1 :]
        elif kind < 0.6:
            symbols = [m for m in re.finditer(r" (//|[-+*%]) ", expr)]
            if symbols:
                m = rng.choice(symbols)
                other = rng.choice([s for s in ("+", "-", "*", "//", "%") if s != m.group(1)])
                expr = expr[: m.start()] + f" {other} " + expr[m.end() :]
            else:
                expr = expr + " + 1"
        elif kind < 0.7 and "(" in expr:
            expr = expr.replace("(", "").replace(")", "")
        elif kind < 0.8:
            return solution.replace("def f(", "def g(")
        elif kind < 0.9:
            return head + expr
        else:
            cut = solution[: rng.randrange(len("def f(x): r"), len(solution))]
            return cut if cut != solution else solution[:-1]
        wrong = head + "return " + expr
        return wrong if wrong != solution else wrong + " + 1"
