"""What a job may be: its language's program file, its files, its limits, checked before it runs.

- :func:`language_for` — how a language's program file is named and started;
- :func:`validate_job` / :func:`job_files` — checked relative paths, limits within
  :data:`MAX_TIMEOUT_S` and :data:`MAX_LIMITS`, and the bytes to write;
- :func:`write_files` — writes them into a fresh directory without following links.

Every backend checks a job here before it starts anything, so a job that no backend could run
is the caller's ValueError, naming the field, never a failure inside a backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Mapping, Optional, Union

from .result import Job


@dataclass(frozen=True)
class Language:
    """A program file name and the command that runs it from inside the work directory."""

    filename: str
    argv: tuple[str, ...]


# -E: ignore PYTHON* variables; -s: no user site; -B: no .pyc files. Not -I: that would drop
# the script's directory from sys.path, and job files must stay importable.
LANGUAGES: dict[str, Language] = {
    "python": Language("main.py", ("/usr/bin/python3", "-E", "-s", "-B", "main.py")),
    "bash": Language("main.sh", ("/bin/bash", "main.sh")),
}


def language_for(name: str) -> Language:
    """The :class:`Language` called ``name``; ValueError naming the choices otherwise."""
    try:
        return LANGUAGES[name]
    except KeyError:
        raise ValueError(f"unknown language {name!r}; choose one of {', '.join(LANGUAGES)}") from None


def check_relative_path(name: str) -> str:
    """``name`` normalised as a relative POSIX path inside the work directory.

    ValueError (naming the file) for absolute paths, ``..``, empty names and NUL bytes.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"job file name {name!r} must be a non-empty string without NUL bytes")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ValueError(f"job file {name!r} must be a relative path inside the work directory")
    if ".." in path.parts:
        raise ValueError(f"job file {name!r} must not contain '..'")
    if not path.parts or path.parts == (".",):
        raise ValueError(f"job file {name!r} does not name a file")
    return str(path)


def utf8(what: str, text: str) -> bytes:
    """``text`` as UTF-8; a ValueError naming ``what`` where it holds a lone surrogate (half of a
    UTF-16 pair), which UTF-8 cannot encode: raised later, it would name neither, from inside a
    backend, after a warm sandbox was taken."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} holds a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}, "
                         "which UTF-8 cannot encode; pass bytes, or text without one") from None


def _as_bytes(name: str, content: Union[str, bytes], what: str = "") -> bytes:
    if isinstance(content, str):
        return utf8(what or f"job file {name!r}", content)
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    raise TypeError(f"job file {name!r}: content must be str or bytes, not {type(content).__name__}")


def job_files(job: Job) -> dict[str, bytes]:
    """Every file of the job, program first, as {normalised relative path: bytes}.

    Raises ValueError for a bad language, a bad path, two names for one path, a file that
    would replace the program, or a file that would have to be a directory for another.
    """
    program = language_for(job.language).filename
    out = {program: _as_bytes(program, job.code, "the code")}
    for name, content in (job.files or {}).items():
        path = check_relative_path(name)
        if path == program:
            raise ValueError(f"job file {name!r} would replace the program file {program}")
        if path in out:
            raise ValueError(f"job file {name!r} is given twice")
        out[path] = _as_bytes(name, content)
    for path in out:
        for parent in PurePosixPath(path).parents:
            if str(parent) in out:
                raise ValueError(f"job file {str(parent)!r} is also a directory of {path!r}")
    return out


MAX_TIMEOUT_S = 86_400
"""The longest time limit a job may ask for: past it (``inf``, ``1e12``) the deadlines the
backends compute overflow the clocks and timers they are handed to."""


MAX_LIMITS = {
    "memory_mb": (1 << 30, "1 PiB"),
    "max_file_mb": (1 << 30, "1 PiB"),
    "work_mb": (1 << 30, "1 PiB"),
    "max_processes": (1 << 22, "the most pids Linux can have"),
    "max_open_files": (1 << 30, "more than any kernel lets a process open"),
    "output_limit": (1 << 32, "4 GiB of each stream"),
}
"""The largest value of each size limit, and what it is. Past them (``memory_mb=2**44``) the
bytes overflow what the backends hand them to: rlimits, tmpfs sizes, the engine's 64-bit
fields, each failing in its own words after the job has started."""


def validate_job(job: Job) -> None:
    """Raise ValueError when ``job`` cannot run anywhere: language, files (see
    :func:`job_files`; each at most ``max_file_mb``, all together at most ``work_mb``) and
    limits (each at most its :data:`MAX_LIMITS`)."""
    files = job_files(job)
    timeout = job.timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be a number of seconds above 0 and at most {MAX_TIMEOUT_S} (a day), "
                         f"not {timeout!r}")
    for field, (most, what) in MAX_LIMITS.items():
        value = getattr(job, field)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field} must be a positive integer, not {value!r}")
        if value > most:
            raise ValueError(f"{field} must be at most {most} ({what}), not {value}")
    if job.stdin is not None and not isinstance(job.stdin, (str, bytes)):
        raise ValueError(f"stdin must be text or bytes, not {type(job.stdin).__name__}")
    if isinstance(job.stdin, str):
        utf8("stdin", job.stdin)
    for path, data in files.items():
        if len(data) > job.max_file_mb << 20:
            raise ValueError(f"job file {path!r} has {len(data)} bytes; max_file_mb is {job.max_file_mb}")
    if sum(map(len, files.values())) > job.work_mb << 20:
        raise ValueError(f"the job's files exceed its work directory (work_mb={job.work_mb})")


def write_files(directory: str, files: Mapping[str, bytes], owner: Optional[tuple[int, int]] = None) -> None:
    """Write ``files`` (from :func:`job_files`) under ``directory``, which must be fresh.

    Every path component is created with ``O_EXCL``/``mkdir`` relative to its parent's file
    descriptor, never following a link. ``owner`` = (uid, gid) chowns what is created.
    """
    root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for rel, data in files.items():
            *dirs, leaf = PurePosixPath(rel).parts
            fd = os.dup(root)
            try:
                for part in dirs:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        if owner:
                            os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                    except FileExistsError:
                        pass
                    sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    os.close(fd)
                    fd = sub
                out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view):]
                    if owner:
                        os.fchown(out, *owner)
                finally:
                    os.close(out)
            finally:
                os.close(fd)
    finally:
        os.close(root)
