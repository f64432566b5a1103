"""The container supervisor (pid 1 of every docker sandbox) against jobs that aim at it: signals
sent to pid 1, and trees of directories too deep to remove recursively. A job's result must come
back once, from the container it ran in, and a warm container must stay usable."""

from __future__ import annotations

import pytest

import distil_sandbox
from distil_sandbox import Job
from distil_sandbox.pool import Pool
from sandbox_docker_testlib import backend_or_skip

# Every signal a program may send, to pid 1 (the supervisor): SIGINT raised KeyboardInterrupt in
# it. SIGKILL and SIGSTOP from inside the namespace are dropped by the kernel all the same.
SIGNAL_PID_1 = """
import os, signal
sent = []
for sig in sorted(signal.valid_signals()):
    try:
        os.kill(1, sig)
        sent.append(int(sig))
    except OSError:
        pass
print("sent", len(sent), "then", "alive", flush=True)
"""

# 1,100 nested directories (and files in them) under /tmp and /work: more than Python's
# recursion limit, which a recursive clean-up hit.
DEEP_TREE = """
import os
for top in ("/tmp", "/work"):
    os.chdir(top)
    for depth in range(1100):
        os.mkdir("d")
        os.chdir("d")
        if depth % 100 == 0:
            open("f", "w").close()
    os.chmod(".", 0o500)   # a locked leaf as well
print("deep", flush=True)
"""

LOOK = "import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('/work')))\n"


@pytest.fixture
def docker_sandbox():
    """The docker backend, or a skip (a failure where DISTIL_SANDBOX_REQUIRE names it)."""
    return backend_or_skip("docker")


@pytest.mark.parametrize("code,expected", [(SIGNAL_PID_1, "alive"), (DEEP_TREE, "deep")], ids=["signals", "deep-tree"])
def test_a_fresh_container_returns_the_jobs_result(docker_sandbox, code, expected):
    result = distil_sandbox.run(code, backend="docker", timeout_s=30, memory_mb=256)
    assert result.ok, result
    assert result.stdout.split()[-1] == expected


@pytest.mark.parametrize("code,expected", [(SIGNAL_PID_1, "alive"), (DEEP_TREE, "deep")], ids=["signals", "deep-tree"])
def test_a_warm_container_runs_the_job_once_and_stays_usable(docker_sandbox, code, expected):
    with Pool(backend="docker", workers=1, timeout_s=30, memory_mb=256) as pool:
        first = pool.submit(code).result()
        after = pool.submit(LOOK).result()
        # one container: the job was not run again on a second one, and the first was kept
        assert pool.containers_started == 1
    assert first.ok and first.stdout.split()[-1] == expected, first
    assert after.ok and after.stdout == "[] ['main.py']\n", after


def test_a_job_that_signals_pid_1_still_has_its_timeout_enforced(docker_sandbox):
    code = SIGNAL_PID_1 + "while True:\n    pass\n"
    with Pool(backend="docker", workers=1, timeout_s=1, memory_mb=256) as pool:
        result = pool.submit(Job(code=code, timeout_s=1, memory_mb=256)).result()
        assert pool.containers_started == 1
    assert result.timed_out and result.stdout.endswith("alive\n")


# The jobs run under the supervisor's uid, so the kernel lets a job lower pid 1's limits and
# priority; every later job of a warm container started from it would inherit them.
LOWER_PID_1 = """
import os, resource
resource.prlimit(1, resource.RLIMIT_AS, (150 << 20, 150 << 20))
os.setpriority(os.PRIO_PROCESS, 1, 19)
os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))
print("lowered", flush=True)
"""
PROBE = """
import os, resource
print(resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY, os.getpriority(os.PRIO_PROCESS, 0),
      os.sched_getscheduler(0) == os.SCHED_IDLE)
"""


def test_a_job_that_lowers_pid_1_retires_its_container(docker_sandbox):
    """Before: the container was kept, and every later job in it ran with 150 MiB of address
    space, nice 19 and SCHED_IDLE (a correct rollout needing 160 MB failed with MemoryError)."""
    with Pool(backend="docker", workers=1, timeout_s=30, memory_mb=512) as pool:
        before = pool.submit(PROBE).result()
        lowered = pool.submit(LOWER_PID_1).result()
        after = pool.submit(PROBE).result()
        assert pool.containers_started == 2  # the lowered one was replaced
    assert lowered.ok and lowered.stdout == "lowered\n", lowered
    assert before.stdout == after.stdout == "True 0 False\n", (before, after)


# The job owns /work, the tmpfs root its files go in: emptying it leaves the directory itself as
# the job left it. A user attribute, an ACL entry or its times would carry data to the next job.
MARKS_WORK = """
import os
os.setxattr("/work", "user.answer", b"3")
os.setxattr("/work", "system.posix_acl_access",
            bytes.fromhex("02000000" "0100" "0700" "ffffffff" "0200" "0700" "39300000" "0400" "0500" "ffffffff"
                          "1000" "0700" "ffffffff" "2000" "0500" "ffffffff"))  # user 12345: rwx
os.utime("/work", ns=(73910558, 73910559))
print(sorted(os.listxattr("/work")), flush=True)
"""
READS_WORK = "import os\nst = os.stat('/work')\nprint(sorted(os.listxattr('/work')), st.st_atime_ns == 73910558)\n"


def test_what_a_job_sets_on_the_work_directory_itself_does_not_reach_the_next(docker_sandbox):
    with Pool(backend="docker", workers=1, timeout_s=30, memory_mb=256) as pool:
        marked = pool.submit(MARKS_WORK).result()
        after = pool.submit(READS_WORK).result()
        assert pool.containers_started == 1
    assert marked.stdout == "['system.posix_acl_access', 'user.answer']\n", marked
    assert after.stdout == "[] False\n", after
