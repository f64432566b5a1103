"""What a code problem's ``reference`` holds, and how code is found in a response.

A reference holds exactly one style of tests:

- ``io``: whole-program tests, ``[{"stdin": "1 2\\n", "stdout": "3"}]`` (a bare list works
  too). The program's stdout is compared with ``stdout`` line by line, each line stripped,
  leading and trailing blank lines ignored.
- ``calls``: ``{"entry_point": "add", "calls": [{"args": [1, 2], "expected": 3}]}``. The
  returned value must equal ``expected``; JSON has no tuples, so tuples and lists compare
  equal. ``rel_tol`` loosens float comparisons.
- ``asserts``: ``{"asserts": ["assert add(1, 2) == 3"], "setup": "import math"}``. Each
  string is one test and may call any function of the solution; ``setup`` runs first, on the
  grading side, and may define helpers the asserts use.

plus ``timeout_s`` per test and ``language`` (only ``"python"``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distil_core import as_text


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IOTest(_Spec):
    """One run of the whole program: what it reads and what it must print."""

    stdin: str = ""
    stdout: str

    @field_validator("stdin", "stdout")
    @classmethod
    def _utf8(cls, value: str) -> str:
        """A program reads its stdin as UTF-8 bytes and its output is read back as such, so a lone
        surrogate (half of a UTF-16 pair, U+D800 to U+DFFF) can be neither sent nor printed: a test
        holding one would fail every solution, with "the grading run was cut short"."""
        for position, char in enumerate(value):
            if "\ud800" <= char <= "\udfff":
                raise ValueError(f"holds a lone surrogate (U+{ord(char):04X}) at character {position}, which is "
                                 "not text UTF-8 can encode; give the test as text without one")
        return value


class CallTest(_Spec):
    """One call of the entry point and the value it must return."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    expected: Any


class CodeTests(_Spec):
    """The tests of one code problem (see the module docstring for the three styles)."""

    io: Optional[list[IOTest]] = None
    entry_point: Optional[str] = None
    calls: Optional[list[CallTest]] = None
    asserts: Optional[list[str]] = None
    setup: str = ""
    timeout_s: float = Field(default=2.0, gt=0, le=120, description="Limit for each test, seconds.")
    rel_tol: float = Field(default=0.0, ge=0, description="Relative tolerance for floats in call tests.")
    language: Literal["python"] = "python"

    @field_validator("entry_point")
    @classmethod
    def _identifier(cls, value: Optional[str]) -> Optional[str]:
        """Python reads every identifier in NFKC form (``def \ufb01nd`` defines ``find``), so the
        name is looked up in that form too, or a solution could never define it."""
        if value is not None and not value.isidentifier():
            raise ValueError(f"must be a Python function name (got {value!r})")
        return unicodedata.normalize("NFKC", value) if value is not None else None

    @field_validator("asserts")
    @classmethod
    def _compiles(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        for i, source in enumerate(value or []):
            problem = compile_problem(source, f"<test {i}>")
            if problem:
                raise ValueError(f"assert {i} is not valid Python: {problem}")
        return value

    @field_validator("setup")
    @classmethod
    def _setup_compiles(cls, value: str) -> str:
        problem = compile_problem(value, "<setup>")
        if problem:
            raise ValueError(f"not valid Python: {problem}")
        return value

    @model_validator(mode="after")
    def _one_style(self) -> "CodeTests":
        styles = [name for name in ("io", "calls", "asserts") if getattr(self, name) is not None]
        if len(styles) != 1:
            found = ", ".join(styles) if styles else "none"
            raise ValueError(f"give exactly one of io, calls or asserts (found {found})")
        if self.calls is not None and self.entry_point is None:
            raise ValueError("calls need entry_point: the name of the function to call")
        if self.entry_point is not None and self.calls is None:
            raise ValueError("entry_point is only used with calls")
        if not self.cases:
            raise ValueError(f"{styles[0]} is empty: a problem needs at least one test")
        return self

    @property
    def kind(self) -> str:
        return "io" if self.io is not None else "call" if self.calls is not None else "assert"

    @property
    def cases(self) -> list[Any]:
        return list(self.io or self.calls or self.asserts or [])

    def describe(self, index: int) -> Any:
        """The input of test ``index`` as a person would read it."""
        case = self.cases[index]
        if isinstance(case, IOTest):
            return case.stdin
        if isinstance(case, CallTest):
            return call_text(self.entry_point or "?", case.args, case.kwargs)
        return case

    def expected(self, index: int) -> Any:
        case = self.cases[index]
        if isinstance(case, IOTest):
            return case.stdout
        if isinstance(case, CallTest):
            return case.expected
        return None

    @classmethod
    def from_reference(cls, reference: Any, problem_id: str = "?") -> "CodeTests":
        """Validate a problem's reference; the error names the problem and the bad field."""
        if isinstance(reference, CodeTests):
            return reference
        if isinstance(reference, str):
            try:
                reference = json.loads(reference)
            except json.JSONDecodeError as exc:
                raise ValueError(f"problem {problem_id}: reference is a string but not JSON ({exc})") from None
        if isinstance(reference, list):
            reference = {"io": reference}
        if not isinstance(reference, dict):
            raise ValueError(
                f"problem {problem_id}: reference must hold code tests (a dict with io, calls or "
                f"asserts), got {type(reference).__name__}"
            )
        try:
            return cls.model_validate(reference)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'reference'}: {err['msg']}" for err in exc.errors()
            )
            raise ValueError(f"problem {problem_id}: invalid code tests in reference: {problems}") from None


def compile_problem(source: str, name: str) -> Optional[str]:
    """Why ``source`` does not compile as a module, or None. Compiling, not only parsing: a
    ``return`` or ``nonlocal`` at the top level parses, then fails when the harness compiles
    it, and the solution would be blamed for the problem's own mistake."""
    try:
        compile(source, name, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return f"{exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes; nesting too deep
        return f"{type(exc).__name__}: {exc}"
    return None


def call_text(name: str, args: list[Any], kwargs: Optional[dict[str, Any]] = None) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


_OPENING = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)")
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(text: str) -> str:
    """The last fenced ```python block of a response; else its last untagged fenced block;
    else the whole text (bare code). An unclosed last fence runs to the end of the text.

    Lone surrogates (half of an emoji cut by a client) cannot be written as UTF-8 source: they
    become U+FFFD here, so such a response is graded for the code it can be, never stops the
    grading of its batch."""
    text = as_text(text)
    tagged: list[str] = []
    untagged: list[str] = []
    for tag, body in fenced_blocks(text):
        if tag.lower() in _PYTHON_TAGS:
            tagged.append(body)
        elif not tag:
            untagged.append(body)
    if tagged:
        return tagged[-1]
    if untagged:
        return untagged[-1]
    return text


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info tag, body) of each fenced block, in one pass over the lines (time linear in the
    text: a model's response is untrusted, and a backtracking pattern took seconds on one long
    line of backticks).

    A block opens at a line (followed by a newline) that starts, after spaces or tabs, with three
    or more backticks or tildes; its tag is the run of word characters and ``+#.-`` after them.
    It closes at the next line that holds the same fence alone (spaces and tabs around it
    allowed), or at the end of the text."""
    lines = text.split("\n")
    blocks = []
    i = 0
    while i < len(lines) - 1:
        opening = _OPENING.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, tag = opening.group(1), opening.group(2)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip(" \t") == fence), None)
        if end is None:
            blocks.append((tag, "\n".join(lines[i + 1:])))
            break
        blocks.append((tag, "".join(line + "\n" for line in lines[i + 1:end])))
        i = end + 1
    return blocks


Reference = Union[CodeTests, dict, list, str]
