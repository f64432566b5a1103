"""A process a rollout leaves cannot hide from the check between rollouts of a batch.

The hostile rollout here starts a process whose main thread ends with a raw ``exit`` system call
while another of its threads runs on: ``/proc/<pid>/stat`` then shows it as a zombie. That
process waits until the next rollout's code is in place and then hands it the answer in
``/tmp/answer``. The next rollout passes only when it gets the answer: graded alone it fails, so
batched after the hostile one it must fail too (the batch stops at the hostile rollout and the
next is graded in a job of its own), in a batch job and in a grading session.
"""

from __future__ import annotations

import platform

import pytest
from code_exec_testlib import problem, rollout, skip_unless_available

from distil_code_exec import CodeExecVerifier

ANSWER = {"entry_point": "f", "calls": [{"args": [], "expected": 73910558}], "timeout_s": 2}
# What the hidden process does: wait for the next rollout's code, then plant the answer.
FEEDS_THE_NEXT = '''
def feed_the_next():
    os.setsid()
    for fd in range(64):
        try:
            os.close(fd)
        except OSError:
            pass
    mine = open("solution.py", "rb").read()
    while True:
        try:
            if open("solution.py", "rb").read() not in (mine, b""):
                break
        except OSError:
            pass
        time.sleep(0.002)
    with open("/tmp/answer", "w") as fh:
        fh.write("73910558")
    time.sleep(60)
'''
# Its main thread ends with a raw exit system call while the feeding thread runs on.
MAIN_THREAD_EXITS = "import ctypes, os, threading, time\n" + FEEDS_THE_NEXT + '''
if os.fork() == 0:
    threading.Thread(target=feed_the_next).start()
    ctypes.CDLL(None).syscall({exit}, 0)
def f():
    time.sleep(0.3)
    return 0
'''
READS_THE_ANSWER = '''
import time
def f():
    end = time.time() + 1.8
    while time.time() < end:
        try:
            return int(open("/tmp/answer").read())
        except (OSError, ValueError):
            time.sleep(0.05)
    return 0
'''
SYS_EXIT = {"x86_64": 60, "aarch64": 93}.get(platform.machine())
SETUPS = [("bwrap", True), ("bwrap", False), ("process", True), ("process", False), ("docker", False)]


@pytest.mark.parametrize("backend,sessions", SETUPS)
def test_a_process_whose_main_thread_ended_is_left_over(backend, sessions):
    skip_unless_available(backend)
    if SYS_EXIT is None:
        pytest.skip(f"the exit system call's number on {platform.machine()} is not known to this test")
    verifier = CodeExecVerifier(backend=backend, cache_size=0, workers=1, sessions=sessions)
    try:
        alone = verifier.verify_many([(problem(ANSWER, "b"), rollout(READS_THE_ANSWER))])[0]
        hostile, after = verifier.verify_batch([problem(ANSWER, "a"), problem(ANSWER, "b")],
                                               [rollout(MAIN_THREAD_EXITS.format(exit=SYS_EXIT)),
                                                rollout(READS_THE_ANSWER)])
    finally:
        verifier.close()
    assert not alone.passed and not hostile.passed
    assert not after.passed, "a process the check did not see fed the next rollout its answer"
    assert verifier.counts["batch_fallbacks"] == 1
