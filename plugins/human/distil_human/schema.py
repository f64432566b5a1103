"""The corrections store's tables: their SQL, their columns, and how each version is recognised and upgraded.

The ``meta`` table records the schema version. A version is a claim about which columns the
``corrections`` table holds, and a file changed outside distil-human (or assembled by hand)
can make it false, so the functions here check it: a store written by a newer version of this
plugin, a database that is not a store, or a table lacking a column its version has is
refused by name, with what to do, rather than misread or failing later with SQLite's "no such
column" (which would be taken for a disk fault). An upgrade adds only the columns a store
lacks, so one upgraded by hand, or half-way by a copy that failed, is finished rather than
refused.

These functions run SQL on a connection the caller holds in a transaction;
:class:`~distil_human.store.CorrectionStore` decides when to read and when to take the write lock.
"""

from __future__ import annotations

import shlex
import sqlite3
from typing import Optional, Sequence

from distil_core import ConfigError

SCHEMA_VERSION = 2

_SCHEMA = (
    """CREATE TABLE corrections (
        id TEXT PRIMARY KEY,
        problem_id TEXT NOT NULL,
        response_hash TEXT,
        kind TEXT NOT NULL CHECK (kind IN ('correction', 'solution')),
        text TEXT NOT NULL,
        author TEXT NOT NULL,
        created_at TEXT NOT NULL,
        run_dir TEXT,
        step INTEGER,
        response_text TEXT,
        verdict TEXT,
        verified INTEGER
    )""",
    "CREATE INDEX corrections_by_response ON corrections (problem_id, response_hash)",
)
COLUMNS = ("id", "problem_id", "response_hash", "kind", "text", "author", "created_at",
           "run_dir", "step", "response_text", "verdict", "verified")
"""The ``corrections`` table's columns, in the order of a stored row."""

_MIGRATIONS: dict[int, Sequence[tuple[str, str]]] = {  # version v → the columns it adds to version v - 1
    2: (("verified", "INTEGER"),),
}
_ADDED_IN = {name: version for version, added in _MIGRATIONS.items() for name, _ in added}
_NULLABLE = {"response_hash": "TEXT", "run_dir": "TEXT", "step": "INTEGER", "response_text": "TEXT", "verdict": "TEXT",
             "verified": "INTEGER"}  # the columns that can be added to a table holding entries, with their types

SELECT = f"SELECT {', '.join(COLUMNS)} FROM corrections"
INSERT = f"INSERT INTO corrections ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def table_columns(db: sqlite3.Connection) -> set[str]:
    """The columns of the ``corrections`` table; empty when there is no such table."""
    return {row[1] for row in db.execute("PRAGMA table_info(corrections)")}


def stored_version(db: sqlite3.Connection, path: str) -> Optional[int]:
    """The schema version of the store at ``path`` (1 to SCHEMA_VERSION), or None for a database
    with no tables."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        if tables:
            raise ConfigError(
                f"{path} is a SQLite database but not a corrections store (it has tables "
                f"{', '.join(sorted(tables))} and no 'meta' table); choose another --db / `db` path."
            )
        return None
    row = db.execute("SELECT value FROM meta WHERE key = ?", ("schema_version",)).fetchone()
    text = str(row[0]) if row else ""
    version = int(text) if text.isascii() and text.isdigit() else 0  # "²".isdigit(), but int() refuses it
    if version < 1:
        raise ConfigError(f"{path}: the 'meta' table has no valid schema_version (it holds {text[:40]!r}); "
                          f"the store is damaged. Move it aside and import your last export with "
                          f"`distil corrections import FILE --db {shlex.quote(path)}`.")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has schema version {version}, but this distil-human reads versions up to "
            f"{SCHEMA_VERSION}: a newer distil-human wrote it. Upgrade distil-human "
            "(pip install -U distil-human), or use another store with --db / the `db` option."
        )
    return version


def create_tables(db: sqlite3.Connection) -> None:
    """Make a new (or empty) file a store of the current version."""
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in _SCHEMA:
        db.execute(statement)
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema_version", str(SCHEMA_VERSION)))


def upgrade(db: sqlite3.Connection, version: int) -> None:
    """Bring a store of ``version`` (its layout checked) to SCHEMA_VERSION, one version at a time."""
    for target in range(version + 1, SCHEMA_VERSION + 1):
        present = table_columns(db)
        for name, kind in _MIGRATIONS[target]:
            if name not in present:  # a store upgraded by hand, or half-way by a copy that failed
                db.execute(f"ALTER TABLE corrections ADD COLUMN {name} {kind}")
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(target), "schema_version"))


def check_layout(db: sqlite3.Connection, path: str, version: int) -> None:
    """ConfigError unless the ``corrections`` table has every column a store of ``version``
    has (more are allowed: a version-1 store may already have a later one).

    The ``meta`` table's version is a claim, and a file changed outside distil-human (or
    assembled by hand) can make it false. Checked when the store is opened, so such a file
    is refused by name with what is wrong and what to do, before a run starts; otherwise
    every read would fail later with SQLite's "no such column", taken for a disk fault.
    """
    present = table_columns(db)
    if not present:
        raise ConfigError(
            f"{path} is not a complete corrections store: its 'meta' table says schema version {version}, "
            "but it has no 'corrections' table, so it holds no entries (it was changed outside distil-human). "
            "Move it aside (the next `distil review` or `distil corrections import` "
            "makes a new store there), or choose another --db / `db` path."
        )
    missing = [c for c in COLUMNS if c not in present and _ADDED_IN.get(c, 1) <= version]
    if not missing:
        return
    lacks = f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if all(c in _NULLABLE for c in missing):
        added = "; ".join(f"ALTER TABLE corrections ADD COLUMN {c} {_NULLABLE[c]}" for c in missing)
        fix = f"Add {'them' if len(missing) > 1 else 'it'} with `sqlite3 {shlex.quote(path)} \"{added}\"`"
    else:
        fix = "Its entries cannot be read without " + ("them" if len(missing) > 1 else "it")
        fix += f": move it aside and import your last export with `distil corrections import FILE --db " \
               f"{shlex.quote(path)}`"
    raise ConfigError(
        f"{path} is not a complete corrections store: its 'corrections' table {lacks}, which schema version "
        f"{version} has (it was changed outside distil-human); nothing was changed. {fix}, or choose another "
        "--db / `db` path."
    )
