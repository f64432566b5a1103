"""Tool ``calculator``: arithmetic on numbers, and nothing else.

The expression is parsed with :mod:`ast` and the tree is checked against a whitelist before
anything is computed: numbers; ``+ - * / // % **`` (``^`` is read as a power, as people write
it); unary ``+``/``-``; parentheses; calls of the functions in :data:`FUNCTIONS` by name; the
constants ``pi``, ``e`` and ``tau``. Names, attributes, strings, lambdas, subscripts,
comprehensions, keyword arguments — everything else — are refused before evaluation starts,
and evaluation is a walk over the checked tree: no ``eval``, ``exec`` or ``compile`` is ever
called.

Size guards keep a hostile expression cheap: at most :data:`MAX_CHARS` characters, :data:`MAX_DEPTH`
levels (a flat chain such as ``1 + 2 - 3`` is one level) and :data:`MAX_NODES` nodes; integers stay under :data:`MAX_INT_BITS` bits, and a power
or factorial that would exceed that is refused before it is computed (``9**9**9`` is refused at
once). Floats must stay finite.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable, Union

from .base import ToolInput, ToolResult
from .symbolic import same_level  # shared with the sympy tool, whose worker runs symbolic.py alone

Number = Union[int, float]
MAX_CHARS = 1000
MAX_DEPTH = 100
MAX_NODES = 500
MAX_INT_BITS = 4096  # about 1233 decimal digits


class CalculatorError(ValueError):
    """The expression was refused or has no finite real value; the message says why."""


def _log(x: Number, base: Number = math.e) -> float:
    return math.log(x, base)


def _round(x: Number, digits: int = 0) -> Number:
    if not isinstance(digits, int) or abs(digits) > 100:
        raise CalculatorError("round: the number of digits must be a whole number between -100 and 100")
    return round(x) if digits == 0 else round(x, digits)


def _factorial(n: Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError("factorial: the argument must be a whole number ≥ 0")
    if n > 1 and math.lgamma(n + 1) / math.log(2) > MAX_INT_BITS:
        raise CalculatorError(f"factorial({n}) is too large (more than {MAX_INT_BITS} bits)")
    return math.factorial(n)


# name: (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (_log, 1, 2),
    "ln": (math.log, 1, 1),
    "log2": (math.log2, 1, 1),
    "log10": (math.log10, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "atan2": (math.atan2, 2, 2),
    "sinh": (math.sinh, 1, 1),
    "cosh": (math.cosh, 1, 1),
    "tanh": (math.tanh, 1, 1),
    "degrees": (math.degrees, 1, 1),
    "radians": (math.radians, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "factorial": (_factorial, 1, 1),
    "gcd": (math.gcd, 2, 2),
    "hypot": (math.hypot, 1, 16),
    "min": (min, 2, 16),  # min(5) would iterate over its one argument
    "max": (max, 2, 16),
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,  # guarded in _power
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_ALLOWED = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.Call,
            *_BINARY, *_UNARY)
_REFUSED_NAMES = {
    ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "lambda",
    ast.Compare: "comparisons", ast.BoolOp: "and/or", ast.IfExp: "if-expressions",
    ast.NamedExpr: "assignment", ast.JoinedStr: "f-strings", ast.Starred: "* unpacking",
    ast.List: "lists", ast.Tuple: "commas outside function calls (write 1000, not 1,000)", ast.Set: "sets",
    ast.Dict: "dicts", ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions", ast.GeneratorExp: "generators", ast.Await: "await",
    ast.Yield: "yield", ast.YieldFrom: "yield", ast.keyword: "keyword arguments",
}
HELP = ("the calculator takes numbers, + - * / // % ** (or ^), parentheses, the constants "
        f"pi, e, tau and the functions {', '.join(FUNCTIONS)}")


def evaluate(expression: str) -> Number:
    """The value of an arithmetic ``expression``; :class:`CalculatorError` says why not."""
    text = _normalise(expression)
    if not text:
        raise CalculatorError(f"the expression is empty; {HELP}")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"the expression is too long ({len(text)} characters; at most {MAX_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression ({exc.msg}); {HELP}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise CalculatorError(f"the expression cannot be parsed ({type(exc).__name__}); simplify it") from None
    _check(tree)
    return _value(tree.body)


def format_number(value: Number) -> str:
    """Integers in full; floats to 12 significant digits (``0.1 + 0.2`` → ``0.3``)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


class CalculatorTool:
    """Arithmetic: + - * / // % **, parentheses, math functions and constants; no code runs."""

    name = "calculator"
    description = "Arithmetic: numbers, + - * / // % ** (or ^), parentheses, sqrt, log, sin, pi, e…"

    def run(self, input: ToolInput) -> ToolResult:
        if isinstance(input, dict):
            input = input.get("expression", input.get("expr"))  # type: ignore[assignment]
            if not isinstance(input, str):
                return ToolResult.error('give the expression as a string, or as {"expression": "..."}')
        try:
            value = evaluate(input)
        except CalculatorError as exc:
            return ToolResult.error(str(exc))
        return ToolResult(format_number(value), data={"value": value})


# -- checking -------------------------------------------------------------------------------


def _check(tree: ast.AST) -> None:
    """Refuse anything outside the whitelist, and trees too deep or too large, before evaluating."""
    stack = [(tree, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise CalculatorError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        if count > MAX_NODES:
            raise CalculatorError(f"the expression is too large (more than {MAX_NODES} parts)")
        if not isinstance(node, _ALLOWED):
            what = _REFUSED_NAMES.get(type(node), type(node).__name__)
            raise CalculatorError(f"the calculator does not allow {what}")
        if isinstance(node, ast.Constant):
            _check_constant(node.value)
        elif isinstance(node, ast.Name) and node.id not in CONSTANTS:
            kind = "function" if node.id in FUNCTIONS else "name"
            raise CalculatorError(f"unknown {kind} {node.id!r}; {HELP}" if kind == "name" else
                                  f"{node.id!r} is a function: call it, as in {node.id}(2)")
        elif isinstance(node, ast.Call):
            _check_call(node)
            # The function name itself is not a value: skip it, check the arguments.
            stack.extend((arg, depth + 1) for arg in node.args)
            continue
        elif isinstance(node, ast.BinOp):
            left_depth = depth if same_level(node.left, node) else depth + 1
            stack += [(node.op, depth + 1), (node.right, depth + 1), (node.left, left_depth)]
            continue
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_constant(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "strings" if isinstance(value, (str, bytes)) else f"{type(value).__name__} values"
        raise CalculatorError(f"the calculator does not allow {kind}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the number is too large for a float")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"the number is too large (more than {MAX_INT_BITS} bits)")


def _check_call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name):
        raise CalculatorError("the calculator only calls its math functions, by name")
    name = node.func.id
    if name not in FUNCTIONS:
        raise CalculatorError(f"unknown function {name!r}; {HELP}")
    if node.keywords:
        raise CalculatorError(f"the calculator does not allow keyword arguments ({name})")
    if any(isinstance(a, ast.Starred) for a in node.args):
        raise CalculatorError(f"the calculator does not allow * unpacking ({name})")
    _, fewest, most = FUNCTIONS[name]
    if not fewest <= len(node.args) <= most:
        want = str(fewest) if fewest == most else f"{fewest} to {most}"
        raise CalculatorError(f"{name} takes {want} argument{'s' if most > 1 else ''} (got {len(node.args)})")


# -- evaluation (of a checked tree) ---------------------------------------------------------


def _value(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp):
        return _binary(type(node.op), _value(node.left), _value(node.right))
    if isinstance(node, ast.Call):
        name = node.func.id  # type: ignore[attr-defined]
        args = [_value(a) for a in node.args]
        return _call(name, args)
    raise CalculatorError(f"the calculator does not allow {type(node).__name__}")  # unreachable after _check


def _binary(op: type, a: Number, b: Number) -> Number:
    try:
        if op is ast.Pow:
            result = _power(a, b)
        elif op is ast.Mult and isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
        else:
            result = _BINARY[op](a, b)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("the result is too large for a float") from None
    return _checked(result)


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int):
        if exponent >= 0 and abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise CalculatorError(
                f"the power is too large: the result would have about "
                f"{_digits(exponent * math.log10(abs(base)))} digits (at most {MAX_INT_BITS} bits)"
            )
        if exponent < 0:
            return float(base) ** exponent
        return base**exponent
    return base**exponent


def _digits(count: float) -> str:
    return f"{count:.3g}" if count >= 1e6 else str(int(count) + 1)


def _call(name: str, args: list[Number]) -> Number:
    function = FUNCTIONS[name][0]
    try:
        result = function(*args)
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError(f"{name}: division by zero") from None
    except OverflowError:
        raise CalculatorError(f"{name}: the result is too large for a float") from None
    except (ValueError, TypeError) as exc:
        reason = "the argument is outside its domain" if "domain" in str(exc) else str(exc)
        raise CalculatorError(f"{name}({', '.join(format_number(a) for a in args)}): {reason}") from None
    return _checked(result)


def _checked(result: Any) -> Number:
    if isinstance(result, complex):
        raise CalculatorError("the result is not a real number")
    if isinstance(result, float):
        if math.isnan(result):
            raise CalculatorError("the result is undefined (not a number)")
        if math.isinf(result):
            raise CalculatorError("the result is too large for a float")
    elif isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return result


def _normalise(expression: Any) -> str:
    text = str(expression).strip()
    # "^" is a power, as people write it; replaced before parsing so that it binds like "**".
    for symbol, replacement in (("^", "**"), ("×", "*"), ("·", "*"), ("÷", "/"), ("−", "-"), ("\n", " "), ("\r", " ")):
        text = text.replace(symbol, replacement)
    return text.rstrip("= ").strip()
