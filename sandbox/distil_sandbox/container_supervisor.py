"""The supervisor that runs as pid 1 inside every sandbox container.

The container's command is a few lines of ``python3 -I -c`` that read this file's source from
stdin and run it; only the standard library of the container's Python is used. It serves jobs
one after another, so a fresh container (``DockerBackend.run``) and a warm one (``Pool``) work
the same way.

Why pid 1: the kernel drops signals sent to a namespace's init from inside the namespace unless
the init installed a handler for them, so nothing a job does (``kill -9 -1`` included) stops
the supervisor, and orphans are reparented to it and reaped. It makes itself non-dumpable, so
jobs, which run as the same uid, can neither ptrace it nor open its descriptors through /proc.

Protocol on stdin, one job at a time: a 4-byte big-endian length and a JSON header::

    {"argv": [...], "files": [[relative path, size], ...], "stdin_size": n or null,
     "timeout_s": t, "output_limit": n, "rlimits": {"fsize": [soft, hard], ...}, "env": {...}}

followed by the files' bytes and then the stdin bytes. On stdout, frames of a type byte, a
4-byte big-endian length and a payload: ``b"1"`` stdout, ``b"2"`` stderr, and last ``b"R"``,
the result as JSON (``wait_status``, ``timed_out``, ``wall_s``, ``cpu_s``, truncation flags,
``error``, ``oom``, ``clean``).

The job's stdin, stdout and stderr are pipes to the supervisor, never the control channel.
When the program exits or times out every other process is killed too (as in a pid namespace
of its own); after each job /work, /tmp, /dev/shm, /dev/mqueue and the System V IPC objects
are emptied, those places get back the extended attributes they started with (and /work its
times), and ``clean`` says whether all of that succeeded.
"""

import ctypes
import errno
import json
import os
import resource
import selectors
import signal
import stat
import struct
import subprocess
import time

WORK = "/work"
WIPED = ("/work", "/tmp", "/dev/shm", "/dev/mqueue")
CHUNK = 65536
PR_SET_DUMPABLE = 4
IPC_RMID = 0

_libc = ctypes.CDLL(None, use_errno=True)


def read_exact(n):
    """Exactly ``n`` bytes of fd 0, or None at end of input before the first byte."""
    parts, got = [], 0
    while got < n:
        part = os.read(0, min(n - got, 1 << 20))
        if not part:
            if got == 0:
                return None
            raise EOFError("the host closed the control channel in the middle of a job")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def send(kind, payload):
    """One frame to the host."""
    data = kind + struct.pack(">I", len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def safe_path(name):
    """``name`` resolved under /work; refuses absolute paths and ``..``. Only ``/`` separates
    directories: a backslash is part of a name, as on the other backends."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise ValueError("refusing file path %r: give a relative path inside the work directory" % name)
    return os.path.join(WORK, *parts)


def write_files(files):
    for name, data in files:
        path = safe_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def limit_child(rlimits):
    """A preexec_fn setting {"fsize": [soft, hard], ...} (names of ``resource.RLIMIT_*``)."""
    limits = [(getattr(resource, "RLIMIT_" + name.upper()), soft, hard) for name, (soft, hard) in rlimits.items()]

    def apply():
        for which, soft, hard in limits:
            ceiling = resource.getrlimit(which)[1]  # the container's ulimit: it cannot be raised
            if ceiling != resource.RLIM_INFINITY:
                hard = min(hard, ceiling)
                soft = min(soft, hard)
            resource.setrlimit(which, (soft, hard))
    return apply


def oom_kills():
    """The memory cgroup's OOM-kill counter (cgroup v1 or v2), or None where it cannot be read."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    fields = line.split()
                    if len(fields) == 2 and fields[0] == "oom_kill":
                        return int(fields[1])
        except OSError:
            continue
    return None


def reap(into):
    """Collect every exited child into ``into`` ({pid: wait status}); returns ``into``."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return into
        if pid == 0:
            return into
        into[pid] = status


def kill_everything(reaped, deadline_s=5.0):
    """SIGKILL every process in the container but this one until none is left; True when done.

    ``kill(-1)`` skips the caller and the namespace's init (us), and fails with ESRCH only when
    no other process, zombies included, exists, so reaping between rounds is what ends the loop.
    """
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.001)
        reap(reaped)
    return False


def empty_dir(root):
    """Remove everything under ``root``, even directories a job made unwritable; True when all went.

    Iterative, and by names relative to the current directory (the supervisor walks down with
    ``chdir``): a job may nest directories deeper than any recursion limit, any path length
    limit and any number of open descriptors. It runs after every process of the job is dead,
    so nothing changes under it.
    """
    try:
        os.chdir(root)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    ok = True
    try:
        levels = [(None, os.listdir("."))]  # (name in its parent, names still to remove) per depth
        while True:
            name, pending = levels[-1]
            if not pending:
                if name is None:
                    break
                os.chdir("..")
                levels.pop()
                try:
                    os.rmdir(name)
                except OSError:
                    ok = False
                continue
            entry = pending.pop()
            try:
                if stat.S_ISDIR(os.lstat(entry).st_mode):
                    os.chmod(entry, 0o700)
                    os.chdir(entry)
                    levels.append((entry, os.listdir(".")))
                else:
                    os.unlink(entry)
            except OSError:
                ok = False
    finally:
        os.chdir("/")
    return ok


def remove_sysv_ipc():
    """Remove the System V shared memory, queues and semaphores jobs left in the IPC namespace."""
    ok = True
    removers = {"shm": lambda i: _libc.shmctl(i, IPC_RMID, None), "msg": lambda i: _libc.msgctl(i, IPC_RMID, None),
                "sem": lambda i: _libc.semctl(i, 0, IPC_RMID)}
    for kind, remove in removers.items():
        try:
            with open("/proc/sysvipc/" + kind) as f:
                ids = [int(line.split()[1]) for line in list(f)[1:] if line.strip()]
        except OSError:
            continue
        for ipc_id in ids:
            if remove(ipc_id) != 0 and ctypes.get_errno() != errno.EINVAL:
                ok = False
    return ok


def run_job(job, stdin_data):
    """Run one job and return its result dict; everything it started is dead afterwards."""
    limit = job["output_limit"]
    kept = {b"1": 0, b"2": 0}
    truncated = {b"1": False, b"2": False}
    oom_before = oom_kills()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            job["argv"], cwd=WORK, env=job["env"], stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=limit_child(job["rlimits"]))
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": "could not start %s: %s" % (job["argv"][0], exc)}

    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): b"1", proc.stderr.fileno(): b"2"}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin_data or b"")
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
    elif proc.stdin is not None:
        proc.stdin.close()
    # SIGCHLD writes to this pipe, so the wait below wakes the moment the program exits.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    sel.register(wake_r, selectors.EVENT_READ)

    deadline = start + job["timeout_s"]
    reaped = {}
    timed_out = False
    ended = None  # when the program exited or was killed; from then on only the pipes drain

    def forward(fd):
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not data:
            sel.unregister(fd)
            return
        kind = streams[fd]
        room = limit - kept[kind]
        if len(data) > room:
            truncated[kind] = True
            data = data[:room]
        if data:
            kept[kind] += len(data)
            send(kind, data)

    while True:
        reap(reaped)
        now = time.monotonic()
        if ended is None and (proc.pid in reaped or now >= deadline):
            timed_out = proc.pid not in reaped
            ended = now
            # The program's background processes die with it, as they would in a pid namespace.
            kill_everything(reaped, 1.0)
        if ended is not None and not any(fd in streams for fd in sel.get_map()):
            break
        if ended is not None and now - ended > 2.0:
            break  # everything is dead, so a pipe still open has no writer left worth waiting for
        events = sel.select(0.05 if ended is not None else max(deadline - now, 0.0))
        for key, _ in events:
            fd = key.fileobj
            if fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            elif fd in streams:
                forward(fd)
            else:
                try:
                    pending = pending[os.write(fd, pending[:CHUNK]):]
                except OSError:
                    pending = pending[:0]
                if not pending:
                    sel.unregister(fd)
                    proc.stdin.close()

    signal.set_wakeup_fd(previous_wakeup)
    sel.close()
    os.close(wake_r)
    os.close(wake_w)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    proc.returncode = -1  # reaped here; keeps Popen from waiting for it again
    all_dead = kill_everything(reaped)
    status = reaped.get(proc.pid)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    oom_after = oom_kills()
    return {"wait_status": status, "timed_out": timed_out, "wall_s": ended - start, "cpu_s": cpu,
            "stdout_truncated": truncated[b"1"], "stderr_truncated": truncated[b"2"],
            "error": None if status is not None else "the program's exit status was lost",
            "oom": oom_before is not None and oom_after is not None and oom_after > oom_before, "all_dead": all_dead}


def own_state():
    """What a job can change about this process from outside and not set back, for every later
    job to inherit: its resource limits (``prlimit``), priority (``setpriority``), scheduling
    policy and CPUs. The jobs run under this process's uid, so the kernel lets them."""
    limits = tuple(resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_"))
    return (limits, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
            tuple(sorted(os.sched_getaffinity(0))))


FIRST_STATE = []  # own_state() as main() started: a container whose supervisor differs is replaced
FIRST_XATTRS = {}  # the extended attributes of each wiped place as main() started


def xattrs(path):
    """{name: value} of the extended attributes of ``path`` ({} where its file system has none),
    or None when they cannot be read."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return {name: os.getxattr(path, name, follow_symlinks=False) for name in names}
    except OSError as exc:
        return {} if exc.errno in (errno.ENOTSUP, errno.ENOENT) else None


def restore_metadata(root):
    """Give ``root`` back the extended attributes it had when the supervisor started, and /work its
    times; True when it has them. Emptying a place leaves the place itself as the job left it, and
    the job owns /work: a user attribute (or an ACL) on it, or its access time, would carry data to
    the next job."""
    first, now = FIRST_XATTRS.get(root, {}), xattrs(root)
    for name in set(now or ()) - set(first):
        try:
            os.removexattr(root, name, follow_symlinks=False)
        except OSError:
            pass
    for name, value in first.items():
        if (now or {}).get(name) != value:
            try:
                os.setxattr(root, name, value, follow_symlinks=False)
            except OSError:
                pass
    if root == WORK:
        os.utime(WORK)
    return xattrs(root) == first


def clean_up():
    """Kill what is left and empty every place a job can write; True when all of it worked and
    the supervisor is as it started (:func:`own_state`).

    Never raises: whatever goes wrong makes it False, and the host replaces the container.
    """
    steps = []
    for step in (lambda: kill_everything({}), lambda: os.chmod(WORK, 0o700) or True,  # the job may lock /work
                 *(lambda root=root: empty_dir(root) for root in WIPED),
                 *(lambda root=root: restore_metadata(root) for root in WIPED), remove_sysv_ipc,
                 lambda: [own_state()] == FIRST_STATE):
        try:
            steps.append(bool(step()))
        except BaseException:  # noqa: B036 - a failed clean-up must never lose the job's result
            steps.append(False)
    return all(steps)


def shield_from_signals():
    """Make every signal a job can send to pid 1 do nothing.

    The kernel drops a signal sent to a namespace's init from inside the namespace only while
    the init leaves it at SIG_DFL (or ignores it). Python installs its own handler for SIGINT
    (KeyboardInterrupt), which would let any job end the supervisor; every signal with a Python
    handler goes back to SIG_DFL, except SIGCHLD, whose handler does nothing but wake the wait.
    Ignored signals stay ignored (the jobs get SIG_DFL back at exec, see ``restore_signals``).
    """
    for sig in signal.valid_signals():
        if sig == signal.SIGCHLD:
            continue
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def main():
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    shield_from_signals()
    signal.signal(signal.SIGCHLD, lambda *_: None)
    os.umask(0o022)
    FIRST_STATE.append(own_state())
    FIRST_XATTRS.update((root, xattrs(root) or {}) for root in WIPED)
    while True:
        head = read_exact(4)
        if head is None:
            return
        job = json.loads(read_exact(struct.unpack(">I", head)[0]))
        files = [(name, read_exact(size) if size else b"") for name, size in job["files"]]
        stdin_size = job["stdin_size"]
        stdin_data = None if stdin_size is None else (read_exact(stdin_size) if stdin_size else b"")
        try:
            write_files(files)
        except (OSError, ValueError) as exc:
            result = {"error": "cannot write the job's files: %s" % exc}
        else:
            try:
                result = run_job(job, stdin_data)
            except BaseException as exc:  # noqa: B036 - report it and stay up; the host replaces this container
                result = {"error": "the sandbox supervisor failed: %r" % exc, "all_dead": False}
        # the job's result is sent whatever the clean-up meets: a failed clean-up only retires
        # the container (clean: false), the job stays done
        result["clean"] = clean_up() and result.pop("all_dead", True)
        send(b"R", json.dumps(result).encode())


if __name__ == "__main__":
    main()
