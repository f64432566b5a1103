"""The tool registry: finds tool plugins, asks each what it provides, builds tools by name.

Built-in tools (``DEFAULT_TOOL_PLUGINS``) register through the same ``register_tools`` hook as
third-party ones, which are found through the ``distil.tools`` entry-point group. Each entry
point is loaded on its own; one that fails to import, raises in its hook or implements a hook
that does not exist is recorded in :attr:`ToolRegistry.errors` and the others still load.
``DISTIL_NO_ENTRYPOINTS=1`` keeps entry points out, as it does for the core's plugins.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Optional

import pluggy
from distil_core.errors import ConfigError, PluginError, did_you_mean

from . import hookspecs
from .base import Tool, ToolInput, ToolResult

DEFAULT_TOOL_PLUGINS = ("distil_tools.builtin",)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass
class ToolRegistration:
    name: str
    factory: Callable[..., Tool]
    plugin: str
    description: str
    options: Optional[list[str]]  # option names the factory takes; None: any


class FunctionTool:
    """A plain function ``run(input)`` seen as a tool."""

    def __init__(self, function: Callable[[ToolInput], Any], name: str, description: str):
        self.function, self.name, self.description = function, name, description

    def run(self, input: ToolInput) -> Any:
        return self.function(input)


def run_tool(tool: Tool, input: ToolInput) -> ToolResult:
    """Run one call; an exception or an odd return value becomes a failed result."""
    try:
        result = tool.run(input)
    except Exception as exc:  # a tool's bug must not stop training
        return ToolResult.error(f"the tool failed: {type(exc).__name__}: {exc}")
    if isinstance(result, ToolResult):
        return result
    if isinstance(result, str):
        return ToolResult(result)
    return ToolResult.error(f"the tool returned {type(result).__name__}, not a ToolResult or a string")


class ToolRegistry:
    """One pluggy manager for ``register_tools`` plus every tool its plugins registered."""

    def __init__(self, *, load_entrypoints: Optional[bool] = None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.tools: dict[str, ToolRegistration] = {}
        self.plugins: list[str] = []
        self.errors: dict[str, str] = {}
        for module_name in DEFAULT_TOOL_PLUGINS:
            self._add(importlib.import_module(module_name), module_name)
        if load_entrypoints is None:
            load_entrypoints = os.environ.get("DISTIL_NO_ENTRYPOINTS", "") not in ("1", "true", "yes")
        if load_entrypoints:
            self.load_entrypoints()

    # -- loading -------------------------------------------------------------------------

    def load_entrypoints(self) -> None:
        for ep in sorted(metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.plugins or ep.name in self.errors:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken tool plugin must not take the others down
                self.errors[ep.name] = f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
                continue
            self._add(plugin, ep.name)

    def register_plugin(self, plugin: Any, name: str) -> None:
        """Register an in-process tool plugin (a module or object with ``register_tools``).

        Raises :class:`PluginError` when ``name`` is taken or the plugin fails; a plugin that
        fails is removed again, with whatever it registered before failing.
        """
        if name in self.plugins or name in self.errors:
            raise PluginError(f"a tool plugin named {name!r} is already registered; unregister it first")
        self._add(plugin, name)
        if name in self.errors:
            error = self.errors[name]
            self.unregister_plugin(name)
            raise PluginError(f"tool plugin {name!r}: {error}")

    def unregister_plugin(self, name: str) -> None:
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        if name in self.plugins:
            self.plugins.remove(name)
        self.errors.pop(name, None)
        for tool in [t for t, reg in self.tools.items() if reg.plugin == name]:
            del self.tools[tool]

    def _add(self, plugin: Any, name: str) -> None:
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy checks hook signatures here
            self.errors[name] = "could not register: " + " ".join(str(exc).split())
            return
        unknown = [
            attr for attr in dir(plugin)
            if attr.startswith("register_") and attr != "register_tools"
            and hasattr(getattr(plugin, attr, None), f"{hookspecs.PROJECT}_impl")
        ]
        if unknown:
            self.pm.unregister(name=name)
            self.errors[name] = "; ".join(f"unknown hook {h!r}; the tool hook is 'register_tools'" for h in unknown)
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            self.errors[name] = str(exc)
            return
        self.plugins.append(name)
        for impl in self.pm.hook.register_tools.get_hookimpls():
            if impl.plugin_name != name:
                continue
            try:
                impl.function(**{arg: self._register_callback(name) for arg in impl.argnames})
            except Exception as exc:
                self.errors[name] = f"register_tools raised {type(exc).__name__}: {exc}"

    def _register_callback(self, plugin: str) -> Callable[..., None]:
        def register(tool: Any, name: Optional[str] = None, description: Optional[str] = None) -> None:
            self._record(plugin, tool, name, description)

        return register

    def _record(self, plugin: str, tool: Any, name: Optional[str], description: Optional[str]) -> None:
        if inspect.isclass(tool):
            factory, options = tool, _option_names(tool)
        elif callable(getattr(tool, "run", None)):
            factory, options = (lambda obj=tool: obj), []
        elif inspect.isfunction(tool) or inspect.isbuiltin(tool) or callable(tool):
            name = name or getattr(tool, "__name__", None)
            doc = description or _first_line(tool)
            factory, options = (lambda fn=tool, n=name, d=doc: FunctionTool(fn, n, d)), []
        else:
            raise PluginError(f"tool plugin {plugin!r} registered {tool!r}, which is neither a class, a tool nor a function")
        name = name or getattr(tool, "name", None)
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
            raise PluginError(
                f"tool plugin {plugin!r} registered a tool without a valid name ({name!r}); give it a "
                "`name` attribute or pass name= (letters, digits, '_', '.', '-')"
            )
        if name in self.tools:
            raise PluginError(f"tool {name!r} is already registered by plugin {self.tools[name].plugin!r}; pick another name")
        if description is None:
            attr = getattr(tool, "description", None)
            description = attr if isinstance(attr, str) else _first_line(tool)
        self.tools[name] = ToolRegistration(name, factory, plugin, description.strip().split("\n")[0], options)

    # -- lookup ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.tools)

    def get(self, name: str) -> ToolRegistration:
        try:
            return self.tools[name]
        except KeyError:
            broken = f" (tool plugins that failed to load: {', '.join(sorted(self.errors))})" if self.errors else ""
            raise ConfigError(f"No tool named {name!r} is registered.{did_you_mean(name, self.names())}{broken}") from None

    def build(self, name: str, options: Optional[dict[str, Any]] = None) -> Tool:
        """The tool ``name``, built with ``options`` (checked against its factory's signature)."""
        reg = self.get(name)
        options = dict(options or {})
        if reg.options is not None:
            for key in options:
                if key not in reg.options:
                    takes = did_you_mean(key, reg.options) if reg.options else " It takes no options."
                    raise ConfigError(f"Unknown option {key!r} for tool {name!r} (from plugin {reg.plugin!r}).{takes}")
        try:
            tool = reg.factory(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tool {name!r}: {exc}") from None
        if not callable(getattr(tool, "run", None)):
            raise PluginError(f"tool {name!r} from plugin {reg.plugin!r} was built as {type(tool).__name__}, which has no run(input)")
        return tool


def _option_names(cls: type) -> Optional[list[str]]:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,)]


def _first_line(obj: Any) -> str:
    return (inspect.getdoc(obj) or "").strip().split("\n")[0]


_registry: Optional[ToolRegistry] = None


def get_registry() -> ToolRegistry:
    """The process-wide registry, created on first use."""
    global _registry
    if _registry is None:
        _registry = ToolRegistry()
    return _registry


def reset_registry() -> None:
    global _registry
    _registry = None
