"""``verify_batch`` gives the verdicts ``verify`` gives, on the real sandbox backends.

A fixed set of rollouts — right, wrong, raising, timing out, not Python, repeated, and two that
try to reach a later rollout of the same sandbox job (a process left running, a file left in
/tmp) — is graded one rollout per job (the old path) and through the batch path. So are rollouts
that change what is not a process or a file (the harness's limits, priority or CPUs; a kernel
key), each followed by one that passes only where that change reached it.
"""

from __future__ import annotations

import json
import os
import platform
import re

import pytest
from code_exec_testlib import problem, rollout, skip_unless_available

from distil_code_exec import CodeExecVerifier
from distil_core import BatchVerifier, testing
from distil_core.training.step import verify

CALLS = {"entry_point": "f", "calls": [{"args": [1], "expected": 2}, {"args": [3], "expected": 6}], "timeout_s": 0.5}
ASSERTS = {"asserts": ["assert f(1) == 2", "assert f(3) == 6"], "timeout_s": 0.5}
IO = {"io": [{"stdin": "1\n", "stdout": "2\n"}, {"stdin": "3\n", "stdout": "6\n"}], "timeout_s": 0.5}

RIGHT = "def f(x): return 2 * x"
WRONG = "def f(x): return x + 1"  # right on the first test only
RAISES = "def f(x):\n    if x == 3:\n        raise ValueError('no threes')\n    return 2 * x"
SLOW = "def f(x):\n    while x == 3:\n        pass\n    return 2 * x"
BROKEN = "def f(x) return 2 * x"
EXITS = "import os\ndef f(x):\n    os._exit(3)"
LINGER = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
          "    os._exit(0)\ndef f(x): return 2 * x")
PLANT = "open('/tmp/answer', 'w').write('6')\ndef f(x): return 2 * x"
READ_PLANTED = "def f(x):\n    return int(open('/tmp/answer').read()) if x == 3 else 2 * x"
# Rollouts that change their interpreter's global state, each followed by one that would see it
# had it leaked through the fork server (whose children are copies of one interpreter).
PATCH_BUILTINS = "import builtins\nbuiltins.len = lambda x: 7\ndef f(x): return 2 * x"
USES_LEN = "def f(x): return len('ab') * x"
PATCH_MODULES = "import sys, types\nsys.modules['math'] = types.ModuleType('math')\ndef f(x): return 2 * x"
USES_MATH = "import math\ndef f(x): return int(math.sqrt(4)) * x"
SET_ENV = "import os\nos.environ['SCALE'] = '3'\ndef f(x): return 2 * x"
READS_ENV = "import os\ndef f(x): return int(os.environ.get('SCALE', '2')) * x"
SEEDS = "import random\nrandom.seed(0)\ndef f(x): return 2 * x"
RANDOM = "import random\nFIRST = random.random()\ndef f(x): return 2 * x if FIRST != 0.8444218515250481 else -1"
FORKS = "import os\nif os.fork() == 0:\n    os._exit(0)\ndef f(x): return 2 * x"
CLOSES_STDOUT = "import os, sys\nsys.stdout.close()\nos.close(1)\ndef f(x): return 2 * x"
PRINTS = "def f(x):\n    print('twice', x)\n    return 2 * x"
IGNORES_SIGNALS = "import signal\nfor s in (signal.SIGTERM, signal.SIGINT):\n    signal.signal(s, signal.SIG_IGN)\n" + SLOW
OPEN_FDS = "import os\nOPEN = len(os.listdir('/proc/self/fd'))\ndef f(x): return 2 * x if OPEN == 6 else OPEN"
STATE_ROWS = [
    (CALLS, PATCH_BUILTINS), (CALLS, USES_LEN), (ASSERTS, PATCH_BUILTINS), (ASSERTS, USES_LEN),
    (CALLS, PATCH_MODULES), (CALLS, USES_MATH), (CALLS, SET_ENV), (CALLS, READS_ENV), (CALLS, SEEDS),
    (CALLS, RANDOM), (CALLS, CLOSES_STDOUT), (CALLS, PRINTS), (CALLS, IGNORES_SIGNALS), (CALLS, PRINTS + " "),
    (CALLS, OPEN_FDS), (CALLS, FORKS), (CALLS, RIGHT + "  # after a fork"),
]
PROGRAM_RIGHT = "print(2 * int(input()))"
PROGRAM_SLOW = "x = int(input())\nwhile x == 3:\n    pass\nprint(2 * x)"

ROWS = [
    (CALLS, RIGHT), (CALLS, WRONG), (CALLS, RAISES), (CALLS, SLOW), (CALLS, BROKEN), (CALLS, RIGHT),
    (CALLS, EXITS), (ASSERTS, RIGHT), (ASSERTS, WRONG), (ASSERTS, RAISES), (ASSERTS, BROKEN),
    (IO, PROGRAM_RIGHT), (IO, PROGRAM_SLOW), (IO, RAISES), (CALLS, WRONG), *STATE_ROWS,
    (CALLS, PLANT), (CALLS, READ_PLANTED), (CALLS, LINGER), (CALLS, RIGHT + "  # after a leftover"),
    (ASSERTS, READ_PLANTED),
]


def what_matters(verdict):
    """A verdict without its timings, and without the work directory's name (the process
    backend gives every job a new one; tracebacks name it)."""
    details = verdict.details
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in details["tests"]]
    rows = json.loads(re.sub(r"/tmp/(?:distil-sandbox-jobs/)?distil-sandbox-[A-Za-z0-9_]+", "WORK", json.dumps(rows)))
    kept = {k: v for k, v in details.items() if k not in ("tests", "wall_s")}
    return verdict.passed, verdict.score, rows, kept


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", "process", "docker"])
def test_batch_verdicts_are_the_verdicts_of_one_job_per_rollout(backend):
    skip_unless_available(backend)
    # One job per rollout, two at a time, except on the process backend: its jobs share the host's
    # /tmp (docs/sandbox.md), so READ_PLANTED could read PLANT's file while both run.
    old = CodeExecVerifier(backend=backend, cache_size=0, workers=1 if backend == "process" else 2)
    new = CodeExecVerifier(backend=backend, cache_size=0, workers=1, batch_size=len(ROWS))  # one job for all
    problems = [problem(ref, pid=f"p{i}") for i, (ref, _) in enumerate(ROWS)]
    rollouts = [rollout(code) for _, code in ROWS]
    try:
        alone = old.verify_many(zip(problems, rollouts))
        together = new.verify_batch(problems, rollouts)
    finally:
        old.close()
        new.close()
    assert [what_matters(v) for v in together] == [what_matters(v) for v in alone]
    assert [v.passed for v in alone][:3] == [True, False, False]
    assert alone[ROWS.index((CALLS, READ_PLANTED))].details["tests"][1]["status"] == "error"  # no earlier file
    assert alone[3].details["tests"][1]["status"] == "timeout"
    state = {code: v for (_, code), v in zip(ROWS, alone)}
    assert all(state[code].passed for code in (USES_LEN, USES_MATH, READS_ENV, RANDOM, OPEN_FDS, PRINTS))
    assert "twice 1" in state[PRINTS].details["tests"][0]["stdout"]
    # Batched for real: the repeated rollout graded once, most rows in the shared job, their
    # children forked from the job's fork server; the rows after the planted file and after the
    # lingering process each re-graded in a job of their own (and those after a fork whose child
    # had not yet exited when the harness looked).
    assert new.counts["batched_runs"] >= 12 + len(STATE_ROWS) - 4 and new.counts["batch_fallbacks"] >= 2
    assert new.counts["forked_children"] >= new.counts["batched_runs"] - 3
    # the shared job: a grading session on bwrap and process (sessions.py), a sandbox job on docker
    sessions = 0 if backend == "docker" else 1
    assert new.counts["session_batches"] == sessions and new.counts["sessions_started"] == sessions
    assert new.counts["sandbox_runs"] == 1 - sessions + new.counts["batch_fallbacks"]
    assert old.counts["sandbox_runs"] == len(ROWS)


def test_the_trainer_grades_a_step_in_one_call():
    verifier = CodeExecVerifier(backend="bwrap", workers=2)
    assert isinstance(verifier, BatchVerifier)
    problems = [problem(CALLS, pid="a"), problem(ASSERTS, pid="b")]
    rollouts = [rollout(RIGHT), rollout(WRONG), rollout(RIGHT), rollout(RIGHT), rollout(BROKEN), rollout(RIGHT)]
    try:
        verdicts = verify(verifier, "code_exec", problems, rollouts, 3)
        assert [v.passed for v in verdicts] == [True, False, True, True, False, True]
        assert verifier.counts["session_batches"] == 2  # four distinct rollouts, two batches
        assert verifier.counts["batched_runs"] == 4 and verifier.counts["cache_hits"] == 0
        again = verify(verifier, "code_exec", problems, rollouts, 3)  # the next step: all remembered
        assert [what_matters(v) for v in again] == [what_matters(v) for v in verdicts]
        assert verifier.counts["session_batches"] == 2 and verifier.counts["cache_hits"] == 6
        assert verifier.counts["sandbox_runs"] == 0
    finally:
        verifier.close()


# Loads in 2.4 s (a load's limit is 3 s), then hangs on every call but f(9). Each test after a
# timeout loads the code again, so the run outlasts the whole run's default budget (3 + 3 +
# 1.1 * 0.2 * 3 s) by more than a second, though no load and no test outlasts its own limit: alone,
# the sandbox kills it in the second reload. (The sleeps are the graded solution's, not the test's.)
RELOADS = {"entry_point": "f", "calls": [{"args": [1], "expected": 2}, {"args": [3], "expected": 6},
                                         {"args": [9], "expected": 18}], "timeout_s": 0.2}
SLOW_RELOADS = "import time\ntime.sleep(2.4)\ndef f(x):\n    while x != 9:\n        time.sleep(0.05)\n    return 2 * x"


@pytest.mark.slow
def test_a_run_that_outlasts_its_own_budget_in_a_batch_gets_the_verdict_of_a_job_of_its_own():
    skip_unless_available("bwrap")
    rows = [(RELOADS, SLOW_RELOADS), (CALLS, RIGHT), (CALLS, WRONG)]  # then two graded after its timeouts
    problems = [problem(ref, pid=f"p{i}") for i, (ref, _) in enumerate(rows)]
    rollouts = [rollout(code) for _, code in rows]
    alone = CodeExecVerifier(backend="bwrap", cache_size=0, workers=2, batch=False)
    in_sessions = CodeExecVerifier(backend="bwrap", cache_size=0, workers=1)  # one batch for all three
    in_jobs = CodeExecVerifier(backend="bwrap", cache_size=0, workers=1, sessions=False)
    try:
        expected = alone.verify_batch(problems, rollouts)
        got = {name: v.verify_batch(problems, rollouts) for name, v in (("sessions", in_sessions), ("jobs", in_jobs))}
    finally:
        for v in (alone, in_sessions, in_jobs):
            v.close()
    assert [v.passed for v in expected] == [False, True, False]
    assert expected[0].details["tests"][0]["status"] == "timeout"
    for name, verdicts in got.items():
        assert [what_matters(v) for v in verdicts] == [what_matters(v) for v in expected], name
    assert in_sessions.counts["session_batches"] == 1 and in_jobs.counts["session_batches"] == 0


@pytest.mark.parametrize("timeout", [float("inf"), 1e12, 0, True, "5"])
def test_a_timeout_no_sandbox_can_keep_is_refused_when_built(timeout):
    """Before: inf was accepted, and every grade then raised an OverflowError."""
    with pytest.raises(ValueError, match="code_exec: timeout_s must be a number of seconds above 0 and at most 86400"):
        CodeExecVerifier(backend="bwrap", timeout_s=timeout)


def test_batch_size_is_checked_and_bounds_a_job():
    with pytest.raises(ValueError, match="code_exec: batch_size must be a whole number of at least 1 \\(got 0\\)"):
        CodeExecVerifier(backend="bwrap", batch_size=0)
    verifier = CodeExecVerifier(backend="bwrap", workers=1, batch_size=2, cache_size=0)
    try:
        codes = [f"def f(x): return 2 * x + {k} - {k}" for k in range(5)]
        verdicts = verifier.verify_batch([problem(CALLS)] * 5, [rollout(c) for c in codes])
    finally:
        verifier.close()
    assert all(v.passed for v in verdicts)
    assert verifier.counts["session_batches"] == 3 and verifier.counts["batched_runs"] == 5


def test_a_batch_verifier_that_miscounts_is_named():
    class Short:
        def verify_batch(self, problems, rollouts):
            return []

    with pytest.raises(Exception, match=r"verifier 'short': verify_batch returned 0 verdicts for 1 rollouts"):
        verify(Short(), "short", [testing.problem("x")], [testing.rollout("x")], 1)


# Each "leaves" rollout passes on its own and changes something outside its processes that the
# rollout after it could see: the grading harness's own limits, priority or CPUs (a process of
# the same uid may change them from outside: the harness is the parent of a program's process),
# its scheduling policy included,
# or a kernel key of the sandbox's uid. Each "sees" rollout passes only where that change reached it.
KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(platform.machine())
HOLDS = {"io": [{"stdin": "", "stdout": "ok"}], "timeout_s": 2}
KEYS = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nADD_KEY, KEYCTL = {}\n".format(KEYCTL)
LEAVES_AND_SEES = {
    "limits": ("import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_FSIZE, (12345, 12345))\nprint('ok')",
               "import resource\nprint('ok' if resource.getrlimit(resource.RLIMIT_FSIZE)[0] == 12345 else 'no')"),
    "priority": ("import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)\nprint('ok')",
                 "import os\nprint('ok' if os.getpriority(os.PRIO_PROCESS, 0) == 19 else 'no')"),
    "scheduling": ("import os\nos.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0))\nprint('ok')",
                   "import os\nprint('ok' if os.sched_getscheduler(0) == os.SCHED_IDLE else 'no')"),
    "cpus": ("import os\nos.sched_setaffinity(os.getppid(), {max(os.sched_getaffinity(0))})\nprint('ok')",
             "import os\nprint('ok' if len(os.sched_getaffinity(0)) == 1 else 'no')"),
    "user keyring": (KEYS + "libc.syscall(ADD_KEY, b'user', b'answer', b'3', 1, -4)\nprint('ok')",
                     KEYS + "print('ok' if libc.syscall(KEYCTL, 10, -4, b'user', b'answer', 0) > 0 else 'no')"),
    "persistent keyring": (
        KEYS + "mine = libc.syscall(KEYCTL, 22, -1, -3)\nlibc.syscall(ADD_KEY, b'user', b'answer', b'3', 1, mine)\nprint('ok')",
        KEYS + "mine = libc.syscall(KEYCTL, 22, -1, -3)\n"
               "print('ok' if libc.syscall(KEYCTL, 10, mine, b'user', b'answer', 0) > 0 else 'no')"),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", "process"])
def test_what_a_rollout_changes_outside_its_processes_does_not_reach_the_next(backend):
    if KEYCTL is None:
        pytest.skip(f"keyctl's system call number on {platform.machine()} is not known to this test")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a rollout cannot move the harness to fewer")
    alone = CodeExecVerifier(backend=backend, cache_size=0, workers=1, batch=False)
    together = CodeExecVerifier(backend=backend, workers=1)  # its verdicts are cached
    names = list(LEAVES_AND_SEES)
    try:
        expected = [alone.grade(problem(HOLDS, pid=name), rollout(LEAVES_AND_SEES[name][1])) for name in names]
        got = []
        for name in names:  # one step each: the change, then a rollout that would see it
            leaves, sees = LEAVES_AND_SEES[name]
            left, seen = together.verify_batch([problem(HOLDS, pid=f"{name}-a"), problem(HOLDS, pid=name)],
                                               [rollout(leaves), rollout(sees)])
            assert left.passed, (name, left.details["tests"])
            got.append(seen)
        again = [together.grade(problem(HOLDS, pid=name), rollout(LEAVES_AND_SEES[name][1])) for name in names]
    finally:
        alone.close()
        together.close()
    assert [what_matters(v) for v in got] == [what_matters(v) for v in expected], dict(zip(names, got))
    assert not any(v.passed for v in expected)
    # each change ended its batch: the rollout after it was graded in a job of its own, and the
    # verdict the cache keeps is that one
    assert together.counts["batch_fallbacks"] == len(names)
    assert together.counts["cache_hits"] == len(names) and [what_matters(v) for v in again] == [what_matters(v) for v in got]


# A job started beside a running batch (another worker, a fallback job) joins a session keyring
# of its own, under the same uid where jobs run as the caller (bwrap without root): that must not
# read as a key the running batch's last rollout left. A key added to a keyring is still seen.
JOINS_A_SESSION = "import ctypes, sys\nlibc = ctypes.CDLL(None)\nlibc.syscall({keyctl}, 1, None)\nprint('in', flush=True)\nsys.stdin.read()"
ADDS_A_KEY = "import ctypes\nctypes.CDLL(None).syscall({add_key}, b'user', b'left-behind', b'3', 1, -4)"


def test_the_key_check_ignores_a_neighbours_new_session_keyring_and_sees_a_new_key():
    import subprocess
    import sys

    from distil_code_exec import harness

    if KEYCTL is None:
        pytest.skip(f"keyctl's system call number on {platform.machine()} is not known to this test")
    add_key, keyctl = KEYCTL
    before = harness._keyrings()
    neighbour = subprocess.Popen([sys.executable, "-c", JOINS_A_SESSION.format(keyctl=keyctl)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert neighbour.stdout.readline().strip() == "in"  # its session keyring exists now
        assert harness._keyrings() == before
    finally:
        neighbour.communicate("")
    subprocess.run([sys.executable, "-c", ADDS_A_KEY.format(add_key=add_key)], check=True)
    try:
        assert harness._keyrings() != before
    finally:  # unlink it again: KEYCTL_UNLINK needs its id, found by searching the user keyring
        libc = __import__("ctypes").CDLL(None)
        found = libc.syscall(keyctl, 10, -4, b"user", b"left-behind", 0)
        if found > 0:
            libc.syscall(keyctl, 9, found, -4)
