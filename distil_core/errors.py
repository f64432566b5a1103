"""User-facing errors. The CLI prints these as one paragraph, without a traceback."""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import traceback
from typing import Awaitable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class DistilError(Exception):
    """An error the user can fix; the message says what to do."""

    exit_code = 1


class ConfigError(DistilError):
    """A bad config file, override or option. Exit code 2, like a usage error."""

    exit_code = 2


class PluginError(DistilError):
    """A plugin failed to load or registered something invalid."""


def nearest(name: str, choices: Iterable[str]) -> Optional[str]:
    """The closest valid spelling of ``name``, or None if nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """The tail of an "unknown name" message: a close spelling if there is one, then every valid
    name, so that a user who misspelt a component, option or hook sees the fix in the error."""
    choices = sorted(set(choices))
    guess = nearest(name, choices)
    hint = f" Did you mean {guess!r}?" if guess else ""
    valid = ", ".join(choices) if choices else "(none)"
    return f"{hint} Valid: {valid}."


@contextlib.contextmanager
def plugin_call(role: str, name: str, owner: object = None) -> Iterator[None]:
    """Run a plugin's code; an exception it raises, other than the toolkit's own errors, becomes
    one :class:`PluginError` naming the plugin (``role`` ``name``: "feedback source 'tools'"),
    the line that raised it and, where that line is in a library, the plugin's own line that
    called it (``owner``, the plugin's object, says which files are the plugin's).

    A plugin reports what fails for one item in its answer (a failed signal, a verdict, no
    feedback); what it raises stops the run. Without this, a dropped connection inside a
    critic reached the user as a traceback that named neither the plugin nor its option, after
    the first evaluation had already run. The original exception stays chained to it.
    """
    try:
        yield
    except DistilError:
        raise
    except Exception as exc:
        raise PluginError(f"{role} {name!r} raised {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                          f"{raised_at(exc, owner)}. Check the plugin and its options.") from exc


async def plugin_awaited(role: str, name: str, value: Awaitable[T], owner: object = None) -> T:
    """:func:`plugin_call` around awaiting a plugin's coroutine."""
    with plugin_call(role, name, owner):
        return await value


def raised_at(exc: BaseException, owner: object = None) -> str:
    """`` (at FOLDER/FILE.py:LINE in FUNCTION, from …)``: where ``exc`` was raised and, when that
    is outside the package ``owner``'s class comes from, the last line inside it; or nothing."""
    here = os.path.abspath(__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) != here]
    if not frames:
        return ""
    where = f" (at {_frame(frames[-1])}"
    home = _package_path(owner)
    own = [f for f in frames if home and os.path.abspath(f.filename).startswith(home)]
    if own and own[-1] is not frames[-1]:
        where += f", from {_frame(own[-1])}"
    return where + ")"


def _frame(frame: traceback.FrameSummary) -> str:
    short = os.path.join(*os.path.normpath(frame.filename).split(os.sep)[-2:])
    return f"{short}:{frame.lineno} in {frame.name}"


def _package_path(owner: object) -> str:
    """The folder of the top-level package ``owner``'s class is defined in (its file, for a
    module that is no package); "" when unknown."""
    if owner is None:
        return ""
    name = type(owner).__module__
    package = getattr(sys.modules.get(name.split(".")[0]), "__file__", None)
    if package and os.path.basename(package) == "__init__.py":
        return os.path.dirname(os.path.abspath(package)) + os.sep
    path = getattr(sys.modules.get(name), "__file__", None)  # a module, or one in a namespace package
    return os.path.abspath(path) if path else ""


__all__ = ["DistilError", "ConfigError", "PluginError", "nearest", "did_you_mean", "plugin_call",
           "plugin_awaited", "raised_at"]
