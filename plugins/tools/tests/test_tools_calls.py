"""Finding tool calls: the tag and the fenced-JSON formats, malformed calls, the caps."""

import json
from pathlib import Path

import pytest
from tools_testlib import FAILED, PASSED, PROBLEM, rollout

from distil_core import resolve
from distil_tools import ToolFeedback, parse_calls
from distil_tools.base import one_line


def test_tag_calls_take_the_body_as_input():
    text = (
        'First <tool name="calculator">12 * (3 + 4)</tool>, then '
        "<tool name='python' timeout='3'>\n    for i in range(2):\n        print(i)\n</tool> "
        "and <tool name=sympy>x == x</tool><tool name=\"python\"/>"
    )
    calls = parse_calls(text)
    assert [(c.name, c.input, c.format, c.ok) for c in calls] == [
        ("calculator", "12 * (3 + 4)", "tag", True),
        ("python", "for i in range(2):\n    print(i)", "tag", True),
        ("sympy", "x == x", "tag", True),
        ("python", "", "tag", True),
    ]
    assert text[calls[0].start:calls[0].end] == '<tool name="calculator">12 * (3 + 4)</tool>'


@pytest.mark.parametrize("tag", [
    '<tool data-name="python" name="calculator">print(6*7)</tool>',
    '<tool title="name=python" name="calculator">print(6*7)</tool>',
    "<tool title='a name=python b' name=calculator>print(6*7)</tool>",
    '<tool name="calculator" data-name="python">print(6*7)</tool>',
    '<tool name="calculator" name="python">print(6*7)</tool>',
    '<tool\n  note="x"\n  name = "calculator">print(6*7)</tool>',
])
def test_the_tool_is_named_by_the_name_attribute_alone(tag):
    """Text that merely contains ``name=`` (another attribute, or a value) cannot pick the tool:
    these calls go to the calculator, which refuses the program, never to python."""
    [call] = parse_calls(tag)
    assert call.ok and call.name == "calculator" and call.input == "print(6*7)"
    [item] = ToolFeedback(tools=["calculator", "python"]).run_calls(tag)
    assert item.text.startswith("Tool calculator(print(6*7)) → error: ") and item.data["tool"] == "calculator"


@pytest.mark.parametrize("tag", ['<tool data-name="python">2+2</tool>', '<tool title="name=python">2+2</tool>',
                                 "<tool name>2+2</tool>"])
def test_a_tag_without_a_name_attribute_of_its_own_is_malformed(tag):
    [call] = parse_calls(tag)
    assert not call.ok and call.error.startswith("the <tool> tag has no name attribute")


def test_fenced_json_calls_take_a_string_or_an_object():
    text = (
        "Compute:\n```tool\n{\"name\": \"python\", \"input\": \"print(2**10)\"}\n```\n"
        "  ```tool\n  {\"name\": \"sympy\", \"input\": {\"expr\": \"x+x\", \"equals\": \"2*x\"}}\n  ```\n"
    )
    calls = parse_calls(text)
    assert [(c.name, c.input, c.format, c.ok) for c in calls] == [
        ("python", "print(2**10)", "json", True),
        ("sympy", {"expr": "x+x", "equals": "2*x"}, "json", True),
    ]


def test_both_formats_come_in_order_of_appearance_and_tags_inside_a_tool_block_are_data():
    text = (
        '<tool name="calculator">1+1</tool>\n'
        '```tool\n{"name": "python", "input": "print(\'<tool name=\\"calculator\\">2+2</tool>\')"}\n```\n'
        '<tool name="calculator">3+3</tool>'
    )
    calls = parse_calls(text)
    assert [(c.name, c.format) for c in calls] == [("calculator", "tag"), ("python", "json"), ("calculator", "tag")]
    assert calls[1].input == "print('<tool name=\"calculator\">2+2</tool>')"


@pytest.mark.parametrize("text", [
    "no calls at all", "<tool_call>{\"name\": \"x\"}</tool_call>", "<tools>list</tools>",
    "```python\nprint(1)\n```", "```tools\n{}\n```",
    '<tool-use name="calculator">2+2</tool-use>', '<tool:call>{"x": 1}</tool:call>', "<tool.result>4</tool.result>",
])
def test_other_markup_is_not_a_call(text):
    assert parse_calls(text) == []


def test_a_look_alike_tag_does_not_swallow_the_call_after_it():
    text = '<tool-use name="calculator">2+2</tool-use> then <tool name="calculator">3+3</tool>'
    assert [(c.name, c.input, c.ok) for c in parse_calls(text)] == [("calculator", "3+3", True)]
    assert [i.text for i in ToolFeedback(tools=["calculator"]).run_calls(text)] == ["Tool calculator(3+3) → 6"]


def test_a_tool_block_inside_a_tag_is_the_tags_input_and_runs_once():
    block = '```tool\n{"name": "calculator", "input": "1+1"}\n```'
    text = f'<tool name="python">\n{block}\n</tool> and <tool name="calculator">2+2</tool>'
    calls = parse_calls(text)
    assert [(c.format, c.name, c.input) for c in calls] == [("tag", "python", block), ("tag", "calculator", "2+2")]
    # Not inside a closed tag (an unclosed one is malformed and owns nothing), the block is a call.
    unclosed = parse_calls(f'<tool name="python">\n{block}\n')
    assert [(c.format, c.name, c.ok) for c in unclosed] == [("tag", "python", False), ("json", "calculator", True)]


def test_a_tag_inside_a_tool_block_cannot_hide_the_calls_after_the_block():
    text = ('```tool\n{"name": "python", "input": "print(\'<tool name=\\"calculator\\">\')"}\n```\n'
            '<tool name="calculator">3+3</tool>')
    assert [(c.format, c.name, c.ok) for c in parse_calls(text)] == [("json", "python", True), ("tag", "calculator", True)]


@pytest.mark.parametrize("text, error", [
    ('<tool name="' + "x y" * 30000 + '">1+1</tool>', "the tool name 'x yx yx yx yx yx yx yx yx yx yx yx yx y…' is not valid"),
    ('```tool\n{"name": "' + "a b" * 30000 + '", "input": "1"}\n```', "the tool name 'a ba ba ba ba ba ba ba ba ba ba ba ba b…' is not valid"),
    ('```tool\n{"name": "calculator", "input": "1", "' + "k" * 50000 + '": 1}\n```', 'unexpected key "' + "k" * 39 + '…" in'),
    ('```tool\n{"name": "calculator", "input": "1", ' + ", ".join(f'"k{i}": 1' for i in range(5000)) + "}\n```",
     'unexpected key "k0", "k1", "k10", "k100", "k1000" and 4995 more in the tool call'),
], ids=["long-tag-name", "long-json-name", "long-key", "many-keys"])
def test_malformed_call_messages_stay_short_whatever_the_response_holds(text, error):
    [item] = ToolFeedback(tools=["calculator"], max_chars=40).run_calls(text)
    assert error in item.text and len(item.text) < 200
    assert len(json.dumps(item.data)) < 600


@pytest.mark.parametrize("text, error", [
    ("<tool>2+2</tool>", "the <tool> tag has no name attribute"),
    ('<tool name="calculator">2+2', 'the <tool name="calculator"> tag is not closed with </tool>'),
    ('<tool name="rm -rf">x</tool>', "the tool name 'rm -rf' is not valid"),
    ("```tool\n{name: 'python'}\n```", "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
    ('```tool\n["python", "print(1)"]\n```', "holds a JSON list, not an object"),
    ('```tool\n{"input": "1+1"}\n```', 'the tool call has no "name" string'),
    ('```tool\n{"name": "calculator"}\n```', "the call to 'calculator' has no \"input\""),
    ('```tool\n{"name": "python", "arguments": {"code": "1"}}\n```', 'unexpected key "arguments" in the tool call'),
    ('```tool\n{"name": "calculator", "input": 42}\n```', 'the "input" of the call to \'calculator\' is a JSON int'),
    ('```tool\n{"name": "python", "input": "print(1)"}\n', "the ```tool block is not closed with ```"),
    ("```tool\n\n```", "the ```tool block is empty"),
    # valid JSON that Python's reader refuses: before, a RecursionError or ValueError ended the run
    ("```tool\n" + "[" * 100_000 + "]" * 100_000 + "\n```", "nests its JSON too deeply to read"),
    ('```tool\n{"name": "calculator", "input": ' + "9" * 5000 + "}\n```", "holds a number of more digits than can be read"),
])
def test_malformed_calls_say_what_is_wrong(text, error):
    [call] = parse_calls(text)
    assert not call.ok and error in call.error


def test_malformed_calls_become_feedback_not_exceptions():
    source = ToolFeedback(tools=["calculator"])
    items = source.run_calls('<tool name="calculator">2*3</tool> <tool>2+2</tool>\n```tool\n{oops}\n```')
    assert [i.text for i in items] == [
        "Tool calculator(2*3) → 6",
        'Tool call 2 is malformed: the <tool> tag has no name attribute; write <tool name="calculator">…</tool>.',
        "Tool call 3 is malformed: the ```tool block is not valid JSON: Expecting property name enclosed in "
        "double quotes (line 1, column 2).",
    ]
    assert items[1].data == {"index": 2, "tool": None, "format": "tag", "input": "<tool>2+2</tool>",
                             "output": items[1].data["output"], "ok": False, "error": "malformed"}


def test_calls_beyond_max_calls_are_not_run_and_are_counted():
    text = " ".join(f'<tool name="calculator">{i}+1</tool>' for i in range(7))
    items = ToolFeedback(tools=["calculator"], max_calls=3).run_calls(text)
    assert [i.text for i in items] == [
        "Tool calculator(0+1) → 1", "Tool calculator(1+1) → 2", "Tool calculator(2+1) → 3",
        "4 more tool calls were not run (at most 3 per response).",
    ]
    assert items[-1].data == {"skipped": 4}
    assert len(ToolFeedback(tools=["calculator"]).run_calls(text)) == 4 + 1  # default max_calls=4


def test_each_output_is_cut_to_max_chars_keeping_both_ends():
    [item] = ToolFeedback(tools=["calculator"], max_chars=60).run_calls('<tool name="calculator">2**4000</tool>')
    digits = str(2**4000)
    output = item.text.split(" → ", 1)[1]
    assert len(output) == 60 and item.data["output"] == output
    assert output.startswith(digits[:20]) and output.endswith(digits[-10:]) and " […] " in output


def test_long_inputs_are_shown_on_one_line_and_cut():
    code = "x = 1\n" * 40 + "print(x)"
    [item] = ToolFeedback(tools=["calculator"]).run_calls(f'<tool name="calculator">{code}</tool>')
    shown = item.text[len("Tool calculator("):item.text.index(") → ")]
    assert "\n" not in shown and shown.startswith("x = 1\\nx = 1\\n") and shown.endswith("…") and len(shown) == 120


@pytest.mark.parametrize("brk, shown", [
    ("\r", "\\r"), ("\v", "\\x0b"), ("\f", "\\x0c"), ("\x1c", "\\x1c"), ("\x85", "\\x85"),
    ("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\r\n", "\\n"),
])
def test_an_input_stays_on_one_line_whatever_breaks_it(brk, shown):
    """A lone carriage return or a Unicode line separator is a line break to ``splitlines`` and
    to chat renderings: it is shown escaped, as the character it is."""
    assert one_line(f"6*7{brk}+1", 120) == f"6*7{shown}+1"
    [item] = ToolFeedback(tools=["calculator"]).run_calls(f'<tool name="calculator">6*7{brk}+1</tool>')
    assert item.text.startswith(f"Tool calculator(6*7{shown}+1) → ")
    assert len(item.text.split(" → ")[0].splitlines()) == 1


def test_feedback_is_tool_output_from_the_tools_source():
    source = ToolFeedback(tools=["calculator"])
    [item] = resolve(source.feedback(PROBLEM, rollout('So <tool name="calculator">12*(3+4)</tool> is 84.'), FAILED, []))
    assert (item.source, item.kind, item.text) == ("tools", "tool_output", "Tool calculator(12*(3+4)) → 84")
    assert item.data == {"index": 1, "tool": "calculator", "format": "tag", "input": "12*(3+4)",
                         "output": "84", "ok": True, "data": {"value": 84}}


def test_no_calls_means_no_feedback():
    source = ToolFeedback(tools=["calculator"])
    assert resolve(source.feedback(PROBLEM, rollout("The answer is 84."), FAILED, [])) == []


def test_passed_rollouts_are_skipped_unless_only_failed_is_off():
    text = rollout('<tool name="calculator">6*7</tool>')
    assert resolve(ToolFeedback(tools=["calculator"]).feedback(PROBLEM, text, PASSED, [])) == []
    [item] = resolve(ToolFeedback(tools=["calculator"], only_failed=False).feedback(PROBLEM, text, PASSED, []))
    assert item.text == "Tool calculator(6*7) → 42"


def test_unknown_tools_are_named_with_the_ones_that_exist():
    [item] = ToolFeedback().run_calls('<tool name="calculater">1+1</tool>')
    assert item.text == ("Tool calculater(1+1) → error: unknown tool 'calculater'. Did you mean 'calculator'? "
                         "Available tools: calculator, python, sympy.")
    assert item.data["error"] == "unknown_tool" and item.data["ok"] is False
    [item] = ToolFeedback(tools=["calculator"]).run_calls('<tool name="python">print(1)</tool>')
    assert item.text.endswith("unknown tool 'python'. Available tools: calculator.")


def test_the_unknown_tool_example_in_the_docs_is_what_the_source_says():
    docs = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "tools.md"
    if not docs.exists():
        pytest.skip("docs/plugins/tools.md is not beside this checkout")
    [row] = [line for line in docs.read_text().splitlines() if "unknown tool" in line and line.startswith("| `<tool")]
    call, said = row.split("`")[1], row.split("`")[3]
    assert "Did you mean" in said
    assert [i.text for i in ToolFeedback().run_calls(call)] == [said]


def test_a_call_holding_half_a_character_gives_feedback_that_encodes():
    """JSON reads ``"\\ud83d"`` as a lone surrogate; the feedback text built from it must still
    encode, or the expert context cannot be tokenized."""
    [item] = ToolFeedback(tools=["calculator"]).run_calls('```tool\n{"name": "calculator", "input": "2+2 \\ud83d"}\n```')
    assert "\ufffd" in item.text
    item.text.encode("utf-8")


@pytest.mark.parametrize("value,whole", [
    ('"2+2 \\ud83d"', "2+2 \ufffd"),
    ('{"expression": "\\ud83d", "\\udc00": ["\\ud83d\\ude00"]}', {"expression": "\ufffd", "\ufffd": ["\U0001f600"]}),
])
def test_a_tool_is_given_whole_characters(value, whole):
    """Half a character written as a JSON escape reaches the tool as U+FFFD (a pair still spells
    its character), so the tool can encode its input and the feedback names the input's fault."""
    [call] = parse_calls('```tool\n{"name": "calculator", "input": ' + value + "}\n```")
    assert call.error is None and call.input == whole
    [item] = ToolFeedback(tools=["calculator"]).run_calls('```tool\n{"name": "calculator", "input": "2+2 \\ud83d"}\n```')
    assert "UnicodeEncodeError" not in item.text, item.text
