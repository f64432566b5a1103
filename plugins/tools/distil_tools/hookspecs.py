"""The one hook of this plugin: ``register_tools(register)``.

Tools get their own pluggy project (``distil_tools``) and entry-point group (``distil.tools``)
rather than a hook in the core: only this feedback source runs tools, so the core need not know
they exist. A tool plugin marks its hook with :data:`hookimpl` from this module; the core's
host ignores it, so one module may carry core hooks and tool hooks side by side. The registry
behind the hook is the core's own :class:`distil_core.Registry` (see ``registry.py``).
"""

from typing import Any, Optional, Protocol

import pluggy

PROJECT = "distil_tools"
ENTRY_POINT_GROUP = "distil.tools"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ToolRegister(Protocol):
    """The ``register`` callback of ``register_tools``."""

    def __call__(self, tool: Any, name: Optional[str] = None, description: Optional[str] = None) -> None: ...


@hookspec
def register_tools(register: ToolRegister) -> None:
    """Register tools: ``register(tool, name=None, description=None)``.

    ``tool`` is one of
    - a class: instantiated with the ``tool_options`` the config gives for its name; its
      ``name`` and ``description`` class attributes (or ``name=`` / the docstring's first line)
      identify it;
    - an object with ``name``, ``description`` and ``run(input)``;
    - a function ``run(input)``: its ``__name__`` is the tool name, its docstring the description.

    ``run`` returns a :class:`~distil_tools.base.ToolResult` (or a string, taken as a success).
    """
