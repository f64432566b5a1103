"""distil_core.io: a file appears whole or not at all, with the permissions a plain write gives."""

import os
import stat

import pytest

from distil_core.io import atomic_directory, atomic_file, atomic_write_json, atomic_write_text


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(str(path), {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(str(path)) as fh:
            fh.write(b'{"step": 2, "half')
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "step": 1\n}\n'
    assert os.listdir(tmp_path) == ["summary.json"]


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    old = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh.txt"
        atomic_write_text(str(fresh), "a")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
        private = tmp_path / "private.txt"
        private.write_text("x")
        private.chmod(0o600)
        atomic_write_text(str(private), "y")
        assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == "y"
    finally:
        os.umask(old)


def test_through_a_link_the_file_is_replaced_and_a_pipe_is_written_straight_through(tmp_path):
    real = tmp_path / "store" / "export.jsonl"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    atomic_write_text(str(link), "new")
    assert link.is_symlink() and real.read_text() == "new"  # the link stays, its file has the new text
    dangling = tmp_path / "next.jsonl"
    dangling.symlink_to(tmp_path / "store" / "next-target.jsonl")
    atomic_write_text(str(dangling), "made")
    assert dangling.is_symlink() and (tmp_path / "store" / "next-target.jsonl").read_text() == "made"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer's open does not wait
    try:
        atomic_write_text(str(fifo), "through")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the pipe, not a file renamed over it
        assert os.read(reader, 100) == b"through"
    finally:
        os.close(reader)


def test_a_directory_appears_only_when_complete(tmp_path):
    target = tmp_path / "final"
    with pytest.raises(ValueError):
        with atomic_directory(str(target)) as tmp:
            open(os.path.join(tmp, "weights.bin"), "wb").write(b"partial")
            raise ValueError("interrupted")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_directory(str(target)) as tmp:
        open(os.path.join(tmp, "weights.bin"), "wb").write(b"whole")
    assert (target / "weights.bin").read_bytes() == b"whole"


def test_replacing_a_directory_that_fails_keeps_the_old_one_whole(tmp_path, monkeypatch):
    target = tmp_path / "final"
    with atomic_directory(str(target)) as tmp:
        open(os.path.join(tmp, "weights.bin"), "wb").write(b"old")
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(src).startswith(".tmp-"):  # the new directory moving into place
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        with atomic_directory(str(target)) as tmp:
            open(os.path.join(tmp, "weights.bin"), "wb").write(b"new")
    assert (target / "weights.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["final"]


def synced_paths(monkeypatch):
    """The paths ``os.fsync`` is called on from now on."""
    synced, real_fsync = [], os.fsync

    def recording_fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names file descriptors through /proc")
def test_a_directory_is_synced_before_it_appears_and_its_parent_after(tmp_path, monkeypatch):
    synced = synced_paths(monkeypatch)
    with atomic_directory(str(tmp_path / "final")) as tmp:
        os.mkdir(os.path.join(tmp, "sub"))
        open(os.path.join(tmp, "sub", "weights.bin"), "wb").write(b"whole")
        staged = os.path.realpath(tmp)
    assert os.path.join(staged, "sub", "weights.bin") in synced  # synced under its temporary name
    assert synced[-1] == os.path.realpath(tmp_path)  # the rename, made durable
    synced.clear()
    atomic_write_text(str(tmp_path / "summary.json"), "{}")
    assert synced[-1] == os.path.realpath(tmp_path)


def test_a_directory_another_process_finished_meanwhile_is_kept_when_not_replacing(tmp_path, monkeypatch):
    import distil_core.io as io

    target, real_sync = tmp_path / "base", io.fsync_tree

    def other_process_finishes_first(root):  # while this one syncs its copy
        real_sync(root)
        target.mkdir()
        (target / "who").write_text("first")

    monkeypatch.setattr(io, "fsync_tree", other_process_finishes_first)
    with atomic_directory(str(target), replace=False) as tmp:
        open(os.path.join(tmp, "who"), "w").write("second")
    assert (target / "who").read_text() == "first"
    assert os.listdir(tmp_path) == ["base"]


def test_a_file_system_that_cannot_sync_directories_fails_no_write(tmp_path, monkeypatch):
    import errno
    import stat as st

    real_fsync = os.fsync

    def no_directory_sync(fd):
        if st.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_directory_sync)
    atomic_write_text(str(tmp_path / "summary.json"), "{}")
    with atomic_directory(str(tmp_path / "final")) as tmp:
        open(os.path.join(tmp, "weights.bin"), "wb").write(b"whole")
    assert (tmp_path / "summary.json").read_text() == "{}"
    assert (tmp_path / "final" / "weights.bin").read_bytes() == b"whole"


def test_a_file_where_the_directory_goes_is_named_and_nothing_is_left_beside_it(tmp_path):
    (tmp_path / "final").write_text("a file")
    with pytest.raises(NotADirectoryError) as err:
        with atomic_directory(str(tmp_path / "final")) as tmp:
            open(os.path.join(tmp, "weights.bin"), "wb").write(b"whole")
    assert str(tmp_path / "final") in str(err.value) and "remove it" in str(err.value)
    assert os.listdir(tmp_path) == ["final"] and (tmp_path / "final").read_text() == "a file"
