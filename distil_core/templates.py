"""``str.format`` templates from config files, checked when the config loads.

Templates are rendered mid-run (the expert's context, a self-evaluation prompt), so a typo
(``{feedbak}``), a literal brace or a missing variable would otherwise surface as a ``KeyError``
at the first step that renders one, or silently drop what the variable carries. The core's
context templates and the self_eval plugin's critique template are checked here.
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping, Optional, Sequence

from distil_core.errors import ConfigError, did_you_mean

_NAME = re.compile(r"[^.\[]*")
_NUMBER = re.compile(r"\d+")

MAX_FORMAT_CHARS = 10_000
"""What the widths and precisions in a template's format specs may add up to, in characters.

A prompt is text a model reads: a spec such as ``{response:>20}`` or ``{response:.2000}`` is
plausible, one of ``>100000000000`` is a mistake that would allocate that much at every
rendering (and at the check's trial rendering, a MemoryError). Every number in a spec is
counted, so the check never renders more than this plus the template and its sample values."""


def check_format_template(
    text: Any,
    variables: Mapping[str, str],
    where: str,
    *,
    required: Sequence[str] = (),
    unavailable: Optional[Mapping[str, str]] = None,
    sample: Optional[Mapping[str, Any]] = None,
    example: str = "",
    render_hint: str = "",
) -> list[str]:
    """The variables a ``str.format`` template uses, in order; :class:`ConfigError` naming the
    first problem.

    Templates come from config files and are rendered mid-run, so a typo (``{feedbak}``), a
    literal brace or a missing variable would otherwise surface as a ``KeyError`` at the first
    step that renders one, or silently drop what the variable carries. Checked here, once, at
    load time: ``variables`` maps each valid name to what it holds; every name in ``required``
    must be used; ``unavailable`` names are refused with their reason ("{name} is not available
    <reason>"); a format spec must be fixed text (no ``{field}`` inside it) whose widths and
    precisions stay within :data:`MAX_FORMAT_CHARS`, so that the check and every rendering
    allocate little; a trial rendering with ``sample`` (default: ``"x"`` for every variable) catches
    format specs the values cannot take, and ``render_hint`` follows that error. ``where``
    starts each message. The self_eval plugin's critique template is checked here too.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where} must be a non-empty string with {{variables}}, for example {example!r}.")
    try:
        fields = _fields(text)
    except ValueError as exc:
        raise ConfigError(
            f"{where}: braces do not pair: {_brace_problem(text) or exc}. Write a variable as "
            "{name} and a literal brace as {{ or }}."
        ) from None
    used: list[str] = []
    budget = MAX_FORMAT_CHARS
    for field, conversion, spec in fields:
        name = _field_name(field, variables, where, unavailable or {})
        if name not in used:
            used.append(name)
        budget = _check_spec(field, conversion, spec, where, budget)
    for name in required:
        if name not in used:
            raise ConfigError(
                f"{where} does not use {{{name}}}, so {variables[name]} would never be shown; "
                f"put {{{name}}} where it belongs, for example {example!r}."
            )
    try:
        text.format(**(sample if sample is not None else {name: "x" for name in variables}))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ConfigError(f"{where} cannot be rendered: {exc}.{' ' + render_hint if render_hint else ''}") from None
    return used


def _field_name(field: str, variables: Mapping[str, str], where: str, unavailable: Mapping[str, str]) -> str:
    """The variable a replacement field names, or :class:`ConfigError` saying why it may not."""
    name = _NAME.match(field).group(0)  # type: ignore[union-attr]
    valid = ", ".join(sorted(variables))
    if not name or name.isdigit():
        raise ConfigError(
            f"{where}: {{{field}}} is a positional placeholder; name a variable instead, for "
            f"example {{{next(iter(variables))}}}. Valid: {valid}."
        )
    if name in unavailable:
        raise ConfigError(f"{where}: {{{name}}} is not available {unavailable[name]}. Valid: {valid}.")
    if name not in variables:
        literal = "" if name.isidentifier() else " Write a literal brace as {{ or }}."
        raise ConfigError(f"{where} uses unknown variable {{{name}}}.{did_you_mean(name, variables)}{literal}")
    if name != field:
        raise ConfigError(
            f"{where}: {{{field}}} reaches into {{{name}}}; only plain variable names are "
            f"allowed ({{{name}}} is {variables[name]})."
        )
    return name


def _check_spec(field: str, conversion: Optional[str], spec: str, where: str, budget: int) -> int:
    """What is left of ``budget`` (characters of width and precision, :data:`MAX_FORMAT_CHARS`)
    after this field's format spec; :class:`ConfigError` for a spec that holds a replacement
    field, or whose numbers exceed what is left.

    A nested field (``{response:{score}}``) makes the format depend on a value: a trial rendering
    with sample values passes, and the real ones then render the text empty, or fail mid-run,
    depending on what they hold. So a spec must be written out."""
    shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    if "{" in spec or "}" in spec:
        raise ConfigError(
            f"{where}: {shown} has a replacement field inside its format spec; a format spec must be written out "
            f"(for example {{{field}:>20}}), since a value put there would change the format at every rendering "
            "(an empty text, or an error mid-run). Write the spec as fixed text, or leave it out."
        )
    for digits in _NUMBER.findall(spec):
        asked = int(digits) if len(digits) <= 12 else None  # never int() thousands of digits
        if asked is not None and asked <= budget:
            budget -= asked
            continue
        if asked is None or asked > MAX_FORMAT_CHARS:
            size = f"{asked:,} characters" if asked is not None else f"a {len(digits):,}-digit number of characters"
            said = f"asks for {size} of width or precision"
        else:
            said = (f"asks for {asked:,} characters of width or precision, which brings the template's widths and "
                    f"precisions to {MAX_FORMAT_CHARS - budget + asked:,}")
        raise ConfigError(
            f"{where}: {shown} {said}; the widths and precisions in a template add up to at most "
            f"{MAX_FORMAT_CHARS:,} characters (a prompt is text a model reads). Use smaller numbers, for example "
            f"{{{field}:>20}}."
        )
    return budget


def _fields(text: str) -> list[tuple[str, Optional[str], str]]:
    """(field name, conversion, format spec) of every replacement field, in order."""
    return [(field, conversion, spec or "") for _, field, spec, conversion in string.Formatter().parse(text)
            if field is not None]


def _brace_problem(text: str) -> str:
    """Where the braces stop pairing, as a reader would count characters (1-based)."""
    depth, opened, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if depth == 0:
            if char in "{}" and text[i + 1 : i + 2] == char:
                i += 2
                continue
            if char == "}":
                return f"a lone '}}' at character {i + 1} (near {_near(text, i)})"
            if char == "{":
                depth, opened = 1, i
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        i += 1
    if depth:
        return f"the '{{' at character {opened + 1} is never closed (near {_near(text, opened)})"
    return ""


def _near(text: str, at: int) -> str:
    return repr(text[max(0, at - 20) : at + 20])


__all__ = ["check_format_template"]
