"""Directories a job nests thousands deep (deeper than Python's recursion limit and than
``PATH_MAX``) are removed after it like anything else: the job gets its result, and nothing of
it stays on the host for the next job."""

from __future__ import annotations

import os
import secrets
import sys

import pytest
from distil_sandbox import _hostuid
from distil_sandbox._rmtree import remove_path, remove_tree
from sandbox_testlib import AS_ROOT, run

DEPTH = 3000
NESTS = f"import os\nfor _ in range({DEPTH}):\n    os.mkdir('d')\n    os.chdir('d')\nprint('nested')\n"


def nest(top: str, depth: int) -> None:
    """``depth`` directories ``d`` inside one another below ``top``, made through descriptors."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as fh:
            fh.write("x")
    finally:
        os.close(fd)


def test_the_removal_goes_deeper_than_recursion_and_follows_no_link(tmp_path):
    assert DEPTH > sys.getrecursionlimit()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept").write_text("x")
    top = tmp_path / "top"
    top.mkdir()
    nest(str(top), DEPTH)
    (top / "d" / "link").symlink_to(outside)
    (top / "file").write_text("beside")
    os.mkfifo(top / "fifo")
    assert remove_path(str(top))
    assert not top.exists() and (outside / "kept").read_text() == "x"
    assert remove_path(str(top))  # not there: nothing to do


def test_the_removal_of_a_file_or_a_link_removes_only_it(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "file").write_text("x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_tree(fd, "link") and remove_tree(fd, "file")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_a_work_directory_nested_thousands_deep_is_removed(backend):
    before = jobs_dirs()
    try:
        result = run(backend, NESTS, timeout_s=60)
    finally:
        left = sorted(jobs_dirs() - before)
        for name in left:  # the test's own clean-up; the assert below says what was wrong
            remove_path(os.path.join(_hostuid.JOBS_DIR, name))
    assert result.stdout == "nested\n" and result.error is None, result.stderr
    assert not left


def jobs_dirs() -> set[str]:
    return set(os.listdir(_hostuid.JOBS_DIR)) if os.path.isdir(_hostuid.JOBS_DIR) else set()


@pytest.mark.skipif(not AS_ROOT, reason="the process backend runs as the caller without root: what it writes stays")
def test_a_file_beside_a_deep_nest_in_tmp_does_not_reach_the_next_job():
    top = "/tmp/distil-deep-" + secrets.token_hex(6)
    leaves = (f"import os\nos.mkdir({top!r}, 0o755)\nopen({top + '/note'!r}, 'w').write('from job 1')\n"
              f"os.chmod({top + '/note'!r}, 0o644)\nos.chdir({top!r})\n" + NESTS)
    try:
        first = run("process", leaves, timeout_s=60)
        assert first.stdout == "nested\n", first.stderr
        second = run("process", f"import os\nprint(os.path.exists({top + '/note'!r}))")
        assert second.stdout == "False\n" and not os.path.lexists(top)
    finally:
        remove_path(top)
