"""A YAML document as a config reads it (a config file, a ``--set`` value, a saved config.yaml):
plain data only, without the ways a few bytes of YAML can blow up or mislead.

Aliases that expand past :data:`ALIAS_BUDGET` values (a "billion laughs" document) or refer to
themselves, a key given twice (YAML keeps the last without a word), values that are not plain
data or are nested past :data:`MAX_DEPTH`, and numbers that are not finite are each refused with
a message naming where; :func:`shown` cuts what a message quotes.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import yaml

from distil_core.errors import ConfigError

__all__ = ["SHOWN", "ALIAS_BUDGET", "MAX_DEPTH", "PLAIN", "shown", "read_yaml", "duplicate_key", "check_plain",
           "alias_expansion", "check_finite", "yaml_problem"]


SHOWN = 200
"""How many characters of a value an error message shows (a config value can be megabytes)."""

ALIAS_BUDGET = 100_000
"""How many values YAML aliases may add to a document beyond its own: anchors for shared
settings stay usable, while nine aliases of nine aliases of … (a "billion laughs" document of a
few hundred bytes) expand to billions of values that every later step — validation, the error
that shows the value, config.yaml — would copy out in full."""


def shown(value: Any, *, plain: bool = False) -> str:
    """``repr(value)`` (or ``str`` with ``plain``) cut to :data:`SHOWN` characters, for messages."""
    if isinstance(value, (list, dict, tuple)) and len(value) > SHOWN:  # never repr a huge container whole
        return f"<a {type(value).__name__} of {len(value)} items>"
    try:
        text = str(value) if plain else repr(value)
    except RecursionError:
        return f"<a nested {type(value).__name__}>"
    return text if len(text) <= SHOWN else text[:SHOWN] + f"… ({len(text)} characters)"


def read_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``, refusing a document whose aliases expand past :data:`ALIAS_BUDGET`
    values or refer to themselves (measured on the parsed node graph, before anything is built)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        distinct, expanded = alias_expansion(node)
        if expanded == math.inf:
            raise ConfigError(f"{where}: a YAML alias (*name) refers to a value that contains it; a config "
                              "cannot be recursive.")
        if expanded - distinct > ALIAS_BUDGET:
            raise ConfigError(
                f"{where}: YAML aliases (*name) expand to more than {ALIAS_BUDGET} values beyond the document's "
                f"{distinct}; write the values out, or refer to fewer anchors.")
        twice = duplicate_key(node)
        if twice is not None:
            key, first, again = twice
            raise ConfigError(f"{where}: line {again}: key {shown(key)} appears twice in one mapping (first at line "
                              f"{first}); YAML would keep only the last, silently: write it once.")
        data = loader.construct_document(node)
        check_plain(data, where)
        return data
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply to read.") from None
    finally:
        loader.dispose()


def duplicate_key(root: Any) -> Optional[tuple[str, int, int]]:
    """(key, first line, repeated line) of the first mapping that holds a key twice, or None.
    Merge keys (``<<``) may repeat. Iterative, each node once: documents can be deep or aliased."""
    done: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in done:
            continue
        done.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    return key.value, first[(key.tag, key.value)], line
                first[(key.tag, key.value)] = line
        stack.extend(_children(node))
    return None


PLAIN = (type(None), bool, int, float, str, list, dict)
"""What a config value may be: what JSON holds. YAML also reads dates (``2024-01-01``), binary
(``!!binary``) and sets (``!!set``), which a run's saved config.yaml would write back as text."""


def check_plain(data: Any, where: str, path: str = "") -> None:
    """Refuse a value that is not a JSON value (a YAML date, binary or set), or one nested deeper
    than :data:`MAX_DEPTH`, naming its key."""
    stack = [(data, path, 0)]
    while stack:
        value, at, depth = stack.pop()
        if not isinstance(value, PLAIN):
            raise ConfigError(f"{where}: {shown(at, plain=True) if at else 'the value'} is a YAML {type(value).__name__} "
                              f"({shown(value, plain=True)}); quote it to give it as text.")
        if depth > MAX_DEPTH and isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: {shown(at, plain=True)} is nested more than {MAX_DEPTH} levels deep; no "
                              "option takes such a value (flatten it).")
        if isinstance(value, dict):
            stack.extend((v, f"{at}.{k}" if at else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value))


MAX_DEPTH = 32
"""How deep a config value may nest: far past any option's need, and short of the depth at which
writing config.yaml (pydantic's serialiser) or reading it back would fail."""


def alias_expansion(root: Any) -> tuple[int, float]:
    """(distinct nodes, nodes once every alias is expanded) of a composed YAML node graph; a
    node that contains itself expands without end (inf). Iterative: documents can be deep."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = _children(node)
        if finished:
            open_nodes.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            continue
        if id(node) in size:
            continue
        if any(id(c) in open_nodes for c in children) or id(node) in open_nodes:
            return len(size), math.inf
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    return len(size), size[id(root)]


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_finite(data: Any, where: str, path: str = "") -> None:
    """Refuse NaN and ±inf anywhere in the config, plugin options included (YAML reads ``.nan``,
    ``.inf`` and ``1.0e999`` as such floats), naming the key."""
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{where}: {shown(path or '(top level)', plain=True)} is {data}; every number in a "
                          "config must be finite.")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        sub = f"{path}[{key}]" if isinstance(data, list) else (f"{path}.{key}" if path else str(key))
        check_finite(value, where, sub)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, on one line (PyYAML's own message spans several, with a code snippet)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = ", ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
    return f"{where}: {what or ' '.join(str(exc).split())}."
