"""Checks of the ``code_exec`` options, when the verifier or the feedback source is built.

A bad option must stop a run before it starts, with one line naming the option and what it
accepts: unchecked, ``memory_mb: -1`` or ``max_pending: 0`` were accepted and raised at the
first grading step (which stops training), ``max_output_bytes: 0`` failed every whole-program
solution, ``workers: 0`` silently meant the default, and ``batch_size: "8"`` raised a TypeError.
Each check raises ValueError (``distil train`` shows it as a config error) with a message that
starts with ``code_exec:``.
"""

from __future__ import annotations

from typing import Any, Optional

import distil_sandbox
from distil_core import ConfigError

BACKENDS = ("auto", *distil_sandbox.AUTO_ORDER)


def got(value: Any) -> str:
    """How an error names the value it got: ``(got '8', a str: write it without quotes)``."""
    quoted = isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit()
    return f"(got {value!r}{', a str: write it without quotes' if quoted else ''})"


def whole_number(name: str, value: Any, *, least: int, most: Optional[int] = None, none: str = "",
                 who: str = "code_exec") -> Any:
    """``value`` if it is a whole number from ``least`` to ``most`` (or None, where ``none`` says
    what None means); else a ValueError naming option ``name`` and what it accepts."""
    if value is None and none:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= least and (most is None or value <= most):
        return value
    accepted = f"a whole number from {least} to {most}" if most is not None else f"a whole number of at least {least}"
    raise ValueError(f"{who}: {name} must be {accepted}{f' (or null: {none})' if none else ''} {got(value)}")


def flag(name: str, value: Any, *, who: str = "code_exec") -> bool:
    """``value`` if it is true or false; else a ValueError naming option ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{who}: {name} must be true or false {got(value)}")
    return value


def backend_name(value: Any, *, who: str = "code_exec") -> str:
    """``value`` if it names a sandbox backend; else a ValueError listing them."""
    if value not in BACKENDS:
        raise ValueError(f"{who}: backend must be one of {', '.join(BACKENDS)} {got(value)}")
    return value


def available_backend(value: Any) -> str:
    """The name of the backend ``value`` chooses (``auto``: the first available here). One that
    cannot run here is a :class:`~distil_core.ConfigError` of one line saying why and what to do
    (``BackendUnavailable`` is a RuntimeError, which ``distil train`` would show as a traceback)."""
    backend_name(value)
    try:
        return distil_sandbox.get_backend(value).name
    except distil_sandbox.BackendUnavailable as exc:
        raise ConfigError(f"code_exec: {exc}; or choose another backend ({', '.join(BACKENDS)})") from None


def memory_mb(value: Any) -> int:
    """``value`` if a sandbox job may have that ``memory_mb`` (the sandbox's own check, with its
    upper bound); else a ValueError naming the option."""
    whole_number("memory_mb", value, least=1)
    try:
        distil_sandbox.validate_job(distil_sandbox.Job(code="", memory_mb=value))
    except ValueError as exc:
        raise ValueError(f"code_exec: {exc}") from None
    return value
