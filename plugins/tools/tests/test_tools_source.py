"""How the feedback source runs calls: at the same time, each under a deadline, a stuck one never
holding up the step or the process, and failures of a tool's own machinery kept from the expert."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
from tools_testlib import FAILED, PROBLEM, rollout

from distil_core import ConfigError, resolve, resolve_all
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


class Gate:
    """A tool that blocks until ``release`` is set (forever, for a stuck tool); counts who is inside."""

    name = "gate"

    def __init__(self, barrier=None):
        self.release, self.barrier, self.entered = threading.Event(), barrier, threading.Event()
        self.lock, self.inside, self.most_inside = threading.Lock(), 0, 0

    def run(self, input):
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.entered.set()
        try:
            if self.barrier is not None:
                self.barrier.wait()  # returns once `parties` calls are inside at the same time
            elif input == "stuck":
                self.release.wait()
            return ToolResult(f"through {input}")
        finally:
            with self.lock:
                self.inside -= 1


@pytest.fixture
def gate():
    """Registers a fresh Gate; the factory takes the barrier the test wants."""
    made = []

    def make(barrier=None):
        tool = Gate(barrier)
        made.append(tool)

        class Plugin:
            @hookimpl
            def register_tools(register):
                register(tool)

        get_registry().register_plugin(Plugin, "gate_plugin")
        return tool

    try:
        yield make
    finally:
        for tool in made:
            tool.release.set()  # a stuck call's thread ends with the test
        get_registry().unregister_plugin("gate_plugin")


def test_a_call_past_its_deadline_is_a_failed_call_and_frees_its_slot(gate):
    """A tool that never returns costs one deadline, not the step: the call fails in the feedback,
    and the next call runs although only one may run at a time (the stuck one gave its slot back)."""
    tool = gate()
    source = ToolFeedback(tools=["gate", "calculator"], call_timeout_s=0.5, max_parallel=1)
    text = '<tool name="gate">stuck</tool><tool name="calculator">6*7</tool>'
    with pytest.warns(RuntimeWarning, match=r"a call to tool 'gate' ran past call_timeout_s \(0.5 s\) and was given up on"):
        items = source.run_calls(text)
        again = resolve(source.feedback(PROBLEM, rollout(text), FAILED, []))
    expected = ["Tool gate(stuck) → error: the call did not finish within 0.5 s", "Tool calculator(6*7) → 42"]
    assert [i.text for i in items] == [i.text for i in again] == expected
    assert items[0].data["ok"] is False and items[0].data["data"] == {"deadline_s": 0.5}
    assert tool.inside == 2 and source.runner.abandoned == 2 and source.runner.running == 0


def test_the_calls_of_a_step_run_at_the_same_time(gate):
    """32 rollouts whose calls each wait until all 32 are running (default max_parallel) all pass:
    none waits for another to finish first."""
    parties = 32
    tool = gate(threading.Barrier(parties, timeout=30))
    source = ToolFeedback(tools=["gate"])
    results = resolve_all([source.feedback(PROBLEM, rollout(f'<tool name="gate">{i}</tool>'), FAILED, [])
                           for i in range(parties)])
    assert [[i.text for i in items] for items in results] == [[f"Tool gate({i}) → through {i}"] for i in range(parties)]
    assert tool.most_inside == parties


def test_no_more_than_max_parallel_calls_run_at_once(gate):
    """Calls beyond max_parallel wait for a slot (their deadline starts when they get one)."""
    tool = gate(threading.Barrier(4, timeout=30))
    source = ToolFeedback(tools=["gate"], max_parallel=4)
    text = "".join(f'<tool name="gate">{i}</tool>' for i in range(3))
    results = resolve_all([source.feedback(PROBLEM, rollout(text), FAILED, []) for _ in range(4)])
    assert all([i.text for i in items] == [f"Tool gate({i}) → through {i}" for i in range(3)] for items in results)
    assert tool.most_inside == source.runner.most_running == 4


def test_a_cancelled_step_gives_its_calls_slots_back(gate):
    """A step given up on while a call hangs (Ctrl-C in a notebook, a cancelled task) does not keep
    that call's slot: with one slot, the next step's call still runs."""
    tool = gate()
    source = ToolFeedback(tools=["gate", "calculator"], max_parallel=1)

    async def scenario():
        stuck = asyncio.ensure_future(source.feedback(PROBLEM, rollout('<tool name="gate">stuck</tool>'), FAILED, []))
        await asyncio.get_running_loop().run_in_executor(None, tool.entered.wait, 30)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        # waits for the one slot: a bound, so a slot never given back fails the test instead of hanging it
        return await asyncio.wait_for(source.feedback(PROBLEM, rollout('<tool name="calculator">6*7</tool>'), FAILED, []), 60)

    assert [i.text for i in asyncio.run(scenario())] == ["Tool calculator(6*7) → 42"]
    assert tool.inside == 1 and source.runner.running == 0


@pytest.mark.parametrize("options, message", [
    ({"call_timeout_s": 0}, r"option call_timeout_s must be a number of seconds above 0 and at most 86400 \(got 0, an int\)"),
    ({"call_timeout_s": "60"}, r"option call_timeout_s must be .* \(got '60', a str: write it without quotes\)"),
    ({"call_timeout_s": float("inf")}, r"option call_timeout_s must be a number of seconds"),
    ({"max_parallel": 0}, r"option max_parallel must be a whole number from 1 to 1024 \(got 0, an int\)"),
    ({"max_parallel": 8.0}, r"option max_parallel must be a whole number from 1 to 1024 \(got 8.0, a float\)"),
    ({"call_timeout_s": 5}, r"option call_timeout_s \(5 s\) must be longer than tool 'python'\'s own time limit "
                            r"\(tool_options.python.timeout_s = 10 s\), so that limit can answer first"),
    ({"call_timeout_s": 20, "tool_options": {"sympy": {"timeout_s": 30}}}, r"longer than tool 'sympy'\'s own time limit"),
])
def test_the_deadline_and_the_bound_are_checked_at_build(options, message):
    with pytest.raises(ConfigError, match=message):
        ToolFeedback(tools=["python", "sympy"], **options)


HANGING_RUN = textwrap.dedent("""
    import sys, threading
    from distil_core import resolve_all
    from distil_core.testing import problem, rollout, verdict
    from distil_tools import ToolFeedback, get_registry, hookimpl

    class Hang:
        name = "hang"
        description = "never returns"
        def run(self, input):
            print("started", flush=True)
            threading.Event().wait()

    class Plugin:
        @hookimpl
        def register_tools(register):
            register(Hang())

    get_registry().register_plugin(Plugin, "hang_plugin")
    source = ToolFeedback(tools=["hang"])
    try:
        resolve_all([source.feedback(problem("1", "p"), rollout('<tool name="hang">x</tool>'), verdict(False), [])])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def test_ctrl_c_ends_a_run_whose_tool_hangs():
    """The stuck call's thread cannot keep the interpreter from exiting: Ctrl-C reaches the caller
    and the process ends (the event loop's default executor would wait for that thread forever)."""
    proc = subprocess.Popen([sys.executable, "-c", HANGING_RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "started\n"  # the tool is running: now press Ctrl-C
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (0, "interrupted\n"), err


class Sticky:
    """A tool whose close() fails."""

    name = "sticky"

    def run(self, input):
        return "ok"

    def close(self):
        raise OSError("the handle is gone")


def test_the_runs_close_stops_the_sympy_workers_and_reports_a_tool_that_fails_to_close():
    """Runtime.close() closes each feedback source that has close(): the source closes its tools,
    all of them even when one fails, so no sympy worker outlives the run."""
    from distil_core.training.runtime import Runtime

    class StickyPlugin:
        @hookimpl
        def register_tools(register):
            register(Sticky())

    get_registry().register_plugin(StickyPlugin, "sticky_plugin")
    try:
        source = ToolFeedback(tools=["sticky", "sympy"])
        assert [i.text for i in source.run_calls('<tool name="sympy">simplify: x + x</tool>')] == ["Tool sympy(simplify: x + x) → 2*x"]
        [worker] = source.tools["sympy"]._idle
        assert worker.alive
        runtime = Runtime(config=None, model=None, tokenizer=None, device=None, host=None, feedback_sources=[("tools", source)])
        failures = runtime.close()
        assert not worker.alive and not os.path.exists(f"/proc/{worker.proc.pid}")
        assert failures == ["feedback source ToolFeedback: close() failed (RuntimeError: tools feedback: "
                            "closing failed for tool 'sticky': OSError: the handle is gone)"]
        assert source.tools["sympy"]._idle == []
    finally:
        get_registry().unregister_plugin("sticky_plugin")
