"""The python tool runs code in the real sandbox and reports compactly what happened."""

import os
import uuid

import pytest
from tools_testlib import FAILED, PROBLEM, isolating_backend, rollout

from distil_core import ConfigError
from distil_core import resolve
from distil_tools import ToolFeedback, ToolRegistry


@pytest.fixture(scope="module")
def python_tool():
    return ToolRegistry(load_entrypoints=False).build("tool", "python", {"backend": isolating_backend(), "timeout_s": 5})


def test_a_program_that_succeeds_gives_its_output(python_tool):
    result = python_tool.run("import math\nprint(2**10)\nprint(math.factorial(5))")
    assert result.ok and result.text == "1024\n120"
    assert result.data["exit_code"] == 0 and result.data["backend"] == "bwrap"
    assert python_tool.run("x = 1").text == "(no output)"


def test_a_program_that_fails_gives_status_and_the_end_of_its_traceback(python_tool):
    result = python_tool.run("print('before')\n1 / 0")
    assert not result.ok
    assert result.text.startswith("exit status 1\nstdout:\nbefore\nstderr:\nTraceback (most recent call last):")
    assert result.text.endswith("ZeroDivisionError: division by zero")


def test_stdin_is_given_with_the_object_form(python_tool):
    result = python_tool.run({"code": "print(input()[::-1])", "stdin": "abc\n"})
    assert result.ok and result.text == "cba"
    assert not python_tool.run({"program": "print(1)"}).ok


def test_a_program_that_runs_too_long_is_stopped():
    tool = ToolRegistry(load_entrypoints=False).build("tool", "python", {"backend": isolating_backend(), "timeout_s": 1})
    result = tool.run("print('started', flush=True)\nwhile True:\n    pass")
    assert not result.ok and result.data["timed_out"]
    assert result.text.startswith("timed out after 1 s")


def test_a_call_that_writes_outside_its_work_dir_leaves_the_host_untouched(python_tool, tmp_path):
    in_tmp = tmp_path / "escaped.txt"
    in_repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"escaped-{uuid.uuid4().hex}.txt")
    code = (
        "import os\n"
        f"for path in [{str(in_tmp)!r}, {in_repo!r}, os.path.expanduser('~/.distil-tools-escape')]:\n"
        "    try:\n"
        "        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "        open(path, 'w').write('escaped')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
    )
    result = python_tool.run(code)
    assert result.ok, result.text
    assert not in_tmp.exists() and not os.path.exists(in_repo)
    assert not os.path.exists(os.path.expanduser("~/.distil-tools-escape"))


def test_options_reach_the_sandbox_and_bad_ones_are_config_errors():
    with pytest.raises(ConfigError, match=r"option tool_options.python.backend must be one of auto, bwrap, docker, process \(got 'bwarp'"):
        ToolFeedback(tools=["python"], tool_options={"python": {"backend": "bwarp"}})
    with pytest.raises(ConfigError, match="Unknown option 'timeout' for tool 'python'.*Did you mean 'timeout_s'"):
        ToolFeedback(tools=["python"], tool_options={"python": {"timeout": 3}})
    source = ToolFeedback(tools=["python"], tool_options={"python": {"backend": isolating_backend(), "memory_mb": 64}})
    text = '```tool\n{"name": "python", "input": "x = bytearray(512 * 1024 * 1024)"}\n```'
    [item] = resolve(source.feedback(PROBLEM, rollout(text), FAILED, []))
    assert item.text.startswith('Tool python(x = bytearray(512 * 1024 * 1024)) → error: ')
    assert "MemoryError" in item.text or "killed by" in item.text
