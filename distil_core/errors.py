"""User-facing errors. The CLI prints these as one paragraph, without a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable, Optional


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


__all__ = ["DistilError", "ConfigError", "PluginError", "nearest", "did_you_mean"]
