"""Finding tool calls: the tag and the fenced-JSON formats, malformed calls, the caps."""

import pytest
from tools_testlib import FAILED, PASSED, PROBLEM, rollout

from distil_core import resolve
from distil_tools import ToolFeedback, parse_calls


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
])
def test_other_markup_is_not_a_call(text):
    assert parse_calls(text) == []


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
