"""Sandbox tests: ``sandbox_testlib`` importable, and the ``backend`` fixture.

``backend`` runs a test once per test backend (every sandbox backend, with bwrap both warm and
cold). A backend that is unavailable here is skipped with the reason, unless
``DISTIL_SANDBOX_REQUIRE`` names it: then its tests fail.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402
from sandbox_testlib import BACKENDS, required, unavailable_reason  # noqa: E402


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    why = unavailable_reason(request.param)
    if why and not required(request.param):
        pytest.skip(why)
    return request.param


def pytest_runtest_call(item):
    """A required backend that is unavailable fails each of its tests, with the reason."""
    name = getattr(item, "callspec", None) and item.callspec.params.get("backend")
    if name and required(name) and unavailable_reason(name):
        pytest.fail(f"required by DISTIL_SANDBOX_REQUIRE, but {unavailable_reason(name)}", pytrace=False)
