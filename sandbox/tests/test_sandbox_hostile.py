"""Hostile programs against every backend: each test checks the host afterwards, not only the
result. Holes the ``process`` backend cannot close are strict xfails there, so they stay
documented and checked."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile

import pytest
from distil_sandbox import Job
from sandbox_testlib import (
    AS_ROOT,
    DEFAULT_JOB,
    alive,
    host_sleeper,
    marked,
    new_marker,
    processes_with,
    run,
    run_job,
    weakness,
)

NOT_ROOT_REASON = "the process backend runs as the calling user when not started by root"


# --------------------------------------------------------------------------- time and processes


def test_cpu_loop_is_killed_at_the_timeout(backend):
    marker = new_marker()
    result = run(backend, marked("while True: pass\n", marker), timeout_s=1)
    assert result.timed_out and result.signal == "SIGKILL" and result.exit_code is None
    assert 1.0 <= result.wall_s < 2.5
    assert processes_with(marker) == []


def test_sleeping_forever_is_killed_at_the_timeout(backend):
    marker = new_marker()
    result = run(backend, marked("import time\ntime.sleep(10**6)\n", marker), timeout_s=1)
    assert result.timed_out and result.signal == "SIGKILL"
    assert 1.0 <= result.wall_s < 2.5
    assert processes_with(marker) == []


def test_ignoring_sigterm_does_not_help(backend):
    marker = new_marker()
    code = (
        "import signal, time\n"
        "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):\n"
        "    signal.signal(sig, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    time.sleep(0.01)\n"
    )
    result = run(backend, marked(code, marker), timeout_s=1)
    assert result.timed_out and result.stdout == "ready\n"
    assert result.wall_s < 2.5
    assert processes_with(marker) == []


def test_fork_bomb_is_bounded_and_leaves_nothing(backend):
    marker = new_marker()
    code = (
        "import time\n"
        "forked = 0\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            while True:\n"
        "                try:\n"
        "                    os.fork()\n"
        "                except OSError:\n"
        "                    time.sleep(0.001)\n"
        "        forked += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(forked, flush=True)\n"
        "while True:\n"
        "    time.sleep(0.01)\n"
    )
    result = run(backend, marked(code, marker), timeout_s=1.5)
    assert result.timed_out
    assert result.wall_s < 3.5
    forked = int(result.stdout.split()[0])
    assert forked < DEFAULT_JOB.max_processes
    assert processes_with(marker) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_thread_bomb_is_bounded(backend):
    code = (
        "import threading, time\n"
        "threads = []\n"
        "try:\n"
        "    while len(threads) < 10000:\n"
        "        t = threading.Thread(target=time.sleep, args=(5,), daemon=True)\n"
        "        t.start()\n"
        "        threads.append(t)\n"
        "except (RuntimeError, MemoryError, OSError):\n"
        "    pass\n"
        "print(len(threads), flush=True)\n"
        "os._exit(0)\n"
    )
    marker = new_marker()
    result = run(backend, marked(code, marker), timeout_s=5)
    assert not result.timed_out
    assert int(result.stdout) < DEFAULT_JOB.max_processes
    assert processes_with(marker) == []


def test_double_forked_setsid_escapee_does_not_survive(backend, request):
    weakness(request, backend, NOT_ROOT_REASON + ": a setsid() escapee outlives the job", when=not AS_ROOT)
    marker = new_marker()
    code = (
        "import time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True)\n"
        "        devnull = os.open('/dev/null', os.O_RDWR)\n"
        "        for fd in (0, 1, 2):\n"
        "            os.dup2(devnull, fd)\n"
        "        while True:\n"
        "            time.sleep(0.05)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "time.sleep(0.2)\n"
        "print('parent done', flush=True)\n"
    )
    result = run(backend, marked(code, marker), timeout_s=5)
    survivors = processes_with(marker)
    for pid in survivors:
        os.kill(pid, 9)
    assert not result.timed_out and result.wall_s < 3
    escapee, done = result.stdout.splitlines()
    assert done == "parent done"
    assert survivors == []
    if backend == "process":  # elsewhere it is a pid of the sandbox's own pid namespace
        assert int(escapee) not in survivors and not alive(int(escapee))


def test_memory_bomb_is_bounded(backend):
    code = (
        "chunks = []\n"
        "try:\n"
        "    while len(chunks) < 4096:\n"
        "        chunks.append(bytearray(b'x' * (1 << 20)))\n"
        "except MemoryError:\n"
        "    pass\n"
        "print(len(chunks), flush=True)\n"
    )
    result = run(backend, code, memory_mb=128, timeout_s=10)
    assert not result.timed_out
    if result.signal is None:  # MemoryError inside; a kernel OOM kill is as good
        assert result.exit_code == 0 and int(result.stdout) < 128
    else:
        assert result.signal == "SIGKILL"


def test_endless_output_is_truncated_and_the_call_returns(backend):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)\n"
    result = run(backend, code, timeout_s=1, output_limit=10_000)
    assert result.timed_out and result.wall_s < 2.5
    assert result.stdout_truncated and result.stderr_truncated
    assert result.stdout == "x" * 10_000 and result.stderr == "y" * 10_000


def test_huge_file_is_refused_and_nothing_stays_on_the_host(backend):
    code = (
        "written = 0\n"
        "try:\n"
        "    with open('big', 'wb') as fh:\n"
        "        for _ in range(64):\n"
        "            fh.write(b'\\0' * (1 << 20))\n"
        "            fh.flush()\n"
        "            written += 1\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
        "print(written, os.path.abspath('big'))\n"
    )
    result = run(backend, "import os\n" + code, timeout_s=10)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused")
    written, path = lines[1].split()
    assert int(written) <= DEFAULT_JOB.max_file_mb
    assert not os.path.exists(path)  # the sandbox's own filesystem, or removed with the job


def test_fd_exhaustion_is_bounded(backend):
    code = (
        "fds = []\n"
        "try:\n"
        "    while len(fds) < 100000:\n"
        "        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as exc:\n"
        "    print(len(fds), exc.errno)\n"
    )
    result = run(backend, "import os\n" + code)
    opened, errno_ = map(int, result.stdout.split())
    assert opened < DEFAULT_JOB.max_open_files and errno_ == 24  # EMFILE
    with open(os.devnull) as fh:  # the host is not short of descriptors
        assert fh.read() == ""


# --------------------------------------------------------------------------- host data


def test_private_host_file_cannot_be_read(backend, request, tmp_path):
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    secret = secrets.token_hex(16)
    target = tmp_path / "secret.txt"
    target.write_text(secret)
    target.chmod(0o600)
    code = f"try:\n    print(open({str(target)!r}).read())\nexcept OSError as exc:\n    print('no:', exc)\n"
    result = run(backend, code)
    assert secret not in result.stdout and result.stdout.startswith("no:")


def test_world_readable_host_file_is_not_there(backend, request):
    weakness(request, backend, "the process backend shares the host's filesystem")
    secret = secrets.token_hex(16)
    folder = tempfile.mkdtemp(prefix="distil-visible-")
    try:
        os.chmod(folder, 0o755)
        target = os.path.join(folder, "public.txt")
        with open(target, "w") as fh:
            fh.write(secret)
        os.chmod(target, 0o644)
        code = f"try:\n    print(open({target!r}).read())\nexcept OSError as exc:\n    print('no:', exc)\n"
        result = run(backend, code)
        assert secret not in result.stdout and result.stdout.startswith("no:")
    finally:
        os.unlink(target)
        os.rmdir(folder)


def test_environment_secrets_do_not_leak(backend, request, monkeypatch):
    reason = NOT_ROOT_REASON + ": it reads /proc/<pid>/environ of the user's processes"
    weakness(request, backend, reason, when=not AS_ROOT)
    secret = secrets.token_hex(16)
    monkeypatch.setenv("DISTIL_TEST_SECRET", secret)
    sleeper = host_sleeper()  # a process started with the secret in its environment
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    try:
        result = run(backend, code)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.exit_code == 0
    assert secret not in result.stdout and "DISTIL_TEST_SECRET" not in result.stdout
    assert result.stdout.splitlines()[0] in (
        "['HOME', 'LANG', 'PATH']",
        "['HOME', 'LANG', 'PATH', 'PWD']",  # bwrap sets PWD
    )


def test_writing_outside_the_work_directory_leaves_no_file(backend, request, tmp_path):
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    name = "escape-" + secrets.token_hex(6)
    targets = [str(tmp_path / "out" / name), f"/usr/{name}", f"/{name}", f"/root/{name}"]
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "        open(path, 'w').write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('no', path, exc.errno)\n"
    )
    run(backend, code)
    for path in targets:
        assert not os.path.exists(path), path


def test_shared_tmp_keeps_nothing_from_the_job(backend, request):
    weakness(request, backend, NOT_ROOT_REASON + ": what it writes to /tmp stays", when=not AS_ROOT)
    name = "distil-leak-" + secrets.token_hex(6)
    targets = [f"/tmp/{name}", f"/dev/shm/{name}", f"/var/tmp/{name}"]
    code = (
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    run(backend, code)
    leaked = [path for path in targets if os.path.exists(path)]
    for path in leaked:
        os.unlink(path)
    assert leaked == []


# --------------------------------------------------------------------------- network


def test_cannot_connect_to_a_host_listener(backend, request):
    weakness(request, backend, "the process backend shares the host's network")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hello')\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('no:', exc)\n"
        )
        result = run(backend, code)
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
        assert result.stdout.startswith("no:")


def test_dns_queries_go_nowhere(backend, request):
    weakness(request, backend, "the process backend shares the host's network")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        resolver.bind(("127.0.0.1", 0))
        port = resolver.getsockname()[1]
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
        code = (
            "import socket\n"
            "try:\n"
            "    print('resolved', socket.getaddrinfo('example.com', 80))\n"
            "except OSError as exc:\n"
            "    print('no dns:', exc)\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            f"    s.sendto({query!r}, ('127.0.0.1', {port}))\n"
            "except OSError as exc:\n"
            "    print('no send:', exc)\n"
        )
        result = run(backend, code)
        resolver.settimeout(0.2)
        with pytest.raises(socket.timeout):
            resolver.recvfrom(512)
        assert result.stdout.startswith("no dns:")


# --------------------------------------------------------------------------- other processes


def test_cannot_kill_a_host_process_by_pid(backend, request):
    weakness(request, backend, NOT_ROOT_REASON, when=not AS_ROOT)
    sleeper = host_sleeper()
    try:
        code = (
            "import os\n"
            "try:\n"
            f"    os.kill({sleeper.pid}, 9)\n"
            "    print('killed')\n"
            "except OSError as exc:\n"
            "    print('no:', exc)\n"
        )
        result = run(backend, code)
        assert sleeper.poll() is None
        assert result.stdout.startswith("no:")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_kill_minus_one_reaches_no_host_process(backend):
    if backend == "process" and not AS_ROOT:
        pytest.skip("kill(-1) as the calling user would kill this test run itself")
    sleeper = host_sleeper()
    try:
        result = run(backend, "kill -9 -1; echo still here", language="bash")
        assert sleeper.poll() is None
        assert not result.timed_out
    finally:
        sleeper.kill()
        sleeper.wait()


def test_host_processes_are_invisible(backend, request):
    weakness(request, backend, "the process backend shares the host's /proc")
    marker = new_marker()
    sleeper = host_sleeper(marker)
    try:
        code = (
            "import os\n"
            "seen = []\n"
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n"
            f"        if b{marker!r} in open(f'/proc/{{pid}}/cmdline', 'rb').read():\n"
            "            seen.append(pid)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(seen)\n"
        )
        result = run(backend, code)
        assert result.stdout == "[]\n"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_host_device_nodes_cannot_be_changed(backend):
    before = os.stat("/dev/null")
    code = (
        "import os\n"
        "for change in (lambda: os.chmod('/dev/null', 0o600), lambda: os.chown('/dev/null', os.getuid(), -1)):\n"
        "    try:\n"
        "        change()\n"
        "        print('changed')\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    try:
        result = run(backend, code)
        after = os.stat("/dev/null")
        assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
        assert "changed" not in result.stdout
    finally:
        if AS_ROOT:
            os.chown("/dev/null", before.st_uid, before.st_gid)
            os.chmod("/dev/null", before.st_mode & 0o7777)


def test_privileges_cannot_be_gained(backend):
    code = (
        "import os\n"
        "print('uid', os.getuid(), os.geteuid())\n"
        "attempts = [lambda: os.setuid(0), lambda: os.seteuid(0), lambda: os.setgid(0),\n"
        "            lambda: os.setgroups([0]), lambda: os.chroot('/'),\n"
        "            lambda: os.mknod('evil', 0o20666, os.makedev(1, 3))]\n"
        "for attempt in attempts:\n"
        "    try:\n"
        "        attempt()\n"
        "        print('succeeded')\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
        "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
        "print(caps[0].split()[1])\n"
    )
    result = run(backend, code)
    lines = result.stdout.splitlines()
    assert lines[0] != "uid 0 0" and not lines[0].endswith(" 0")
    assert lines[1:7] and all(line.startswith("refused") for line in lines[1:7])
    assert int(lines[7], 16) == 0  # no effective capabilities


# --------------------------------------------------------------------------- crashes and I/O


def test_segfault_is_reported_as_a_signal(backend):
    result = run(backend, "import ctypes\nctypes.string_at(0)\n")
    assert result.signal == "SIGSEGV" and result.exit_code is None and not result.timed_out


def test_stdin_is_delivered_whole_and_unread_stdin_does_not_block(backend):
    data = "".join(f"line {i}\n" for i in range(20_000))
    echoed = run(backend, "import sys\nsys.stdout.write(sys.stdin.read())\n", stdin=data)
    assert echoed.stdout == data and not echoed.stdout_truncated
    ignored = run(backend, "print('done')\n", stdin="x" * (4 << 20), timeout_s=5)
    assert ignored.stdout == "done\n" and not ignored.timed_out and ignored.wall_s < 3


def test_no_stdin_reads_as_end_of_file(backend):
    result = run(backend, "import sys\nprint(repr(sys.stdin.read()))\n", timeout_s=5)
    assert result.stdout == "''\n" and not result.timed_out


def test_non_utf8_output_is_replaced_and_kept_raw(backend):
    raw = b"ok \xff\xfe\x80 end\n"
    result = run(backend, f"import sys\nsys.stdout.buffer.write({raw!r})\nsys.stderr.buffer.write(b'\\xc3')\n")
    assert result.stdout_bytes == raw and result.stdout == raw.decode("utf-8", "replace")
    assert "\ufffd" in result.stdout and result.stderr == "\ufffd"


def test_closing_and_redirecting_stdout_ends_normally(backend):
    code = (
        "import os, sys\n"
        "print('before', flush=True)\n"
        "devnull = os.open('/dev/null', os.O_WRONLY)\n"
        "os.dup2(devnull, 1)\n"
        "print('hidden')\n"
        "os.close(2)\n"
    )
    result = run(backend, code, timeout_s=5)
    assert result.stdout == "before\n" and result.exit_code == 0 and result.wall_s < 3


def test_work_directory_is_writable_up_to_its_cap(backend, request):
    weakness(request, backend, "the process backend caps each file, not the directory's total")
    code = (
        "import os\n"
        "open('note.txt', 'w').write('kept')\n"
        "print(open('note.txt').read())\n"
        "written = 0\n"
        "try:\n"
        "    for i in range(32):\n"
        "        with open(f'fill{i}', 'wb') as fh:\n"
        "            fh.write(b'\\0' * (1 << 20))\n"
        "        written += 1\n"
        "except OSError as exc:\n"
        "    print('full', exc.errno)\n"
        "print(written)\n"
    )
    result = run_job(backend, Job(code=code, work_mb=8, timeout_s=10))
    lines = result.stdout.splitlines()
    assert lines[0] == "kept"
    assert lines[1] == "full 28"  # ENOSPC
    assert int(lines[2]) <= 8
