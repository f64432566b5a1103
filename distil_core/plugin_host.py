"""Plugin host: finds plugins, asks each what it provides, and builds components by name.

Built-ins (``DEFAULT_PLUGINS``) go through the same hooks as third-party distributions, which
are found through the ``distil`` entry-point group. Every entry point is loaded on its own:
one that fails to import, that implements a hook that does not exist, or whose distribution
requires a ``distil-toolkit`` version other than the one running, is reported by name and the
rest still load.

The machinery is :class:`Registry`, one pluggy project with its registration hooks; the core's
:class:`PluginHost` is the registry of the six component kinds, and a plugin that lets other
plugins extend it (``distil-tools`` and its ``register_tools`` hook) builds its own registry
from the same class.

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
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import pluggy

from distil_core import hookspecs
from distil_core.errors import ConfigError, PluginError, did_you_mean, nearest
from distil_core.protocols import Register
from distil_core.version import core_version, unmet_requirement

GROUP = "distil"
CORE_DISTRIBUTION = "distil-toolkit"
DEFAULT_PLUGINS = ("distil_core.builtin", "distil_core.models.experts", "distil_core.tracking.plugin")
KINDS = {
    "verifier": "register_verifiers",
    "feedback_source": "register_feedback_sources",
    "expert": "register_experts",
    "task": "register_tasks",
    "logger": "register_loggers",
    "command": "register_commands",
}


@dataclass
class Registration:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""

    @property
    def options(self) -> Optional[list[str]]:
        """The option names the factory takes (``None``: it takes ``**kwargs``, so any)."""
        return option_names(self)


@dataclass
class PluginInfo:
    name: str
    distribution: Optional[str] = None
    version: Optional[str] = None
    registered: list[tuple[str, str]] = field(default_factory=list)
    error: Optional[str] = None
    kinds: tuple[str, ...] = tuple(KINDS)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "registered": {kind: [n for k, n in self.registered if k == kind] for kind in self.kinds},
        }
        if self.error:
            out["error"] = self.error
        return out


class Registry:
    """One pluggy project: its registration hooks, the plugins that implement them, and what
    they registered, by kind and name.

    ``kinds`` maps each kind to the hook that registers it (``{"tool": "register_tools"}``);
    ``hookspecs`` is the module (or class) declaring those hooks with a
    ``pluggy.HookspecMarker(project)``. Plugins are the modules in ``defaults`` (recorded as
    part of ``distribution``), then the entry points of ``group``. Every hook implementation is
    called with a ``register`` callback (see :meth:`register_callback`); the first registration
    of a name wins and a second is refused, naming the first plugin.
    """

    list_command = "distil plugins"
    """Where a user sees what is installed; named in the error for an unknown component."""

    options_command: Optional[str] = None
    """A command that, given a component's name, lists its options with their defaults; named
    in the error for an unknown option (None: there is none)."""

    _shared: ClassVar[dict[type, "Registry"]] = {}

    @classmethod
    def shared(cls) -> Any:
        """The process-wide instance of this class, created (with no arguments, under the
        environment of that moment) on first use: one host for the core, one registry per
        plugin that keeps its own, never rebuilt per call."""
        if cls not in Registry._shared:
            Registry._shared[cls] = cls()
        return Registry._shared[cls]

    @classmethod
    def set_shared(cls, instance: Optional["Registry"]) -> None:
        """Make ``instance`` the process-wide one (``None``: the next :meth:`shared` builds anew)."""
        if instance is None:
            Registry._shared.pop(cls, None)
        else:
            Registry._shared[cls] = instance

    def __init__(
        self,
        project: str,
        specs: Any,
        kinds: Mapping[str, str],
        *,
        group: Optional[str],
        defaults: Sequence[str] = (),
        distribution: Optional[tuple[str, str]] = None,
        load_entrypoints: Optional[bool] = None,
        allow: Optional[list[str]] = None,
    ):
        self.project = project
        self.kinds = dict(kinds)
        self.group = group
        self.distribution = distribution
        self.pm = pluggy.PluginManager(project)
        self.pm.add_hookspecs(specs)
        self.plugins: dict[str, PluginInfo] = {}
        self.unmatched: list[str] = []  # allow-list names no installed plugin has (load_entrypoints)
        self.registry: dict[str, dict[str, Registration]] = {kind: {} for kind in self.kinds}
        dist_name, dist_version = distribution or (None, None)
        for module_name in defaults:
            self.add_plugin(importlib.import_module(module_name), self.new_info(module_name, dist_name, dist_version))
        if load_entrypoints is None:
            load_entrypoints = os.environ.get("DISTIL_NO_ENTRYPOINTS", "") not in ("1", "true", "yes")
        if load_entrypoints and group:
            self.load_entrypoints(allow=allow)

    def new_info(self, name: str, distribution: Optional[str] = None, version: Optional[str] = None) -> PluginInfo:
        return PluginInfo(name, distribution, version, kinds=tuple(self.kinds))

    # -- loading -------------------------------------------------------------------------

    def load_entrypoints(self, allow: Optional[list[str]] = None) -> None:
        """Load the entry points of this registry's group (those in ``allow`` only, if given;
        else those in ``DISTIL_PLUGINS`` when it is set)."""
        if allow is None and "DISTIL_PLUGINS" in os.environ:
            allow = [n.strip() for n in os.environ["DISTIL_PLUGINS"].split(",") if n.strip()]
        points = sorted(metadata.entry_points(group=self.group), key=lambda e: e.name)
        # names the allow-list gives that no installed plugin has: said where a component is missing
        self.unmatched = sorted(set(allow or ()) - {ep.name for ep in points} - set(self.plugins))
        for ep in points:
            if ep.name in self.plugins or (allow is not None and ep.name not in allow):
                continue
            dist = getattr(ep, "dist", None)
            info = self.new_info(ep.name, dist.name if dist else None, dist.version if dist else None)
            unmet = unmet_requirement(dist, *self.distribution) if dist and self.distribution else None
            if unmet:
                info.error = unmet
                self.plugins[ep.name] = info
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin (one that exits, too) must not take the others down
                info.error = f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
                self.plugins[ep.name] = info
                continue
            self.add_plugin(plugin, info)

    def register_plugin(self, plugin: Any, name: str, *, version: Optional[str] = None) -> PluginInfo:
        """Register an in-process plugin object or module (tests, notebooks).

        Raises :class:`PluginError` if ``name`` is taken or the plugin is invalid; a plugin that
        fails is removed again, with whatever it registered before failing.
        """
        if name in self.plugins:
            raise PluginError(f"a plugin named {name!r} is already registered; unregister it first or pick another name")
        info = self.new_info(name, None, version)
        self.add_plugin(plugin, info)
        if info.error:
            self.unregister_plugin(name)
            raise PluginError(f"plugin {name!r}: {info.error}")
        return info

    def unregister_plugin(self, name: str) -> None:
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        for regs in self.registry.values():
            for key in [k for k, r in regs.items() if r.plugin == name]:
                del regs[key]

    def add_plugin(self, plugin: Any, info: PluginInfo) -> None:
        """Register ``plugin`` under ``info.name`` and run its hooks; a failure goes to ``info.error``."""
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy validates hook signatures here
            info.error = "could not register: " + " ".join(str(exc).split())
            return
        unknown = self.unknown_hooks(plugin)
        if unknown:
            self.pm.unregister(name=info.name)
            info.error = "; ".join(
                f"unknown hook {h!r}." + did_you_mean(h, self.kinds.values()) for h in unknown
            )
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=info.name)
            info.error = str(exc)
            return
        for kind, hook_name in self.kinds.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != info.name:
                    continue
                register = self.register_callback(kind, info)
                try:
                    impl.function(**{a: register for a in impl.argnames})
                except Exception as exc:
                    info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
        if info.error:  # a plugin that failed halfway contributes nothing, not what it registered first
            self.unregister_plugin(info.name)
            self.plugins[info.name] = info
            info.registered = []

    def unknown_hooks(self, plugin: Any) -> list[str]:
        """This project's hook implementations on ``plugin`` that name no hook (a misspelling)."""
        marker = f"{self.project}_impl"
        names = []
        for attr in dir(plugin):
            if attr.startswith("register_") and attr not in self.kinds.values():
                fn = getattr(plugin, attr, None)
                if callable(fn) and hasattr(fn, marker):
                    names.append(attr)
        return names

    def register_callback(self, kind: str, info: PluginInfo) -> Callable[..., None]:
        """The ``register`` a hook of ``kind`` is called with: ``register(name, factory,
        description="")``. A registry whose hooks take another call form overrides this and
        records through :meth:`add`."""

        def register(name: str, factory: Callable[..., Any], description: str = "") -> None:
            self.add(kind, name, factory, info, description or None)

        return register

    def check(self, kind: str, name: str, factory: Callable[..., Any], info: PluginInfo) -> None:
        """Refuse a registration (raise :class:`PluginError`) before it is recorded."""

    def add(self, kind: str, name: str, factory: Callable[..., Any], info: PluginInfo,
            description: Optional[str] = None) -> Registration:
        """Record one registration of ``info``'s plugin; a name already taken is refused.
        ``description`` defaults to the first line of the factory's docstring."""
        label = kind.replace("_", " ")
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {info.name!r} registered a {label} with an empty name")
        if not callable(factory):
            raise PluginError(f"plugin {info.name!r}: {label} {name!r} factory is not callable")
        self.check(kind, name, factory, info)
        existing = self.registry[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is already registered by plugin {existing.plugin!r}; pick another name"
            )
        doc = description if description is not None else (inspect.getdoc(factory) or "").split("\n")[0]
        reg = Registration(kind, name, factory, info.name, doc.strip())
        self.registry[kind][name] = reg
        info.registered.append((kind, name))
        return reg

    # -- lookup ----------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str) -> Registration:
        try:
            return self.registry[kind][name]
        except KeyError:
            broken = [p.name for p in self.plugins.values() if p.error]
            extra = f" (plugins that failed to load: {', '.join(broken)})" if broken else ""
            if self.unmatched:
                guess = nearest(self.unmatched[0], [ep.name for ep in metadata.entry_points(group=self.group)])
                extra += (f"; the allow-list (DISTIL_PLUGINS) names {', '.join(map(repr, self.unmatched))}, which no installed "
                          f"plugin is called" + (f" (did you mean {guess!r}?)" if guess else ""))
            raise ConfigError(
                f"No {kind.replace('_', ' ')} named {name!r} is registered.{did_you_mean(name, self.names(kind))}"
                f" Run `{self.list_command}` to list what is installed{extra}."
            ) from None

    def build(self, kind: str, name: str, options: Optional[dict[str, Any]] = None, *, runtime: Any = None) -> Any:
        """Call the registered factory with the config's options (validated against its signature),
        and with ``runtime`` when the factory has a parameter of that name."""
        reg = self.get(kind, name)
        options = dict(options or {})
        check_options(reg, options, self.options_command)
        params = factory_parameters(reg.factory)
        if params is not None and "runtime" in params:
            options["runtime"] = runtime
        return reg.factory(**options)

    def errors(self) -> dict[str, str]:
        return {n: p.error for n, p in self.plugins.items() if p.error}


class PluginHost(Registry):
    """The core's registry: tasks, verifiers, feedback sources, experts, loggers and commands."""

    options_command = "distil plugins"

    def __init__(self, *, load_entrypoints: Optional[bool] = None, allow: Optional[list[str]] = None):
        super().__init__(
            hookspecs.PROJECT, hookspecs, KINDS, group=GROUP, defaults=DEFAULT_PLUGINS,
            distribution=(CORE_DISTRIBUTION, core_version()), load_entrypoints=load_entrypoints, allow=allow,
        )

    def check(self, kind: str, name: str, factory: Callable[..., Any], info: PluginInfo) -> None:
        if kind != "command":
            return
        if not (callable(getattr(factory, "configure", None)) and callable(getattr(factory, "run", None))):
            raise PluginError(f"plugin {info.name!r}: command {name!r} needs configure(parser) and run(args)")


def factory_parameters(factory: Callable[..., Any]) -> Optional[dict[str, inspect.Parameter]]:
    """The factory's parameters, or None when it cannot be inspected or takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return dict(params)


SUPPLIED = {"logger": ("run_dir",)}
"""Factory parameters the toolkit fills itself, per kind, which a config may not set (a tracker's run
directory): never listed as options, nor offered as a spelling."""


def option_names(reg: Registration) -> Optional[list[str]]:
    """The options a config may give ``reg`` (``None``: its factory takes ``**kwargs``, so any)."""
    params = factory_parameters(reg.factory)
    if params is None:
        return None
    supplied = ("self", "runtime", *SUPPLIED.get(reg.kind, ()))
    return [n for n, p in params.items() if n not in supplied and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def check_options(reg: Registration, options: dict[str, Any],
                  options_command: Optional[str] = None) -> None:
    """Refuse an option the factory does not take, with the closest valid spelling (and, given
    ``options_command``, the command that lists the valid ones with their defaults)."""
    valid = option_names(reg)
    if valid is None:
        return
    for key in options:
        if key not in valid:
            hint = did_you_mean(key, valid) if valid else " It takes no options."
            listed = (f" `{options_command} {reg.name}` lists them with their defaults."
                      if options_command and valid else "")
            raise ConfigError(
                f"Unknown option {key!r} for {reg.kind.replace('_', ' ')} {reg.name!r} "
                f"(from plugin {reg.plugin!r}).{hint}{listed}"
            )


def get_host() -> PluginHost:
    """The process-wide host, created on first use (under the environment of that moment)."""
    return PluginHost.shared()


def set_host(host: Optional[PluginHost]) -> None:
    """Make ``host`` the process-wide host (``None``: the next :func:`get_host` builds a new one)."""
    PluginHost.set_shared(host)


def reset_host() -> None:
    set_host(None)


__all__ = [
    "GROUP", "CORE_DISTRIBUTION", "DEFAULT_PLUGINS", "KINDS", "Register", "Registration",
    "PluginInfo", "Registry", "PluginHost", "core_version", "unmet_requirement", "factory_parameters",
    "SUPPLIED", "option_names", "check_options", "get_host", "set_host", "reset_host",
]
