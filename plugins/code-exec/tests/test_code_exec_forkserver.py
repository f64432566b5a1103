"""The fork server of a batch job: hostile rollouts graded many to a job still fail, and a
rollout that gets at the fork server from outside (kills it, lowers its limits) does not change
the verdicts of the rollouts after it.
"""

from __future__ import annotations

import pytest
from code_exec_testlib import problem, rollout
from test_code_exec_attacks import ATTACKS, READ_HARNESS_MEMORY, STYLES

from distil_code_exec import CodeExecVerifier

CALLS = {"entry_point": "f", "calls": [{"args": [1], "expected": 2}, {"args": [3], "expected": 6}], "timeout_s": 1}
RIGHT = "def f(x): return 2 * x"
KILL_PARENT = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + RIGHT
LOWER_PARENT_LIMITS = ("import os, resource\nfor which in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC):\n"
                       "    try:\n        resource.prlimit(os.getppid(), which, (40, 40))\n"
                       "    except OSError:\n        pass\n" + RIGHT)
CHECK_LIMITS = ("import resource\nSOFT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
                "def f(x): return 2 * x if SOFT > 40 else SOFT")


@pytest.fixture(params=["bwrap", "process"])
def backend(request):
    import distil_sandbox

    reason = distil_sandbox.available_backends().get(request.param)
    if reason:
        pytest.skip(f"sandbox backend {request.param} is unavailable here: {reason}")
    return request.param


def grade_together(backend, rows, child_source=None):
    """``rows`` of (reference, code) graded in one batch job; the verdicts and the counts."""
    verifier = CodeExecVerifier(backend=backend, cache_size=0, workers=1, batch_size=len(rows))
    if child_source is not None:
        verifier.child_source = child_source
    try:
        verdicts = verifier.verify_batch([problem(ref, pid=f"p{i}") for i, (ref, _) in enumerate(rows)],
                                         [rollout(code) for _, code in rows])
    finally:
        verifier.close()
    return verdicts, verifier.counts


@pytest.mark.slow
def test_attacks_graded_many_to_a_job_fail(backend):
    rows = [(STYLES[style], code) for code, styles in ATTACKS.values() for style in styles if style != "io"]
    verdicts, counts = grade_together(backend, rows)
    assert [v.score for v in verdicts] == [0.0] * len(rows), [v.details["tests"] for v in verdicts]
    assert counts["forked_children"] >= 3  # the fork server was in use
    memory = [v for (_, code), v in zip(rows, verdicts) if code == READ_HARNESS_MEMORY]
    for verdict in memory:  # its parent is the fork server now: not dumpable either
        assert "attack blocked" in verdict.details["tests"][0]["stderr"], verdict.details["tests"]


def test_a_rollout_that_kills_the_fork_server_does_not_touch_the_next(backend):
    rows = [(CALLS, KILL_PARENT), (CALLS, RIGHT), (CALLS, RIGHT + "  # again"), (CALLS, RIGHT + "  # and again")]
    verdicts, counts = grade_together(backend, rows)
    assert [v.passed for v in verdicts[1:]] == [True, True, True]
    assert counts["batch_fallbacks"] == 0 and counts["batched_runs"] == 4
    # the first rollout's own clean-up finds the server gone: the next ones fork from a new one
    assert counts["forked_children"] == 4


def test_a_rollout_that_lowers_the_fork_servers_limits_does_not_touch_the_next(backend):
    rows = [(CALLS, LOWER_PARENT_LIMITS), (CALLS, CHECK_LIMITS)]
    verdicts, counts = grade_together(backend, rows)
    assert verdicts[1].passed, verdicts[1].details["tests"]
    # the fork server refused to fork again: the next child started with an exec, then a new server
    assert counts["batch_fallbacks"] == 0 and counts["forked_children"] == 1
    # The control: without the fork server's check of itself, the next child inherits the limit.
    source = CodeExecVerifier(backend=backend).child_source
    assert source.count("if state() != first:") == 1
    verdicts, _ = grade_together(backend, rows, source.replace("if state() != first:", "if False:"))
    assert not verdicts[1].passed and verdicts[1].details["tests"][0]["actual"] == "40"


IDLE_PARENT = "import os\nos.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0))\n" + RIGHT
CHECK_POLICY = "import os\nPOLICY = os.sched_getscheduler(0)\ndef f(x): return 2 * x if POLICY != os.SCHED_IDLE else -1"


def test_a_rollout_that_idles_the_fork_server_does_not_idle_the_next(backend):
    """A process of the same uid may set its parent's scheduling policy to SCHED_IDLE, which no
    later child can undo; before, the fork server did not compare its policy, and every later
    rollout of the batch (and of the session) ran idle."""
    rows = [(CALLS, IDLE_PARENT), (CALLS, CHECK_POLICY)]
    verdicts, counts = grade_together(backend, rows)
    assert verdicts[1].passed, verdicts[1].details["tests"]
    assert counts["batch_fallbacks"] == 0 and counts["forked_children"] == 1
