"""Shared by the docker backend and pool tests: find the engine, or skip (fail where required).

``DISTIL_SANDBOX_REQUIRE`` lists backends that must work (CI sets ``bwrap,docker,process``); a
required backend that is unavailable fails its tests with the reason instead of skipping them.
"""

from __future__ import annotations

import os

import pytest

from distil_sandbox.backends import available_backends, get_backend
from distil_sandbox.image import LABEL


def required(backend: str) -> bool:
    return backend in os.environ.get("DISTIL_SANDBOX_REQUIRE", "")


def backend_or_skip(name: str):
    """The registry's ``name`` backend; skips (or fails, when required) with its reason."""
    why = available_backends()[name]
    if why:
        message = f"the {name} backend is unavailable: {why}"
        if required(name):
            pytest.fail(message + f" (DISTIL_SANDBOX_REQUIRE={os.environ['DISTIL_SANDBOX_REQUIRE']})")
        pytest.skip(message)
    return get_backend(name)


def labelled_containers(backend) -> dict[str, str]:
    """{id: status} of every container, running or not, that this test process started."""
    labels = [f"{LABEL}=1", f"{LABEL}.pid={os.getpid()}"]
    found = backend.client().containers.list(all=True, filters={"label": labels})
    return {container.id: container.status for container in found}
