"""The shape of the code: layering, cycles, sizes, and what is public.

- ``lint-imports`` checks the contracts in pyproject.toml (the layers of ``distil_core``, and
  that ``distil_core`` never imports a bundled plugin or the sandbox);
- no import cycle inside ``distil_core`` (imports under ``if TYPE_CHECKING:`` are not run, so
  they do not count, as in the import-linter contracts);
- no file in ``distil_core`` over 400 lines, no function over 60;
- no private name (``_name``) is used outside the module that defines it, in ``distil_core``,
  the bundled plugins and the sandbox;
- the bundled plugins import only ``distil_core``'s public names: ``distil_core.__all__``, a
  subpackage's ``__all__``, and ``distil_core.io`` / ``distil_core.retry`` / ``distil_core.run_files`` /
  ``distil_core.testing``.

Each test reads the source (and, for the public names, the ``__all__`` lists); each failure
lists every offender with its file and line.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = "distil_core"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# Modules a plugin may import anything public from, beside the __all__ lists.
OPEN_MODULES = {f"{CORE}.io", f"{CORE}.retry", f"{CORE}.run_files", f"{CORE}.testing"}


def _package_roots() -> dict[str, Path]:
    """Top-level package name → its directory, for distil_core, the sandbox and every bundled
    plugin (``plugins/<name>/<package>/``)."""
    roots = {CORE: REPO / CORE, "distil_sandbox": REPO / "sandbox" / "distil_sandbox"}
    for init in sorted(REPO.glob("plugins/*/*/__init__.py")):
        package = init.parent
        if package.name != "tests" and not package.name.endswith(".egg-info"):
            roots[package.name] = package
    return roots


ROOTS = _package_roots()
PLUGINS = sorted(set(ROOTS) - {CORE, "distil_sandbox"})


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _source_files(package: str) -> list[Path]:
    return sorted(ROOTS[package].rglob("*.py"))


def _module_name(path: Path) -> str:
    """The dotted module name of a file inside one of ROOTS (a package's ``__init__`` is the
    package itself)."""
    for package, root in ROOTS.items():
        if path.is_relative_to(root):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is in none of {sorted(ROOTS)}")


def _module_path(module: str) -> Path | None:
    """The file of a module in one of ROOTS, or None when there is no such module."""
    package, _, rest = module.partition(".")
    if package not in ROOTS:
        return None
    base = ROOTS[package].joinpath(*rest.split(".")) if rest else ROOTS[package]
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_module(module: str) -> bool:
    return _module_path(module) is not None


def _is_package(module: str) -> bool:
    path = _module_path(module)
    return path is not None and path.name == "__init__.py"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_distil(module: str) -> bool:
    return module.partition(".")[0] in ROOTS


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@dataclass(frozen=True)
class Use:
    """One use of ``name`` from the distil module ``module``, at ``where`` (file:line)."""

    where: str
    module: str
    name: str
    statement: str


def _uses(path: Path) -> list[Use]:
    """Every name this file takes from a distil module: ``from M import name``,
    ``import M`` (a use of M's last component from its parent), and ``alias.name`` where
    alias is bound to a distil module by an import in this file."""
    tree = _parse(path)
    importer = _module_name(path)
    is_package = path.name == "__init__.py"
    where = lambda node: f"{_rel(path)}:{node.lineno}"  # noqa: E731
    uses: list[Use] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_distil(alias.name):
                    continue
                parent, _, last = alias.name.rpartition(".")
                if parent:
                    uses.append(Use(where(node), parent, last, f"import {alias.name}"))
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, is_package)
            if not _is_distil(module):
                continue
            for alias in node.names:
                if alias.name == "*":
                    continue
                uses.append(Use(where(node), module, alias.name, f"from {module} import {alias.name}"))
                if _is_module(f"{module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in aliases:
            continue
        module = aliases[base.id]
        chain.reverse()
        for i, attr in enumerate(chain):
            if i == len(chain) - 1 or not _is_module(f"{module}.{attr}"):
                uses.append(Use(where(node), module, attr, ast.unparse(node)))
                break
            module = f"{module}.{attr}"
    return list(dict.fromkeys(uses))


def _private_use(use: Use, importer: str) -> str | None:
    """Why this use reaches a private name outside its module, or None when it does not.

    Every private component of ``module.name`` is checked: a private name belongs to the
    module that defines it; a private submodule to its package (whose modules may import it)."""
    parts = [*use.module.split("."), use.name]
    for i, part in enumerate(parts):
        if not _is_private(part):
            continue
        owner, target = ".".join(parts[:i]), ".".join(parts[: i + 1])
        if importer == owner or (_is_module(target) and importer.startswith(owner + ".")):
            continue
        kind = "private module" if _is_module(target) else "private name"
        return f"{use.where}: {kind} {target} used in {importer} ({use.statement})"
    return None


def test_lint_imports_contracts_are_kept():
    script = Path(sys.executable).with_name("lint-imports")
    command = str(script) if script.exists() else shutil.which("lint-imports")
    assert command, "lint-imports not found: install the test extra (pip install -e '.[test]')"
    result = subprocess.run(
        [command, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"


def _cycles(graph, modules: set[str]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing
    itself), by Tarjan's algorithm, iteratively."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_through(graph, component: list[str]) -> str:
    """One import cycle inside a strongly connected component, with line numbers."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        following = []
        for node in frontier:
            for child in sorted(graph.find_modules_directly_imported_by(node) & members):
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    path = [start]
    while True:
        path.append(previous[path[-1]])
        if path[-1] == start:
            break
    path.reverse()
    steps = [path[0]]
    for importer, imported in zip(path, path[1:]):
        lines = sorted({d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)})
        steps.append(f"{imported} (l.{','.join(map(str, lines))})")
    return " -> ".join(steps)


def test_no_import_cycle_in_distil_core():
    import grimp

    # as lint-imports reads pyproject.toml: `if TYPE_CHECKING:` imports are not run
    graph = grimp.build_graph(CORE, cache_dir=None, exclude_type_checking_imports=True)
    modules = {m for m in graph.modules if m == CORE or m.startswith(CORE + ".")}
    assert f"{CORE}.training.trainer" in modules, "the import graph misses distil_core's modules"
    cycles = [
        f"{', '.join(component)}\n    e.g. {_cycle_through(graph, component)}"
        for component in _cycles(graph, modules)
    ]
    assert not cycles, "import cycles in distil_core:\n  " + "\n  ".join(cycles)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_distil_core_files_and_functions_are_short():
    files = _source_files(CORE)
    assert len(files) > 20, "distil_core's sources were not found"
    offenders = []
    for path in files:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_FILE_LINES:
            offenders.append(f"{_rel(path)}: {lines} lines (max {MAX_FILE_LINES})")
        for function in _functions(_parse(path)):
            length = function.end_lineno - function.lineno + 1
            if length > MAX_FUNCTION_LINES:
                offenders.append(
                    f"{_rel(path)}:{function.lineno}: {function.name}() is {length} lines "
                    f"(max {MAX_FUNCTION_LINES})"
                )
    assert not offenders, "too long:\n  " + "\n  ".join(offenders)


def test_private_names_stay_in_their_module():
    assert set(PLUGINS) >= {"distil_tasks", "distil_tools"}, f"bundled plugins not found: {PLUGINS}"
    offenders = []
    for package in ROOTS:
        for path in _source_files(package):
            importer = _module_name(path)
            for use in _uses(path):
                reason = _private_use(use, importer)
                if reason:
                    offenders.append(reason)
    assert not offenders, "private names used outside their module:\n  " + "\n  ".join(offenders)


def _public_names(module: str) -> set[str]:
    return set(getattr(importlib.import_module(module), "__all__", ()))


def _public_hint(use: Use, public: dict[str, set[str]]) -> str | None:
    """None when a plugin's use of a distil_core name is public; otherwise where the name is
    public, if anywhere."""
    target = f"{use.module}.{use.name}"
    if use.module == CORE and (use.name in public[CORE] or target in OPEN_MODULES or _is_package(target)):
        return None
    if use.module in OPEN_MODULES and not _is_private(use.name):
        return None
    if use.module != CORE and use.name in public.get(use.module, ()):
        return None
    exporters = [m for m, names in sorted(public.items()) if use.name in names]
    return f"public in {exporters[0]}" if exporters else "not public"


def test_plugins_import_only_public_distil_core_names():
    assert PLUGINS, "no bundled plugin package found under plugins/"
    surfaces = sorted(_module_name(init) for init in ROOTS[CORE].rglob("__init__.py"))
    public = {module: _public_names(module) for module in surfaces}
    assert {"Problem", "hookimpl"} <= public[CORE], f"{CORE}.__all__ is {sorted(public[CORE])}"
    offenders: dict[tuple[str, str, str], list[str]] = {}
    for package in PLUGINS:
        for path in _source_files(package):
            for use in _uses(path):
                if use.module.partition(".")[0] != CORE:
                    continue
                hint = _public_hint(use, public)
                if hint:
                    offenders.setdefault((use.where, use.module, hint), []).append(use.name)
    lines = [f"{where}: {module}.{{{', '.join(names)}}} ({hint})" for (where, module, hint), names in offenders.items()]
    assert not lines, f"bundled plugins use non-public {CORE} names:\n  " + "\n  ".join(lines)
