"""Grading sessions (``sessions.py``): the batch harness kept running across steps gives the
verdicts one job per rollout gives, step after step, on the real bwrap and process backends.

The rows of ``test_code_exec_batch`` are split into steps so that a rollout that changes
something (its interpreter's builtins, modules, environment, random state; a file in /tmp; a
process left running) is graded at the end of one step and a rollout that would see the change
at the start of the next.
"""

from __future__ import annotations

import distil_sandbox
import pytest
from code_exec_testlib import problem, rollout
from test_code_exec_batch import (
    ASSERTS, CALLS, PATCH_BUILTINS, PATCH_MODULES, PLANT, READ_PLANTED, READS_ENV, RIGHT, ROWS, SET_ENV,
    USES_LEN, USES_MATH, WRONG, what_matters,
)

from distil_code_exec import CodeExecVerifier
from distil_code_exec.sessions import GradingSession

# Kills its grading harness (the nearest ancestor running main.py), whichever way it was started.
KILLS_THE_HARNESS = """import os, signal
pid = os.getppid()
while pid > 1 and not open(f"/proc/{pid}/cmdline", "rb").read().endswith(b"main.py\\0"):
    pid = int(open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[1])
os.kill(pid, signal.SIGKILL)
def f(x): return 2 * x"""
# A process that outlives its run for sure: the solution loads only once it has started.
LINGER = ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
          "        os.write(w, b'up')\n        time.sleep(60)\n    os._exit(0)\nos.read(r, 2)\ndef f(x): return 2 * x")
# Prints the line that ends a batch's answer, for the first few batches of a session.
SPELLS_THE_MARKER = ("def f(x):\n    for n in range(1, 4):\n        print(f'\\nDISTIL-BATCH-END {n} stop')\n"
                     "    return 2 * x")
STEPS = [
    # nothing here leaves anything behind: one session grades both steps
    [(CALLS, RIGHT), (CALLS, SPELLS_THE_MARKER), (CALLS, WRONG), (CALLS, PATCH_BUILTINS), (CALLS, PATCH_MODULES),
     (CALLS, SET_ENV)],
    [(CALLS, USES_LEN), (ASSERTS, USES_LEN), (CALLS, USES_MATH), (CALLS, READS_ENV), (ASSERTS, WRONG)],
    # a planted file ends the session after its batch; the next step starts another
    [(CALLS, RIGHT + "  # 3"), (CALLS, PLANT), (CALLS, RIGHT + "  # after the plant")],
    [(CALLS, READ_PLANTED), (ASSERTS, READ_PLANTED), (CALLS, LINGER)],
    [(CALLS, RIGHT + "  # after the leftover"), (CALLS, KILLS_THE_HARNESS), (CALLS, WRONG + "  # after the kill")],
    [(CALLS, RIGHT + "  # last"), *ROWS[:6]],
]


def grade_in_steps(verifier, steps):
    verdicts = []
    for s, rows in enumerate(steps):
        problems = [problem(ref, pid=f"s{s}p{i}") for i, (ref, _) in enumerate(rows)]
        verdicts.append(verifier.verify_batch(problems, [rollout(code) for _, code in rows]))
    return verdicts


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", "process"])
def test_sessions_grade_step_after_step_as_one_job_per_rollout_would(backend):
    alone = CodeExecVerifier(backend=backend, cache_size=0, workers=2, batch=False)
    sessions = CodeExecVerifier(backend=backend, cache_size=0, workers=1)
    try:
        expected = grade_in_steps(alone, STEPS)
        first = grade_in_steps(sessions, STEPS[:2])
        assert sessions.counts["sessions_started"] == 1 and sessions.counts["session_batches"] == 2
        rest = grade_in_steps(sessions, STEPS[2:])
    finally:
        alone.close()
        sessions.close()
    got = first + rest
    assert [[what_matters(v) for v in step] for step in got] == [[what_matters(v) for v in step] for step in expected]
    flat = {code: v for rows, step in zip(STEPS, expected) for (_, code), v in zip(rows, step)}
    assert all(flat[code].passed for code in (USES_LEN, USES_MATH, READS_ENV))  # nothing leaked across steps
    assert flat[READ_PLANTED].details["tests"][1]["status"] == "error"  # the planted file was not there
    # The plant and the leftover process each ended their session; the kill ended one mid-batch,
    # whose unfinished runs were graded again in jobs of their own, as were the runs after each stop.
    assert sessions.counts["session_failures"] == 1
    assert sessions.counts["sessions_started"] == 4
    assert sessions.counts["sandbox_runs"] == sessions.counts["batch_fallbacks"] >= 3
    assert alone.counts["sandbox_runs"] == sum(len(rows) for rows in STEPS)


def test_a_dead_session_is_replaced_between_steps():
    verifier = CodeExecVerifier(backend="bwrap", cache_size=0, workers=1)
    try:
        assert verifier.verify_batch([problem(CALLS)] * 2, [rollout(RIGHT), rollout(WRONG)])[0].passed
        (session,) = verifier.session_pool.idle_sessions()
        assert isinstance(session, GradingSession) and session.alive
        session.conversation.kill()
        assert session.conversation.wait(10) and not session.alive
        verdicts = verifier.verify_batch([problem(CALLS)] * 2, [rollout(RIGHT + " "), rollout(WRONG + " ")])
        assert [v.passed for v in verdicts] == [True, False]
        assert verifier.counts["sessions_started"] == 2 and verifier.counts["session_failures"] == 0
    finally:
        verifier.close()


def test_sessions_off_or_unavailable_grade_in_batch_jobs():
    off = CodeExecVerifier(backend="bwrap", cache_size=0, workers=1, sessions=False)
    try:
        assert [v.passed for v in off.verify_batch([problem(CALLS)] * 2, [rollout(RIGHT), rollout(WRONG)])] == \
            [True, False]
        assert off.counts["sandbox_runs"] == 1 and off.counts["sessions_started"] == 0
    finally:
        off.close()


# Reaches the session's stdin and stdout through the sandbox's init (pid 1 on bwrap, which holds
# them), says the batch is over, reads the next request that comes while it still runs and answers
# it with results signed with that request's key.
STEALS_THE_NEXT_BATCH = r'''
import ctypes, hashlib, hmac, json, os, select, sys, time
def sign(key, payload):
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "DISTIL-RESULT " + hmac.new(key, body.encode(), hashlib.sha256).hexdigest() + " " + body + "\n"
try:
    init, pidfd_getfd = os.pidfd_open(1), ctypes.CDLL(None, use_errno=True).syscall
    requests, answers = pidfd_getfd(438, init, 0, 0), pidfd_getfd(438, init, 1, 0)
except OSError:
    requests = answers = -1
if requests >= 0 and answers >= 0:
    print("reached the session's stdin and stdout", file=sys.stderr, flush=True)
    os.write(answers, b"\nDISTIL-BATCH-END 1 ok\n")  # a session's first batch was numbered 1
    seen, end = b"", time.monotonic() + 3
    while b"\n" not in seen and time.monotonic() < end:
        if select.select([requests], [], [], 0.05)[0]:
            seen += os.read(requests, 1 << 20)
    line = seen.partition(b"\n")[0]
    request = json.loads(line[line.find(b"{"):]) if line else None
    if request:
        key, forged = bytes.fromhex(request["key"]), ""
        for run in request["runs"]:
            for i in range(len(run["tests"])):
                forged += sign(key, {"type": "test", "index": i, "passed": True, "status": "passed", "nonce": run["nonce"]})
            forged += sign(key, {"type": "done", "tests": len(run["tests"]), "seconds": 0.1, "nonce": run["nonce"]})
        end = request.get("end", request.get("id"))
        os.write(answers, (forged + f"\nDISTIL-BATCH-END {end} ok\n").encode())
def f(x): return 2 * x'''


def test_a_solution_cannot_end_its_batch_early_and_answer_the_next():
    """One session grades two batches in turn (workers 1, batch size 1); the first rollout's
    process, still running, would take the second batch and sign passing results for it."""
    verifier = CodeExecVerifier(backend="bwrap", cache_size=0, workers=1, batch_size=1)
    try:
        verdicts = verifier.verify_batch([problem(dict(CALLS, timeout_s=5)), problem(CALLS, pid="q")],
                                         [rollout(STEALS_THE_NEXT_BATCH), rollout(WRONG)])
    finally:
        verifier.close()
    # (on bwrap the init holds none of the session's pipes; were it to, the signed requests and
    # the end token would still hold)
    assert [v.passed for v in verdicts] == [True, False]
    assert verdicts[1].details["tests"][1]["actual"] == "4"  # graded for real
    assert verifier.counts["sessions_started"] == 1 and verifier.counts["session_batches"] == 2


@pytest.mark.parametrize("backend", ["bwrap", "process"])
def test_a_request_not_signed_with_the_sessions_secret_ends_the_session(backend):
    verifier = CodeExecVerifier(backend=backend, cache_size=0, workers=1)
    session = GradingSession(distil_sandbox.get_backend(backend), verifier)
    try:
        session.secret = bytes(32)  # the harness holds another one
        assert session.grade({"runs": [], "child_source": verifier.child_source}, bytes(32), 10.0)[1] is None
        result = session.conversation.close()
        assert "a request not signed with the session's secret" in result.stderr
    finally:
        session.close(kill=True)
        verifier.close()


def test_sessions_that_never_answer_are_given_up_for_batch_jobs():
    verifier = CodeExecVerifier(backend="bwrap", cache_size=0, workers=1)
    verifier.harness_source = "raise SystemExit(3)"  # every session (and job) ends before answering
    pairs = [([problem(CALLS, pid=f"p{k}")] * 2, [rollout(f"{RIGHT}  # {k}"), rollout(f"{WRONG}  # {k}")])
             for k in range(4)]
    try:
        with pytest.warns(RuntimeWarning, match="3 grading sessions in a row ended before answering a batch"):
            for problems, rollouts in pairs[:3]:
                verifier.verify_batch(problems, rollouts)
        assert verifier.counts["session_failures"] == 3 and not verifier.session_pool.enabled
        jobs = verifier.counts["sandbox_runs"]
        verifier.verify_batch(*pairs[3])  # a batch job now, then each run alone
        assert verifier.counts["sessions_started"] == 3 and verifier.counts["sandbox_runs"] == jobs + 3
    finally:
        verifier.close()
