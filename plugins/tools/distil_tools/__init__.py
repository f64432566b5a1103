"""distil-tools: run the tool calls in a response and give their outputs to the expert.

    feedback source ``tools``   kind ``tool_output``: ``Tool calculator(12 * (3 + 4)) → 84``
    built-in tools             ``calculator`` (safe arithmetic), ``python`` (the sandbox),
                               ``sympy`` (equality, simplify, solve)

Call formats are described in :mod:`distil_tools.calls`; third-party tools register through
the ``register_tools`` hook (:mod:`distil_tools.hookspecs`) and the ``distil.tools``
entry-point group.
"""

from .base import Tool, ToolResult
from .calls import ToolCall, parse_calls
from .feedback import ToolFeedback
from .hookspecs import hookimpl
from .registry import ToolRegistry, get_registry, run_tool

__version__ = "0.1.0"
__all__ = [
    "Tool",
    "ToolResult",
    "ToolCall",
    "parse_calls",
    "ToolFeedback",
    "ToolRegistry",
    "get_registry",
    "run_tool",
    "hookimpl",
]
