"""What one execution returns, and the job that asked for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

DEFAULT_OUTPUT_LIMIT = 1 << 20  # bytes kept of stdout and of stderr


@dataclass(frozen=True)
class Job:
    """One program to run. ``files`` are written into the work directory before it starts."""

    code: str
    language: str = "python"
    stdin: Optional[Union[str, bytes]] = None
    files: Mapping[str, Union[str, bytes]] = field(default_factory=dict)
    timeout_s: float = 10.0
    memory_mb: int = 512
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    max_processes: int = 64
    max_file_mb: int = 16
    max_open_files: int = 64
    work_mb: int = 64


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a job. Never trust ``exit_code`` or ``stdout`` to grade hostile code."""

    exit_code: Optional[int]  # None when the process was killed by a signal
    signal: Optional[str]  # e.g. "SIGKILL", "SIGSEGV"; None on a normal exit
    timed_out: bool
    stdout: str  # UTF-8, undecodable bytes replaced
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_s: float
    cpu_s: float
    backend: str
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    error: Optional[str] = None  # the sandbox itself failed (not the program)
    # The most memory the whole job held at once (its memory cgroup's peak: resident pages,
    # tmpfs files and shared memory it wrote, page cache); None where the backend has no
    # cgroup of the job's own to ask.
    memory_peak_bytes: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None
