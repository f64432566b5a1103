"""Symbolic checks with sympy, from expressions that cannot run code.

Expressions are read with :mod:`ast` and checked against a whitelist — numbers, symbols
(``[A-Za-z][A-Za-z0-9_]*``), ``+ - * / % **`` (``^`` is a power), unary signs, parentheses and
calls of the functions in :data:`FUNCTIONS` by name, with positional arguments — and the
sympy objects are then built by walking that tree. sympy's own ``parse_expr`` is not used: it
turns the text into Python source and ``eval``\\ s it, and a whitelist in front of ``eval`` is
still ``eval``; building the objects directly leaves nothing to evaluate. (The sandbox's
``/usr/bin/python3`` has no sympy, so running the parse there is not an option.)

What the whitelist cannot bound is sympy's running time and memory (``expand((x+1)**10**6)``
is a valid expression), so the tool runs the work in a separate worker process with an
address-space limit and a wall-clock timeout (:mod:`distil_tools.sympy_tool`). This file is
that worker's program too: it imports only the standard library and sympy, so it runs as a
script under ``python -I``.
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
from typing import Any, Callable, Optional

MAX_CHARS = 2000
MAX_DEPTH = 100
MAX_NODES = 1000
MAX_INT_DIGITS = 1000
MAX_POWER_BITS = 100_000  # numeric powers sympy would compute eagerly
MAX_FACTORIAL = 10_000
MAX_EQUATIONS = 8
OPERATIONS = ("equals", "simplify", "expand", "factor", "solve")
SYMBOL = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_IMPLICIT_PRODUCT = re.compile(r"\d\s*[A-Za-z(]|\)\s*[A-Za-z0-9(]")

# name: (sympy attribute, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[str, int, int]] = {
    "sqrt": ("sqrt", 1, 1), "cbrt": ("cbrt", 1, 1), "root": ("root", 2, 2),
    "exp": ("exp", 1, 1), "log": ("log", 1, 2), "ln": ("log", 1, 1),
    "sin": ("sin", 1, 1), "cos": ("cos", 1, 1), "tan": ("tan", 1, 1), "cot": ("cot", 1, 1),
    "sec": ("sec", 1, 1), "csc": ("csc", 1, 1), "asin": ("asin", 1, 1), "acos": ("acos", 1, 1),
    "atan": ("atan", 1, 1), "atan2": ("atan2", 2, 2), "sinh": ("sinh", 1, 1),
    "cosh": ("cosh", 1, 1), "tanh": ("tanh", 1, 1), "asinh": ("asinh", 1, 1),
    "acosh": ("acosh", 1, 1), "atanh": ("atanh", 1, 1),
    "abs": ("Abs", 1, 1), "Abs": ("Abs", 1, 1), "sign": ("sign", 1, 1),
    "floor": ("floor", 1, 1), "ceiling": ("ceiling", 1, 1), "ceil": ("ceiling", 1, 1),
    "factorial": ("factorial", 1, 1), "binomial": ("binomial", 2, 2), "gamma": ("gamma", 1, 1),
    "min": ("Min", 1, 16), "max": ("Max", 1, 16), "Min": ("Min", 1, 16), "Max": ("Max", 1, 16),
    "re": ("re", 1, 1), "im": ("im", 1, 1), "conjugate": ("conjugate", 1, 1),
    "Rational": ("Rational", 2, 2),
    "diff": ("diff", 2, 3), "integrate": ("integrate", 2, 4), "limit": ("limit", 3, 3),
    "expand": ("expand", 1, 1), "factor": ("factor", 1, 1), "simplify": ("simplify", 1, 1),
}
CONSTANTS: dict[str, str] = {"pi": "pi", "E": "E", "e": "E", "I": "I", "oo": "oo", "inf": "oo"}
HELP = ("an expression uses numbers, symbols, + - * / ** (or ^), parentheses, the constants "
        "pi, e, I, oo and functions such as sqrt, exp, log, sin, diff, integrate")


_REFUSED = {
    "Attribute": "attribute access", "Subscript": "indexing", "Lambda": "lambda", "Compare":
    "comparisons", "BoolOp": "and/or", "IfExp": "if-expressions", "NamedExpr": "assignments",
    "JoinedStr": "f-strings", "List": "lists", "Tuple": "tuples", "Set": "sets", "Dict": "dicts",
    "ListComp": "comprehensions", "SetComp": "comprehensions", "DictComp": "comprehensions",
    "GeneratorExp": "generators", "Starred": "* unpacking", "Await": "await", "Yield": "yield",
}


class SymbolicError(ValueError):
    """The input was refused or sympy could not do the work; the message says why."""


# -- equations --------------------------------------------------------------------------


def split_equation(text: str) -> tuple[str, Optional[str]]:
    """``"lhs = rhs"`` (or ``==``) as its two sides; ``(text, None)`` without an equals sign."""
    match = re.search(r"(?<![<>!=])==?(?!=)", text)
    if match is None:
        return text, None
    return text[: match.start()], text[match.end():]


# -- the whitelist ------------------------------------------------------------------------


def same_level(child: ast.AST, parent: ast.BinOp) -> bool:
    """Whether ``child``, the left operand of ``parent``, continues a flat chain of operators of
    one precedence level: ``1 + 2 - 3 + …`` parses as a tree as deep as it is long, but is read
    flat, so it counts as one level of nesting. (The chain's length is bounded by the node count,
    and so is the recursion of the evaluation.)"""
    levels = ((ast.Add, ast.Sub), (ast.Mult, ast.Div, ast.FloorDiv, ast.Mod))
    return isinstance(child, ast.BinOp) and any(
        isinstance(child.op, level) and isinstance(parent.op, level) for level in levels
    )


def check_expression(text: str) -> ast.Expression:
    """Parse ``text`` and refuse anything outside the whitelist (nothing is evaluated)."""
    # "^" is a power, as in sympy's own parser; replaced before parsing so it binds like "**".
    text = text.strip().replace("^", "**")
    if not text:
        raise SymbolicError(f"an expression is empty; {HELP}")
    if len(text) > MAX_CHARS:
        raise SymbolicError(f"an expression is too long ({len(text)} characters; at most {MAX_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        hint = " (write products with *, as in 2*x)" if _IMPLICIT_PRODUCT.search(text) else ""
        raise SymbolicError(f"cannot read {text[:60]!r}: {exc.msg}{hint}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise SymbolicError(f"cannot read the expression ({type(exc).__name__}); simplify it") from None
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH or count > MAX_NODES:
            raise SymbolicError(f"the expression is too deep or too large (at most {MAX_DEPTH} levels, {MAX_NODES} parts)")
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SymbolicError(f"{type(value).__name__} values are not allowed; {HELP}")
            if isinstance(value, int) and value.bit_length() > MAX_INT_DIGITS * 3.33:
                raise SymbolicError(f"a number has more than {MAX_INT_DIGITS} digits")
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS and node.id not in CONSTANTS:
                raise SymbolicError(f"{node.id!r} is a function: call it, as in {node.id}(x)")
            if node.id not in CONSTANTS and not SYMBOL.match(node.id):
                raise SymbolicError(f"{node.id!r} is not a valid symbol name (a letter, then letters, digits or _)")
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod)):
                raise SymbolicError(f"the operator {type(node.op).__name__} is not allowed; {HELP}")
            left_depth = depth if same_level(node.left, node) else depth + 1
            stack += [(node.left, left_depth), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.UAdd, ast.USub)):
                raise SymbolicError(f"the operator {type(node.op).__name__} is not allowed; {HELP}")
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise SymbolicError("only the known math functions may be called, by name")
            if node.func.id not in FUNCTIONS:
                raise SymbolicError(f"unknown function {node.func.id!r}; {HELP}")
            name, (_, fewest, most) = node.func.id, FUNCTIONS[node.func.id]
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise SymbolicError(f"{name}: only positional arguments are allowed")
            if not fewest <= len(node.args) <= most:
                want = str(fewest) if fewest == most else f"{fewest} to {most}"
                raise SymbolicError(f"{name} takes {want} arguments (got {len(node.args)})")
            stack += [(a, depth + 1) for a in node.args]
        else:
            what = _REFUSED.get(type(node).__name__, type(node).__name__)
            raise SymbolicError(f"expressions may not contain {what}; {HELP}")
    return tree


# -- building sympy objects from a checked tree ---------------------------------------------


def build(text: str, sympy: Any, symbols: dict[str, Any]) -> Any:
    """The sympy object of ``text`` (checked first). ``symbols`` caches Symbols by name."""
    return _build(check_expression(text).body, sympy, symbols)


def _build(node: ast.AST, sp: Any, symbols: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return sp.Integer(node.value) if isinstance(node.value, int) else sp.Float(repr(node.value))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return getattr(sp, CONSTANTS[node.id])
        if node.id not in symbols:
            symbols[node.id] = sp.Symbol(node.id)
        return symbols[node.id]
    if isinstance(node, ast.UnaryOp):
        value = _build(node.operand, sp, symbols)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _build(node.left, sp, symbols), _build(node.right, sp, symbols)
        if isinstance(node.op, ast.Pow):
            _guard_power(left, right)
            return left**right
        if isinstance(node.op, ast.Div) and right == 0:
            raise SymbolicError("division by zero")
        ops: dict[type, Callable[[Any, Any], Any]] = {
            ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b, ast.Mod: sp.Mod,
        }
        return ops[type(node.op)](left, right)
    if isinstance(node, ast.Call):
        name = node.func.id  # type: ignore[attr-defined]
        args = [_build(a, sp, symbols) for a in node.args]
        _guard_call(name, args, sp)
        if name == "integrate" and len(args) == 4:
            return sp.integrate(args[0], (args[1], args[2], args[3]))
        return getattr(sp, FUNCTIONS[name][0])(*args)
    raise SymbolicError(f"{type(node).__name__} is not allowed")  # unreachable after the check


def _guard_power(base: Any, exponent: Any) -> None:
    """Refuse numeric powers whose exact value sympy would compute and that would be huge."""
    if not (getattr(base, "is_Rational", False) and getattr(exponent, "is_Integer", False)):
        return
    size = max(abs(int(base.p)), abs(int(base.q)), 1)
    if size > 1 and abs(int(exponent)) * math.log2(size) > MAX_POWER_BITS:
        raise SymbolicError(f"the power {_brief(base)}**{_brief(exponent)} is too large to compute exactly")


def _brief(number: Any) -> str:
    """A rational number quoted in a message: a short one in full, a long one by its size."""
    bits = max(abs(int(number.p)), int(number.q)).bit_length()
    return str(number) if bits <= 128 else f"(a number of about {int((bits - 1) * math.log10(2)) + 1} digits)"


def _guard_call(name: str, args: list[Any], sp: Any) -> None:
    if name in ("factorial", "gamma", "binomial") and any(
        getattr(a, "is_Number", False) and abs(a) > MAX_FACTORIAL for a in args
    ):
        raise SymbolicError(f"{name} of a number above {MAX_FACTORIAL} is too large to compute")
    if name in ("diff", "integrate", "limit") and not isinstance(args[1], sp.Symbol):
        raise SymbolicError(f"{name}: the second argument must be a symbol, as in {name}(f, x)")
    if name == "diff" and len(args) == 3 and not (getattr(args[2], "is_Integer", False) and 1 <= args[2] <= 20):
        raise SymbolicError("diff: the order must be a whole number from 1 to 20")
    if name == "integrate" and len(args) == 3:
        raise SymbolicError("integrate takes (f, x) or (f, x, lower, upper)")


# -- the operations -----------------------------------------------------------------------


def compute(request: dict[str, Any]) -> dict[str, Any]:
    """Carry out a request ``{"op", "exprs", "equals", "for"}`` (see
    :func:`distil_tools.sympy_tool.parse_request`): ``{"ok", "text", "data"}``."""
    import sympy

    symbols: dict[str, Any] = {}
    op = request["op"]
    if op == "equals":
        left, right = build(request["exprs"][0], sympy, symbols), build(request["equals"], sympy, symbols)
        return _equals(left, right, sympy)
    if op == "solve":
        return _solve(request, sympy, symbols)
    expr = build(request["exprs"][0], sympy, symbols)
    text = _show(getattr(sympy, op)(expr))
    return {"ok": True, "text": text, "data": {"result": text}}


def _equals(left: Any, right: Any, sp: Any) -> dict[str, Any]:
    difference = sp.simplify(left - right)
    equal: Optional[bool]
    if difference == 0:
        equal = True
    elif not difference.free_symbols and difference.is_zero is False:
        equal = False
    else:
        equal = left.equals(right)
    shown = _show(difference)
    data = {"equal": equal, "difference": shown}
    if equal:
        return {"ok": True, "text": "equal", "data": data}
    if equal is None:
        return {"ok": True, "text": f"undecided: the difference simplifies to {shown}", "data": data}
    text = f"not equal: the difference simplifies to {shown}"
    witness = _counterexample(left, right, sp)
    if witness:
        text += f"; {witness}"
    return {"ok": True, "text": text, "data": data}


def _counterexample(left: Any, right: Any, sp: Any) -> Optional[str]:
    names = sorted((left - right).free_symbols, key=str)
    if not names:
        return None
    values = (2, 3, sp.Rational(1, 2), -1, 5, 7)
    for trial in range(len(values)):
        # Each symbol gets a different value, so x - y cannot vanish by accident.
        point = {s: values[(trial + i) % len(values)] for i, s in enumerate(names)}
        try:
            a, b = complex(left.subs(point).evalf()), complex(right.subs(point).evalf())
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b)):
            where = ", ".join(f"{s} = {v}" for s, v in point.items())
            return f"at {where} the left side is {_number(a)} and the right side is {_number(b)}"
    return None


def _number(value: complex) -> str:
    if abs(value.imag) > 1e-12:
        return f"{value.real:.6g}{value.imag:+.6g}i"
    return f"{value.real:.6g}"


def _solve(request: dict[str, Any], sp: Any, symbols: dict[str, Any]) -> dict[str, Any]:
    _check_unknowns(request["for"] or [])
    equations = []
    for text in request["exprs"]:
        left, right = split_equation(text)
        lhs = build(left, sp, symbols)
        rhs = build(right, sp, symbols) if right is not None else sp.Integer(0)
        equation = sp.Eq(lhs, rhs)
        if equation is sp.false:
            return {"ok": True, "text": f"no solution: {text.strip()} is never true", "data": {"solutions": []}}
        if equation is not sp.true:
            equations.append(equation)
    if not equations:
        return {"ok": True, "text": "every value is a solution", "data": {"solutions": "all"}}
    if request["for"]:
        missing = [name for name in request["for"] if name not in symbols]
        if missing:
            raise SymbolicError(f"cannot solve for {', '.join(missing)}: not in the equations (their symbols: "
                                f"{', '.join(sorted(symbols)) or 'none'})")
        unknowns = [symbols[name] for name in request["for"]]
    else:
        unknowns = sorted(set().union(*(e.free_symbols for e in equations)), key=str)
        if not unknowns:
            raise SymbolicError("the equation has no symbol to solve for")
        if len(unknowns) > len(equations):
            raise SymbolicError(
                f"say which symbol to solve for: the equation has {', '.join(map(str, unknowns))} "
                '(add "for x" to the text, or "for": "x" to the object)'
            )
    try:
        solutions = sp.solve(equations, unknowns, dict=True)
    except NotImplementedError:
        raise SymbolicError("sympy cannot solve this equation in closed form") from None
    rows = [{str(k): _show(v) for k, v in sorted(sol.items(), key=lambda kv: str(kv[0]))} for sol in solutions]
    if not rows:
        text = "no solution"
    else:
        text = " or ".join(", ".join(f"{k} = {v}" for k, v in row.items()) for row in rows)
    return {"ok": True, "text": text, "data": {"solutions": rows}}


def _check_unknowns(names: list[str]) -> None:
    """Refuse a ``for`` that names a constant: ``e`` is Euler's number in an expression, not a
    symbol, and sympy would answer "no solution", which reads as a fact about the equation."""
    for name in names:
        if name in CONSTANTS:
            raise SymbolicError(f"cannot solve for {name}: in an expression it is the constant {CONSTANTS[name]}, "
                                "not a symbol; name a symbol of the equation, or rename that unknown")


def _show(value: Any) -> str:
    """``str(value)``, or :class:`SymbolicError` for a number too long to print.

    Python refuses to turn an integer of more than ``sys.get_int_max_str_digits()`` digits (4300
    by default) into text, and sympy prints through that conversion; a result such as
    ``factorial(2000)`` is then reported by its size rather than with Python's advice to raise
    the limit, which is no advice for the model.
    """
    try:
        return str(value)
    except ValueError:
        limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
        if not limit:
            raise
        raise SymbolicError(f"the result has a number with more than {limit} digits, too long to show; "
                            "ask for something smaller (a remainder, a ratio, a logarithm)") from None


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`compute`, with every failure turned into ``{"ok": False, "text": why}``.

    ``"restart": True`` marks a failure after which a worker process should not be reused.
    """
    try:
        return compute(request)
    except SymbolicError as exc:
        return {"ok": False, "text": str(exc), "data": {}}
    except MemoryError:
        return {"ok": False, "text": "sympy ran out of memory on this input", "data": {}, "restart": True}
    except RecursionError:
        return {"ok": False, "text": "the expression is nested too deeply for sympy", "data": {}, "restart": True}
    except Exception as exc:  # sympy's own errors (TypeError, ValueError, PolynomialError…)
        return {"ok": False, "text": f"sympy failed: {type(exc).__name__}: {exc}", "data": {}}


# -- the worker process ---------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """Serve requests: one JSON object per line on stdin, one reply per line on stdout.

    ``argv[0]`` is the address-space limit in MiB. The first line written is ``{"ready":
    true}``, once sympy is imported, so the caller's timeouts measure work, not start-up.
    """
    import resource

    limit = int(argv[0]) * 1024 * 1024 if argv else 0
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import sympy  # noqa: F401  (imported once, before the first request)

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = run_request(request)
        except Exception as exc:
            reply = {"ok": False, "text": f"bad request: {exc}", "data": {}}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
