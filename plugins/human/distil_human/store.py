"""The corrections store: one SQLite file shared by reviewers, imports and training runs.

Several processes may write at once. The database runs in WAL mode; every write takes the
write lock up front (``BEGIN IMMEDIATE``) and waits for it up to ``busy_timeout_s`` instead of
failing with "database is locked"; each entry is committed as soon as it is added. Opening a
store reads its schema version (:mod:`distil_human.schema`) in a read transaction and takes the
write lock only to create or upgrade the store, so opening one to read (a training run's
feedback source, an export) never waits for a writer. A store written by a newer version of
this plugin, or whose tables do not hold the columns its version has, is refused when it is
opened, not at the first read; a row that is not an entry is reported with its row, id and field.

Every SQLite failure leaves this module as a :class:`~distil_core.DistilError` naming the file
and what to do (:mod:`distil_human.failures`). A failed write is rolled back at once, so it
never holds the write lock that other processes are waiting for. A store is checked
(``PRAGMA quick_check``) when it is opened, so a damaged file is reported before anyone types
into a review session, with the ways to recover it.

Each thread talks to the file through its own connection, and no Python lock is held while
SQLite waits for the write lock: one save waiting for another process never holds up the
reads of other threads (the review desk serves several reviewers from a thread pool), and in
WAL mode reads never wait for writes. A store whose file or folder this process cannot write
(read-only media, another user's file) is opened read-only: it can be read and exported, and
a write is refused by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
import urllib.parse
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence

from distil_core import ConfigError, DistilError

from . import schema
from .failures import (StoreBusyError, busy_error, call_error, damaged_error, is_busy, is_cantopen, is_damage,
                       is_undecodable, recovery, undecodable_error, unreadable_error)
from .location import ENV_DB, default_db_path, not_writable
from .records import Correction, DuplicateIdError, EntryError, UnreadableRow, row_content
from .schema import COLUMNS, INSERT, SCHEMA_VERSION, SELECT


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
        self.read_only_reason = not_writable(self.path) if exists else ""
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
            if is_busy(exc):
                raise busy_error(self.path, self.busy_timeout_s, exc) from None
            raise ConfigError(f"Cannot open the corrections store {self.path}: {exc}.") from None
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_damage(exc):
                raise damaged_error(self.path, exc) from None
            raise ConfigError(
                f"{self.path} is not a usable SQLite corrections store ({exc}). If it was one, it is damaged: "
                f"{recovery(self.path)}"
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
            if not is_cantopen(exc):
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
                if not (isinstance(exc, StoreBusyError) or is_busy(exc)) or time.monotonic() >= deadline:
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
            raise damaged_error(self.path, "; ".join(map(str, result[:3])))

    def _failure(self, exc: sqlite3.Error, doing: str) -> DistilError:
        """The DistilError for a failed SQLite call: locked, damaged, or the disk refusing a write."""
        if is_busy(exc):
            return busy_error(self.path, self.busy_timeout_s, exc)
        if is_undecodable(exc):
            return undecodable_error(self.path, self._db, exc)
        if is_damage(exc):
            return damaged_error(self.path, exc)
        return call_error(self.path, exc, doing)

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
            version = schema.stored_version(db, self.path)
            if version == SCHEMA_VERSION:
                schema.check_layout(db, self.path, version)
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
            version = schema.stored_version(db, self.path)
            if version is None:  # a new (or empty) file
                schema.create_tables(db)
                return
            schema.check_layout(db, self.path, version)
            schema.upgrade(db, version)

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
                    new = correction.to_row()
                    row = db.execute(SELECT + " WHERE id = ?", (correction.id,)).fetchone()
                    if row is None:
                        db.execute(INSERT, new)
                        added += 1
                        continue
                except (ValueError, OverflowError, RecursionError) as exc:  # a value SQLite cannot hold
                    raise EntryError(index, f"cannot be stored ({type(exc).__name__}: {exc})") from None
                if tuple(row) == new or row_content(tuple(row)) == row_content(new):
                    same += 1
                else:
                    raise DuplicateIdError(index, correction.id)
        return added, same

    # -- reading -----------------------------------------------------------------------------

    def _select(self, where: str = "", params: tuple[Any, ...] = ()) -> list[Correction]:
        out = []
        for row in self._query(f"SELECT rowid, {', '.join(COLUMNS)} FROM corrections {where} ORDER BY created_at, id",
                               params):
            try:
                out.append(Correction.from_row(row[1:]))
            except UnreadableRow as exc:  # a row changed by hand outside distil-human
                raise unreadable_error(self.path, row[0], row[1], str(exc)) from None
        return out

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
