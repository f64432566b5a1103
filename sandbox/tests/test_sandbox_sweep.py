"""What the process backend leaves in the world-writable directories, and what it costs to know:
a job's stray entries are removed from every directory that changed while it ran, a directory
that did not change is not listed, and the jobs' work directories live where making them does
not change /tmp."""

from __future__ import annotations

import os
import secrets
import time

import pytest
from distil_sandbox import _hostuid
from sandbox_testlib import AS_ROOT, run

SHARED = ("/tmp", "/var/tmp", "/dev/shm")


def age(path, seconds):
    """Set ``path``'s modification time ``seconds`` into the past."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, time.time_ns() - int(seconds * 1e9)))


def test_a_directory_unchanged_since_it_settled_is_not_named(tmp_path):
    quiet, busy, gone = tmp_path / "quiet", tmp_path / "busy", tmp_path / "gone"
    quiet.mkdir(), busy.mkdir()
    (busy / "just-now").touch()  # changed this instant: it may change again within one clock tick
    age(quiet, 60)
    dirs = [str(quiet), str(busy), str(gone)]
    settled = _hostuid.settled_mtimes(dirs)
    assert set(settled) == {str(quiet)}
    assert _hostuid.changed_since(settled, dirs) == [str(busy), str(gone)]

    (quiet / "new").touch()  # an entry made later moves the time to the present
    assert _hostuid.changed_since(settled, dirs) == dirs
    (quiet / "new").unlink()
    age(quiet, 60)  # the same time again is "unchanged"; only the directory's owner may do this
    assert str(quiet) not in _hostuid.changed_since(_hostuid.settled_mtimes(dirs), dirs)


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


@pytest.mark.skipif(not AS_ROOT, reason="the process backend runs as the caller without root: no sweep, no own uid")
def test_a_job_reaches_its_work_directory_but_cannot_list_the_others():
    code = ("import os\nprint(os.getcwd())\n"
            "try:\n    os.listdir(os.path.dirname(os.getcwd()))\n    print('listed')\n"
            "except PermissionError:\n    print('refused')\n")
    result = run("process", code)
    cwd, listed = result.stdout.split()
    assert os.path.dirname(cwd) == _hostuid.JOBS_DIR and os.path.basename(cwd).startswith("distil-sandbox-")
    assert listed == "refused" and not os.path.exists(cwd)  # and it is gone after the job


@pytest.mark.skipif(not AS_ROOT, reason="the process backend runs as the caller without root: what it writes stays")
def test_what_a_job_leaves_in_a_settled_directory_is_still_removed():
    """The case the skip could get wrong: every shared directory settled long before the job,
    so only the job's own entry moves its time."""
    _hostuid.jobs_dir()  # made now if it was not there, not during the job
    name = "distil-settled-" + secrets.token_hex(6)
    targets = [f"{d}/{name}" for d in SHARED]
    for directory in SHARED:
        age(directory, 60)
    code = "".join(f"open({t!r}, 'w').write('x')\n" for t in targets[:1]) + (
        "for path in %r:\n    try:\n        open(path, 'w').write('x')\n    except OSError:\n        pass\n" % targets[1:])
    result = run("process", code)
    assert result.exit_code == 0, result.stderr
    leaked = [t for t in targets if os.path.exists(t)]
    for path in leaked:
        os.unlink(path)
    assert leaked == []
