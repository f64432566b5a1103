"""distil_sandbox: run untrusted code in isolation, with one call.

    from distil_sandbox import run
    result = run("print(input()[::-1])", stdin="abc", timeout_s=5)
    result.stdout, result.exit_code, result.timed_out, result.backend

Backends, chosen by name or by availability (``backend="auto"``: bwrap, then docker, then
process): see :mod:`distil_sandbox.backends`. Many jobs at once: :class:`Pool` (one backend)
or :class:`EnginePool` (several Docker engines and local workers sharing one queue). Only the
standard library is needed; the docker backend uses the ``docker`` SDK when it is installed.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

from ._job import MAX_LIMITS, MAX_TIMEOUT_S, validate_job
from .backends import AUTO_ORDER, Backend, BackendUnavailable, available_backends, get_backend
from .engines import EnginePool
from .conversation import Conversation
from .pool import Pool
from .result import DEFAULT_OUTPUT_LIMIT, ExecResult, Job

__version__ = "0.1.0"


def run(
    code: str,
    *,
    language: str = "python",
    stdin: Optional[Union[str, bytes]] = None,
    files: Optional[Mapping[str, Union[str, bytes]]] = None,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    backend: str = "auto",
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
) -> ExecResult:
    """Run ``code`` once in a fresh sandbox and return what happened.

    ``language``: ``"python"`` (the sandbox's ``python3``) or ``"bash"``. ``files`` maps relative
    paths to contents, written into the work directory first. ``timeout_s`` is wall-clock; on
    expiry every process of the job is killed. stdout and stderr keep ``output_limit`` bytes
    each. Raises ValueError for a job no backend could run (unknown language, a file path that
    is absolute or contains ``..``, a limit that is not positive or past its :data:`MAX_LIMITS`)
    and :class:`BackendUnavailable` (with the reason) when the backend cannot run here.
    """
    job = Job(
        code=code,
        language=language,
        stdin=stdin,
        files=dict(files or {}),
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        output_limit=output_limit,
    )
    validate_job(job)
    return get_backend(backend).run(job)


__all__ = [
    "run",
    "MAX_TIMEOUT_S",
    "MAX_LIMITS",
    "Conversation",
    "Pool",
    "EnginePool",
    "Job",
    "ExecResult",
    "Backend",
    "BackendUnavailable",
    "available_backends",
    "get_backend",
    "AUTO_ORDER",
]
