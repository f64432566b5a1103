"""The Pool: warm docker containers that forget every job, and thread pools for the other backends."""

from __future__ import annotations

import threading
import time

import pytest

from distil_sandbox import Job
from distil_sandbox.pool import Pool
from sandbox_docker_testlib import backend_or_skip, labelled_containers, wait_until


@pytest.fixture
def docker_sandbox():
    """The docker backend, or a skip (a failure where DISTIL_SANDBOX_REQUIRE names it)."""
    return backend_or_skip("docker")


def square_job(i: int) -> Job:
    return Job(code="import sys\nn = int(input())\nprint(n * n)\nprint(n, file=sys.stderr)", stdin=f"{i}\n",
               timeout_s=10, memory_mb=256)


def running_pool_containers(backend, before: dict[str, str]) -> set[str]:
    return {cid for cid, status in labelled_containers(backend).items() if cid not in before and status == "running"}


def test_many_jobs_on_a_few_warm_containers_come_back_in_order(docker_sandbox):
    before = labelled_containers(docker_sandbox)
    with Pool(backend="docker", workers=3, timeout_s=10, memory_mb=256) as pool:
        assert len(running_pool_containers(docker_sandbox, before)) == 3
        results = pool.map([square_job(i) for i in range(40)])
        assert pool.containers_started == 3
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(40)]
    assert [r.stderr for r in results] == [f"{i}\n" for i in range(40)]
    assert all(r.ok and r.backend == "docker" for r in results)
    assert set(labelled_containers(docker_sandbox)) - set(before) == set()  # close() removed them


LEAVE_TRACES = r"""
import os, subprocess
subprocess.Popen(["sleep", "600"], start_new_session=True)   # escapes the job's session
if os.fork() == 0:                                            # and an orphan that ignores SIGTERM
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
for path in ("/work/left.txt", "/tmp/left.txt", "/dev/shm/left.txt"):
    open(path, "w").write("secret")
os.makedirs("/work/locked/inner")
os.chmod("/work/locked", 0o500)
import ctypes
assert ctypes.CDLL(None).shmget(4242, 4096, 0o1666) >= 0                  # System V shared memory
print([line for line in open("/proc/1/cgroup") if ":memory:" in line][0].strip())  # names the container
os.chmod("/work", 0)                                                      # and lock the next job out
"""

LOOK_AROUND = r"""
import os
others = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) not in (1, os.getpid()):
        others.append(open(f"/proc/{pid}/cmdline").read().replace("\0", " "))
print(sorted(os.listdir("/work")), os.listdir("/tmp"), os.listdir("/dev/shm"), others,
      open("/proc/sysvipc/shm").read().count("\n"))
print([line for line in open("/proc/1/cgroup") if ":memory:" in line][0].strip())  # names the container
"""


def test_a_job_sees_no_files_or_processes_of_the_job_before_it(docker_sandbox):
    with Pool(backend="docker", workers=1, timeout_s=10, memory_mb=256) as pool:
        first = pool.submit(LEAVE_TRACES).result()
        second = pool.submit(LOOK_AROUND).result()
        assert pool.containers_started == 1
    assert first.ok, first
    lines = second.stdout.splitlines()
    assert lines[0] == "['main.py'] [] [] [] 1"  # 1: the header line of an empty shm table
    assert lines[1] == first.stdout.strip()  # the same container ran both


def test_a_timed_out_job_is_killed_and_the_container_kept(docker_sandbox):
    with Pool(backend="docker", workers=1, timeout_s=1, memory_mb=256) as pool:
        spin = pool.submit("while True:\n    pass").result()
        after = pool.submit("print('next')", timeout_s=5).result()
        assert pool.containers_started == 1
    assert spin.timed_out and spin.signal == "SIGKILL"
    assert after.ok and after.stdout == "next\n"


def test_a_container_that_hit_its_memory_limit_is_replaced(docker_sandbox):
    with Pool(backend="docker", workers=1, timeout_s=10, memory_mb=128) as pool:
        hog = pool.submit("x = bytearray(1 << 30)").result()
        after = pool.submit("print('fine')").result()
        assert pool.containers_started == 2
    assert hog.signal == "SIGKILL" and not hog.ok
    assert after.ok and after.stdout == "fine\n"


def test_a_killed_container_is_replaced_and_the_pool_keeps_going(docker_sandbox):
    client = docker_sandbox.client()
    before = labelled_containers(docker_sandbox)
    with Pool(backend="docker", workers=2, timeout_s=10, memory_mb=256) as pool:
        warm = sorted(running_pool_containers(docker_sandbox, before))
        assert len(warm) == 2
        client.containers.get(warm[0]).kill()  # between jobs
        results = pool.map([square_job(i) for i in range(10)])
        assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(10)]
        assert pool.containers_started == 3

        # and during a job: the job is run again on a fresh container
        slow = pool.submit("import time\ntime.sleep(1.5)\nprint('done')")
        busy: list = []

        def job_running() -> bool:
            busy[:] = [cid for cid in running_pool_containers(docker_sandbox, before)
                       if "main.py" in str(client.containers.get(cid).top()["Processes"])]
            return bool(busy)

        wait_until(job_running, "the slow job to run in a container", timeout_s=30)
        assert len(busy) == 1 and not slow.done()
        client.containers.get(busy[0]).kill()
        assert slow.result().stdout == "done\n"
        assert pool.containers_started == 4
        assert all(r.ok for r in pool.map(["print(1)"] * 6))
    assert set(labelled_containers(docker_sandbox)) - set(before) == set()


def test_container_limits_are_the_pools_not_the_jobs(docker_sandbox):
    with Pool(backend="docker", workers=1, memory_mb=256) as pool:
        with pytest.raises(ValueError, match="memory_mb=256"):
            pool.submit("print(1)", memory_mb=1024)
        assert pool.submit("print(2)", timeout_s=3, stdin="ignored").result().stdout == "2\n"


def test_jobs_run_concurrently(docker_sandbox):
    with Pool(backend="docker", workers=2, memory_mb=256) as pool:
        started = time.monotonic()
        results = pool.map(["import time\ntime.sleep(1)\nprint('z')"] * 4)
        elapsed = time.monotonic() - started
    assert [r.stdout for r in results] == ["z\n"] * 4
    assert elapsed < 3.5


@pytest.mark.parametrize("name", ["process", "bwrap"])
def test_pool_on_the_other_backends_runs_each_job_fresh(name):
    backend = backend_or_skip(name)
    threads_before = threading.active_count()
    with Pool(backend=name, workers=3, timeout_s=10) as pool:
        assert pool.backend is backend and pool.containers_started == 0
        results = pool.map([square_job(i) for i in range(8)] + ["import os\nprint(sorted(os.listdir('.')))"])
        assert pool.submit("print(input())", stdin="hey").result().stdout == "hey\n"
    assert [r.stdout for r in results[:8]] == [f"{i * i}\n" for i in range(8)]
    assert results[8].stdout == "['main.py']\n"
    assert all(r.backend == name for r in results)
    assert threading.active_count() <= threads_before + 1
