"""The ``tools`` plugin for the core: the feedback source ``tools`` and the ``distil tools`` command."""

from __future__ import annotations

import json
from typing import Any

from distil_core import hookimpl

from .feedback import ToolFeedback


class ToolsCommand:
    """List the tools the `tools` feedback source can run, or run one: distil tools NAME INPUT."""

    @staticmethod
    def configure(parser: Any) -> None:
        parser.add_argument("name", nargs="?", help="a tool to run (leave out to list the tools)")
        parser.add_argument("input", nargs="?", help="the tool's input: text, or a JSON object")
        parser.add_argument("--json", action="store_true", help="print JSON")

    @staticmethod
    def run(args: Any) -> int:
        from distil_core import ConfigError

        from .base import jsonable
        from .registry import get_registry, run_tool

        registry = get_registry()
        if args.name is None:
            rows = [(n, registry.tools[n].plugin, registry.tools[n].description) for n in registry.names("tool")]
            if args.json:
                print(json.dumps({"tools": [dict(zip(("name", "plugin", "description"), r)) for r in rows],
                                  "errors": registry.errors()}, indent=2))
                return 0
            width = max(len(r[0]) for r in rows) if rows else 4
            for name, plugin, description in rows:
                print(f"{name:<{width}}  {description}  [{plugin}]")
            for plugin, error in sorted(registry.errors().items()):
                print(f"error in tool plugin {plugin}: {error}")
            return 0
        if args.input is None:
            raise ConfigError(f"distil tools {args.name}: give the input too, e.g. distil tools calculator '2**10'")
        value: Any = args.input
        if value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # not JSON, or past Python's limits: the text as given
                pass  # a tool may take text that starts with a brace
        result = run_tool(registry.build("tool", args.name), value)
        if args.json:
            print(json.dumps({"text": result.text, "ok": result.ok, "data": jsonable(result.data)}))
        else:
            print(result.text)
        return 0 if result.ok else 1


@hookimpl
def register_feedback_sources(register):
    register("tools", ToolFeedback)


@hookimpl
def register_commands(register):
    register("tools", ToolsCommand)
