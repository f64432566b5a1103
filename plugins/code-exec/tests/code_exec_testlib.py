"""Helpers shared by the code_exec tests: problems, rollouts, verifiers per sandbox backend."""

from __future__ import annotations

import textwrap
from typing import Any

import distil_sandbox
import pytest
from distil_core import Problem, Rollout
from distil_core import testing

from distil_code_exec import CodeExecVerifier

_verifiers: dict[str, CodeExecVerifier] = {}


def problem(reference: Any, pid: str = "p") -> Problem:
    return testing.problem(reference, pid)


def rollout(code: str, fenced: bool = True) -> Rollout:
    code = textwrap.dedent(code).strip() + "\n"
    text = f"Here is my solution.\n```python\n{code}```\n" if fenced else code
    return testing.rollout(text)


def skip_unless_available(backend: str) -> None:
    """Skip the test, saying why, where the sandbox backend cannot run (docker without dockerd)."""
    reason = distil_sandbox.available_backends().get(backend)
    if reason:
        pytest.skip(f"sandbox backend {backend} is unavailable here: {reason}")


def verifier(backend: str = "bwrap") -> CodeExecVerifier:
    """One verifier per backend for the whole session (caching off: every call really runs)."""
    if backend not in _verifiers:
        skip_unless_available(backend)
        _verifiers[backend] = CodeExecVerifier(backend=backend, cache_size=0, workers=4)
    return _verifiers[backend]


def grade(code: str, reference: Any, backend: str = "bwrap"):
    return verifier(backend).grade(problem(reference), rollout(code))


ADD_CALLS = {"entry_point": "add", "calls": [{"args": [1, 2], "expected": 3}, {"args": [-4, 4], "expected": 0}], "timeout_s": 1}
ADD_ASSERTS = {"asserts": ["assert add(1, 2) == 3", "assert add(-4, 4) == 0"], "timeout_s": 1}
ADD_IO = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "-4 4\n", "stdout": "0"}]
