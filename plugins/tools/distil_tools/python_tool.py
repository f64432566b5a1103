"""Tool ``python``: runs a program in the sandbox and reports what it printed.

The code runs through :func:`distil_sandbox.run` — on bubblewrap, Docker or a limited process,
as ``backend`` says — with the sandbox's ``/usr/bin/python3`` and only its standard library.
The result is compact: a program that exits 0 gives its stdout (and its stderr, if any); one
that fails gives its exit status or signal, then stdout and stderr; a timeout says so.
"""

from __future__ import annotations

from typing import Any, Optional

from .base import ToolInput, ToolResult, excerpt
from .options import MAX_MEMORY_MB, OptionError, choice, seconds, whole

OUTPUT_CHARS = 4000  # of stdout and of stderr each, before the feedback source's own cap


class PythonTool:
    """Runs Python 3 code in the sandbox; returns stdout, stderr and exit status."""

    name = "python"
    description = "Runs Python 3 code in the sandbox (standard library only); returns stdout, stderr and exit status."
    run_options = frozenset({"backend", "timeout_s", "memory_mb"})
    """Where and under what limits a program runs, not what it prints (every backend runs it
    alike; a limit shows only in a call that reaches it): the feedback source's ``run_options``
    lists them, so the tiny base's cache key leaves them out."""

    def __init__(self, backend: str = "auto", timeout_s: float = 10.0, memory_mb: int = 256):
        import distil_sandbox

        self.timeout_s = seconds("timeout_s", timeout_s, distil_sandbox.MAX_TIMEOUT_S)
        self.memory_mb = whole("memory_mb", memory_mb, 32, MAX_MEMORY_MB, unit="MiB")
        self.backend = choice("backend", backend, ("auto", *distil_sandbox.AUTO_ORDER))
        try:  # one probe (remembered by the sandbox), so a backend that cannot run stops the run here
            distil_sandbox.get_backend(self.backend)
        except distil_sandbox.BackendUnavailable as exc:
            raise OptionError("backend", f"a sandbox backend that runs here, and {exc}; pick another of auto, "
                              f"{', '.join(distil_sandbox.AUTO_ORDER)}, or leave python out of `tools`", backend) from None

    def run(self, input: ToolInput) -> ToolResult:
        stdin: Optional[str] = None
        if isinstance(input, dict):
            code, stdin = input.get("code"), input.get("stdin")
            if not isinstance(code, str) or (stdin is not None and not isinstance(stdin, str)):
                return ToolResult.error('give the program as a string, or as {"code": "...", "stdin": "..."}')
        else:
            code = input
        if not code.strip():
            return ToolResult.error("the program is empty")
        import distil_sandbox

        try:
            result = distil_sandbox.run(
                code, stdin=stdin, timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                backend=self.backend, output_limit=OUTPUT_CHARS * 4,
            )
        except distil_sandbox.BackendUnavailable as exc:
            return ToolResult.error(f"the sandbox is unavailable: {exc}", infrastructure_error=True)
        except ValueError as exc:
            return ToolResult.error(f"the sandbox refused the job: {exc}", infrastructure_error=True)
        return render(result, self.timeout_s)


def render(result: Any, timeout_s: float) -> ToolResult:
    """A sandbox :class:`~distil_sandbox.ExecResult` as a compact tool result."""
    stdout = excerpt(result.stdout.rstrip("\n"), OUTPUT_CHARS)
    stderr = excerpt(result.stderr.rstrip("\n"), OUTPUT_CHARS)
    data = {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "stdout": stdout,
        "stderr": stderr,
        "backend": result.backend,
        "truncated": bool(result.stdout_truncated or result.stderr_truncated),
    }
    if result.error:
        return ToolResult(f"the sandbox failed: {result.error}", ok=False, data={**data, "infrastructure_error": True})
    if result.timed_out:
        status = f"timed out after {timeout_s:g} s"
    elif result.signal:
        status = f"killed by {result.signal}"
    elif result.exit_code == 0:
        status = ""
    else:
        status = f"exit status {result.exit_code}"
    if not status:
        text = stdout if stdout else "(no output)"
        if stderr:
            text += f"\nstderr:\n{stderr}"
        return ToolResult(text, ok=True, data=data)
    parts = [status]
    if stdout:
        parts.append(f"stdout:\n{stdout}")
    if stderr:
        parts.append(f"stderr:\n{stderr}")
    return ToolResult("\n".join(parts), ok=False, data=data)
