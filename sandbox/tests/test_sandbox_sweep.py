"""What the process backend leaves in the world-writable directories and in the kernel's
keyrings, and what it costs to know: a job's stray entries are removed from every directory that
changed while it ran (the world-writable ones below /tmp too), a directory that did not change is
not listed, the jobs' work directories live where making them does not change /tmp, and the keys
a job's uid owns are gone after it."""

from __future__ import annotations

import itertools
import os
import platform
import secrets
import subprocess
import sys
import time

import pytest
from distil_sandbox import _hostuid, _keys
from sandbox_testlib import AS_ROOT, run, unavailable_reason


def test_a_directory_is_named_unless_its_change_time_stood_still(tmp_path, monkeypatch):
    quiet, gone = tmp_path / "quiet", tmp_path / "gone"
    quiet.mkdir()
    dirs = [str(quiet), str(gone)]
    monkeypatch.setattr(_hostuid, "SETTLED_S", -1.0)  # any time counts as long ago
    settled = _hostuid.settled_states(dirs)
    assert set(settled) == {str(quiet)}
    assert _hostuid.changed_since(settled, dirs) == [str(gone)]

    before = os.stat(quiet)
    (quiet / "new").touch()  # an entry made later moves the change time
    os.utime(quiet, ns=(before.st_atime_ns, before.st_mtime_ns))  # the modification time set back, as a cleaner does
    assert os.stat(quiet).st_mtime_ns == before.st_mtime_ns
    assert _hostuid.changed_since(settled, dirs) == dirs

    monkeypatch.setattr(_hostuid, "SETTLED_S", 3600.0)  # changed within the hour: never trusted
    assert _hostuid.settled_states(dirs) == {} and _hostuid.changed_since({}, dirs) == dirs


def test_only_local_file_systems_are_trusted():
    """The local kernel stamps a tmpfs with its own clock; /proc and /sys are not among the
    trusted kinds, so a directory there is always swept."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", "/dev/shm"], capture_output=True, text=True).stdout.strip()
    if kind != "tmpfs":
        pytest.skip(f"/dev/shm is {kind or 'unknown'} here, not tmpfs")
    assert _hostuid.kernel_timed(["/dev/shm", "/proc", "/sys"]) == {"/dev/shm"}
    assert _hostuid.settled_states(["/proc"]) == {}


def test_jobs_dir_is_roots_and_falls_back_to_tmp_when_someone_else_made_it(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("work directories are made by root only")
    mine = tmp_path / "jobs"
    monkeypatch.setattr(_hostuid, "JOBS_DIR", str(mine))
    assert _hostuid.jobs_dir() == str(mine)
    st = os.lstat(mine)
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o711
    os.chmod(mine, 0o777)  # writable by anyone: not trusted
    assert _hostuid.jobs_dir() == "/tmp"
    os.chmod(mine, 0o711)
    os.chown(mine, 65534, 65534)  # another user's
    assert _hostuid.jobs_dir() == "/tmp"
    os.rmdir(mine)
    os.symlink(tmp_path, mine)  # a link, even to root's directory
    assert _hostuid.jobs_dir() == "/tmp"


def roots_jobs_dir():
    st = os.lstat(_hostuid.JOBS_DIR) if os.path.lexists(_hostuid.JOBS_DIR) else None
    if st is not None and (st.st_uid != 0 or not os.path.isdir(_hostuid.JOBS_DIR)):
        pytest.skip(f"{_hostuid.JOBS_DIR} was made by someone else on this host: work directories go in /tmp")


@pytest.mark.skipif(not AS_ROOT, reason="the process backend runs as the caller without root: no sweep, no own uid")
def test_a_job_reaches_its_work_directory_but_cannot_list_the_others():
    roots_jobs_dir()
    code = ("import os\nprint(os.getcwd())\n"
            "try:\n    os.listdir(os.path.dirname(os.getcwd()))\n    print('listed')\n"
            "except PermissionError:\n    print('refused')\n")
    result = run("process", code)
    cwd, listed = result.stdout.split()
    assert os.path.dirname(cwd) == _hostuid.JOBS_DIR and os.path.basename(cwd).startswith("distil-sandbox-")
    assert listed == "refused" and not os.path.exists(cwd)  # and it is gone after the job


@pytest.mark.skipif(not AS_ROOT, reason="the process backend runs as the caller without root: what it writes stays")
def test_what_a_job_leaves_in_a_settled_directory_is_still_removed(monkeypatch):
    """Every shared directory counts as settled when the job starts, so only the job's own
    entry can get /tmp swept; the work directories' parent is swept after every job."""
    roots_jobs_dir()
    monkeypatch.setattr(_hostuid, "SETTLED_S", -1.0)
    listed = []
    sweep = _hostuid.remove_files_of

    def remove_files_of(uid, directories):
        listed.append(list(directories))
        sweep(uid, directories)

    monkeypatch.setattr(_hostuid, "remove_files_of", remove_files_of)
    target = "/tmp/distil-settled-" + secrets.token_hex(6)
    result = run("process", f"open({target!r}, 'w').write('x')\n")
    assert result.exit_code == 0, result.stderr
    leaked = os.path.exists(target)
    if leaked:
        os.unlink(target)
    assert not leaked
    assert len(listed) == 1 and "/tmp" in listed[0] and _hostuid.JOBS_DIR in listed[0]


@pytest.mark.skipif(not AS_ROOT, reason="the process backend runs as the caller without root: what it writes stays")
def test_what_a_job_leaves_in_a_world_writable_directory_below_tmp_is_removed():
    """Any uid may write into a 1777 directory below /tmp (``.X11-unix``, or one a user made
    inside a directory of theirs), which the sweep of /tmp's own entries does not reach."""
    top = "/tmp/distil-sweep-" + secrets.token_hex(6)
    shallow, deep = os.path.join(top, "shared"), os.path.join(top, "private", "shared")
    try:
        for path, mode in ((top, 0o755), (shallow, 0o1777), (os.path.dirname(deep), 0o755), (deep, 0o1777)):
            os.mkdir(path)
            os.chmod(path, mode)
        code = "import os\n" + "".join(
            f"open({d + '/answer'!r}, 'w').write('3')\nos.makedirs({d + '/tree/inner'!r})\n" for d in (shallow, deep))
        result = run("process", code)
        assert result.exit_code == 0, result.stderr
        assert os.listdir(shallow) == [] and os.listdir(deep) == []
    finally:
        subprocess.run(["rm", "-rf", top], check=False)


@pytest.mark.skipif(not AS_ROOT, reason="the sweep removes other uids' files only as root")
def test_the_sweep_does_not_follow_a_link_on_its_way(tmp_path):
    """A directory on the way that another uid owns may be swapped for a link while the sweep
    runs: it is reached through descriptors opened without following links."""
    uid = 70000 + 999
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "kept").write_text("x")
    os.chown(target / "kept", uid, uid)
    (tmp_path / "shared").mkdir(mode=0o1777)
    (tmp_path / "shared" / "swapped").symlink_to(target)
    _hostuid.remove_files_of(uid, [str(tmp_path / "shared" / "swapped")])
    assert (target / "kept").exists()
    _hostuid.remove_files_of(uid, [str(target)])  # the control: reached without a link, it goes
    assert not (target / "kept").exists()


KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(platform.machine())
# Leaves a key in each keyring of its uid that outlives a process: the user keyring, the
# user-session keyring and the persistent keyring.
LEAVES_KEYS = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY, KEYCTL = {KEYCTL}
persistent = libc.syscall(KEYCTL, 22, -1, -3)  # linked where it is possessed
for keyring in (-4, -5, persistent):
    assert libc.syscall(ADD_KEY, b"user", b"answer%d" % keyring, b"3", 1, keyring) > 0, os.strerror(ctypes.get_errno())
print(os.getuid())
"""
FINDS_KEYS = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY, KEYCTL = {KEYCTL}
persistent = libc.syscall(KEYCTL, 22, -1, -3)  # linked where it is possessed
print([k for k in (-4, -5, persistent) if libc.syscall(KEYCTL, 10, k, b"user", b"answer%d" % k, 0) > 0])
"""


def as_uid(uid: int, code: str) -> str:
    """What ``code`` prints, run by the system's python3 as ``uid`` (with no other process of it)."""
    return subprocess.run(["/usr/bin/python3", "-c", code], user=uid, group=uid, extra_groups=[], env={}, cwd="/",
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def no_keys_within(uid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _keys.owns_keys(uid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.skipif(not AS_ROOT, reason="without root a job runs as the caller: its keys are the caller's")
def test_kernel_keys_a_job_leaves_do_not_outlive_it():
    """Keys belong to the uid, not to a process: without a clean-up, the next job of that uid
    reads them."""
    if KEYCTL is None:
        pytest.skip(f"keyctl's system call number on {platform.machine()} is not known to this test")
    result = run("process", LEAVES_KEYS)
    assert result.exit_code == 0, result.stderr
    uid = int(result.stdout)
    try:
        assert as_uid(uid, FINDS_KEYS) == "[]"
    finally:
        assert _keys.clear_keys_of(uid, uid)  # what looking made (empty keyrings)
    assert no_keys_within(uid, 10)


@pytest.mark.skipif(not AS_ROOT, reason="uids of their own are for jobs started by root")
@pytest.mark.parametrize("contained", [False, True], ids=["process", "bwrap"])
def test_a_uid_that_owns_keys_is_passed_over_and_cleaned(monkeypatch, contained):
    """For every backend: a bwrap job running as a uid that owns a process job's keys could read them."""
    if KEYCTL is None:
        pytest.skip(f"keyctl's system call number on {platform.machine()} is not known to this test")
    slot = secrets.randbelow(_hostuid.JOB_UID_COUNT - 1)
    keeper = _hostuid.JOB_UID_BASE + slot
    as_uid(keeper, LEAVES_KEYS)  # as if a toolkit process had died before its clean-up
    assert _keys.owns_keys(keeper)
    monkeypatch.setattr(_hostuid, "_NEXT_SLOT", itertools.count(slot))
    with _hostuid.job_uid(contained=contained) as owner:
        assert owner is not None and owner[0] != keeper
    assert no_keys_within(keeper, 10)


# In a process with a session keyring of its own (a login session's, a systemd service's), which
# its children inherit: one job leaves a key in its session keyring, the next looks for it there.
SHARES_A_SESSION_KEYRING = f"""
import ctypes, sys, distil_sandbox
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY, KEYCTL = {KEYCTL}
assert libc.syscall(KEYCTL, 1, None) > 0  # join a new session keyring, as a login does
leave = f"import ctypes\\nprint(ctypes.CDLL(None).syscall({{ADD_KEY}}, b'user', b'answer', b'3', 1, -3) > 0)"
look = f"import ctypes\\nprint(ctypes.CDLL(None).syscall({{KEYCTL}}, 10, -3, b'user', b'answer', 0) > 0)"
print(*(distil_sandbox.run(code, backend=sys.argv[1]).stdout.strip() for code in (leave, look)))
"""


@pytest.mark.parametrize("name", ["process", "bwrap"])
def test_jobs_do_not_share_the_callers_session_keyring(name):
    if KEYCTL is None:
        pytest.skip(f"keyctl's system call number on {platform.machine()} is not known to this test")
    if name == "process" and not AS_ROOT:
        pytest.skip("without root a process job runs as the caller, in the caller's session")
    if unavailable_reason(name):
        pytest.skip(unavailable_reason(name))
    out = subprocess.run([sys.executable, "-c", SHARES_A_SESSION_KEYRING, name], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout == "True False\n", out.stderr
