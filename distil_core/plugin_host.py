"""Plugin host: finds plugins, asks each what it provides, and builds components by name.

Built-ins (``DEFAULT_PLUGINS``) go through the same hooks as third-party distributions, which
are found through the ``distil`` entry-point group. Every entry point is loaded on its own:
one that fails to import, or that implements a hook that does not exist, is reported by name
and the rest still load.

Environment:
    DISTIL_PLUGINS          comma-separated allow-list of entry-point names to load
                            ("" loads none; unset loads all installed).
    DISTIL_NO_ENTRYPOINTS   set to 1 to load only the built-ins (the test suite does).
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Optional

import pluggy

from distil_core import hookspecs
from distil_core.errors import ConfigError, PluginError, did_you_mean

GROUP = "distil"
DEFAULT_PLUGINS = ("distil_core.builtin", "distil_core.models.experts")
KINDS = {
    "verifier": "register_verifiers",
    "feedback_source": "register_feedback_sources",
    "expert": "register_experts",
    "task": "register_tasks",
    "command": "register_commands",
}
BUILTIN_COMMANDS = ("train", "eval", "plugins", "serve")


@dataclass
class Registration:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""


@dataclass
class PluginInfo:
    name: str
    distribution: Optional[str] = None
    version: Optional[str] = None
    registered: list[tuple[str, str]] = field(default_factory=list)
    error: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "registered": {kind: [n for k, n in self.registered if k == kind] for kind in KINDS},
        }
        if self.error:
            out["error"] = self.error
        return out


def _core_version() -> str:
    from distil_core import __version__

    return __version__


class PluginHost:
    """One pluggy manager plus the registry of everything its plugins registered."""

    def __init__(self, *, load_entrypoints: Optional[bool] = None, allow: Optional[list[str]] = None):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registry: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            self._add(module, PluginInfo(module_name, "distil-toolkit", _core_version()))
        if load_entrypoints is None:
            load_entrypoints = os.environ.get("DISTIL_NO_ENTRYPOINTS", "") not in ("1", "true", "yes")
        if load_entrypoints:
            self.load_entrypoints(allow=allow)

    # -- loading -------------------------------------------------------------------------

    def load_entrypoints(self, allow: Optional[list[str]] = None) -> None:
        if allow is None and "DISTIL_PLUGINS" in os.environ:
            allow = [n.strip() for n in os.environ["DISTIL_PLUGINS"].split(",") if n.strip()]
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in self.plugins or (allow is not None and ep.name not in allow):
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None)
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                info.error = f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
                self.plugins[ep.name] = info
                continue
            self._add(plugin, info)

    def register_plugin(self, plugin: Any, name: str, *, version: Optional[str] = None) -> PluginInfo:
        """Register an in-process plugin object or module (tests, notebooks).

        Raises :class:`PluginError` if ``name`` is taken or the plugin is invalid; a plugin
        that fails is removed again, with whatever it registered before failing.
        """
        if name in self.plugins:
            raise PluginError(f"a plugin named {name!r} is already registered; unregister it first or pick another name")
        info = PluginInfo(name, None, version)
        self._add(plugin, info)
        if info.error:
            self.unregister_plugin(name)
            raise PluginError(f"plugin {name!r}: {info.error}")
        return info

    def unregister_plugin(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        for regs in self.registry.values():
            for key in [k for k, r in regs.items() if r.plugin == name]:
                del regs[key]

    def _add(self, plugin: Any, info: PluginInfo) -> None:
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy validates hook signatures here
            info.error = "could not register: " + " ".join(str(exc).split())
            return
        unknown = self._unknown_hooks(plugin)
        if unknown:
            self.pm.unregister(name=info.name)
            info.error = "; ".join(
                f"unknown hook {h!r}." + did_you_mean(h, KINDS.values()) for h in unknown
            )
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=info.name)
            info.error = str(exc)
            return
        for kind, hook_name in KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != info.name:
                    continue
                register = self._register_callback(kind, info)
                try:
                    impl.function(**{a: register for a in impl.argnames})
                except Exception as exc:
                    info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"

    def _unknown_hooks(self, plugin: Any) -> list[str]:
        names = []
        for attr in dir(plugin):
            if attr.startswith("register_") and attr not in KINDS.values():
                fn = getattr(plugin, attr, None)
                if callable(fn) and hasattr(fn, "distil_impl"):
                    names.append(attr)
        return names

    def _register_callback(self, kind: str, info: PluginInfo) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], description: str = "") -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {info.name!r} registered a {kind} with an empty name")
            if not callable(factory):
                raise PluginError(f"plugin {info.name!r}: {kind} {name!r} factory is not callable")
            if kind == "command":
                if name in BUILTIN_COMMANDS:
                    raise PluginError(f"plugin {info.name!r} cannot register command {name!r}: it is built in")
                if not (callable(getattr(factory, "configure", None)) and callable(getattr(factory, "run", None))):
                    raise PluginError(f"plugin {info.name!r}: command {name!r} needs configure(parser) and run(args)")
            existing = self.registry[kind].get(name)
            if existing is not None:
                raise PluginError(
                    f"{kind} {name!r} is already registered by plugin {existing.plugin!r}; "
                    "pick another name"
                )
            doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            self.registry[kind][name] = Registration(kind, name, factory, info.name, doc)
            info.registered.append((kind, name))

        return register

    # -- lookup ----------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str) -> Registration:
        try:
            return self.registry[kind][name]
        except KeyError:
            broken = [p.name for p in self.plugins.values() if p.error]
            extra = f" (plugins that failed to load: {', '.join(broken)})" if broken else ""
            raise ConfigError(
                f"No {kind.replace('_', ' ')} named {name!r} is registered.{did_you_mean(name, self.names(kind))}"
                f" Run `distil plugins` to list what is installed{extra}."
            ) from None

    def build(self, kind: str, name: str, options: Optional[dict[str, Any]] = None, *, runtime: Any = None) -> Any:
        """Call the registered factory with the config's options (validated against its signature)."""
        reg = self.get(kind, name)
        options = dict(options or {})
        check_options(reg, options)
        params = factory_parameters(reg.factory)
        if params is not None and "runtime" in params:
            options["runtime"] = runtime
        return reg.factory(**options)

    def errors(self) -> dict[str, str]:
        return {n: p.error for n, p in self.plugins.items() if p.error}


def factory_parameters(factory: Callable[..., Any]) -> Optional[dict[str, inspect.Parameter]]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return dict(params)


def option_names(reg: Registration) -> Optional[list[str]]:
    params = factory_parameters(reg.factory)
    if params is None:
        return None
    return [n for n, p in params.items() if n not in ("self", "runtime") and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def check_options(reg: Registration, options: dict[str, Any]) -> None:
    valid = option_names(reg)
    if valid is None:
        return
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"Unknown option {key!r} for {reg.kind.replace('_', ' ')} {reg.name!r} "
                f"(from plugin {reg.plugin!r}).{did_you_mean(key, valid)}"
            )


_host: Optional[PluginHost] = None


def get_host() -> PluginHost:
    """The process-wide host, created on first use."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host() -> None:
    global _host
    _host = None

