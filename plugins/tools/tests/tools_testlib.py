"""Helpers shared by the tools tests: rollouts, verdicts, a sandbox backend that isolates files."""

from __future__ import annotations

import distil_sandbox
import pytest
from distil_core.types import Problem, Rollout, Verdict

PROBLEM = Problem(id="p", prompt="What is 12 * (3 + 4)?", reference="84")
FAILED = Verdict(score=0.0, passed=False)
PASSED = Verdict(score=1.0, passed=True)


def rollout(text: str) -> Rollout:
    return Rollout(problem_id="p", group_index=0, response_text=text, response_ids=[])


def isolating_backend() -> str:
    """bwrap (private /tmp, read-only system): the python tool's isolation tests need it."""
    reason = distil_sandbox.available_backends().get("bwrap")
    if reason:
        pytest.skip(f"sandbox backend bwrap is unavailable here: {reason}")
    return "bwrap"
