"""The calculator computes arithmetic exactly as documented and refuses everything else unevaluated."""

import ast
import builtins
import inspect

import pytest

from distil_tools import calculator
from distil_tools.calculator import CalculatorTool

TABLE = [
    ("12 * (3 + 4)", "84"),
    ("2 + 3 * 4 - 5", "9"),
    ("7 / 2", "3.5"),
    ("6 / 3", "2"),
    ("7 // 2", "3"),
    ("-7 // 2", "-4"),
    ("-7 % 3", "2"),
    ("2 ** 10", "1024"),
    ("2 ^ 10", "1024"),
    ("2 * 3 ^ 2", "18"),
    ("2 ** -2", "0.25"),
    ("-3 ** 2", "-9"),
    ("(-3) ** 2", "9"),
    ("+-+5", "-5"),
    ("0.1 + 0.2", "0.3"),
    ("1 / 3", "0.333333333333"),
    ("3.5e2 + 1_000", "1350"),
    ("sqrt(16) + sqrt(2) ** 2", "6"),
    ("log(8, 2)", "3"),
    ("ln(e ** 3)", "3"),
    ("log10(1000) + log2(8)", "6"),
    ("exp(0) + sin(0) + cos(0)", "2"),
    ("sin(pi / 2)", "1"),
    ("tan(pi / 4)", "1"),
    ("degrees(pi)", "180"),
    ("atan2(1, 1) * 4", "3.14159265359"),
    ("tau / 2", "3.14159265359"),
    ("abs(-3) + floor(2.7) + ceil(2.1)", "8"),
    ("round(2.567, 2)", "2.57"),
    ("factorial(20)", "2432902008176640000"),
    ("gcd(12, 18) + max(1, 5, 3) - min(4, 2)", "9"),
    ("hypot(3, 4)", "5"),
    ("2 ** 100", "1267650600228229401496703205376"),
    ("12 × 3 ÷ 4 − 1 =", "8"),
    ("(((((1 + 2)))))", "3"),
    ("+".join(["1"] * 101), "101"),  # flat chains are one level of nesting, however long
    ("1" + "-1+1" * 80, "1"),
    ("*".join(["2"] * 120), str(2**120)),
    ("2 * 3 / 4 * 8 // 3 % 5", "4"),
    ("max(1, 2)", "2"),
]


@pytest.mark.parametrize("expression, expected", TABLE)
def test_arithmetic(expression, expected):
    result = CalculatorTool().run(expression)
    assert result.ok and result.text == expected


@pytest.mark.parametrize("expression, message", [
    ("1 / 0", "division by zero"),
    ("5 // 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("sqrt(-1)", "sqrt(-1): the argument is outside its domain"),
    ("log(0)", "log(0): the argument is outside its domain"),
    ("(-8) ** (1 / 3)", "the result is not a real number"),
    ("1e308 * 10", "the result is too large for a float"),
    ("exp(1000)", "exp: the result is too large for a float"),
    ("", "the expression is empty"),
    ("2 +", "not an arithmetic expression (invalid syntax)"),
    ("1,000", "does not allow commas outside function calls (write 1000, not 1,000)"),
    ("x + 1", "unknown name 'x'"),
    ("sqrt", "'sqrt' is a function: call it"),
    ("sqrt(1, 2)", "sqrt takes 1 argument (got 2)"),
    ("factorial(-1)", "factorial: the argument must be a whole number ≥ 0"),
    ("max(5)", "max takes 2 to 16 arguments (got 1)"),
    ("min(3)", "min takes 2 to 16 arguments (got 1)"),
])
def test_errors_are_clear_messages(expression, message):
    result = CalculatorTool().run(expression)
    assert not result.ok and message in result.text


def payloads(target):
    """Expressions that would create ``target`` if anything evaluated them as Python."""
    path = str(target)
    return [
        f"__import__('os').system('touch {path}')",
        f"open('{path}', 'w').write('x')",
        f"(lambda: open('{path}', 'w'))()",
        f"exec(\"open('{path}', 'w')\")",
        f"eval(\"open('{path}', 'w')\")",
        f"compile(\"open('{path}', 'w')\", 'f', 'exec')",
        f"[open('{path}', 'w') for _ in (1,)]",
        f"(f := open('{path}', 'w'))",
        f"f'{{open(\"{path}\", \"w\")}}'",
        f"().__class__.__base__.__subclasses__()[0]('{path}')",
        f"getattr(__builtins__, 'open')('{path}', 'w')",
        f"sqrt(open('{path}', 'w'))",
        f"max(1, key=lambda _: open('{path}', 'w'))",
        f"1 if open('{path}', 'w') else 2",
        f"sqrt(*[open('{path}', 'w')])",
        f"{{'a': open('{path}', 'w')}}",
    ]


def test_code_in_an_expression_is_refused_and_never_runs(tmp_path, monkeypatch):
    """The whitelist refuses every payload; none creates its file, and nothing calls eval or
    exec — compile is only ever asked for an AST."""
    seen = []
    real_compile = builtins.compile

    def only_ast(source, filename, mode, flags=0, *args, **kwargs):
        seen.append(flags & ast.PyCF_ONLY_AST)
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the calculator called eval or exec")

    monkeypatch.setattr(builtins, "compile", only_ast)
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    target = tmp_path / "pwned"
    tool = CalculatorTool()
    for payload in payloads(target):
        result = tool.run(payload)
        assert not result.ok, payload
        assert not target.exists(), payload
    assert tool.run("6 * 7").text == "42"
    assert seen and all(seen)


@pytest.mark.parametrize("expression, message", [
    ("(1).__class__", "does not allow attribute access"),
    ("__import__", "unknown name '__import__'"),
    ("__builtins__", "unknown name '__builtins__'"),
    ("lambda: 1", "does not allow lambda"),
    ("[1] * 10 ** 9", "does not allow lists"),
    ("'a' * 10 ** 9", "does not allow strings"),
    ("True + 1", "does not allow bool values"),
    ("1 < 2", "does not allow comparisons"),
    ("max(1, 2, key=abs)", "does not allow keyword arguments (max)"),
    ("9 ** 9 ** 9", "the power is too large: the result would have about 3.7e+08 digits"),
    ("2 ** 10 ** 10", "the power is too large"),
    ("10 ** 4000", "the power is too large"),
    ("(2 ** 4000) * (2 ** 4000)", "the result is too large (more than 4096 bits)"),
    ("factorial(100000)", "factorial(100000) is too large"),
    ("factorial(factorial(20))", "is too large"),
    ("1e999", "the number is too large for a float"),
    ("-" * 500 + "1", "nested too deeply"),
    ("(" * 300 + "1" + ")" * 300, "too many nested parentheses"),
    ("1+" * 600 + "1", "the expression is too long"),
    ("sqrt(" * 150 + "1" + ")" * 150, "nested too deeply"),
    ("1" + "+1" * 170, "the expression is too large (more than 500 parts)"),  # a chain is bounded by its parts
    ("2 ** " * 101 + "1", "nested too deeply"),  # ** is not a flat chain: it nests to the right
])
def test_attacks_and_huge_results_are_refused(expression, message):
    result = CalculatorTool().run(expression)
    assert not result.ok and message in result.text


def test_the_calculator_module_calls_no_evaluator():
    tree = ast.parse(inspect.getsource(calculator))
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__", "getattr", "open"}


def test_dict_input_and_data():
    result = CalculatorTool().run({"expression": "2 ** 8"})
    assert result.ok and result.text == "256" and result.data == {"value": 256}
    assert not CalculatorTool().run({"code": "1"}).ok
