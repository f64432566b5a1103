"""How a record's keys become a :class:`~distil_core.types.Problem`: the one mapping every
loaded task uses.

:class:`Fields` names the keys (the ``dataset`` task takes them as options), and
:class:`Preset` is a fixed format: its keys plus, where the format has structure the keys alone
do not capture (GSM8K's ``#### answer``, HumanEval's ``check(candidate)``), a function that
refines the problem the keys gave.

What the reference holds decides how a run grades it:

- ``answer_key``: the answer as text (a number is turned into text), the reference of an
  exact-answer task: grade with ``math_answer`` (or the built-in ``exact_match``), explain with
  ``math_steps`` (or ``answer_check``).
- ``tests_key``: code tests in the code-execution plugin's format (a list of assert
  statements, a list of ``{"stdin", "stdout"}`` cases, or an object with ``io``, ``calls`` or
  ``asserts``; or a JSON string holding one): grade and explain with ``code_exec``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from distil_code_exec import CodeTests
from distil_core import Problem

from .records import Record, prompt_id

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Fields:
    """Where a record keeps each part of a problem.

    ``hint``: a missing key's error names the option to set and the keys the record has (for
    the ``dataset`` task, whose keys are options); a fixed format has no such options.
    ``id_keys`` are tried in order; a record with none of them gets an id made from its prompt
    (:func:`~distil_tasks.records.prompt_id`), unless ``id_required``. ``prompt_alias``: the prompt's key in another release of the same format,
    read when a record lacks ``prompt_key`` (the sanitized MBPP keeps under ``prompt`` what the
    original keeps under ``text``).
    """

    prompt_key: str = "prompt"
    prompt_alias: Optional[str] = None
    answer_key: Optional[str] = None
    tests_key: Optional[str] = None
    system_prompt_key: Optional[str] = None
    solution_key: Optional[str] = None
    id_keys: tuple[str, ...] = ("id",)
    metadata_keys: tuple[str, ...] = ()
    id_required: bool = False
    hint: bool = False

    @property
    def kind(self) -> str:
        """``answer`` or ``tests``: what the reference holds, so which verifier fits."""
        return "tests" if self.tests_key else "answer"

    def problem(self, record: Record) -> Problem:
        prompt = self.prompt(record)
        reference: Any = None
        if self.answer_key:
            reference = self.answer(record)
        elif self.tests_key:
            reference = self.tests(record)
        metadata: dict[str, Any] = {}
        if self.solution_key:
            self.present(record, self.solution_key, "solution_key", required=False)
            solution = record.text(self.solution_key, required=False)
            if solution is not None and solution.strip():
                metadata["solution"] = solution
        for key in self.metadata_keys:
            if record.has(key):
                metadata[key] = record.unicode(key, record.data[key])
        if self.id_required:
            self.present(record, self.id_keys[0], "id_key")
        problem_id = record.ident(*self.id_keys) or prompt_id(prompt)
        return Problem(id=problem_id, prompt=prompt, reference=reference, metadata=metadata)

    def present(self, record: Record, key: str, option: str, required: bool = True) -> None:
        """With ``hint``, a key the record lacks names the option and the keys it has."""
        if self.hint and required and key not in record.data:
            raise record.error(key, f"missing; set options.{option} to one of {sorted(record.data)}")

    def prompt(self, record: Record) -> Union[str, list[dict[str, str]]]:
        """The prompt text, or chat messages (a list of ``{"role", "content"}``), with the system
        prompt first when ``system_prompt_key`` is set."""
        key = self.prompt_key
        if self.prompt_alias and not record.has(key):
            if not record.has(self.prompt_alias):
                raise record.error(key, f"missing, and so is {self.prompt_alias!r}, which another release of "
                                        "this format uses for it: one of them must hold the prompt")
            key = self.prompt_alias
        self.present(record, key, "prompt_key")
        value = record.data.get(key)
        if isinstance(value, list):
            messages = chat(record, key, value)
        else:
            if value is not None and not isinstance(value, str):
                raise record.error(key, f"must be a string (or a list of chat messages), not {type(value).__name__}")
            messages = record.text(key)
        if not self.system_prompt_key:
            return messages
        self.present(record, self.system_prompt_key, "system_prompt_key")
        system = record.text(self.system_prompt_key)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if any(m["role"] == "system" for m in messages):
            raise record.error(key, "already has a system message; drop it or unset options.system_prompt_key")
        return [{"role": "system", "content": system}, *messages]

    def answer(self, record: Record) -> str:
        key = self.answer_key
        self.present(record, key, "answer_key")
        value = record.data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return record.number(key, value)
        if value is not None and not isinstance(value, str):
            raise record.error(key, f"must be a string or a number, not {type(value).__name__}")
        return record.text(key).strip()

    def tests(self, record: Record) -> dict[str, Any]:
        """Code tests, checked here so a bad one is named by its place, not mid-run."""
        key = self.tests_key
        self.present(record, key, "tests_key")
        value = record.data.get(key)
        if value is None:
            raise record.error(key, "missing (code tests are required)")
        if isinstance(value, str):
            value = record.json(key, value, "a JSON list or object of tests")
        if isinstance(value, list):
            if not value:
                raise record.error(key, "is empty")
            if isinstance(value[0], str):
                return {"asserts": asserts(record, key, value)}
            value = {"io": value}
        if not isinstance(value, dict):
            raise record.error(key, "must be a list of assert statements, a list of {stdin, stdout} cases, "
                                    f"or an object with io, calls or asserts; not {type(value).__name__}")
        try:
            CodeTests.from_reference(value, "?")
        except ValueError as exc:
            raise record.error(key, str(exc).removeprefix("problem ?: ")) from None
        return record.unicode(key, value)


def asserts(record: Record, key: str, tests: list[Any]) -> list[str]:
    """Assert statements, each a non-empty string of valid Python."""
    for i, test in enumerate(tests):
        if not isinstance(test, str) or not test.strip():
            raise record.error(f"{key}[{i}]", "must be a non-empty assert statement")
        record.unicode(f"{key}[{i}]", test)
        parse_python(record, f"{key}[{i}]", test)
    return tests


def parse_python(record: Record, field: str, source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise record.error(field, f"is not valid Python: {exc.msg} (line {exc.lineno})") from None


def chat(record: Record, key: str, messages: list[Any]) -> list[dict[str, str]]:
    if not messages:
        raise record.error(key, "is an empty list of chat messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise record.error(f"{key}[{i}]", f"a chat message must be {{role: one of {list(ROLES)}, content: string}}")
        out.append({"role": message["role"], "content": record.unicode(f"{key}[{i}].content", message["content"])})
    if out[-1]["role"] != "user":
        raise record.error(key, "the last chat message must be the user's")
    return out


Structure = Callable[[Record, Problem], Problem]


@dataclass(frozen=True)
class Preset:
    """A fixed format: the keys it keeps its parts under, and what refines the problem they give."""

    fields: Fields
    structure: Optional[Structure] = None

    def convert(self, record: Record) -> Problem:
        problem = self.fields.problem(record)
        return self.structure(record, problem) if self.structure else problem
