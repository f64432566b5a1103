"""The corrections store: one SQLite file shared by reviewers, imports and training runs.

An entry is about a problem (``problem_id``) and, usually, one response to it
(``response_hash`` = ``Rollout.response_hash``); an entry without a response hash is about the
problem as a whole. ``kind`` is ``correction`` (what is wrong with the response) or
``solution`` (a better answer, usable as a demonstration).

Several processes may write at once. The database runs in WAL mode; every write takes the
write lock up front (``BEGIN IMMEDIATE``) and waits for it up to ``busy_timeout_s`` instead of
failing with "database is locked"; each entry is committed as soon as it is added. The
``meta`` table records the schema version, and a store written by a newer version of this
plugin is refused with a message rather than misread. Opening a store reads that version in a
read transaction and takes the write lock only to create or upgrade the store, so opening one
to read (a training run's feedback source, an export) never waits for a writer. It also checks
that the tables hold the columns that version has (an upgrade adds only what is missing), so a
file changed outside distil-human is refused by name when it is opened, not at the first read;
a row that is not an entry is reported with its row, id and field.

Every SQLite failure leaves this module as a :class:`~distil_core.DistilError` naming the file
and what to do: a reviewer, an import or a training run should never die on a raw
``sqlite3`` traceback. A failed write is rolled back at once, so it never holds the write lock
that other processes are waiting for. A store is checked (``PRAGMA quick_check``) when it is
opened, so a damaged file is reported before anyone types into a review session, with the
ways to recover it.

Each thread talks to the file through its own connection, and no Python lock is held while
SQLite waits for the write lock: one save waiting for another process never holds up the
reads of other threads (the review desk serves several reviewers from a thread pool), and in
WAL mode reads never wait for writes. A store whose file or folder this process cannot write
(read-only media, another user's file) is opened read-only: it can be read and exported, and
a write is refused by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import math
import shlex
import sqlite3
import threading
import time
import re
import urllib.parse
import uuid
import weakref
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from distil_core import ConfigError, DistilError

SCHEMA_VERSION = 2
ENV_DB = "DISTIL_HUMAN_DB"
KINDS = ("correction", "solution")

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
_COLUMNS = ("id", "problem_id", "response_hash", "kind", "text", "author", "created_at",
            "run_dir", "step", "response_text", "verdict", "verified")


def _content(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A stored row's :data:`Correction.CONTENT_FIELDS`."""
    return tuple(row[_COLUMNS.index(name)] for name in Correction.CONTENT_FIELDS)


_MIGRATIONS: dict[int, Sequence[tuple[str, str]]] = {  # version v → the columns it adds to version v - 1
    2: (("verified", "INTEGER"),),
}
_ADDED_IN = {name: version for version, added in _MIGRATIONS.items() for name, _ in added}
_NULLABLE = {"response_hash": "TEXT", "run_dir": "TEXT", "step": "INTEGER", "response_text": "TEXT", "verdict": "TEXT",
             "verified": "INTEGER"}  # the columns that can be added to a table holding entries, with their types
MAX_STEP = 2**63 - 1  # SQLite's INTEGER is a signed 64-bit number
MAX_VERDICT_DEPTH = 32  # a verdict is score, passed, answer: deeper nesting is a broken record
RESPONSE_HASH = r"^[0-9a-f]{8,64}$"
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_CANTOPEN = 5, 6, 11, 14
_TEXT_FIELDS = ("id", "problem_id", "response_hash", "text", "author", "run_dir", "response_text")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")
"""C0 and C1 controls and DEL, but the tab and what ``str.splitlines`` takes for a line break."""
ENTERED = {"entered": True}
"""The validation context of an entry being entered (:meth:`Correction.entered`: the desk, the
terminal review, an import). Its text, which the expert will read, is also checked for control
characters: a NUL or an escape sequence pasted from a terminal is an accident, and some
providers refuse a NUL outright. Entries read back from the store are not checked again, so
that one stored before the check still reads."""


def default_db_path() -> str:
    """``$DISTIL_HUMAN_DB``, else ``~/.local/share/distil/human.sqlite``."""
    return os.environ.get(ENV_DB) or os.path.join(os.path.expanduser("~"), ".local", "share", "distil", "human.sqlite")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Correction(BaseModel):
    """One human entry about a response (or a problem). Also one line of the JSONL format."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1)
    problem_id: str = Field(min_length=1)
    response_hash: Optional[str] = Field(
        default=None, pattern=RESPONSE_HASH, description="None: about the problem as a whole."
    )
    kind: Literal["correction", "solution"]
    text: str
    author: str = ""
    created_at: datetime = Field(default_factory=_now)
    run_dir: Optional[str] = None
    step: Optional[int] = Field(default=None, ge=0, le=MAX_STEP)
    response_text: Optional[str] = None
    verdict: Optional[dict[str, Any]] = Field(default=None, description="score, passed, answer of the response.")
    verified: Optional[bool] = Field(
        default=None, description="For a solution: True when the task's verifier passed it, False when it was "
        "stored although it failed (or could not be checked), None when it was never checked.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        control = _CONTROL.search(value) if info.context == ENTERED else None
        if control:
            raise ValueError(f"holds the control character {ascii(control.group())[1:-1]} at position "
                             f"{control.start()}; this is text the expert reads: remove it (tabs and line "
                             "breaks are kept)")
        return value

    @classmethod
    def entered(cls, data: dict[str, Any]) -> "Correction":
        """A new entry, from a reviewer or a file: validated with the :data:`ENTERED` checks. One
        without an ``id`` gets :meth:`content_id`, so the same entry saved twice (a double click
        on Save, a file of entries without ids imported twice) is stored once."""
        entry = cls.model_validate(data, context=ENTERED)
        if "id" not in data:
            entry.id = entry.content_id()
        return entry

    CONTENT_FIELDS: ClassVar[tuple[str, ...]] = ("problem_id", "response_hash", "kind", "text", "author")
    """What makes two entries the same advice, whenever and from whichever run they were saved."""

    def content_id(self) -> str:
        """An id made from the entry's :data:`CONTENT_FIELDS`, 32 hex digits like a random one."""
        key = json.dumps([getattr(self, name) for name in self.CONTENT_FIELDS], ensure_ascii=False)
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    @field_validator(*_TEXT_FIELDS)
    @classmethod
    def _is_text(cls, value: Optional[str]) -> Optional[str]:
        """A lone UTF-16 surrogate (JSON ``"\\ud800"``, or an undecodable byte smuggled in by
        ``surrogateescape``) is not text: SQLite could not store it, so it is refused here."""
        if value is not None:
            _check_text(value, "")
        return value

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC
            raise ValueError(f"{value.isoformat()} is outside the years 1 to 9999 once converted to UTC") from None

    @field_validator("verdict")
    @classmethod
    def _plain_verdict(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """Checked without recursion, so that a hostile nesting depth is an error, not a crash.

        NaN and infinity are refused: JSON has no such numbers, so an export would write them
        as something else and the entry would not come back as it was stored."""
        if value is None:
            return value
        stack: list[tuple[Any, str, int]] = [(value, "", 1)]
        while stack:
            item, where, depth = stack.pop()
            if isinstance(item, str):
                _check_text(item, where)
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"holds {item!r} at {where or 'the top'}, which is not a finite number (JSON "
                                 "has no NaN or infinity); write a number or null")
            elif isinstance(item, (dict, list)):
                if depth > MAX_VERDICT_DEPTH:
                    raise ValueError(f"nested more than {MAX_VERDICT_DEPTH} levels deep (at {where or 'the top'}); "
                                     "a verdict holds score, passed and answer")
                pairs = item.items() if isinstance(item, dict) else enumerate(item)
                for key, sub in pairs:
                    if isinstance(key, str):
                        _check_text(key, where)
                    stack.append((sub, f"{where}.{key}" if where else str(key), depth + 1))
        return value

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        out["created_at"] = self._stamp()
        return out

    def _stamp(self) -> str:
        return self.created_at.isoformat(timespec="microseconds")

    def _row(self) -> tuple[Any, ...]:
        verdict = json.dumps(self.verdict) if self.verdict is not None else None
        return (self.id, self.problem_id, self.response_hash, self.kind, self.text, self.author,
                self._stamp(), self.run_dir, self.step, self.response_text, verdict, self.verified)

    @classmethod
    def _from_row(cls, row: Sequence[Any]) -> "Correction":
        """The entry a stored row holds; :class:`UnreadableRow` naming the field at fault for a row
        changed outside distil-human (a BLOB for a text, a ``kind`` it does not know, a verdict
        that is not JSON), so that whoever fixes it by hand knows where to look."""
        data = dict(zip(_COLUMNS, row))
        for name, value in data.items():
            if isinstance(value, bytes):
                raise UnreadableRow(f"field {name!r}: holds binary data (a BLOB of {len(value)} bytes), not text")
        if data["verdict"] is not None:
            try:  # a NaN stored by an older distil-human reads back as null, which is what its export wrote
                data["verdict"] = json.loads(data["verdict"], parse_constant=lambda _: None)
            except (ValueError, RecursionError) as exc:
                what = f"{exc.msg} at character {exc.pos + 1}" if isinstance(exc, json.JSONDecodeError) else \
                    type(exc).__name__
                raise UnreadableRow(f"field 'verdict': not valid JSON ({what}; it holds "
                                    f"{_shown(data['verdict'])})") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise UnreadableRow(problems_of(exc, stored=True)) from None


class UnreadableRow(ValueError):
    """A stored row that is not an entry; the message names the field and what is wrong with it."""


def problems_of(exc: ValidationError, stored: bool = False) -> str:
    """``field: what is wrong; ...`` for an entry that failed validation, without pydantic's
    boilerplate (error types, links). ``stored``: for a row read back from the store, which
    someone must find and fix by hand: ``field 'name': what is wrong (it holds <value>)``. A
    reviewer's own entry is given back whole, so its values are not repeated."""
    parts = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"]))
        if not stored:
            parts.append(f"{where or 'entry'}: {error['msg']}")
            continue
        held = "" if error["type"] == "missing" else f" (it holds {_shown(error.get('input'))})"
        parts.append(f"{f'field {where!r}' if where else 'the entry'}: {error['msg']}{held}")
    return "; ".join(parts)


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 60 characters: enough to find a bad value, never a whole text."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_text(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        at = f" in {where}" if where else ""
        raise ValueError(
            f"holds {value[exc.start]!r}{at} at position {exc.start}, a lone UTF-16 surrogate, which is not a "
            "character; write the character itself or its complete \\uXXXX\\uXXXX pair"
        ) from None


class EntryError(ValueError):
    """Entry ``index`` of a batch cannot be stored; ``field`` is the one at fault, if known."""

    def __init__(self, index: int, message: str, field: str = "(record)"):
        super().__init__(message)
        self.index, self.field = index, field


class DuplicateIdError(EntryError):
    """An entry's id is already in the store with different content."""

    def __init__(self, index: int, correction_id: str):
        super().__init__(index, f"id {correction_id!r} is already in the store with different content", "id")


class StoreBusyError(DistilError):
    """Another process held the store's write lock past ``busy_timeout_s``."""


class CorrectionStore:
    """The SQLite file at ``path`` (default: :func:`default_db_path`).

    ``create=False`` refuses a path where no store exists yet, or an empty file (a training
    run reading corrections should not quietly start from an empty one). ``read_only``: None
    (the default) opens read-only when the file or its folder is not writable, True always,
    False refuses such a store (a command that writes). Safe to share between threads: each
    thread gets its own connection.
    """

    def __init__(self, path: Optional[str] = None, *, create: bool = True, busy_timeout_s: float = 30.0,
                 read_only: Optional[bool] = None):
        if path is not None and not str(path).strip():  # an unset shell variable: not "the default store"
            raise ConfigError(f"The corrections store's path is empty ({path!r}); give a path with --db or the `db` "
                              f"option, or leave it out for the default ({default_db_path()}).")
        self.path = os.path.abspath(os.path.expanduser(path or default_db_path()))
        self.busy_timeout_s = busy_timeout_s
        exists = os.path.exists(self.path)
        if not exists or (not create and os.path.isfile(self.path) and os.path.getsize(self.path) == 0):
            if not create:
                empty = f"{self.path} is an empty file, not a corrections store" if exists else \
                    f"No corrections store at {self.path}"
                raise ConfigError(
                    f"{empty}. Record corrections with `distil review RUN_DIR` "
                    f"or import some with `distil corrections import FILE` first, or point the `db` option "
                    f"(or ${ENV_DB}) at an existing store."
                )
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.read_only_reason = _not_writable(self.path) if exists else ""
        if read_only is False and self.read_only_reason:
            raise ConfigError(
                f"The corrections store {self.path} is read-only here ({self.read_only_reason}), and this command "
                "writes to it. Make it writable, or copy it to a writable folder and point --db at the copy."
            )
        if read_only and not self.read_only_reason:
            self.read_only_reason = "opened read-only as asked"
        self.read_only = bool(self.read_only_reason)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._registry = threading.Lock()  # guards _connections only; never held while SQLite waits
        self._closed = False
        try:
            self._connection()
            if not self.read_only:
                self._retry_while_locked(self._enable_wal)
            self._retry_while_locked(self._check_schema)
            self._retry_while_locked(self._check_intact)
        except sqlite3.OperationalError as exc:
            self.close()
            if _is_busy(exc):
                raise self._busy(exc) from None
            raise ConfigError(f"Cannot open the corrections store {self.path}: {exc}.") from None
        except sqlite3.DatabaseError as exc:
            self.close()
            if _is_damage(exc):
                raise self._damaged(exc) from None
            raise ConfigError(
                f"{self.path} is not a usable SQLite corrections store ({exc}). If it was one, it is damaged: "
                f"{self._recovery()}"
            ) from None
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3.Error if it cannot be opened)."""
        return self._connection()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on its first use and closed when the thread ends: a
        server's worker threads come and go (Starlette's pool retires idle ones), and a connection
        kept for each thread that ever ran would hold its files open for as long as the desk runs."""
        held = getattr(self._local, "held", None)
        if held is not None:
            return held.db
        db = self._open_read_only() if self.read_only else self._connect(self.path)
        if not self.read_only:
            db.execute("PRAGMA synchronous = FULL")
        with self._registry:
            if self._closed:
                db.close()
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            self._connections.append(db)
        held = ThreadConnection(db)
        weakref.finalize(held, release_connection, self._registry, self._connections, db)
        self._local.held = held
        return db

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        return sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False,
                               uri=uri)

    def _open_read_only(self) -> sqlite3.Connection:
        """``mode=ro``; where SQLite cannot open a WAL store that way (read-only media, where
        the ``-shm`` file it needs can be neither found nor created), ``immutable=1``: nothing
        can change a file there, so reading it as it is is exact."""
        base = "file:" + urllib.parse.quote(self.path)
        db = self._connect(base + "?mode=ro", uri=True)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if not _is_cantopen(exc):
                raise
        return self._connect(base + "?mode=ro&immutable=1", uri=True)

    def _retry_while_locked(self, step: Callable[[], None]) -> None:
        """Run ``step``, retrying "database is locked" until ``busy_timeout_s`` has passed.

        SQLite answers some lock upgrades (switching a new file to WAL, several processes racing
        to create the schema) with an immediate SQLITE_BUSY instead of calling its busy handler,
        because waiting could deadlock; backing off and starting the step again cannot.
        """
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.005
        while True:
            try:
                return step()
            except (sqlite3.OperationalError, StoreBusyError) as exc:
                if not (isinstance(exc, StoreBusyError) or _is_busy(exc)) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _enable_wal(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            self._db.execute("PRAGMA journal_mode = WAL")

    def _check_intact(self) -> None:
        """``PRAGMA quick_check`` (it reads every page): a damaged store is reported when it is
        opened, before a reviewer types anything that could then not be saved."""
        result = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
        if result != ["ok"]:
            raise self._damaged("; ".join(map(str, result[:3])))

    def _recovery(self) -> str:
        path, out = shlex.quote(self.path), shlex.quote(self.path + ".recovered")
        return (
            f"recover what it still holds into a new file, `sqlite3 {path} .recover | sqlite3 {out}` "
            f"(if your sqlite3's .recover fails: `sqlite3 {path} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 {out}`), "
            f"and point --db / the `db` option (or ${ENV_DB}) at it; or move {path} aside and import your last "
            f"export with `distil corrections import FILE --db {path}`."
        )

    def _damaged(self, cause: object) -> DistilError:
        return DistilError(f"The corrections store {self.path} is damaged ({cause}); nothing was changed. To continue, "
                           + self._recovery())

    def _failure(self, exc: sqlite3.Error, doing: str) -> DistilError:
        """The DistilError for a failed SQLite call: locked, damaged, or the disk refusing a write."""
        if _is_busy(exc):
            return self._busy(exc)
        if _is_undecodable(exc):
            return self._undecodable(exc)
        if _is_damage(exc):
            return self._damaged(exc)
        if isinstance(exc, sqlite3.IntegrityError):
            return DistilError(f"The corrections store {self.path} refused the entry ({exc}); nothing was changed.")
        check = "has free space and that the file and its folder are writable" if doing != "read" else \
            "is mounted and that the file is readable"
        return DistilError(
            f"Could not {doing} the corrections store {self.path} ({exc}); nothing was changed. Check that the disk "
            f"{check}, then try again."
        )

    # -- schema ------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        """Create or upgrade the store if it needs it; otherwise only read its version.

        The version is read in a read transaction, and the write lock is taken only when there
        is something to write (a new file, an older version), then the version is read again
        under it, since another process may have done the work meanwhile. Opening a current
        store must not take the write lock: in WAL mode reads never wait for writers, but a
        training run's feedback source or an export that took the lock to look at the version
        would wait behind a long import, and fail after ``busy_timeout_s``, to read nothing.
        """
        with self._reading() as db:
            version = self._stored_version(db)
            if version == SCHEMA_VERSION:
                self._check_layout(db, version)
                return
        if self.read_only:
            if version is None:
                raise ConfigError(f"{self.path} is an empty database, not a corrections store, and it is read-only "
                                  f"({self.read_only_reason}); choose another --db / `db` path.")
            raise ConfigError(
                f"{self.path} has schema version {version}, and this distil-human reads version {SCHEMA_VERSION}; "
                f"it upgrades a store when it opens it, but this one is read-only ({self.read_only_reason}). "
                "Open it once where it is writable (any `distil corrections export` does), then use it here."
            )
        with self._write() as db:
            version = self._stored_version(db)
            if version is None:  # a new (or empty) file
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema_version", str(SCHEMA_VERSION)))
                return
            self._check_layout(db, version)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                present = _columns(db)
                for name, kind in _MIGRATIONS[target]:
                    if name not in present:  # a store upgraded by hand, or half-way by a copy that failed
                        db.execute(f"ALTER TABLE corrections ADD COLUMN {name} {kind}")
                db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(target), "schema_version"))

    def _check_layout(self, db: sqlite3.Connection, version: int) -> None:
        """ConfigError unless the ``corrections`` table has every column a store of ``version``
        has (more are allowed: a version-1 store may already have a later one).

        The ``meta`` table's version is a claim, and a file changed outside distil-human (or
        assembled by hand) can make it false. Checked when the store is opened, so such a file
        is refused by name with what is wrong and what to do, before a run starts; otherwise
        every read would fail later with SQLite's "no such column", taken for a disk fault.
        """
        present = _columns(db)
        if not present:
            raise ConfigError(
                f"{self.path} is not a complete corrections store: its 'meta' table says schema version {version}, "
                "but it has no 'corrections' table, so it holds no entries (it was changed outside distil-human). "
                "Move it aside (the next `distil review` or `distil corrections import` "
                "makes a new store there), or choose another --db / `db` path."
            )
        missing = [c for c in _COLUMNS if c not in present and _ADDED_IN.get(c, 1) <= version]
        if not missing:
            return
        lacks = f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        if all(c in _NULLABLE for c in missing):
            added = "; ".join(f"ALTER TABLE corrections ADD COLUMN {c} {_NULLABLE[c]}" for c in missing)
            fix = f"Add {'them' if len(missing) > 1 else 'it'} with `sqlite3 {shlex.quote(self.path)} \"{added}\"`"
        else:
            fix = "Its entries cannot be read without " + ("them" if len(missing) > 1 else "it")
            fix += f": move it aside and import your last export with `distil corrections import FILE --db " \
                   f"{shlex.quote(self.path)}`"
        raise ConfigError(
            f"{self.path} is not a complete corrections store: its 'corrections' table {lacks}, which schema version "
            f"{version} has (it was changed outside distil-human); nothing was changed. {fix}, or choose another "
            "--db / `db` path."
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: its queries see one snapshot, and in WAL mode it waits for no
        writer. It is ended on the way out, whatever happens, so it pins no old snapshot (which
        would keep a checkpoint from finishing)."""
        db = self._db
        db.execute("BEGIN DEFERRED")
        try:
            yield db
        finally:
            self._rollback(db)  # nothing was written: ending it is all a rollback does

    def _stored_version(self, db: sqlite3.Connection) -> Optional[int]:
        """The store's schema version (1 to SCHEMA_VERSION), or None for a database with no tables."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables:
                raise ConfigError(
                    f"{self.path} is a SQLite database but not a corrections store (it has tables "
                    f"{', '.join(sorted(tables))} and no 'meta' table); choose another --db / `db` path."
                )
            return None
        row = db.execute("SELECT value FROM meta WHERE key = ?", ("schema_version",)).fetchone()
        text = str(row[0]) if row else ""
        version = int(text) if text.isascii() and text.isdigit() else 0  # "²".isdigit(), but int() refuses it
        if version < 1:
            raise ConfigError(f"{self.path}: the 'meta' table has no valid schema_version (it holds {text[:40]!r}); "
                              f"the store is damaged. Move it aside and import your last export with "
                              f"`distil corrections import FILE --db {shlex.quote(self.path)}`.")
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} has schema version {version}, but this distil-human reads versions up to "
                f"{SCHEMA_VERSION}: a newer distil-human wrote it. Upgrade distil-human "
                "(pip install -U distil-human), or use another store with --db / the `db` option."
            )
        return version

    def _busy(self, exc: Exception) -> StoreBusyError:
        return StoreBusyError(
            f"The corrections store {self.path} stayed locked by another process for {self.busy_timeout_s:g} s "
            f"({exc}); try again when the other writer is done."
        )

    def schema_version(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key = ?", ("schema_version",))[0][0])

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failure(exc, "read") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its start, committed on a normal exit.

        On any failure (the disk full, the file damaged, an error in the block) it is rolled
        back before the error leaves, so the lock is never kept from other writers. The wait
        for the lock happens in SQLite, on this thread's connection, with no Python lock held.
        """
        if self.read_only:
            raise DistilError(f"The corrections store {self.path} is open read-only ({self.read_only_reason}); "
                              "nothing was saved. Make it writable, or use a copy in a writable folder with --db.")
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._failure(exc, "write to") from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            self._rollback(db)
            if isinstance(exc, sqlite3.Error):
                raise self._failure(exc, "write to") from None
            raise

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error being raised says more
                db.execute("ROLLBACK")

    # -- writing -----------------------------------------------------------------------------

    def add(self, correction: Correction) -> Correction:
        """Store one entry (as :meth:`add_many` does); it is committed (durable) when this returns."""
        self.add_many([correction])
        return correction

    def add_many(self, corrections: Sequence[Correction]) -> tuple[int, int]:
        """All entries in one transaction: (added, already present with the same content).

        An id present with the same content (the :data:`Correction.CONTENT_FIELDS`: a second save
        of one entry may differ in when and from which run it was saved) is already present; with
        different content it raises :class:`DuplicateIdError` (its ``index`` in ``corrections``)
        and nothing is stored.
        """
        added = same = 0
        with self._write() as db:
            for index, correction in enumerate(corrections):
                try:
                    new = correction._row()
                    row = db.execute(_SELECT + " WHERE id = ?", (correction.id,)).fetchone()
                    if row is None:
                        db.execute(_INSERT, new)
                        added += 1
                        continue
                except (ValueError, OverflowError, RecursionError) as exc:  # a value SQLite cannot hold
                    raise EntryError(index, f"cannot be stored ({type(exc).__name__}: {exc})") from None
                if tuple(row) == new or _content(tuple(row)) == _content(new):
                    same += 1
                else:
                    raise DuplicateIdError(index, correction.id)
        return added, same

    # -- reading -----------------------------------------------------------------------------

    def _select(self, where: str = "", params: tuple[Any, ...] = ()) -> list[Correction]:
        out = []
        for row in self._query(f"SELECT rowid, {', '.join(_COLUMNS)} FROM corrections {where} ORDER BY created_at, id",
                               params):
            try:
                out.append(Correction._from_row(row[1:]))
            except UnreadableRow as exc:  # a row changed by hand outside distil-human
                raise self._unreadable(row[0], row[1], str(exc)) from None
        return out

    def _unreadable(self, rowid: int, entry_id: Any, problem: str) -> DistilError:
        """The error for a stored row that is not an entry: its row and id, the field and what
        is wrong with it, and the sqlite3 command that shows it."""
        if isinstance(entry_id, bytes):
            entry_id = entry_id.decode("utf-8", "backslashreplace")
        show = f'sqlite3 {shlex.quote(self.path)} "SELECT * FROM corrections WHERE rowid = {rowid}"'
        return DistilError(
            f"The corrections store {self.path} holds an entry that cannot be read: row {rowid} (id "
            f"{_shown(entry_id)}), {' '.join(problem.split())}. Fix or delete that row with the sqlite3 tool "
            f"(`{show}` shows it), then try again."
        )

    def _undecodable(self, exc: sqlite3.Error) -> DistilError:
        """The error for a read that met text which is not UTF-8 (written by another tool):
        Python's sqlite3 gives up on the whole query, naming neither the row nor the entry, so
        the table is read again as bytes to find the first such value."""
        db = self._db
        db.text_factory = bytes
        try:
            for row in db.execute(f"SELECT rowid, {', '.join(_COLUMNS)} FROM corrections"):
                for name, value in zip(_COLUMNS, row[1:]):
                    try:
                        if isinstance(value, bytes):
                            value.decode("utf-8")
                    except UnicodeDecodeError as bad:
                        return self._unreadable(row[0], row[1], f"field {name!r}: is not UTF-8 text (byte "
                                                                f"0x{value[bad.start]:02x} at offset {bad.start})")
        except sqlite3.Error:
            pass  # the error being reported says more
        finally:
            db.text_factory = str
        return DistilError(f"The corrections store {self.path} holds text that is not UTF-8 ({exc}); nothing was "
                           "changed. Fix that value with the sqlite3 tool, then try again.")

    def all(self, problem_id: Optional[str] = None) -> list[Correction]:
        """Every entry (of one problem), oldest first."""
        if problem_id is None:
            return self._select()
        return self._select("WHERE problem_id = ?", (problem_id,))

    def for_response(self, problem_id: str, response_hash: str) -> list[Correction]:
        """Entries about exactly this response, oldest first."""
        return self._select("WHERE problem_id = ? AND response_hash = ?", (problem_id, response_hash))

    def reviewed(self) -> set[tuple[str, str]]:
        """(problem_id, response_hash) of every response that has at least one entry."""
        rows = self._query(
            "SELECT DISTINCT problem_id, response_hash FROM corrections WHERE response_hash IS NOT NULL")
        return {(p, h) for p, h in rows}

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM corrections")[0][0])

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._registry:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()

    def __enter__(self) -> "CorrectionStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ThreadConnection:
    """One thread's connection, held in the store's thread-local storage: when the thread ends,
    this goes with it, and :func:`release_connection` closes the connection."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db: sqlite3.Connection):
        self.db = db


def release_connection(registry: threading.Lock, connections: list[sqlite3.Connection],
                       db: sqlite3.Connection) -> None:
    with registry:
        if db in connections:
            connections.remove(db)
    db.close()


def _is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == _SQLITE_CORRUPT) or "malformed" in str(exc)


def _is_undecodable(exc: BaseException) -> bool:
    """Python's sqlite3 could not decode a stored text as UTF-8 (it has no SQLite error code)."""
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("Could not decode to UTF-8")


def _columns(db: sqlite3.Connection) -> set[str]:
    """The columns of the ``corrections`` table; empty when there is no such table."""
    return {row[1] for row in db.execute("PRAGMA table_info(corrections)")}


def _is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, by SQLite's error code (Python 3.11 and later), else by the
    start of SQLite's own message: never "locked" anywhere in the text, which a path such as
    ``/data/unlocked/`` would match."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return str(exc).startswith(("database is locked", "database table is locked", "database schema is locked"))


def _is_cantopen(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF == _SQLITE_CANTOPEN if code is not None else str(exc).startswith("unable to open")


def _not_writable(path: str) -> str:
    """Why this process cannot write the store at ``path`` (an existing file), or "": SQLite
    needs the file and, for its WAL and shared-memory files, the folder."""
    folder = os.path.dirname(path)
    if not os.access(path, os.W_OK):
        return f"the file {path} is not writable"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} is not writable"
    return ""


_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM corrections"
_INSERT = f"INSERT INTO corrections ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
