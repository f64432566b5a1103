"""What a failed SQLite call on the corrections store means, and the error that says so.

Every SQLite failure leaves the store as a :class:`~distil_core.DistilError` naming the file
and what to do: a reviewer, an import or a training run should never die on a raw ``sqlite3``
traceback. The functions here tell the failures apart (the write lock held too long, a
damaged file, text that is not UTF-8, a row that is not an entry, the disk refusing a write)
and word each one with its remedy, such as the commands that recover a damaged store.
"""

from __future__ import annotations

import shlex
import sqlite3
from typing import Any

from distil_core import DistilError

from .location import ENV_DB
from .records import short_repr
from .schema import COLUMNS

_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_CANTOPEN = 5, 6, 11, 14


class StoreBusyError(DistilError):
    """Another process held the store's write lock past ``busy_timeout_s``."""


def is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == _SQLITE_CORRUPT) or "malformed" in str(exc)


def is_undecodable(exc: BaseException) -> bool:
    """Python's sqlite3 could not decode a stored text as UTF-8 (it has no SQLite error code)."""
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("Could not decode to UTF-8")


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, by SQLite's error code (Python 3.11 and later), else by the
    start of SQLite's own message: never "locked" anywhere in the text, which a path such as
    ``/data/unlocked/`` would match."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return str(exc).startswith(("database is locked", "database table is locked", "database schema is locked"))


def is_cantopen(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF == _SQLITE_CANTOPEN if code is not None else str(exc).startswith("unable to open")


def busy_error(path: str, busy_timeout_s: float, exc: Exception) -> StoreBusyError:
    return StoreBusyError(
        f"The corrections store {path} stayed locked by another process for {busy_timeout_s:g} s "
        f"({exc}); try again when the other writer is done."
    )


def recovery(path: str) -> str:
    """The ways to go on from the damaged store at ``path``: recover what it holds, or start
    again from the last export."""
    path, out = shlex.quote(path), shlex.quote(path + ".recovered")
    return (
        f"recover what it still holds into a new file, `sqlite3 {path} .recover | sqlite3 {out}` "
        f"(if your sqlite3's .recover fails: `sqlite3 {path} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 {out}`), "
        f"and point --db / the `db` option (or ${ENV_DB}) at it; or move {path} aside and import your last "
        f"export with `distil corrections import FILE --db {path}`."
    )


def damaged_error(path: str, cause: object) -> DistilError:
    return DistilError(f"The corrections store {path} is damaged ({cause}); nothing was changed. To continue, "
                       + recovery(path))


def call_error(path: str, exc: sqlite3.Error, doing: str) -> DistilError:
    """The error for a failed SQLite call that is neither a lock, damage nor undecodable text:
    an entry the table refused, or the disk refusing to be read or written."""
    if isinstance(exc, sqlite3.IntegrityError):
        return DistilError(f"The corrections store {path} refused the entry ({exc}); nothing was changed.")
    check = "has free space and that the file and its folder are writable" if doing != "read" else \
        "is mounted and that the file is readable"
    return DistilError(
        f"Could not {doing} the corrections store {path} ({exc}); nothing was changed. Check that the disk "
        f"{check}, then try again."
    )


def unreadable_error(path: str, rowid: int, entry_id: Any, problem: str) -> DistilError:
    """The error for a stored row that is not an entry: its row and id, the field and what
    is wrong with it, and the sqlite3 command that shows it."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode("utf-8", "backslashreplace")
    show = f'sqlite3 {shlex.quote(path)} "SELECT * FROM corrections WHERE rowid = {rowid}"'
    return DistilError(
        f"The corrections store {path} holds an entry that cannot be read: row {rowid} (id "
        f"{short_repr(entry_id)}), {' '.join(problem.split())}. Fix or delete that row with the sqlite3 tool "
        f"(`{show}` shows it), then try again."
    )


def undecodable_error(path: str, db: sqlite3.Connection, exc: sqlite3.Error) -> DistilError:
    """The error for a read on ``db`` that met text which is not UTF-8 (written by another tool):
    Python's sqlite3 gives up on the whole query, naming neither the row nor the entry, so
    the table is read again as bytes to find the first such value."""
    db.text_factory = bytes
    try:
        for row in db.execute(f"SELECT rowid, {', '.join(COLUMNS)} FROM corrections"):
            for name, value in zip(COLUMNS, row[1:]):
                try:
                    if isinstance(value, bytes):
                        value.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return unreadable_error(path, row[0], row[1], f"field {name!r}: is not UTF-8 text (byte "
                                                                  f"0x{value[bad.start]:02x} at offset {bad.start})")
    except sqlite3.Error:
        pass  # the error being reported says more
    finally:
        db.text_factory = str
    return DistilError(f"The corrections store {path} holds text that is not UTF-8 ({exc}); nothing was "
                       "changed. Fix that value with the sqlite3 tool, then try again.")
