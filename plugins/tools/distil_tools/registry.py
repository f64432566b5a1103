"""The tool registry: finds tool plugins, asks each what it provides, builds tools by name.

It is a :class:`distil_core.Registry` for this plugin's one hook, ``register_tools``: built-in
tools (``DEFAULT_TOOL_PLUGINS``) register through it like third-party ones, which are found
through the ``distil.tools`` entry-point group. Each entry point is loaded on its own; one that
fails to import, raises in its hook, implements a hook that does not exist or requires another
``distil-tools`` version is listed by :meth:`ToolRegistry.errors` and the others still load.
``DISTIL_NO_ENTRYPOINTS=1`` keeps entry points out, as it does for the core's plugins.

``DISTIL_PLUGINS``, the core's allow-list, does not apply here: tool plugins are not core plugins,
and ``DISTIL_PLUGINS=tools`` — which a run needs to enable this plugin at all — would otherwise
drop every third-party tool. Tools have their own allow-list, ``DISTIL_TOOLS`` (entry-point names
of the ``distil.tools`` group, comma-separated; ``""`` loads none; unset loads all).
"""

from __future__ import annotations

import functools
import inspect
import os
from importlib import metadata
from typing import Any, Callable, Optional, Sequence

from distil_core import ConfigError, PluginError, Registration, Registry, nearest

from . import hookspecs
from .base import Tool, ToolInput, ToolResult, printable
from .options import OptionError

DEFAULT_TOOL_PLUGINS = ("distil_tools.builtin",)
ALLOW_ENV = "DISTIL_TOOLS"  # the tools' allow-list; the core's DISTIL_PLUGINS does not filter them
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class FunctionTool:
    """A plain function ``run(input)`` seen as a tool."""

    def __init__(self, function: Callable[[ToolInput], Any], name: str, description: str):
        self.function, self.name, self.description = function, name, description

    def run(self, input: ToolInput) -> Any:
        return self.function(input)


def run_tool(tool: Tool, input: ToolInput) -> ToolResult:
    """Run one call; an exception or an odd return value becomes a failed result.

    A tool's bug must not stop training, and "exception" is meant broadly: a tool that wraps a
    command-line parser exits through ``SystemExit`` (argparse on bad arguments), and
    ``GeneratorExit`` or a stray ``CancelledError`` from inside ``run`` cannot be meant for this
    plain function either. Only ``KeyboardInterrupt`` — the user stopping the run — goes through.
    """
    try:
        result = tool.run(input)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # see the docstring
        detail = printable(exc)
        what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        exited = " (the tool called sys.exit)" if isinstance(exc, SystemExit) else ""
        return ToolResult.error(f"the tool failed: {what}{exited}")
    if isinstance(result, str):
        return ToolResult(result)
    if not isinstance(result, ToolResult):
        return ToolResult.error(f"the tool returned {type(result).__name__}, not a ToolResult or a string")
    name = printable(getattr(tool, "name", type(tool).__name__), repr)
    if not isinstance(result.text, str):
        return ToolResult.error(f"tool {name} returned a ToolResult whose text is {type(result.text).__name__}, not a string")
    if not isinstance(result.data, dict):
        return ToolResult.error(f"tool {name} returned a ToolResult whose data is {type(result.data).__name__}, not a dict")
    return result


def same(obj: Any) -> Any:
    """The factory of a tool registered as a ready object: that object."""
    return obj


def tool_factory(tool: Any, name: Optional[str], description: Optional[str]) -> tuple[Callable[..., Any], Optional[str], str]:
    """(factory, name, description) of what a plugin passed to ``register``: a class (built with
    the tool's options), an object with ``run`` (used as is) or a function (wrapped)."""
    if inspect.isclass(tool):
        factory: Callable[..., Any] = tool
    elif callable(getattr(tool, "run", None)):
        factory = functools.partial(same, tool)
    elif callable(tool):
        name = name or getattr(tool, "__name__", None)
        factory = functools.partial(FunctionTool, tool, name, description or first_line(tool))
    else:
        return None, name, ""  # type: ignore[return-value]
    name = name or getattr(tool, "name", None)
    if description is None:
        attr = getattr(tool, "description", None)
        description = attr if isinstance(attr, str) else first_line(tool)
    return factory, name, description.strip().split("\n")[0]


def first_line(obj: Any) -> str:
    return (inspect.getdoc(obj) or "").strip().split("\n")[0]


class ToolOptionError(ConfigError):
    """A tool refused the value of one of its options: ``tool`` names the tool, ``error`` is the
    tool's :class:`~distil_tools.options.OptionError` (so the feedback source can name the
    option where its config sets it, ``tool_options.<tool>.<option>``)."""

    def __init__(self, tool: str, error: OptionError):
        self.tool, self.error = tool, error
        super().__init__(f"tool {tool!r}: {error}")


class ToolRegistry(Registry):
    """The registry of tools: ``register_tools`` implementations and what they registered."""

    list_command = "distil tools"
    unmatched_tools: Sequence[str] = ()  # names DISTIL_TOOLS gives that no tool plugin has

    def __init__(self, *, load_entrypoints: Optional[bool] = None):
        from . import __version__

        super().__init__(hookspecs.PROJECT, hookspecs, {"tool": "register_tools"}, group=hookspecs.ENTRY_POINT_GROUP,
                         defaults=DEFAULT_TOOL_PLUGINS, distribution=("distil-tools", __version__),
                         load_entrypoints=load_entrypoints)

    def load_entrypoints(self, allow: Optional[list[str]] = None) -> None:
        """Load the ``distil.tools`` entry points: those in ``allow`` if given, else those
        ``DISTIL_TOOLS`` names when it is set, else all of them — never filtered by the core's
        ``DISTIL_PLUGINS`` (see the module docstring)."""
        if allow is None and ALLOW_ENV in os.environ:
            allow = [n.strip() for n in os.environ[ALLOW_ENV].split(",") if n.strip()]
        if allow is None:  # a list, so the core's loader does not fall back on DISTIL_PLUGINS
            allow = [ep.name for ep in metadata.entry_points(group=self.group)]
        super().load_entrypoints(allow=allow)
        # The core's message for these names says DISTIL_PLUGINS; get() says DISTIL_TOOLS instead.
        self.unmatched_tools, self.unmatched = self.unmatched, []

    def get(self, kind: str, name: str) -> Registration:
        try:
            return super().get(kind, name)
        except ConfigError as exc:
            if not self.unmatched_tools:
                raise
            names = [ep.name for ep in metadata.entry_points(group=self.group)]
            guess = nearest(self.unmatched_tools[0], names)
            raise ConfigError(
                f"{exc} The tool allow-list ({ALLOW_ENV}) names {', '.join(map(repr, self.unmatched_tools))}, which no "
                f"installed tool plugin is called" + (f" (did you mean {guess!r}?)" if guess else "") + "."
            ) from None

    @property
    def tools(self) -> dict[str, Registration]:
        """Every registered tool by name; ``.options`` lists the options its factory takes."""
        return self.registry["tool"]

    def register_callback(self, kind: str, info: Any) -> Callable[..., None]:
        def register(tool: Any, name: Optional[str] = None, description: Optional[str] = None) -> None:
            factory, name, description = tool_factory(tool, name, description)
            if factory is None:
                raise PluginError(f"tool plugin {info.name!r} registered {tool!r}, which is neither a class, a tool nor a function")
            if not isinstance(name, str) or not name or not set(name) <= NAME_CHARS:
                raise PluginError(
                    f"tool plugin {info.name!r} registered a tool without a valid name ({name!r}); give it a "
                    "`name` attribute or pass name= (letters, digits, '_', '.', '-')"
                )
            self.add(kind, name, factory, info, description)

        return register

    def build(self, kind: str, name: str, options: Optional[dict[str, Any]] = None, *, runtime: Any = None) -> Tool:
        """The tool ``name`` (``kind`` is ``"tool"``), built with ``options`` (checked against its
        factory's signature)."""
        try:
            tool = super().build(kind, name, options, runtime=runtime)
        except OptionError as exc:
            raise ToolOptionError(name, exc) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tool {name!r}: {exc}") from None
        if not callable(getattr(tool, "run", None)):
            plugin = self.get(kind, name).plugin
            raise PluginError(f"tool {name!r} from plugin {plugin!r} was built as {type(tool).__name__}, which has no run(input)")
        return tool


def get_registry() -> ToolRegistry:
    """The process-wide registry, created on first use."""
    return ToolRegistry.shared()


def reset_registry() -> None:
    """Drop the process-wide registry; the next :func:`get_registry` loads the plugins again."""
    ToolRegistry.set_shared(None)
