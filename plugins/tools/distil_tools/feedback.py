"""Feedback source ``tools``: runs the tool calls in a response and reports their outputs.

For every call found (see :mod:`distil_tools.calls`), in order and at most ``max_calls`` of
them, one ``tool_output`` item::

    Tool calculator(12 * (3 + 4)) → 84
    Tool python(print(1/0)) → error: exit status 1
    stderr:
    Traceback (most recent call last): …
    Tool call 3 is malformed: the <tool name="python"> tag is not closed with </tool>.

with ``data = {"index", "tool", "input", "output", "ok", "format"}`` (plus ``"error":
"malformed" | "unknown_tool"`` and the tool's own ``"data"``). A response without tool calls
gets no feedback, and neither does a call the tool could not run through no fault of its input
(a result marked ``infrastructure_error``: the sandbox or a worker failed), which is warned
about once per tool instead. With ``only_failed`` (the default) only failed rollouts are looked at: the
expert context of a passed rollout carries demonstrations, and the context template presents
feedback as being about an unsuccessful attempt.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any, Optional, Sequence, Union

from distil_core import ConfigError, Feedback, Problem, Rollout, Verdict, nearest

from .base import Tool, excerpt, jsonable, one_line
from .calls import ToolCall, parse_calls
from .options import OptionError, flag, whole
from .registry import ToolRegistry, get_registry, run_tool
from .source_options import build_tool, tool_names, tool_options_checked

SOURCE = "tools"
KIND = "tool_output"
INPUT_CHARS = 120  # of a call's input shown in the feedback text
DATA_INPUT_CHARS = 2000  # of a call's input kept in the feedback data


class ToolFeedback:
    """Runs the tool calls in a response (calculator, python, sympy, …) and reports the outputs."""

    def __init__(
        self,
        tools: Optional[list[str]] = None,
        max_calls: int = 4,
        max_chars: int = 600,
        only_failed: bool = True,
        tool_options: Optional[dict[str, dict[str, Any]]] = None,
        registry: Optional[ToolRegistry] = None,
    ):
        try:
            # bool is an int to Python; `max_calls: true` in YAML is a mistake, not one call.
            self.max_calls = whole("max_calls", max_calls, 1)
            self.max_chars = whole("max_chars", max_chars, 40)
            self.only_failed = flag("only_failed", only_failed)
        except OptionError as exc:
            raise ConfigError(f"tools feedback: {exc}") from None
        if registry is not None and not isinstance(registry, ToolRegistry):
            raise ConfigError("tools feedback: `registry` is for Python callers and takes a ToolRegistry; leave it out of config files")
        self.registry = registry if registry is not None else get_registry()
        names = tool_names(self.registry, tools)
        options = tool_options_checked(tool_options, names)
        self.tools: dict[str, Tool] = {name: build_tool(self.registry, name, options.get(name) or {}) for name in names}
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # tools whose machinery failure has been warned about

    async def feedback(
        self, problem: Problem, rollout: Rollout, verdict: Verdict, group: Sequence[tuple[Rollout, Verdict]] = ()
    ) -> list[Feedback]:
        if self.only_failed and verdict.passed:
            return []
        calls = parse_calls(rollout.response_text)
        if not calls:
            return []
        # Tools may wait on a sandbox or a worker: off the event loop, so the engine can run
        # the calls of different rollouts at the same time.
        return await asyncio.to_thread(self.run_calls, calls)

    def run_calls(self, calls: Union[str, list[ToolCall]]) -> list[Feedback]:
        """The feedback for the calls in a response text (or already parsed calls)."""
        if isinstance(calls, str):
            calls = parse_calls(calls)
        found = [self._one(index, call) for index, call in enumerate(calls[: self.max_calls], 1)]
        items = [item for item in found if item is not None]
        skipped = len(calls) - self.max_calls
        if skipped > 0:
            plural = "s were" if skipped > 1 else " was"
            items.append(Feedback(
                source=SOURCE, kind=KIND,
                text=f"{skipped} more tool call{plural} not run (at most {self.max_calls} per response).",
                data={"skipped": skipped},
            ))
        return items

    def _one(self, index: int, call: ToolCall) -> Optional[Feedback]:
        data: dict[str, Any] = {"index": index, "tool": call.name, "format": call.format}
        if call.error:
            data.update(input=call.raw, output=call.error, ok=False, error="malformed")
            return Feedback(source=SOURCE, kind=KIND, text=f"Tool call {index} is malformed: {call.error}.", data=data)
        assert call.name is not None and call.input is not None
        shown = one_line(call.input, INPUT_CHARS)
        data["input"] = call.input if isinstance(call.input, dict) else excerpt(call.input, DATA_INPUT_CHARS)
        tool = self.tools.get(call.name)
        if tool is None:
            guess = nearest(call.name, self.tools)
            hint = f" Did you mean {guess!r}?" if guess else ""
            message = f"unknown tool {call.name!r}.{hint} Available tools: {', '.join(sorted(self.tools)) or 'none'}."
            data.update(output=message, ok=False, error="unknown_tool")
            return Feedback(source=SOURCE, kind=KIND, text=f"Tool {call.name}({shown}) → error: {message}", data=data)
        result = run_tool(tool, call.input)
        if not result.ok and result.data.get("infrastructure_error"):
            self._machinery_failed(call.name, result.text)
            return None
        output = excerpt(result.text.strip() or "(empty output)", self.max_chars)
        data.update(output=output, ok=result.ok)
        if result.data:
            data["data"] = jsonable(result.data)
        said = output if result.ok else f"error: {output}"
        return Feedback(source=SOURCE, kind=KIND, text=f"Tool {call.name}({shown}) → {said}", data=data)

    def _machinery_failed(self, tool: str, message: str) -> None:
        """A call the tool could not run (its sandbox or worker failed, not the student's input):
        no feedback, since the expert would read it as a fault of the attempt; one warning per
        tool, so the user learns the tool is down without a line per call."""
        with self._lock:
            first = tool not in self._warned
            self._warned.add(tool)
        if first:
            warnings.warn(f"tools feedback: tool {tool!r} could not run a call, through no fault of the call "
                          f"({excerpt(message, 300)}); such calls give the expert no feedback (said once per tool)",
                          RuntimeWarning, stacklevel=2)

