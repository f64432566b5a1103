"""``distil plugins``: what is installed, what each plugin registered, and what each component takes.

A component's options are the keyword parameters of its factory (the ``options`` of a config's
``{name: ..., options: {...}}``), so they are read from the factory's signature, the same place
:func:`~distil_core.plugin_host.check_options` reads them from when a config names one: what this
lists is exactly what a config may write.
"""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any, Optional

from distil_core.cli.tables import render_table
from distil_core.errors import ConfigError, did_you_mean
from distil_core.text import shown_safely
from distil_core.plugin_host import KINDS, Registration, factory_parameters, get_host

__all__ = ["component_options", "main_plugins"]


SECTION = {"task": "task", "verifier": "verifier", "feedback_source": "feedback", "expert": "expert",
           "logger": "train.tracker_options"}
"""Where a config names a component of each kind (commands are run, not configured)."""


def component_options(reg: Registration) -> Optional[list[dict[str, Any]]]:
    """``[{"name", "default"} or {"name", "required": True}, ...]`` for ``reg``'s factory; None when
    it takes ``**kwargs`` (any option) or cannot be inspected."""
    params = factory_parameters(reg.factory)
    if params is None:
        return None
    out = []
    for name in reg.options or []:
        default = params[name].default
        out.append({"name": name, "required": True} if default is inspect.Parameter.empty
                   else {"name": name, "default": _plain(default)})
    return out


def main_plugins(args: argparse.Namespace) -> int:
    host = get_host()
    if args.options or args.components:
        return _print_options(host, args.components, as_json=args.json)
    infos = list(host.plugins.values())
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    rows = [("plugin", "version", "registered")]
    for info in infos:
        parts = []
        for kind in KINDS:
            names = [n for k, n in info.registered if k == kind]
            if names:
                parts.append(f"{kind.replace('_', ' ')}s: {', '.join(names)}")
        registered = "; ".join(parts) or ("FAILED: " + shown_safely(info.error) if info.error else "(nothing)")
        rows.append((info.name, info.version or "-", registered))
    print(render_table(rows, left=(0, 2)))
    return 0


def _print_options(host: Any, wanted: list[str], as_json: bool) -> int:
    regs = [reg for kind in KINDS if kind in SECTION for reg in host.registry[kind].values()]
    known = {reg.name for reg in regs}
    for name in wanted:
        if name not in known:
            raise ConfigError(f"No configurable component is named {name!r}.{did_you_mean(name, sorted(known))} "
                              "'distil plugins --options' lists every one.")
    regs = [reg for reg in regs if not wanted or reg.name in wanted]
    if as_json:
        print(json.dumps([{"kind": reg.kind, "name": reg.name, "plugin": reg.plugin, "section": SECTION[reg.kind],
                           "description": reg.description, "options": component_options(reg)} for reg in regs],
                         indent=2))
        return 0
    blocks = []
    for reg in regs:
        lines = [f"{reg.kind.replace('_', ' ')} {reg.name}  (plugin {reg.plugin}; set in {SECTION[reg.kind]})"]
        if reg.description:
            lines.append(f"  {reg.description}")
        options = component_options(reg)
        if options is None:
            lines.append("    any option (the factory takes **kwargs)")
        for option in options or []:
            shown = "(required)" if option.get("required") else _yaml(option["default"])
            lines.append(f"    {option['name']}: {shown}")
        if options == []:
            lines.append("    (no options)")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def _plain(value: Any) -> Any:
    """A default as JSON can hold it (a tuple as a list; anything else JSON cannot write as its repr)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)


def _yaml(value: Any, width: int = 72) -> str:
    """How a config would write ``value``: a one-line string bare (else quoted, as JSON writes it),
    the rest as JSON (null, true, [1, 8]); cut to ``width`` characters with an ellipsis."""
    plain = isinstance(value, str) and value and value.strip() == value and value.isprintable() and ": " not in value
    text = value if plain else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"
