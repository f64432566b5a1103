"""What a rollout leaves behind: neither a process nor state outside its processes (a message
queue, an extended attribute of the work directory, the harness's own file rewritten with its
modification time set back) reaches the next rollout of a batch, and directories nested
thousands deep do not keep a rollout from its verdict.

The hostile rollout here starts a process whose main thread ends with a raw ``exit`` system call
while another of its threads runs on: ``/proc/<pid>/stat`` then shows it as a zombie. That
process waits until the next rollout's code is in place and then hands it the answer in
``/tmp/answer``. The next rollout passes only when it gets the answer: graded alone it fails, so
batched after the hostile one it must fail too (the batch stops at the hostile rollout and the
next is graded in a job of its own), in a batch job and in a grading session.
"""

from __future__ import annotations

import os
import platform

import pytest
from code_exec_testlib import problem, rollout, skip_unless_available
from distil_sandbox import _hostuid
from distil_sandbox._rmtree import remove_path

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


# Ways to hand the next rollout of the same sandbox a value, each as put() and get().
CHANNELS = {
    "message queue": """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
class TS(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
def queue():
    return libc.mq_open(b"/leak", os.O_CREAT | os.O_RDWR, 0o600, None)
def put(value):
    libc.mq_send(queue(), value, len(value), 0)
def get():
    buf = ctypes.create_string_buffer(8192)
    n = libc.mq_timedreceive(queue(), buf, 8192, None, ctypes.byref(TS(int(time.time()), 0)))
    return buf.raw[:n] if n > 0 else b""
""",
    "work directory xattr": """
import os
def put(value):
    os.setxattr(os.getcwd(), "user.leak", value)
def get():
    try:
        return os.getxattr(os.getcwd(), "user.leak")
    except OSError:
        return b""
""",
    "harness file": """
import os
HARNESS = os.path.join(os.getcwd(), "main.py")
def put(value):
    st = os.stat(HARNESS)
    with open(HARNESS, "r+b") as fh:
        fh.write(b"#" + value + b"\\n")
    os.utime(HARNESS, ns=(st.st_atime_ns, st.st_mtime_ns))
def get():
    with open(HARNESS, "rb") as fh:
        head = fh.read(10)
    return head[1:9] if head[:1] == b"#" else b""
""",
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("backend,sessions", SETUPS)
def test_state_a_rollout_leaves_in_its_sandbox_does_not_reach_the_next(backend, sessions, channel):
    skip_unless_available(backend)
    leaves = CHANNELS[channel] + "put(b'73910558')\ndef f():\n    return 0\n"
    reads = CHANNELS[channel] + "def f():\n    value = get()\n    return int(value) if value else 0\n"
    verifier = CodeExecVerifier(backend=backend, cache_size=0, workers=1, sessions=sessions)
    try:
        alone = verifier.verify_many([(problem(ANSWER, "b"), rollout(reads))])[0]
        _, after = verifier.verify_batch([problem(ANSWER, "a"), problem(ANSWER, "b")],
                                         [rollout(leaves), rollout(reads)])
    finally:
        verifier.close()
    assert not alone.passed
    assert not after.passed, f"the {channel} carried the answer to the next rollout"


NESTS = "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint(3)\n"


@pytest.mark.parametrize("sessions", [True, False])
def test_a_solution_that_nests_directories_thousands_deep_gets_its_verdict(sessions):
    """The process backend's work directory is on the host: it is removed however deep it goes."""
    skip_unless_available("process")
    before = jobs_dirs()
    verifier = CodeExecVerifier(backend="process", cache_size=0, workers=1, sessions=sessions)
    try:
        reference = {"io": [{"stdin": "", "stdout": "3"}], "timeout_s": 60}
        [verdict] = verifier.verify_batch([problem(reference)], [rollout(NESTS)])
    finally:
        verifier.close()
        left = sorted(jobs_dirs() - before)
        for name in left:  # the test's own clean-up; the assert below says what was wrong
            remove_path(os.path.join(_hostuid.JOBS_DIR, name))
    assert verdict.passed, verdict.details["tests"]
    assert not left


def jobs_dirs() -> set[str]:
    return set(os.listdir(_hostuid.JOBS_DIR)) if os.path.isdir(_hostuid.JOBS_DIR) else set()
