"""Limits that must hold for the whole job, and what a job may leave behind or read, on every
backend: memory summed over forked processes, IPC objects that outlive the job, the toolkit's
own files (a task's dataset holds its reference solutions), and the memory cgroups of a process
killed before it removed them."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import signal
import subprocess
import sys

import pytest
from distil_sandbox import _cgroup, available_backends, cli
from distil_sandbox.pool import Pool
from sandbox_docker_testlib import backend_or_skip
from sandbox_testlib import AS_ROOT, cgroup_of_its_own, run, weakness

NOT_ROOT_REASON = "the process backend runs as the calling user, without cgroups or namespaces, when not root"

# Six children each touch 300 MiB and hold it until the parent has looked: the parent waits until
# every child has either reported its block allocated or died, then adds up the resident memory
# of those still alive. With memory_mb=512 for the whole job, at most one block fits.
FORKED_MEMORY = """
import os, select, time
N, MB = 6, 300
report_r, report_w = os.pipe()
hold_r, hold_w = os.pipe()
children = []
for index in range(N):
    pid = os.fork()
    if pid == 0:
        os.close(report_r); os.close(hold_w)
        try:
            block = b"\\1" * (MB << 20)
        except MemoryError:
            os._exit(3)
        os.write(report_w, b"a")
        os.read(hold_r, 1)   # until the parent has counted
        os._exit(0)
    children.append(pid)
os.close(report_w); os.close(hold_r)
reported, dead = 0, set()
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    if select.select([report_r], [], [], 0.05)[0]:
        reported += len(os.read(report_r, 64))
    for pid in children:
        if pid not in dead and os.waitpid(pid, os.WNOHANG)[0]:
            dead.add(pid)
    alive = [pid for pid in children if pid not in dead]
    if len(dead) == N or reported >= N or (reported >= len(alive) and len(alive) <= 1 and len(dead) >= N - 1):
        break
held = 0
for pid in children:
    if pid in dead:
        continue
    try:
        with open(f"/proc/{pid}/status") as fh:
            held += sum(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) // 1024
    except OSError:
        pass
print(f"reported={reported} died={len(dead)} held_mib={held}", flush=True)
os.close(hold_w)
"""


def _fields(stdout: str) -> dict[str, int]:
    return {key: int(value) for key, value in (part.split("=") for part in stdout.split())}


def test_forked_processes_share_one_memory_limit(backend, request):
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    result = run(backend, FORKED_MEMORY, memory_mb=512, timeout_s=60)
    assert not result.timed_out and result.error is None, result
    seen = _fields(result.stdout)
    # one 300 MiB block and the interpreters fit in 512 MiB; two blocks never do
    assert seen["held_mib"] < 512, (seen, result.memory_peak_bytes)
    assert seen["died"] >= 5, seen
    if backend != "docker":  # the job's own cgroup reports what it held at most
        assert result.memory_peak_bytes is not None and result.memory_peak_bytes <= 512 << 20


def test_memory_limit_of_the_whole_job_counts_shared_memory(backend, request):
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    # 4 × 64 MiB of System V shared memory, each segment well under the address-space limit of
    # the process that maps it in turn, 256 MiB in all against memory_mb=128
    code = SYSV_PRELUDE + (
        "made = 0\n"
        "for n in range(4):\n"
        "    shm_fill(0, 64 << 20, 0x41)\n"
        "    made += 1\n"
        "    print(made, flush=True)\n"
    )
    result = run(backend, code, memory_mb=128, timeout_s=30)
    assert not result.timed_out
    made = result.stdout.split()
    assert len(made) <= 1 and result.signal == "SIGKILL", result  # the OOM killer, at the second


SYSV_PRELUDE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.mq_open.restype = ctypes.c_int
IPC_CREAT, IPC_PRIVATE = 0o1000, 0

def shm_fill(key, size, byte):
    ident = libc.shmget(key, size, IPC_CREAT | 0o666)
    assert ident >= 0, os.strerror(ctypes.get_errno())
    address = libc.shmat(ident, None, 0)
    ctypes.memset(address, byte, size)
    libc.shmdt(ctypes.c_void_p(address))
    return ident
"""


def _host_shm_keys() -> set[int]:
    with open("/proc/sysvipc/shm") as fh:
        return {int(line.split()[0]) for line in list(fh)[1:] if line.strip()}


def _host_mq_exists(name: bytes) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.mq_open(name, os.O_RDONLY)
    if fd >= 0:
        libc.mq_close(fd)
        libc.mq_unlink(name)
        return True
    assert ctypes.get_errno() == errno.ENOENT, os.strerror(ctypes.get_errno())
    return False


def _leave_and_look(key: int, queue: bytes) -> tuple[str, str]:
    """A job that leaves a System V segment and tries to leave a POSIX queue holding a message
    (RLIMIT_MSGQUEUE refuses it), and one that looks for both (and for the message)."""
    secret = secrets.token_hex(8)
    leave = SYSV_PRELUDE + (
        f"shm_fill({key}, 8 << 20, 0x42)\n"
        f"q = libc.mq_open({queue!r}, os.O_CREAT | os.O_RDWR, 0o666, None)\n"
        "assert q >= 0 or ctypes.get_errno() == errno.EMFILE, os.strerror(ctypes.get_errno())\n"
        f"assert q < 0 or libc.mq_send(q, {secret.encode()!r}, {len(secret)}, 0) == 0\n"
        "print('left', flush=True)\n"
    )
    look = SYSV_PRELUDE + (
        f"print('shm', libc.shmget({key}, 0, 0) >= 0)\n"
        "buf = ctypes.create_string_buffer(8192)\n"
        f"q = libc.mq_open({queue!r}, os.O_RDONLY | os.O_NONBLOCK)\n"
        "print('mq', q >= 0 and libc.mq_receive(q, buf, 8192, None) > 0 and buf.value.decode())\n"
    )
    return leave, look


def test_ipc_objects_do_not_outlive_the_job(backend, request):
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    key = secrets.randbelow(1 << 30) + 1
    queue = f"/distil-{secrets.token_hex(6)}".encode()
    leave, look = _leave_and_look(key, queue)
    first = run(backend, leave, memory_mb=128)
    assert first.stdout == "left\n", first
    # nothing of it on the host ...
    assert key not in _host_shm_keys()
    assert not _host_mq_exists(queue)
    # ... nor for the next job
    second = run(backend, look)
    assert second.stdout == "shm False\nmq False\n", second


def test_a_job_cannot_make_a_posix_message_queue(backend):
    """A queue outlives the process that made it, and bwrap and the process backend mount no
    ``/dev/mqueue`` where it would show: RLIMIT_MSGQUEUE is 0 on every backend."""
    code = SYSV_PRELUDE + (
        "q = libc.mq_open(b'/distil-queue', os.O_CREAT | os.O_RDWR, 0o600, None)\n"
        "print(q, errno.errorcode.get(ctypes.get_errno()))\n"
    )
    assert run(backend, code).stdout == "-1 EMFILE\n"


def test_ipc_objects_do_not_reach_the_next_job_in_a_warm_docker_container():
    """Pooled docker jobs share a container, and so its IPC namespace: the supervisor removes
    what a job left there before the next one starts."""
    backend_or_skip("docker")
    leave, look = _leave_and_look(secrets.randbelow(1 << 30) + 1, f"/distil-{secrets.token_hex(6)}".encode())
    with Pool(backend="docker", workers=1, timeout_s=10, memory_mb=128) as pool:
        first = pool.submit(leave).result()
        second = pool.submit(look).result()
        assert pool.containers_started == 1
    assert first.stdout == "left\n", first
    assert second.stdout == "shm False\nmq False\n", second


def test_posix_shared_memory_does_not_outlive_the_job(backend, request):
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    name = f"distil-{secrets.token_hex(6)}"
    code = f"with open('/dev/shm/{name}', 'wb') as fh:\n    fh.write(b'x' * (4 << 20))\nprint('left')\n"
    assert run(backend, code).stdout == "left\n"
    assert not os.path.exists(f"/dev/shm/{name}")
    look = f"import os\nprint(os.path.exists('/dev/shm/{name}'))\n"
    assert run(backend, look).stdout == "False\n"


def test_the_toolkits_package_data_cannot_be_read(backend, request):
    """A task's dataset (reference solutions included) must not be readable by the code being
    graded. bwrap and docker show only /usr of the host; the process backend covers every
    top-level directory but the system's, and the toolkit's package directories."""
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    distil_tasks = pytest.importorskip("distil_tasks")
    data = os.path.join(os.path.dirname(os.path.realpath(distil_tasks.__file__)), "data")
    files = sorted(os.path.join(data, name) for name in os.listdir(data))
    assert files and all(os.stat(path).st_mode & 0o004 for path in files)  # world-readable on the host
    code = (
        "import os\n"
        f"for path in {files!r}:\n"
        "    try:\n"
        "        print('READ', len(open(path).read()))\n"
        "    except OSError as exc:\n"
        "        print('no', exc.errno)\n"
        f"print('listed', os.path.isdir({data!r}) and os.listdir({data!r}))\n"
    )
    result = run(backend, code)
    assert "READ" not in result.stdout and result.stdout.endswith("listed False\n"), result


def test_the_cli_says_how_memory_mb_holds_on_each_backend(capsys):
    """``distil-sandbox backends`` tells whether memory_mb bounds the whole job or, where no
    memory cgroup can be made here, each process only (RLIMIT_AS)."""
    cgroups, why = _cgroup.support()
    cli.main(["backends"])
    out = capsys.readouterr().out
    for name, unavailable in available_backends().items():
        if unavailable:
            continue
        lines = out.splitlines()
        block = lines[lines.index(next(line for line in lines if line.startswith(name + " "))) + 1]
        if name == "docker" or (cgroups and (AS_ROOT or name == "bwrap")):
            assert block.strip().startswith("memory: whole job"), out
        else:
            assert block.strip().startswith("memory: per process (RLIMIT_AS)"), out
    if not cgroups:
        assert why in out


# Makes a job's memory cgroup and is killed before it could remove it.
KILLED_WITH_A_GROUP = """
import os, signal
from distil_sandbox import _cgroup
group, why = _cgroup.create(16)
assert group is not None, why
print(os.path.basename(group.path), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
# Its first job removes the stale groups beside its own (at any age, for the test).
FIRST_JOB = """
import distil_sandbox
from distil_sandbox import _cgroup
_cgroup.STALE_S = 0.0
print(distil_sandbox.run("print('ran')", backend="process").stdout, end="")
"""


@pytest.mark.skipif(not AS_ROOT, reason="the process backend makes memory cgroups only as root")
def test_groups_a_killed_process_left_are_removed_by_the_next_one():
    """A process killed outright runs no clean-up: the groups it made stay. The next process to
    make one removes them, and no group of a live process, nor one that holds a process."""
    with cgroup_of_its_own() as (parent, move_into_it):
        killed = subprocess.run([sys.executable, "-c", KILLED_WITH_A_GROUP], capture_output=True, text=True,
                                timeout=60, preexec_fn=move_into_it)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = killed.stdout.strip()
        legacy = f"{_cgroup.PREFIX}{secrets.token_hex(6)}"  # named before names held their maker's pid
        live = f"{_cgroup.PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        holder = f"{_cgroup.PREFIX}{int(left.split('-')[2])}-{secrets.token_hex(6)}"  # its maker is gone
        for name in (legacy, live, holder):
            os.mkdir(os.path.join(parent, name))
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            with open(os.path.join(parent, holder, "cgroup.procs"), "w") as fh:
                fh.write(str(sleeper.pid))
            assert left in os.listdir(parent)
            after = subprocess.run([sys.executable, "-c", FIRST_JOB], capture_output=True, text=True, timeout=60,
                                   preexec_fn=move_into_it)
            assert after.stdout == "ran\n", after.stderr
            kept = sorted(e.name for e in os.scandir(parent) if e.is_dir())
            assert kept == sorted([live, holder])
        finally:
            sleeper.kill()
            sleeper.wait()
