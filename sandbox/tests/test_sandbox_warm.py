"""Warm bwrap sandboxes: when a job gets one, that it cannot tell, and that none outlives its backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from distil_sandbox import Job
from distil_sandbox.bwrap import BwrapBackend
from distil_sandbox.pool import Pool
from sandbox_testlib import marked, new_marker, processes_with, required, unavailable_reason

SANDBOX_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDLE_S = 2.0


@pytest.fixture
def warm():
    """A bwrap backend of its own, warm, with a short idle timeout; closed afterwards."""
    why = unavailable_reason("bwrap")
    if why:
        if required("bwrap"):
            pytest.fail(f"required by DISTIL_SANDBOX_REQUIRE, but {why}", pytrace=False)
        pytest.skip(why)
    backend = BwrapBackend(warm=True, idle_s=IDLE_S)
    yield backend
    backend.close()


@pytest.fixture
def cold():
    return BwrapBackend(warm=False)


def wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def shaped(code: str, marker_mb: int, **fields) -> Job:
    """A job whose shape is its own: ``work_mb`` is unusual, and bubblewrap's command line shows it."""
    return Job(code=code, work_mb=marker_mb, **fields)


def bwraps_with_work_mb(work_mb: int) -> list[int]:
    """Host pids of bubblewrap processes whose /work tmpfs has ``work_mb`` MiB."""
    return [pid for pid in processes_with(f"\0{work_mb << 20}\0") if _is_bwrap(pid)]


def _is_bwrap(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return os.path.basename(fh.read().split(b"\0")[0]) == b"bwrap"
    except OSError:
        return False


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(child) for child in fh.read().split()]
    except OSError:
        return []


# --------------------------------------------------------------------------- when a job runs warm


def test_the_second_job_of_a_shape_runs_warm(warm):
    job = Job(code="print(input())", stdin="hi")
    first = warm.run(job)
    assert first.stdout == "hi\n" and warm.stats["cold"] == 1 and warm.stats["warm"] == 0
    wait_for(lambda: warm.stats["started"] == 1)  # the first job asked for one
    second = warm.run(job)
    assert second.stdout == "hi\n" and warm.stats["warm"] == 1
    wait_for(lambda: warm.stats["started"] == 2)  # and its replacement
    assert warm.run(Job(code="print(2)")).stdout == "2\n"  # another timeout rounds to the same limits
    assert warm.stats["warm"] == 2


def test_a_job_with_other_limits_runs_cold_and_warms_its_own_shape(warm):
    warm.run(Job(code="print(1)"))
    wait_for(lambda: warm.stats["started"] == 1)
    other = warm.run(Job(code="print(2)", memory_mb=256))
    assert other.stdout == "2\n" and warm.stats["warm"] == 0 and warm.stats["cold"] == 2
    wait_for(lambda: warm.stats["started"] == 2)
    assert warm.run(Job(code="print(3)", memory_mb=256)).stdout == "3\n"
    assert warm.run(Job(code="print(4)")).stdout == "4\n"
    assert warm.stats["warm"] == 2


def test_jobs_bubblewrap_would_need_more_room_for_run_cold(warm):
    for job in (Job(code="print(1)", max_processes=1), Job(code="print(1)", max_open_files=8)):
        assert not warm.keep_warm(job)
        assert warm.run(job).stdout == "1\n" and warm.run(job).stdout == "1\n"
    assert warm.stats["warm"] == 0 and warm.stats["started"] == 0


def test_a_warm_sandbox_killed_while_waiting_is_replaced(warm):
    marker_mb = 41
    job = shaped("print('fine')", marker_mb)
    assert warm.keep_warm(job, wait_s=10)
    [bwrap] = bwraps_with_work_mb(marker_mb)
    wait_for(lambda: any(children_of(sh) for init in children_of(bwrap) for sh in children_of(init)))
    [init] = children_of(bwrap)  # timeout, running sh, running tar: the sandbox waits
    os.kill(init, signal.SIGKILL)  # from outside
    # SIGKILL is delivered asynchronously: wait until the sandbox is dead, as the test's name
    # says, or the bootstrap may still read the job and start it before the kill lands
    wait_for(lambda: _dead(init))
    result = warm.run(job)
    assert result.ok and result.stdout == "fine\n", result
    assert warm.stats["warm"] == 0 and warm.stats["cold"] == 1
    wait_for(lambda: warm.stats["started"] == 2)
    assert warm.run(job).stdout == "fine\n" and warm.stats["warm"] == 1


def test_a_job_whose_files_do_not_fit_fails_as_it_does_cold(warm, cold):
    # 300 one-byte files need 300 pages: more than a 1 MiB /work holds, though 300 bytes do fit.
    job = Job(code="print(1)", work_mb=1, max_open_files=400, files={f"f{i}": "x" for i in range(300)})
    assert warm.keep_warm(job, wait_s=10)
    warm_result, cold_result = warm.run(job), cold.run(job)
    assert warm.stats["warm"] == 0 and warm.stats["cold"] == 1
    for result in (warm_result, cold_result):
        assert result.error and result.error.startswith("bwrap could not set up the sandbox"), result
        assert result.stdout == "" and not result.ok


# --------------------------------------------------------------------------- what a job sees


FINGERPRINT = r"""
import json, os, re, resource, socket, stat, sys
def walk(top):
    out = []
    for root, dirs, files in sorted(os.walk(top)):
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            st = os.lstat(path)
            out.append([path, oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_nlink])
    return out
status = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in open("/proc/self/status")}
mounts = []
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    sep = fields.index("-")
    root = re.sub(r"/bindfile\w+", "/bindfile", fields[3])  # a random name, per sandbox
    options = re.sub(r"\b(uid|gid)=[0-9]+", r"\1=N", fields[sep + 3])  # the host uid, per sandbox
    mounts.append([root, fields[4], fields[5], fields[sep + 1], options])
print(json.dumps({
    "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
    "umask": os.umask(0o22), "env": list(os.environ.items()), "argv": sys.argv, "cwd": os.getcwd(),
    "fds": sorted(os.listdir("/proc/self/fd")),
    "stdio": [stat.S_IFMT(os.fstat(fd).st_mode) for fd in (0, 1, 2)],
    "stdin": sys.stdin.buffer.read().hex(),
    "work": walk("/work"), "tmp": walk("/tmp"), "shm": walk("/dev/shm"),
    "status": {k: status[k] for k in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd",
                                      "CapAmb", "NoNewPrivs", "Seccomp", "SigBlk", "SigIgn", "NSpid")},
    "limits": [resource.getrlimit(getattr(resource, n)) for n in dir(resource) if n.startswith("RLIMIT_")],
    "mounts": mounts, "hostname": socket.gethostname(),
    "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}, sort_keys=True))
"""

FILES = {"helper.py": "X = 1\n", "data/deep/input.txt": "payload", "blob.bin": bytes(range(256)),
         "sp ace.txt": "", "ü/ñ.txt": "é", "a" * 120 + ".txt": "long name"}


@pytest.mark.parametrize(
    "stdin", [None, "", "some input\n", b"\x00\xff" * 40000], ids=["none", "empty", "text", "80k"]
)
def test_a_warm_sandbox_looks_like_a_cold_one_from_inside(warm, cold, stdin):
    job = Job(code=FINGERPRINT, files=FILES, stdin=stdin)
    assert warm.keep_warm(job, wait_s=10)
    warm_result, cold_result = warm.run(job), cold.run(job)
    assert warm.stats["warm"] == 1
    assert warm_result.ok and cold_result.ok, (warm_result.stderr, cold_result.stderr)
    seen_warm, seen_cold = json.loads(warm_result.stdout), json.loads(cold_result.stdout)
    assert seen_warm == seen_cold
    assert seen_warm["pid"] == 2 and seen_warm["fds"] == ["0", "1", "2", "3"]  # 3: listdir's own


WRITES_BAD_UTF8 = "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe')\nsys.stderr.buffer.write(b'\\xc3')"
CASES = {
    "stdin": dict(code="import sys\nprint(sys.stdin.read()[::-1])", stdin="abc"),
    "no stdin": dict(code="import sys\nprint(repr(sys.stdin.read()))"),
    "files": dict(code="print(open('d/x.txt').read(), open('b', 'rb').read())", files={"d/x.txt": "x", "b": b"\0"}),
    "non-UTF-8 output": dict(code=WRITES_BAD_UTF8),
    "exit code": dict(code="exit 7", language="bash"),
    "signal": dict(code="import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"),
    "timeout": dict(code="import time\ntime.sleep(30)", timeout_s=0.5),
    "output cap": dict(code="print('x' * 5000)", output_limit=100),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_results_are_the_same_warm_and_cold(warm, cold, case):
    job = Job(**CASES[case])
    assert warm.keep_warm(job, wait_s=10)
    warm_result, cold_result = warm.run(job), cold.run(job)
    assert warm.stats["warm"] == 1

    def outcome(result):
        return (result.exit_code, result.signal, result.timed_out, result.stdout_bytes, result.stderr_bytes,
                result.stdout_truncated, result.stderr_truncated, result.error, result.backend)

    assert outcome(warm_result) == outcome(cold_result)


def test_a_setsid_escapee_does_not_survive_a_warm_sandbox(warm):
    marker = new_marker()
    code = marked(
        "import time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            time.sleep(0.05)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('parent done', flush=True)\n",
        marker,
    )
    job = Job(code=code, timeout_s=5)
    assert warm.keep_warm(job, wait_s=10)
    result = warm.run(job)
    assert result.stdout == "parent done\n" and warm.stats["warm"] == 1
    assert processes_with(marker) == []


def test_time_counts_from_the_hand_over_not_from_the_start(warm):
    job = Job(code="import time\ntime.sleep(0.6)\nprint('woke')", timeout_s=1)
    assert warm.keep_warm(job, wait_s=10)
    time.sleep(1.5)  # longer than the timeout: the sandbox waited, the job did not
    result = warm.run(job)
    assert result.ok and result.stdout == "woke\n" and not result.timed_out
    assert 0.6 <= result.wall_s < 1 and warm.stats["warm"] == 1


def test_a_forked_child_does_not_hold_a_warm_sandboxs_stdin_open(warm):
    job = Job(code="import sys\nprint(len(sys.stdin.read()))", stdin="x" * 10, timeout_s=5)
    assert warm.keep_warm(job, wait_s=10)
    child = os.fork()
    if child == 0:  # a process forked by the caller (multiprocessing, say) that lives on
        time.sleep(3)
        os._exit(0)
    try:
        result = warm.run(job)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert result.stdout == "10\n" and result.wall_s < 2 and warm.stats["warm"] == 1


# --------------------------------------------------------------------------- how many, how long


def test_a_pool_keeps_a_warm_sandbox_per_worker(warm):
    with Pool(backend=warm, workers=3, timeout_s=5) as pool:
        wait_for(lambda: warm.stats["started"] == 3)
        results = pool.map([f"print({i})" for i in range(9)])
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(9)]
    assert warm.stats["warm"] >= 3


def test_idle_sandboxes_are_discarded(warm):
    marker_mb = 43
    assert warm.keep_warm(shaped("print(1)", marker_mb), count=2, wait_s=10)
    assert len(bwraps_with_work_mb(marker_mb)) == 2
    wait_for(lambda: warm.stats["discarded"] == 2, timeout_s=IDLE_S + 5)
    wait_for(lambda: bwraps_with_work_mb(marker_mb) == [])
    assert warm.stats["started"] == 2  # and no more were started for the idle shape


def test_closing_the_backend_leaves_no_bubblewrap(warm):
    marker_mb = 45
    job = shaped("print(1)", marker_mb)
    warm.run(job)
    assert warm.keep_warm(job, count=3, wait_s=10)
    assert len(bwraps_with_work_mb(marker_mb)) == 3
    warm.close()
    assert bwraps_with_work_mb(marker_mb) == []
    assert warm.run(job).stdout == "1\n" and warm.stats["cold"] == 2  # closed: jobs run cold


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)"])
def test_no_bubblewrap_outlives_the_interpreter(warm, exit_call):
    marker_mb = 47 if exit_call.startswith("sys") else 49
    script = textwrap.dedent(f"""
        import os, sys
        from distil_sandbox import Job
        from distil_sandbox.bwrap import BwrapBackend
        backend = BwrapBackend(warm=True)
        job = Job(code="print(1)", work_mb={marker_mb})
        assert backend.run(job).stdout == "1\\n"
        assert backend.keep_warm(job, count=2, wait_s=10)
        print(len(sys.argv), flush=True)
        {exit_call}
    """)
    env = {**os.environ, "PYTHONPATH": SANDBOX_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0 and child.stdout == "1\n", child.stderr
    wait_for(lambda: bwraps_with_work_mb(marker_mb) == [], timeout_s=5)


def test_warm_sandboxes_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DISTIL_SANDBOX_WARM", "0")
    assert not BwrapBackend().warm
    assert not BwrapBackend().keep_warm(Job(code=""))
    monkeypatch.setenv("DISTIL_SANDBOX_WARM", "1")
    assert BwrapBackend().warm == BwrapBackend(warm=True).warm and not BwrapBackend(warm=False).warm
