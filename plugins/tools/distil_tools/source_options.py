"""The feedback source's choice of tools and their options, checked when it is built.

Every error names the source and the option as a config sets it (``tools``,
``tool_options.python.memory_mb``) and says what is accepted, so a bad value stops the run
before it starts instead of failing each call.
"""

from __future__ import annotations

from typing import Any

from distil_core import ConfigError, did_you_mean

from .base import Tool, one_line, printable
from .registry import ToolOptionError, ToolRegistry


def tool_names(registry: ToolRegistry, tools: Any) -> list[str]:
    """The tools in use: ``tools`` (a name or a non-empty list of names), or every registered one."""
    if tools is None:
        return registry.names("tool")
    if isinstance(tools, str):
        return [tools]
    if not isinstance(tools, (list, tuple)) or not tools or not all(isinstance(name, str) for name in tools):
        raise ConfigError(
            f"tools feedback: option tools must be a non-empty list of tool names, e.g. [calculator, sympy] "
            f"(got {shown(tools)}); leave it out to use every registered tool"
        )
    return list(dict.fromkeys(tools))


def tool_options_checked(tool_options: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """``tool_options`` checked: a mapping from tools in use to mappings of their options."""
    if tool_options is None:
        return {}
    if not isinstance(tool_options, dict):
        raise ConfigError(
            "tools feedback: tool_options must be a mapping from tool names to their options, "
            f"e.g. {{python: {{timeout_s: 5}}}} (got {shown(tool_options)})"
        )
    for name, options in tool_options.items():
        if name not in names:
            raise ConfigError(
                f"tools feedback: tool_options names {shown(name)}, which is not among the tools in use."
                f"{did_you_mean(str(name), names)} Add it to `tools` or fix the name."
            )
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"tools feedback: tool_options.{name} must be a mapping of option names to values "
                              f"(got {shown(options)})")
    return tool_options


def build_tool(registry: ToolRegistry, name: str, options: dict[str, Any]) -> Tool:
    """The tool ``name``; an option it refuses is named where the config sets it."""
    try:
        return registry.build("tool", name, options)
    except ToolOptionError as exc:
        raise ConfigError(f"tools feedback: {exc.error.where(f'tool_options.{name}.{exc.error.option}')}") from None
    except ConfigError as exc:
        raise ConfigError(f"tools feedback: {exc}") from None


def check_deadline(call_timeout_s: float, tools: dict[str, Tool]) -> None:
    """Refuse a deadline no longer than a tool's own time limit: the tool's limit ("timed out after
    10 s", with what the program printed) would never get to answer."""
    for name, tool in tools.items():
        limit = getattr(tool, "timeout_s", None)
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and call_timeout_s <= limit:
            raise ConfigError(
                f"tools feedback: option call_timeout_s ({call_timeout_s:g} s) must be longer than tool "
                f"{name!r}'s own time limit (tool_options.{name}.timeout_s = {limit:g} s), so that limit can answer "
                "first; raise call_timeout_s or lower the tool's timeout_s"
            )


def shown(value: Any) -> str:
    """A config value quoted in an error, on one line and short."""
    return one_line(printable(value, repr), 80)
