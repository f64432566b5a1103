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
_CLAIM = re.compile(r"([0-9.()+\-*/%x× ]*[0-9)])\s*=\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?)")
MAX_CHARS = 80


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
    """A plain number: ``12``, ``-3.5``, ``1,000``, ``3/4``; else None."""
    text = text.strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def show(value: Fraction) -> str:
    """A value as a person writes it: ``12``, ``-3``, ``2.5``, ``1/3``."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = float(value)
    if Fraction(str(round(decimal, 6))) == value:
        return f"{decimal:g}"
    return f"{value.numerator}/{value.denominator}"


def claims(text: str) -> list[tuple[str, str]]:
    """Every ``expression = number`` written in ``text`` (an arithmetic expression on the left)."""
    out = []
    for match in _CLAIM.finditer(text):
        expr = match.group(1).strip().lstrip(")").strip()
        if any(ch.isdigit() for ch in expr) and any(op in expr for op in "+-*/%x×") and evaluate(expr) is not None:
            out.append((expr, match.group(2)))
    return out


def first_wrong_claim(text: str) -> Optional[tuple[str, str, str]]:
    """(expression, claimed value, true value) of the first wrong ``expr = value`` in ``text``."""
    for expr, claimed in claims(text):
        truth, said = evaluate(expr), number(claimed)
        if truth is not None and said is not None and truth != said:
            return expr, claimed, show(truth)
    return None
