"""Every relative link in the project's Markdown resolves: the file exists, and a ``#anchor``
names a heading of the Markdown file it points into (GitHub's heading slugs). Every test the
docs cite as evidence (``tests/test_x.py::test_name``, or ``::test_name`` after one) exists.

The docs cross-link heavily (results pages, the guide, algorithms.md), and a renamed heading or
test silently breaks a reader's path through them; this walks every tracked ``*.md`` file.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
TEST_REF = re.compile(r"`((?:[\w.-]+/)*tests/[\w/]+\.py)?::(test_\w+|Test\w+)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script,
    digits, ``_``, ``-`` and spaces kept), spaces turned into hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading outside code fences; a repeated slug gets -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", text)):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(root: Path, files: list[str]) -> list[str]:
    """``file: target`` for each relative link in ``files`` (paths under ``root``) whose file is
    missing, or whose anchor names no heading of the Markdown file it points into."""
    broken, cache = [], {}
    for name in files:
        source = root / name
        for match in LINK.finditer(FENCE.sub("", source.read_text(encoding="utf-8"))):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (source.parent / path).resolve() if path else source.resolve()
            if not dest.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                if dest not in cache:
                    cache[dest] = anchors(dest.read_text(encoding="utf-8"))
                if anchor not in cache[dest]:
                    broken.append(f"{name}: {target} (no heading with that anchor)")
    return broken


def missing_tests(root: Path, files: list[str]) -> list[str]:
    """``file: path::name`` for each test a Markdown file in ``files`` cites that its test file
    does not define. A bare ``::name`` refers to the file named last before it."""
    missing = []
    for name in files:
        source, current = root / name, None
        for match in TEST_REF.finditer(source.read_text(encoding="utf-8")):
            current = match.group(1) or current
            if current is None:
                missing.append(f"{name}: ::{match.group(2)} (no test file named before it)")
                continue
            path = next((p for p in (root / current, source.parent / current) if p.is_file()), None)
            defined = path is not None and re.search(
                rf"^\s*(?:async\s+)?(?:def|class)\s+{match.group(2)}\b", path.read_text(encoding="utf-8"), re.M)
            if not defined:
                missing.append(f"{name}: {current}::{match.group(2)}")
    return missing


def tracked_markdown() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the tracked Markdown files")
    out = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    files = tracked_markdown()
    assert any(name == "README.md" for name in files) and len(files) > 10
    assert broken_links(ROOT, files) == []


def test_every_test_the_docs_cite_exists():
    assert missing_tests(ROOT, tracked_markdown()) == []


def test_a_renamed_test_is_reported(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_kept():\n    pass\n", encoding="utf-8")
    (tmp_path / "a.md").write_text(
        "`tests/test_x.py::test_kept`, `::test_renamed`; `file::test` and [::1] are prose.\n", encoding="utf-8")
    assert missing_tests(tmp_path, ["a.md"]) == ["a.md: tests/test_x.py::test_renamed"]


def test_a_missing_file_and_a_renamed_heading_are_both_reported(tmp_path):
    (tmp_path / "a.md").write_text(
        "# Top\n\n## The success weight λ, three seeds\n\n```\n## not a heading\n```\n\n## Top\n\n"
        "[ok](#the-success-weight-λ-three-seeds) [ok](#top-1) [ok](b.md#b-side) [ok](https://x.org/#y)\n"
        "[gone](missing.md) [renamed](b.md#old-name) [fenced](#not-a-heading)\n",
        encoding="utf-8")
    (tmp_path / "b.md").write_text("# B side\n", encoding="utf-8")
    assert broken_links(tmp_path, ["a.md", "b.md"]) == [
        "a.md: missing.md (no such file)",
        "a.md: b.md#old-name (no heading with that anchor)",
        "a.md: #not-a-heading (no heading with that anchor)",
    ]
