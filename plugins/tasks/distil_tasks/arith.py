"""Exact arithmetic on short expressions: worked steps and the ``expr = value`` claims in text.

Only numbers, parentheses and ``+ - * / // %`` (and ``**`` with a small exponent) are
evaluated, with :class:`fractions.Fraction`, so nothing in a response is ever executed.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from typing import Optional

_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
}
# A claim is ``expression = value``: the value is matched after each ``=`` and the expression
# read backwards from it (see :func:`claims`), so a long response costs linear time.
_CLAIMED = re.compile(r"=\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?)")
_EXPR_CHARS = frozenset("0123456789.()+-*/%x× ")
MAX_CHARS = 80
# Minus signs a response may write: ASCII, U+2212 (typeset minus), small and fullwidth hyphen-minus.
MINUS = "-\u2212\ufe63\uff0d"
SIGNS = MINUS + "+\uff0b"
_SIGN_MAP = str.maketrans({ch: "-" for ch in MINUS[1:]} | {"\uff0b": "+"})
# A plain number: ``12``, ``-3.5``, ``.5``, ``1,234`` (commas only as thousands separators),
# ``1e5`` and ``3/4``. Exponents are bounded: ``1e999999999`` is no answer worth computing.
_PLAIN = re.compile(r"([-+]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d{1,4}))?(?:/(\d+))?")
MAX_EXPONENT = 400


def evaluate(expr: str) -> Optional[Fraction]:
    """The exact value of an arithmetic expression, or None when it is not one (or divides by 0)."""
    expr = expr.replace("×", "*").replace("x", "*").replace(",", "").strip()
    if not expr or len(expr) > MAX_CHARS:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
        return _eval(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError, OverflowError, RecursionError):
        return None


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > 8:
                raise ValueError("exponent")
            return left**int(right)
        op = _OPS.get(type(node.op))
        if op is not None:
            return op(left, right)
    raise ValueError("not arithmetic")


def number(text: str) -> Optional[Fraction]:
    """A plain number: ``12``, ``-3.5``, ``−3`` (U+2212), ``.5``, ``1,000``, ``1e5``, ``3/4``; else None.

    A comma counts only as a thousands separator: ``1,2`` is a pair, not twelve, so it is no
    plain number (the caller compares it as a list)."""
    match = _PLAIN.fullmatch(text.strip().translate(_SIGN_MAP))
    if match is None:
        return None
    sign, digits, exponent, denominator = match.groups()
    if exponent is not None and abs(int(exponent)) > MAX_EXPONENT:
        return None
    try:
        value = Fraction(digits.replace(",", "")) * Fraction(10) ** int(exponent or 0)
        if denominator is not None:
            value /= int(denominator)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if sign == "-" else value


def show(value: Fraction) -> str:
    """A value as a person writes it: ``12``, ``-3``, ``2.5``, ``1/3``."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = float(value)
    if Fraction(str(round(decimal, 6))) == value:
        return f"{decimal:g}"
    return f"{value.numerator}/{value.denominator}"


def claims(text: str) -> list[tuple[str, str]]:
    """Every ``expression = number`` written in ``text`` (an arithmetic expression on the left).

    The expression is the run of arithmetic characters before the ``=`` (ending in a digit or
    ``)``), read backwards from it: no further than the previous claim or the previous ``=``, so
    every character is read a bounded number of times however long the response is."""
    out = []
    floor = 0  # the end of the previous claim: an expression starts after it
    for match in _CLAIMED.finditer(text):
        end = match.start()
        while end > floor and text[end - 1].isspace():
            end -= 1
        if end == floor or text[end - 1] not in "0123456789)":
            continue
        start = end
        while start > floor and text[start - 1] in _EXPR_CHARS:
            start -= 1
        floor = match.end()
        expr = text[start:end].strip().lstrip(")").strip()
        if any(ch.isdigit() for ch in expr) and any(op in expr for op in "+-*/%x×") and evaluate(expr) is not None:
            out.append((expr, match.group(1)))
    return out


def first_wrong_claim(text: str) -> Optional[tuple[str, str, str]]:
    """(expression, claimed value, true value) of the first wrong ``expr = value`` in ``text``."""
    for expr, claimed in claims(text):
        truth, said = evaluate(expr), number(claimed)
        if truth is not None and said is not None and truth != said:
            return expr, claimed, show(truth)
    return None
