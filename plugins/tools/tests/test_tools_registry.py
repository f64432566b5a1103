"""Tools register through the plugin's own ``register_tools`` hook, built-in and third-party alike."""

import argparse
import json
import os
import subprocess
import sys
import textwrap

import pytest

from distil_core import ConfigError, PluginError, PluginHost
from distil_core import hookimpl as core_hookimpl
from distil_tools import ToolFeedback, ToolRegistry, ToolResult, get_registry, hookimpl
from distil_tools.base import DATA_REPR_CHARS, jsonable
from distil_tools.registry import reset_registry


class Shout:
    """Upper-cases its input."""

    name = "shout"

    def __init__(self, times: int = 1):
        self.times = times

    def run(self, input):
        return ToolResult(" ".join([str(input).upper()] * self.times), data={"times": self.times})


def reverse(input):
    """Reverses its input."""
    return str(input)[::-1]


class Counter:
    name = "count"
    description = "Counts characters."

    def run(self, input):
        return ToolResult(str(len(input)))


class Broken:
    name = "broken"
    description = "Always raises."

    def run(self, input):
        raise RuntimeError("boom")


class ThirdParty:
    @hookimpl
    def register_tools(register):
        register(Shout)
        register(reverse)
        register(Counter())
        register(Broken())
        register(lambda text: text, name="echo", description="Echoes its input.")
        register(lambda text: 42, name="odd")


@pytest.fixture
def third_party():
    registry = get_registry()
    registry.register_plugin(ThirdParty, "third_party")
    try:
        yield registry
    finally:
        registry.unregister_plugin("third_party")


def test_builtin_tools_register_through_the_same_hook():
    registry = ToolRegistry(load_entrypoints=False)
    assert registry.names("tool") == ["calculator", "python", "sympy"]
    assert {reg.plugin for reg in registry.tools.values()} == {"distil_tools.builtin"}
    assert registry.pm.hook.register_tools.get_hookimpls()[0].plugin_name == "distil_tools.builtin"
    assert registry.tools["python"].options == ["backend", "timeout_s", "memory_mb"]


def test_a_third_party_tool_shows_up_and_runs(third_party):
    assert third_party.names("tool") == ["broken", "calculator", "count", "echo", "odd", "python", "reverse", "shout", "sympy"]
    assert third_party.tools["reverse"].description == "Reverses its input."
    assert third_party.tools["shout"].description == "Upper-cases its input."
    source = ToolFeedback(tools=["shout", "reverse", "count", "echo"], tool_options={"shout": {"times": 2}}, max_calls=8)
    text = ('<tool name="shout">hi</tool><tool name="reverse">abc</tool>'
            '<tool name="count">four</tool><tool name="echo">same</tool><tool name="calculator">1</tool>')
    items = source.run_calls(text)
    assert [i.text for i in items] == [
        "Tool shout(hi) → HI HI", "Tool reverse(abc) → cba", "Tool count(four) → 4", "Tool echo(same) → same",
        "Tool calculator(1) → error: unknown tool 'calculator'. Available tools: count, echo, reverse, shout.",
    ]
    assert items[0].data["data"] == {"times": 2}


def test_a_tool_that_raises_or_returns_nonsense_gives_a_failed_result(third_party):
    source = ToolFeedback(tools=["broken", "odd"])
    items = source.run_calls('<tool name="broken">x</tool><tool name="odd">x</tool>')
    assert [i.text for i in items] == [
        "Tool broken(x) → error: the tool failed: RuntimeError: boom",
        "Tool odd(x) → error: the tool returned int, not a ToolResult or a string",
    ]
    assert [i.data["ok"] for i in items] == [False, False]


def wants_a_number(input):
    """Doubles a number, parsing its input as a command line (argparse exits on bad arguments)."""
    parser = argparse.ArgumentParser(prog="wants_a_number")
    parser.add_argument("n", type=int)
    return str(parser.parse_args(input.split()).n * 2)


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


def unprintable(input):
    """Raises an exception whose str() raises."""
    raise Unprintable()


def closes(input):
    """Raises GeneratorExit, which cannot be meant for run_tool: it is no generator."""
    raise GeneratorExit()


def interrupted(input):
    """The user pressing Ctrl-C while the tool runs."""
    raise KeyboardInterrupt()


def circular(input):
    data = {"n": 1}
    data["self"] = data
    return ToolResult("ok", data=data)


class Odd:
    @hookimpl
    def register_tools(register):
        for function in (wants_a_number, unprintable, closes, interrupted, circular):
            register(function)
        register(lambda text: ToolResult(42), name="number_text")
        register(lambda text: ToolResult(None, ok=False), name="no_text")
        register(lambda text: ToolResult("ok", data=["a", "list"]), name="list_data")
        register(lambda text: ToolResult("ok", data={(1, 2): "tuple key", "v": {1, 2}}), name="tuple_key")


@pytest.fixture
def odd():
    registry = ToolRegistry(load_entrypoints=False)
    registry.register_plugin(Odd, "odd")
    return registry


def test_a_tool_that_exits_or_cannot_print_its_error_fails_the_call_not_the_run(odd, capsys):
    source = ToolFeedback(tools=["wants_a_number", "unprintable", "closes"], registry=odd)
    text = ('<tool name="wants_a_number">21</tool><tool name="wants_a_number">two</tool>'
            '<tool name="unprintable">x</tool><tool name="closes">x</tool>')
    assert [i.text for i in source.run_calls(text)] == [
        "Tool wants_a_number(21) → 42",
        "Tool wants_a_number(two) → error: the tool failed: SystemExit: 2 (the tool called sys.exit)",
        "Tool unprintable(x) → error: the tool failed: Unprintable: <Unprintable object that cannot be printed>",
        "Tool closes(x) → error: the tool failed: GeneratorExit",
    ]
    assert "invalid int value: 'two'" in capsys.readouterr().err  # argparse's own message, on stderr


def test_ctrl_c_in_a_tool_still_stops_the_run(odd):
    with pytest.raises(KeyboardInterrupt):
        ToolFeedback(tools=["interrupted"], registry=odd).run_calls('<tool name="interrupted">x</tool>')


def test_a_result_with_text_or_data_of_the_wrong_kind_is_a_failed_call_naming_the_tool(odd):
    source = ToolFeedback(tools=["number_text", "no_text", "list_data"], registry=odd)
    items = source.run_calls('<tool name="number_text">x</tool><tool name="no_text">x</tool><tool name="list_data">x</tool>')
    assert [i.text for i in items] == [
        "Tool number_text(x) → error: tool 'number_text' returned a ToolResult whose text is int, not a string",
        "Tool no_text(x) → error: tool 'no_text' returned a ToolResult whose text is NoneType, not a string",
        "Tool list_data(x) → error: tool 'list_data' returned a ToolResult whose data is list, not a dict",
    ]
    assert [i.data["ok"] for i in items] == [False, False, False]


def test_data_json_cannot_hold_is_kept_as_a_bounded_repr(odd):
    source = ToolFeedback(tools=["circular", "tuple_key"], registry=odd)
    items = source.run_calls('<tool name="circular">x</tool><tool name="tuple_key">x</tool>')
    assert [i.text for i in items] == ["Tool circular(x) → ok", "Tool tuple_key(x) → ok"]
    assert items[0].data["data"] == {"repr": "{'n': 1, 'self': {...}}"}
    assert items[1].data["data"]["repr"].startswith("{(1, 2): 'tuple key', 'v': {1, 2}")
    for item in items:
        json.dumps(item.data)  # what the run logs do with it
    huge = {i: [0] * 100 for i in range(200)}
    huge[(0, 0)] = 0
    assert len(jsonable(huge)["repr"]) == DATA_REPR_CHARS
    assert jsonable({"n": {1, 2}}) == {"n": "{1, 2}"}  # a value JSON does not know becomes its string


def test_unregistering_a_plugin_removes_its_tools(third_party):
    third_party.unregister_plugin("third_party")
    assert third_party.names("tool") == ["calculator", "python", "sympy"]
    third_party.register_plugin(ThirdParty, "third_party")  # the fixture unregisters it again


class Usurper:
    @hookimpl
    def register_tools(register):
        register(Shout, name="calculator")


class Misspelt:
    @hookimpl
    def register_tool(register):
        register(Shout)


class Nameless:
    @hookimpl
    def register_tools(register):
        register(object())


@pytest.mark.parametrize("plugin, message", [
    (Usurper, "tool 'calculator' is already registered by plugin 'distil_tools.builtin'"),
    (Misspelt, "unknown hook 'register_tool'. Did you mean 'register_tools'?"),
    (Nameless, "neither a class, a tool nor a function"),
])
def test_bad_tool_plugins_are_refused_and_leave_the_registry_as_it_was(plugin, message):
    registry = ToolRegistry(load_entrypoints=False)
    with pytest.raises(PluginError, match=message):
        registry.register_plugin(plugin, "bad")
    assert registry.names("tool") == ["calculator", "python", "sympy"] and not registry.errors()
    assert registry.tools["calculator"].plugin == "distil_tools.builtin"


def test_tool_options_are_checked_against_the_tool():
    registry = ToolRegistry(load_entrypoints=False)
    registry.register_plugin(ThirdParty, "third_party")
    with pytest.raises(ConfigError, match=r"Unknown option 'time' for tool 'shout' \(from plugin 'third_party'\). Did you mean 'times'\?"):
        ToolFeedback(tools=["shout"], tool_options={"shout": {"time": 2}}, registry=registry)
    with pytest.raises(ConfigError, match="Unknown option 'x' for tool 'reverse'.*It takes no options"):
        ToolFeedback(tools=["reverse"], tool_options={"reverse": {"x": 1}}, registry=registry)
    with pytest.raises(ConfigError, match="No tool named 'shuot' is registered. Did you mean 'shout'?"):
        ToolFeedback(tools=["shuot"], registry=registry)


class Both:
    """A module may carry core hooks and tool hooks side by side."""

    @core_hookimpl
    def register_feedback_sources(register):
        register("both_source", ToolFeedback)

    @hookimpl
    def register_tools(register):
        register(Counter())


def test_a_plugin_with_core_hooks_and_tool_hooks_registers_with_both():
    host = PluginHost(load_entrypoints=False)
    info = host.register_plugin(Both, "both")
    assert info.error is None and ("feedback_source", "both_source") in info.registered
    registry = ToolRegistry(load_entrypoints=False)
    registry.register_plugin(Both, "both")
    assert registry.tools["count"].plugin == "both"


DICE_PLUGIN = '''
from distil_tools import ToolResult, hookimpl


class Dice:
    """Reports a die's faces (a tool for tests)."""

    name = "dice"

    def __init__(self, faces: int = 6):
        self.faces = faces

    def run(self, input):
        return ToolResult(f"{input}: a die with {self.faces} faces")


@hookimpl
def register_tools(register):
    register(Dice)
'''


@pytest.fixture
def dice_distribution(tmp_path, monkeypatch):
    """An installed distribution (a dist-info on sys.path) with two ``distil.tools`` entry points,
    one of which fails to import."""
    (tmp_path / "distil_tools_dice.py").write_text(textwrap.dedent(DICE_PLUGIN))
    (tmp_path / "distil_tools_broken_dice.py").write_text("raise ImportError('needs a missing dependency')\n")
    info = tmp_path / "distil_tools_dice-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: distil-tools-dice\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        "[distil.tools]\ndice = distil_tools_dice\nbroken_dice = distil_tools_broken_dice\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("DISTIL_TOOLS", raising=False)  # the tools' own allow-list, as a user may have it set
    try:
        yield
    finally:
        for module in ("distil_tools_dice", "distil_tools_broken_dice"):
            sys.modules.pop(module, None)


def test_a_tool_from_an_entry_point_shows_up_and_runs(dice_distribution):
    registry = ToolRegistry(load_entrypoints=True)
    assert registry.tools["dice"].plugin == "dice"
    assert "needs a missing dependency" in registry.errors()["broken_dice"]
    source = ToolFeedback(tools=["dice", "calculator"], tool_options={"dice": {"faces": 20}}, registry=registry)
    items = source.run_calls('<tool name="dice">d20</tool> <tool name="calculator">20 / 2</tool>')
    assert [i.text for i in items] == ["Tool dice(d20) → d20: a die with 20 faces", "Tool calculator(20 / 2) → 10"]
    assert "dice" not in ToolRegistry(load_entrypoints=False).names("tool")


def test_the_default_registry_loads_entry_points_unless_told_not_to(dice_distribution, monkeypatch):
    assert "dice" not in get_registry().names("tool")  # DISTIL_NO_ENTRYPOINTS=1 in this suite
    monkeypatch.delenv("DISTIL_NO_ENTRYPOINTS")
    reset_registry()
    try:
        assert "dice" in get_registry().names("tool")
        [item] = ToolFeedback(tools=["dice"]).run_calls('<tool name="dice">roll</tool>')
        assert item.text == "Tool dice(roll) → roll: a die with 6 faces"
    finally:
        reset_registry()  # the next test's registry loads without the dice distribution


def test_the_cores_allow_list_does_not_filter_tool_plugins(dice_distribution, monkeypatch):
    """DISTIL_PLUGINS=tools is what enables this plugin; it names no tool plugin, and tools are not
    the core's plugins, so the tools still load."""
    monkeypatch.setenv("DISTIL_PLUGINS", "tools")
    registry = ToolRegistry(load_entrypoints=True)
    assert "dice" in registry.names("tool") and "broken_dice" in registry.errors()
    [item] = ToolFeedback(tools=["dice"], registry=registry).run_calls('<tool name="dice">roll</tool>')
    assert item.text == "Tool dice(roll) → roll: a die with 6 faces"


def test_distil_tools_is_the_tools_own_allow_list(dice_distribution, monkeypatch):
    monkeypatch.setenv("DISTIL_PLUGINS", "tools")
    monkeypatch.setenv("DISTIL_TOOLS", "dice")
    registry = ToolRegistry(load_entrypoints=True)
    assert "dice" in registry.names("tool") and registry.errors() == {}  # broken_dice was not asked for
    monkeypatch.setenv("DISTIL_TOOLS", "")
    assert ToolRegistry(load_entrypoints=True).names("tool") == ["calculator", "python", "sympy"]
    monkeypatch.setenv("DISTIL_TOOLS", "dcie")
    with pytest.raises(ConfigError, match=r"No tool named 'dice' is registered.* The tool allow-list \(DISTIL_TOOLS\) "
                                          r"names 'dcie', which no installed tool plugin is called \(did you mean 'dice'\?\)\.$"):
        ToolFeedback(tools=["dice"], registry=ToolRegistry(load_entrypoints=True))


def test_distil_tools_runs_a_third_party_tool_with_the_tools_plugin_allowed(dice_distribution, tmp_path):
    """The command line as a user types it: only the tools plugin allowed, the dice tool still runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISTIL_NO_ENTRYPOINTS", "DISTIL_TOOLS")}
    env.update(DISTIL_PLUGINS="tools", PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    ran = subprocess.run([sys.executable, "-m", "distil_core.cli", "tools", "dice", "d6"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert (ran.returncode, ran.stdout) == (0, "d6: a die with 6 faces\n"), ran.stderr
