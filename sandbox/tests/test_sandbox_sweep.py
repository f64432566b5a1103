"""What the process backend leaves in the world-writable directories, and what it costs to know:
a job's stray entries are removed from every directory that changed while it ran, a directory
that did not change is not listed, and the jobs' work directories live where making them does
not change /tmp."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest
from distil_sandbox import _hostuid
from sandbox_testlib import AS_ROOT, run


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
