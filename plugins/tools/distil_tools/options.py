"""Checking the options of the feedback source and of the built-in tools, at build time.

A config's value reaches a constructor as YAML wrote it: ``"false"``, ``"256"``, ``null``,
``1e15``. Unchecked, ``"false"`` silently counts as true, ``"256"`` fails at the first
comparison without naming the option, and a limit no sandbox can set fails every call of the
run with an error the expert reads as feedback on the student. So every option is checked
when the source is built, and a bad one is an :class:`OptionError` that names it and says
what is accepted. The feedback source reports it as ``tool_options.<tool>.<option>``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

MAX_TIMEOUT_S = 86_400
"""The longest time limit (a day): the sandbox refuses longer jobs, and past it the deadlines
computed from a limit overflow the clocks they are handed to."""

MAX_MEMORY_MB = 1 << 20
"""The largest memory limit, 1 TiB: a limit in bytes must fit the kernel's rlimit (a value of
2**44 MiB makes every sandbox and sympy worker fail to start)."""


class OptionError(ValueError):
    """A bad option value: ``option`` is its name, the message says what is accepted.

    A ValueError, so the registry reports it as it does any tool's refusal; the feedback source
    reads ``option`` to name it where the config sets it (``tool_options.python.memory_mb``).
    """

    def __init__(self, option: str, rule: str, value: Any):
        self.option, self.rule, self.value = option, rule, value
        super().__init__(f"option {option} must be {rule} {got(value)}")

    def where(self, path: str) -> str:
        """The message with the option named by its place in the config."""
        return f"option {path} must be {self.rule} {got(self.value)}"


def got(value: Any) -> str:
    """``(got ...)`` for an error; a quoted number or boolean is told to drop the quotes."""
    hint = ": write it without quotes" if isinstance(value, str) and _unquoted(value) else ""
    kind = type(value).__name__
    return f"(got {value!r}, {'an' if kind[0] in 'aeiou' else 'a'} {kind}{hint})"


def _unquoted(text: str) -> bool:
    if text.strip().lower() in ("true", "false", "yes", "no", "null"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def flag(option: str, value: Any) -> bool:
    """A boolean option: only true or false (``"false"`` would be true to ``bool``)."""
    if not isinstance(value, bool):
        raise OptionError(option, "true or false", value)
    return value


def whole(option: str, value: Any, low: int, high: Optional[int] = None, unit: str = "") -> int:
    """An integer option in ``[low, high]``; ``true`` (an int to Python) and ``2.0`` are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        what = f"a whole number{' of ' + unit if unit else ''}"
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise OptionError(option, f"{what} {bounds}", value)
    return value


def seconds(option: str, value: Any, high: float = MAX_TIMEOUT_S) -> float:
    """A time limit: a number of seconds above 0 and at most ``high``.

    NaN compares false with everything, so ``value <= 0`` alone would let it through (the range
    test here refuses it); a NaN or infinite limit fails inside ``select``/``time`` on every
    call instead of at load.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise OptionError(option, f"a number of seconds above 0 and at most {high:g}", value)
    return float(value)


def choice(option: str, value: Any, allowed: Sequence[str]) -> str:
    """One of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise OptionError(option, f"one of {', '.join(allowed)}", value)
    return value
