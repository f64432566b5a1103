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

Calls run on the threads of a :class:`~distil_tools.runner.CallRunner`: the calls of all the
step's rollouts at the same time, at most ``max_parallel`` at once, each given up on (a failed
call) after ``call_timeout_s``.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from functools import partial
from typing import Any, Optional, Sequence, Union

from distil_core import ConfigError, Feedback, Problem, Rollout, Verdict, nearest

from .base import Tool, ToolResult, excerpt, jsonable, one_line
from .calls import ToolCall, parse_calls
from .options import OptionError, flag, seconds, whole
from .python_tool import PythonTool
from .registry import ToolRegistry, get_registry, run_tool
from .runner import CallRunner
from .source_options import build_tool, check_deadline, tool_names, tool_options_checked
from .sympy_tool import SympyTool

SOURCE = "tools"
KIND = "tool_output"
INPUT_CHARS = 120  # of a call's input shown in the feedback text
DATA_INPUT_CHARS = 2000  # of a call's input kept in the feedback data
MAX_PARALLEL = 1024  # calls running at once: each is a thread, and most a process too


class ToolFeedback:
    """Runs the tool calls in a response (calculator, python, sympy, …) and reports the outputs."""

    run_options = frozenset({"call_timeout_s", "max_parallel", *(
        ("tool_options", tool.name, option) for tool in (PythonTool, SympyTool) for option in tool.run_options)})
    """Options that change how calls run, not the feedback they give: the deadline and the bound
    (they show only in a call that hangs) and the built-in tools' own ``run_options`` (sandbox
    backend, limits, sympy workers), as paths into ``tool_options``. The tiny base's cache key
    leaves them out, so changing one does not pretrain another base. ``tools``, ``max_calls``,
    ``max_chars`` and ``only_failed`` stay in it: they decide the text a call's feedback has
    (which calls run, how much of the output shows, which rollouts are looked at), and a task
    whose answers hold tool calls shows that text in the base's examples. A third-party tool's
    options stay in the key too (its class cannot be known here)."""

    def __init__(
        self,
        tools: Optional[list[str]] = None,
        max_calls: int = 4,
        max_chars: int = 600,
        only_failed: bool = True,
        tool_options: Optional[dict[str, dict[str, Any]]] = None,
        call_timeout_s: float = 60.0,
        max_parallel: int = 32,
        registry: Optional[ToolRegistry] = None,
    ):
        try:
            # bool is an int to Python; `max_calls: true` in YAML is a mistake, not one call.
            self.max_calls = whole("max_calls", max_calls, 1)
            self.max_chars = whole("max_chars", max_chars, 40)
            self.only_failed = flag("only_failed", only_failed)
            call_timeout_s = seconds("call_timeout_s", call_timeout_s)
            max_parallel = whole("max_parallel", max_parallel, 1, MAX_PARALLEL)
        except OptionError as exc:
            raise ConfigError(f"tools feedback: {exc}") from None
        if registry is not None and not isinstance(registry, ToolRegistry):
            raise ConfigError("tools feedback: `registry` is for Python callers and takes a ToolRegistry; leave it out of config files")
        self.registry = registry if registry is not None else get_registry()
        names = tool_names(self.registry, tools)
        options = tool_options_checked(tool_options, names)
        self.tools: dict[str, Tool] = {name: build_tool(self.registry, name, options.get(name) or {}) for name in names}
        check_deadline(call_timeout_s, self.tools)
        self.runner = CallRunner(call_timeout_s, max_parallel)
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()  # (what, tool) already warned about

    def close(self) -> None:
        """Close every tool that has a ``close()`` (the sympy tool's worker processes).

        ``Runtime.close()`` calls this when a run ends; without it a process that trains several
        runs (``distil bench``, a notebook) kept each finished run's workers. Every tool is
        closed even if one fails; the failures are raised after, naming each tool.
        """
        failed: list[str] = []
        for name, tool in self.tools.items():
            closer = getattr(tool, "close", None)
            if not callable(closer):
                continue
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - a tool's own failure, reported below
                failed.append(f"tool {name!r}: {type(exc).__name__}: {exc}")
        if failed:
            raise RuntimeError(f"tools feedback: closing failed for {'; '.join(failed)}")

    async def feedback(
        self, problem: Problem, rollout: Rollout, verdict: Verdict, group: Sequence[tuple[Rollout, Verdict]] = ()
    ) -> list[Feedback]:
        if self.only_failed and verdict.passed:
            return []
        calls = parse_calls(rollout.response_text)
        if not calls:
            return []
        # Each call runs on a thread of the runner while the event loop waits, so the engine runs
        # the calls of all the step's rollouts (and of one response) at the same time, up to
        # max_parallel; a call past call_timeout_s is given up on (runner.py).
        found = await asyncio.gather(*(self._one_async(i, call) for i, call in enumerate(calls[: self.max_calls], 1)))
        return self._items(found, len(calls))

    def run_calls(self, calls: Union[str, list[ToolCall]]) -> list[Feedback]:
        """The feedback for the calls in a response text (or already parsed calls), one call
        after another: the synchronous form, for scripts."""
        if isinstance(calls, str):
            calls = parse_calls(calls)
        found = []
        for index, call in enumerate(calls[: self.max_calls], 1):
            item, tool = self._prepare(index, call)
            if tool is not None:
                item = self._render(index, call, *self.runner.run(partial(run_tool, tool, call.input)))
            found.append(item)
        return self._items(found, len(calls))

    async def _one_async(self, index: int, call: ToolCall) -> Optional[Feedback]:
        item, tool = self._prepare(index, call)
        if tool is None:
            return item
        return self._render(index, call, *await self.runner.run_async(partial(run_tool, tool, call.input)))

    def _items(self, found: list[Optional[Feedback]], count: int) -> list[Feedback]:
        """The items of the calls that gave one, and one more that counts the calls not run."""
        items = [item for item in found if item is not None]
        skipped = count - self.max_calls
        if skipped > 0:
            plural = "s were" if skipped > 1 else " was"
            items.append(Feedback(
                source=SOURCE, kind=KIND,
                text=f"{skipped} more tool call{plural} not run (at most {self.max_calls} per response).",
                data={"skipped": skipped},
            ))
        return items

    def _prepare(self, index: int, call: ToolCall) -> tuple[Optional[Feedback], Optional[Tool]]:
        """``(item, None)`` for a call that cannot run (malformed, an unknown tool), else ``(None, tool)``."""
        if call.error:
            data = {**self._data(index, call), "input": call.raw, "output": call.error, "ok": False, "error": "malformed"}
            return Feedback(source=SOURCE, kind=KIND, text=f"Tool call {index} is malformed: {call.error}.", data=data), None
        assert call.name is not None and call.input is not None
        tool = self.tools.get(call.name)
        if tool is not None:
            return None, tool
        guess = nearest(call.name, self.tools)
        hint = f" Did you mean {guess!r}?" if guess else ""
        message = f"unknown tool {call.name!r}.{hint} Available tools: {', '.join(sorted(self.tools)) or 'none'}."
        data = {**self._data(index, call), "output": message, "ok": False, "error": "unknown_tool"}
        return Feedback(source=SOURCE, kind=KIND, text=f"Tool {call.name}({self._shown(call)}) → error: {message}", data=data), None

    def _render(self, index: int, call: ToolCall, finished: bool, result: Optional[ToolResult]) -> Optional[Feedback]:
        """The item of a call that ran: its result, or a failure if it ran past its deadline; none
        if the tool's own machinery failed."""
        assert call.name is not None
        if not finished or result is None:
            self._warn_once("abandoned", call.name, f"a call to tool {call.name!r} ran past call_timeout_s "
                            f"({self.runner.deadline_s:g} s) and was given up on; its thread may still be running")
            result = ToolResult.error(f"the call did not finish within {self.runner.deadline_s:g} s", deadline_s=self.runner.deadline_s)
        elif not result.ok and result.data.get("infrastructure_error"):
            # The sandbox or a worker failed, not the student's input: the expert would read it as a
            # fault of the attempt, so it gets no item; the user is told once per tool.
            self._warn_once("machinery", call.name, f"tool {call.name!r} could not run a call, through no fault of the call "
                            f"({excerpt(result.text, 300)}); such calls give the expert no feedback")
            return None
        output = excerpt(result.text.strip() or "(empty output)", self.max_chars)
        data = {**self._data(index, call), "output": output, "ok": result.ok}
        if result.data:
            data["data"] = jsonable(result.data)
        said = output if result.ok else f"error: {output}"
        return Feedback(source=SOURCE, kind=KIND, text=f"Tool {call.name}({self._shown(call)}) → {said}", data=data)

    @staticmethod
    def _data(index: int, call: ToolCall) -> dict[str, Any]:
        data: dict[str, Any] = {"index": index, "tool": call.name, "format": call.format}
        if call.input is not None:
            data["input"] = call.input if isinstance(call.input, dict) else excerpt(call.input, DATA_INPUT_CHARS)
        return data

    @staticmethod
    def _shown(call: ToolCall) -> str:
        return one_line(call.input, INPUT_CHARS)

    def _warn_once(self, what: str, tool: str, message: str) -> None:
        """A RuntimeWarning the first time ``what`` happens to ``tool``: the user learns the tool
        is down or stuck without a line per call."""
        with self._lock:
            first = (what, tool) not in self._warned
            self._warned.add((what, tool))
        if first:
            warnings.warn(f"tools feedback: {message} (said once per tool)", RuntimeWarning, stacklevel=3)

