"""How the feedback source runs calls: failures of a tool's own machinery kept from the expert."""

import os
import subprocess
import sys
import warnings

import pytest
from tools_testlib import FAILED, PROBLEM, rollout

from distil_core import resolve
from distil_tools import ToolFeedback, ToolResult, get_registry, hookimpl
from distil_tools import sympy_tool


class Flaky:
    """Reports that its own backend is down for inputs starting with "down"."""

    name = "flaky"

    def run(self, input):
        if input.startswith("down"):
            return ToolResult.error("the backend is unreachable", infrastructure_error=True)
        return ToolResult(f"ran {input}")


class FlakyPlugin:
    @hookimpl
    def register_tools(register):
        register(Flaky())


@pytest.fixture
def flaky():
    registry = get_registry()
    registry.register_plugin(FlakyPlugin, "flaky_plugin")
    try:
        yield registry
    finally:
        registry.unregister_plugin("flaky_plugin")


def test_a_call_the_tools_machinery_failed_gives_no_feedback_and_one_warning(flaky):
    """The expert reads feedback as being about the student's attempt: a tool that could not run
    (its sandbox or worker down) says nothing about it. The user is told once per tool."""
    source = ToolFeedback(tools=["flaky"])
    text = '<tool name="flaky">down 1</tool><tool name="flaky">up</tool><tool name="flaky">down 2</tool>'
    with pytest.warns(RuntimeWarning, match=r"tool 'flaky' could not run a call, through no fault of the call "
                                            r"\(the backend is unreachable\)") as caught:
        items = resolve(source.feedback(PROBLEM, rollout(text), FAILED, []))
        again = source.run_calls(text)
    assert [i.text for i in items] == [i.text for i in again] == ["Tool flaky(up) → ran up"]
    assert items[0].data["index"] == 2
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_a_sympy_worker_that_cannot_start_is_kept_from_the_expert(tmp_path, monkeypatch):
    """A worker program that dies before it is ready is the tool failing, not the expression."""
    broken = tmp_path / "worker.py"
    broken.write_text("import sys\nsys.exit(3)\n")
    monkeypatch.setattr(sympy_tool, "WORKER", str(broken))
    source = ToolFeedback(tools=["sympy", "calculator"])
    try:
        with pytest.warns(RuntimeWarning, match=r"tool 'sympy' could not run a call.*could not start.*exit status 3"):
            items = source.run_calls('<tool name="sympy">x + x == 2*x</tool><tool name="calculator">6*7</tool>')
    finally:
        source.tools["sympy"].close()
    assert [i.text for i in items] == ["Tool calculator(6*7) → 42"]


def test_a_sympy_expression_that_exhausts_the_worker_is_still_feedback():
    """Running out of memory on the student's expression is the call's fault: the expert hears it."""
    source = ToolFeedback(tools=["sympy"], tool_options={"sympy": {"memory_mb": 128, "timeout_s": 30, "workers": 1}})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            [item] = source.run_calls('<tool name="sympy">expand: (a + b + c + d + f + g + h + 1)**30</tool>')
    finally:
        source.tools["sympy"].close()
    assert item.text.endswith("→ error: sympy ran out of memory on this input")


def test_a_sandbox_backend_that_cannot_run_here_stops_the_build():
    """A Docker engine nobody can reach is said at build, naming the option, not on every call."""
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    code = ("from distil_tools import ToolFeedback\n"
            "ToolFeedback(tools=['python'], tool_options={'python': {'backend': 'docker'}})\n")
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode != 0
    assert ("ConfigError: tools feedback: option tool_options.python.backend must be a sandbox backend that runs here, "
            "and sandbox backend 'docker' is unavailable: ") in ran.stderr
    assert "pick another of auto, bwrap, docker, process, or leave python out of `tools` (got 'docker', a str)" in ran.stderr
