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

import ast
import json
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IOTest(_Spec):
    """One run of the whole program: what it reads and what it must print."""

    stdin: str = ""
    stdout: str


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
        if value is not None and not value.isidentifier():
            raise ValueError(f"must be a Python function name (got {value!r})")
        return value

    @field_validator("asserts")
    @classmethod
    def _parses(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        for i, source in enumerate(value or []):
            try:
                ast.parse(source)
            except SyntaxError as exc:
                raise ValueError(f"assert {i} is not valid Python: {exc.msg} (line {exc.lineno})") from None
        return value

    @field_validator("setup")
    @classmethod
    def _setup_parses(cls, value: str) -> str:
        try:
            ast.parse(value)
        except SyntaxError as exc:
            raise ValueError(f"not valid Python: {exc.msg} (line {exc.lineno})") from None
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


def call_text(name: str, args: list[Any], kwargs: Optional[dict[str, Any]] = None) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.M | re.S)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(text: str) -> str:
    """The last fenced ```python block of a response; else its last untagged fenced block;
    else the whole text (bare code). An unclosed last fence runs to the end of the text."""
    tagged: list[str] = []
    untagged: list[str] = []
    for match in _FENCE.finditer(text):
        tag = match.group(2).lower()
        if tag in _PYTHON_TAGS:
            tagged.append(match.group(3))
        elif not tag:
            untagged.append(match.group(3))
    if tagged:
        return tagged[-1]
    if untagged:
        return untagged[-1]
    return text


Reference = Union[CodeTests, dict, list, str]
