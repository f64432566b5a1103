"""Helpers shared by the tools tests: rollouts, verdicts, a sandbox backend that isolates files."""

from __future__ import annotations

import distil_sandbox
import pytest
from distil_core.testing import problem, rollout, verdict

PROBLEM = problem("84", prompt="What is 12 * (3 + 4)?")
FAILED = verdict(False)
PASSED = verdict(True)


def isolating_backend() -> str:
    """bwrap (private /tmp, read-only system): the python tool's isolation tests need it."""
    reason = distil_sandbox.available_backends().get("bwrap")
    if reason:
        pytest.skip(f"sandbox backend bwrap is unavailable here: {reason}")
    return "bwrap"
