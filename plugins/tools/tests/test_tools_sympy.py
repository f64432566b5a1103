"""The sympy tool: equality, simplification and solving, on input that cannot run code."""

import ast
import inspect

import pytest

from distil_tools import run_tool, symbolic
from distil_tools.sympy_tool import SympyTool


@pytest.fixture(scope="module")
def in_process():
    return SympyTool(isolate=False)


@pytest.fixture(scope="module")
def isolated():
    tool = SympyTool(timeout_s=20, workers=1)
    yield tool
    tool.close()


@pytest.mark.parametrize("input, text", [
    ("(x + 1)**2 == x**2 + 2*x + 1", "equal"),
    ({"expr": "sin(x)**2 + cos(x)**2", "equals": "1"}, "equal"),
    ({"expr": "diff(x**3, x)", "equals": "3*x^2"}, "equal"),
    ({"expr": "integrate(x**2, x, 0, 1)", "equals": "1/3"}, "equal"),
    ("equals: e**(I*pi) == -1", "equal"),
    ("limit(sin(x)/x, x, 0) == 1", "equal"),
    ("(x + 1)**2 == x**2 + 1", "not equal: the difference simplifies to 2*x; at x = 2 the left side is 9 and the right side is 5"),
    ("x == y", "not equal: the difference simplifies to x - y; at x = 2, y = 3 the left side is 2 and the right side is 3"),
    ("sqrt(2) == 1.414", "not equal: the difference simplifies to"),
    ("simplify: sin(x)**2 + cos(x)**2", "1"),
    ("simplify: (x**2 - 1)/(x - 1)", "x + 1"),
    ("expand: (x + 1)**3", "x**3 + 3*x**2 + 3*x + 1"),
    ({"op": "factor", "expr": "x**2 - 1"}, "(x - 1)*(x + 1)"),
    ("(a + b)**2 - a**2", "b*(2*a + b)"),
    ("solve: x**2 = 4", "x = -2 or x = 2"),
    ("x**2 - 5*x + 6 = 0", "x = 2 or x = 3"),
    ("solve: a*x + b = 0 for x", "x = -b/a"),
    ({"op": "solve", "expr": ["x + y = 3", "x - y = 1"]}, "x = 2, y = 1"),
    ("solve: x + y = 3; x - y = 1", "x = 2, y = 1"),
    ({"op": "solve", "expr": "x**2 + 1", "for": "x"}, "x = -I or x = I"),
    ("solve: exp(x) = 0", "no solution"),
    ("simplify: " + " + ".join(f"x**{k}" for k in range(101)), "x**100 + x**99 + x**98"),  # a flat chain: one level
    ("+".join(["x"] * 300) + " == 300*x", "equal"),
    ("solve: x + e = 3", "x = 3 - E"),
    ("factorial(2000) == factorial(2000)", "equal"),  # a long number is fine until it has to be shown
])
def test_symbolic_answers(in_process, input, text):
    result = in_process.run(input)
    assert result.ok, result.text
    assert result.text.startswith(text)


def test_equality_data_and_the_isolated_worker(isolated):
    result = isolated.run({"expr": "(x + 1)**2", "equals": "x**2 + 2*x + 1"})
    assert result.ok and result.text == "equal"
    assert result.data == {"op": "equals", "equal": True, "difference": "0"}
    solved = isolated.run("solve: x**2 = 9")
    assert solved.text == "x = -3 or x = 3" and solved.data["solutions"] == [{"x": "-3"}, {"x": "3"}]


@pytest.mark.parametrize("input, message", [
    ("solve: x + y = 3", "say which symbol to solve for"),
    ("2x + 1 == 3", "write products with *, as in 2*x"),
    ("1/0 == 0", "division by zero"),
    ("9**9**9 == 1", "the power 9**387420489 is too large to compute exactly"),
    ("factorial(100000) == 1", "factorial of a number above 10000 is too large"),
    ({"op": "integrate", "expr": "x"}, "unknown operation 'integrate'"),
    ({"expr": "x", "arguments": "y"}, "unexpected key 'arguments'"),
    ({"op": "equals", "expr": "x"}, 'an equality check needs "equals"'),
    ('{"expr": ', "the input looks like JSON but is not valid"),
    ("diff(x**2, 2) == 0", "diff: the second argument must be a symbol"),
    ("solve: sin(x) = 2*x + exp(x)", "sympy cannot solve this equation in closed form"),
    ("solve: x + e = 3 for e", "cannot solve for e: in an expression it is the constant E, not a symbol"),
    ("solve: 2*pi = 6 for pi", "cannot solve for pi: in an expression it is the constant pi, not a symbol"),
    ({"op": "solve", "expr": "E*x = 1", "for": "E"}, "cannot solve for E: in an expression it is the constant E"),
    ("solve: x + 1 = 3 for z", "cannot solve for z: not in the equations (their symbols: x)"),
    ({"op": "solve", "expr": ["x + y = 3", "x - y = 1"], "for": ["x", "w"]}, "cannot solve for w: not in the equations (their symbols: x, y)"),
    ("simplify: factorial(2000)", "the result has a number with more than 4300 digits, too long to show"),
    ("simplify: 2**20000", "the result has a number with more than 4300 digits, too long to show"),
    ("2**20000 == x", "the result has a number with more than 4300 digits"),
    ("(2**99999)**2 == 1", "the power (a number of about 30103 digits)**2 is too large to compute exactly"),
    ("simplify: " + "sqrt(" * 100 + "x" + ")" * 100, "too deep"),  # real nesting is still bounded
])
def test_bad_requests_are_explained(in_process, input, message):
    result = in_process.run(input)
    assert not result.ok and message in result.text


def payloads(target):
    path = str(target)
    return [
        f"__import__('os').system('touch {path}')",
        f"simplify: open('{path}', 'w')",
        "x.__class__.__mro__[1].__subclasses__() == 0",
        f"(lambda: open('{path}', 'w'))() == 1",
        "Symbol('x') == 1",
        f"sympify(\"open('{path}', 'w')\") == 1",
        f"parse_expr(\"open('{path}', 'w')\")",
        f"exec(\"open('{path}', 'w')\") == 0",
        f"solve: [open('{path}', 'w') for _ in (1,)] = 0",
        f"x == {{'a': open('{path}', 'w')}}",
        f"f'{{open(\"{path}\", \"w\")}}' == x",
        "_x + 1 == 1",
        {"expr": f"open('{path}', 'w')", "equals": "1"},
        {"op": "solve", "expr": "x = 1", "for": "__class__"},
        "simplify: x if x else y",
        "diff(x, x, y=2) == 1",
        "x + 'a' == x",
    ]


def test_unsafe_input_is_refused_before_sympy_sees_it(tmp_path, monkeypatch):
    target = tmp_path / "pwned"

    def not_reached(request):
        raise AssertionError(f"refused input reached sympy: {request}")

    monkeypatch.setattr(symbolic, "run_request", not_reached)
    tool = SympyTool(isolate=False)
    for payload in payloads(target):
        result = tool.run(payload)
        assert not result.ok, payload
        assert not target.exists(), payload


def test_the_whitelist_is_checked_again_where_sympy_runs(tmp_path):
    """A request that skipped parse_request (the worker reads raw JSON) is still refused."""
    reply = symbolic.run_request({"op": "simplify", "exprs": [f"open('{tmp_path / 'pwned'}', 'w')"], "equals": None, "for": None})
    assert not reply["ok"] and "open" in reply["text"] and not (tmp_path / "pwned").exists()


def test_the_symbolic_module_evaluates_no_text():
    tree = ast.parse(inspect.getsource(symbolic))
    called = [
        n.func.id if isinstance(n.func, ast.Name) else f"{ast.unparse(n.func.value)}.{n.func.attr}"
        for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))
    ]
    evaluators = {"eval", "exec", "compile", "parse_expr", "sympify", "S", "__import__"}
    assert called and not [c for c in called if c.split(".")[-1] in evaluators and c != "re.compile"]


def test_a_call_that_runs_too_long_is_stopped_and_the_next_one_works():
    tool = SympyTool(timeout_s=1, workers=1)
    try:
        slow = tool.run("expand: (x + y + 1)**3000")
        assert not slow.ok and slow.text == "sympy: timed out after 1 s"
        again = tool.run("x + x == 2*x")
        assert again.ok and again.text == "equal"
    finally:
        tool.close()


def test_a_call_that_needs_too_much_memory_is_stopped_and_the_next_one_works():
    tool = SympyTool(memory_mb=128, timeout_s=30, workers=1)
    try:
        big = tool.run("expand: (a + b + c + d + f + g + h + 1)**30")
        assert not big.ok and big.text == "sympy ran out of memory on this input"
        assert tool._idle == []  # that worker is not reused
        assert tool.run("x + x == 2*x").text == "equal"
    finally:
        tool.close()


def test_a_call_that_fails_inside_the_worker_exchange_never_leaves_a_worker_outside_the_pool():
    """Whatever ask raises, the worker is returned to the pool or stopped: one left in neither is a
    process beyond the `workers` limit, one per such call."""
    tool = SympyTool(timeout_s=20, workers=1)
    try:
        assert tool.run("x + x == 2*x").text == "equal"
        [worker] = tool._idle
        tool.timeout_s = float("nan")  # refused by the constructor; here it makes select() raise ValueError
        assert run_tool(tool, "x + x == 2*x").text == "the tool failed: ValueError: Invalid value NaN (not a number)"
        assert tool._idle == [] and not worker.alive
        tool.timeout_s = 20.0
        assert tool.run("x + x == 2*x").text == "equal"  # a fresh worker
    finally:
        tool.close()
