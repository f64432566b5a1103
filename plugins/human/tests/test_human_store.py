"""The SQLite store: round trip, several writing processes at once, schema versions, location."""

import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from datetime import timezone

import pytest
from human_testlib import (Terminal, WriteLockHolder, distil_argv, entry, plugin_env, response_hash, rollout_record,
                           write_entries, write_run)

from distil_core import ConfigError, DistilError, PluginHost
from distil_core.testing import problem, rollout, verdict
from distil_human.location import default_db_path
from distil_human.schema import SCHEMA_VERSION
from distil_human.store import CorrectionStore


def test_round_trip_keeps_every_field(tmp_path):
    db = tmp_path / "human.sqlite"
    full = entry(kind="solution", text="12\n(sorted: 1 then 2)", author="ada", run_dir="/runs/a", step=3,
                 response_text="21", verdict={"score": 0.0, "passed": False, "answer": "21"})
    with CorrectionStore(str(db)) as store:
        store.add(full)
        store.add(entry(problem_id="sort-34", response=None, text="About the problem as a whole."))
        store.add(entry(response="2", text="Only one digit."))
    with CorrectionStore(str(db), create=False) as store:
        assert store.schema_version() == SCHEMA_VERSION and store.count() == 3
        [again] = store.for_response("sort-12", response_hash("21"))
        assert again == full and again.created_at.tzinfo == timezone.utc
        assert [e.text for e in store.all("sort-12")] == ["12\n(sorted: 1 then 2)", "Only one digit."]
        assert store.reviewed() == {("sort-12", response_hash("21")), ("sort-12", response_hash("2"))}
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_several_processes_writing_at_once_lose_nothing(tmp_path):
    db = str(tmp_path / "fresh" / "human.sqlite")  # the writers also race to create it
    writers, each = 4, 40
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=write_entries, args=(db, w, each, barrier, errors)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert failures == [] and [p.exitcode for p in procs] == [0] * writers
    with CorrectionStore(db) as store:
        entries = store.all()
    assert len(entries) == writers * each == len({e.id for e in entries})
    for w in range(writers):
        texts = sorted(e.text for e in entries if e.author == f"w{w}")
        assert texts == sorted(f"writer {w} entry {i}" for i in range(each))


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    db = tmp_path / "human.sqlite"
    CorrectionStore(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    newer = rf"schema version {SCHEMA_VERSION + 1}.*reads versions up to {SCHEMA_VERSION}.*Upgrade distil-human"
    with pytest.raises(ConfigError, match=newer):
        CorrectionStore(str(db))


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_path_is_refused_not_read_as_the_default_store(path, tmp_path, monkeypatch):
    """Before, `distil corrections import --db "" FILE` (an unset shell variable) imported into
    the default store, and a feedback source with `db: ""` read it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISTIL_HUMAN_DB", raising=False)
    with pytest.raises(ConfigError, match="The corrections store's path is empty"):
        CorrectionStore(path)
    assert os.listdir(tmp_path) == []


def test_missing_foreign_and_broken_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="No corrections store at .*distil review"):
        CorrectionStore(str(tmp_path / "none.sqlite"), create=False)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(ConfigError, match="not a corrections store.*notes"):
        CorrectionStore(str(other))
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all, just text " * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite corrections store"):
        CorrectionStore(str(junk))


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTIL_HUMAN_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db_path() == str(tmp_path / ".local" / "share" / "distil" / "human.sqlite")
    with CorrectionStore() as store:
        assert store.path == default_db_path()
    monkeypatch.setenv("DISTIL_HUMAN_DB", str(tmp_path / "elsewhere.sqlite"))
    assert CorrectionStore().path == str(tmp_path / "elsewhere.sqlite")


def _damaged_store(path):
    """A store of 300 entries with 8 KiB of garbage written over the middle of the file."""
    with CorrectionStore(str(path)) as store:
        store.add_many([entry(response=f"r{i}", text=f"entry {i} " + "words " * 80) for i in range(300)])
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(bytes(range(256)) * 32)


def test_a_damaged_store_is_reported_with_how_to_recover_from_every_entry_point(tmp_path):
    db = tmp_path / "human.sqlite"
    _damaged_store(db)
    damaged = f"The corrections store {db} is damaged"
    with pytest.raises(DistilError) as err:
        CorrectionStore(str(db))
    message = str(err.value)
    assert message.startswith(damaged) and f"sqlite3 {db} .recover | sqlite3 {db}.recovered" in message
    assert f"distil corrections import FILE --db {db}" in message
    with pytest.raises(DistilError, match=damaged):  # the feedback source, as a training run builds it
        PluginHost(load_entrypoints=True, allow=["human"]).build("feedback_source", "human", {"db": str(db)})
    good = tmp_path / "good.jsonl"
    good.write_text('{"problem_id": "p", "kind": "correction", "text": "fine"}\n')
    for args in (["corrections", "export", str(tmp_path / "out.jsonl")], ["corrections", "import", str(good)]):
        done = subprocess.run(distil_argv(*args, "--db", str(db)), env=plugin_env(), capture_output=True, text=True)
        assert done.returncode == 1 and damaged in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out.jsonl").exists()
    run = write_run(tmp_path / "run", [rollout_record("sort-12", "21")])
    term = Terminal(distil_argv("review", run, "--db", str(db)), plugin_env())
    term.expect(damaged)  # before anything can be typed
    assert term.wait() == 1 and "Traceback" not in term.screen
    if shutil.which("sqlite3"):  # the recovery the message gives works (whichever this sqlite3 can do)
        recovered = f"{db}.recovered"
        recover = f"sqlite3 {db} .recover | sqlite3 {recovered}"
        dump = f"sqlite3 {db} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 {recovered}"
        assert recover in message and dump in message
        if subprocess.run(recover, shell=True, capture_output=True, text=True).stderr:
            os.remove(recovered)
            subprocess.run(dump, shell=True, check=True, capture_output=True)
        with CorrectionStore(recovered, create=False) as store:
            assert 250 < store.count() < 300 and store.all()[0].text.startswith("entry 0 ")


def test_damage_found_after_opening_is_reported_too(tmp_path):
    db = tmp_path / "human.sqlite"
    with CorrectionStore(str(db)) as store:
        store.add_many([entry(response=f"r{i}", text=f"entry {i} " + "words " * 80) for i in range(300)])
    reader = CorrectionStore(str(db), create=False)  # a training run's feedback source, say
    assert reader.count() == 300
    with CorrectionStore(str(db)) as writer:  # a reviewer's write: the reader must read the file again
        writer.add(entry(text="new"))
        size = db.stat().st_size
        with open(db, "r+b") as fh:
            fh.seek(size // 2)
            fh.write(bytes(range(256)) * 32)
        with pytest.raises(DistilError, match=f"The corrections store {db} is damaged.*\\.recover"):
            reader.all()
    reader.close()


def test_a_write_the_disk_refuses_is_rolled_back_and_reported(tmp_path):
    db = str(tmp_path / "human.sqlite")
    store = CorrectionStore(db)
    store.add(entry(text="kept"))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # as if the disk had two pages left
    with pytest.raises(DistilError, match=f"Could not write to the corrections store {db} .*database or disk is full"
                                          ".*nothing was changed"):
        store.add(entry(text="x" * 100_000))
    with CorrectionStore(db, busy_timeout_s=0.5) as other:  # no write lock left behind
        other.add(entry(text="another writer"))
    assert [e.text for e in store.all()] == ["kept", "another writer"]
    store.close()


@pytest.mark.parametrize("version", ["0", "\u00b2", "two", ""])
def test_a_schema_version_that_is_not_a_version_is_reported_as_damage(tmp_path, version):
    db = tmp_path / "human.sqlite"
    CorrectionStore(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    with pytest.raises(ConfigError, match=f"no valid schema_version \\(it holds {version!r}\\); the store is damaged"):
        CorrectionStore(str(db))


def test_an_error_is_not_taken_for_a_lock_because_the_path_says_locked(tmp_path):
    db = tmp_path / "unlocked" / "human.sqlite"  # "locked" in the path, not in SQLite's answer
    CorrectionStore(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="a newer distil-human wrote it"):
        CorrectionStore(str(db), busy_timeout_s=30)
    assert time.monotonic() - start < 10  # refused at once, not retried until the 30 s lock wait is over


def test_an_empty_file_is_no_store_to_read_but_may_become_one(tmp_path):
    empty = tmp_path / "human.sqlite"
    empty.write_bytes(b"")  # `touch human.sqlite`
    with pytest.raises(ConfigError, match=f"{empty} is an empty file, not a corrections store"):
        CorrectionStore(str(empty), create=False)
    with pytest.raises(ConfigError, match="is an empty file, not a corrections store"):
        PluginHost(load_entrypoints=True, allow=["human"]).build("feedback_source", "human", {"db": str(empty)})
    with CorrectionStore(str(empty)) as store:  # a command that creates stores makes it one
        store.add(entry(text="first"))
    with CorrectionStore(str(empty), create=False) as store:
        assert [e.text for e in store.all()] == ["first"]


def test_a_store_that_cannot_be_written_is_read_read_only(tmp_path, monkeypatch):
    db = tmp_path / "human.sqlite"
    with CorrectionStore(str(db)) as store:
        store.add(entry(text="kept"))
    with CorrectionStore(str(db), create=False, read_only=True) as store:
        assert [e.text for e in store.all()] == ["kept"] and store.read_only
        with pytest.raises(DistilError, match=f"{db} is open read-only .*nothing was saved"):
            store.add(entry(text="more"))
    # as on read-only media or another user's file: os.access says no (root may write anything)
    import distil_human.location as module

    monkeypatch.setattr(module.os, "access", lambda path, mode: mode != os.W_OK)
    with CorrectionStore(str(db), create=False) as store:
        assert store.read_only and store.count() == 1
        assert store.read_only_reason == f"the file {db} is not writable"
    with pytest.raises(ConfigError, match=f"{db} is read-only here .*this command writes to it"):
        CorrectionStore(str(db), read_only=False)
    run = write_run(tmp_path / "run", [rollout_record("sort-12", "21")])
    monkeypatch.undo()
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as conn:  # a version-1 store cannot be upgraded where it cannot be written
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("CREATE TABLE corrections (id TEXT PRIMARY KEY)")
    with pytest.raises(ConfigError, match="schema version 1.*this one is read-only"):
        CorrectionStore(str(old), read_only=True)
    done = subprocess.run(distil_argv("corrections", "export", str(tmp_path / "out.jsonl"), "--db", str(db)),
                          env=plugin_env(), capture_output=True, text=True)
    assert done.returncode == 0 and run


def test_a_write_waiting_for_the_lock_holds_up_no_read_of_another_thread(tmp_path):
    db = str(tmp_path / "human.sqlite")
    store = CorrectionStore(db, busy_timeout_s=60)
    store.add(entry(text="before"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    started, errors = threading.Event(), []

    def write():
        # set when SQLite starts the BEGIN IMMEDIATE that must wait for the lock
        store._db.set_trace_callback(lambda sql: sql.startswith("BEGIN IMMEDIATE") and started.set())
        try:
            store.add(entry(text="after"))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert started.wait(30)
    reads = []
    reader = threading.Thread(target=lambda: reads.append([e.text for e in store.all()]))
    reader.start()
    reader.join(10)
    assert reads == [["before"]] and writer.is_alive()  # read while the write still waits
    holder.execute("COMMIT")
    holder.close()
    writer.join(60)
    assert errors == [] and [e.text for e in store.all()] == ["before", "after"]
    store.close()


def test_reading_never_waits_for_another_process_holding_the_write_lock(tmp_path):
    """Before, opening a store took the write lock to look at its schema version, so while a long
    `distil corrections import` held it, a training run's `human` source and `distil corrections
    export` waited 30 s and failed with StoreBusyError. The lock is held for the whole test: a
    read that waited for it could not succeed."""
    db = tmp_path / "human.sqlite"
    with CorrectionStore(str(db)) as store:
        store.add(entry(text="committed"))
    out = tmp_path / "out.jsonl"
    with WriteLockHolder(str(db)) as holder:
        with CorrectionStore(str(db), create=False) as reader:  # sees the committed entry, not the pending one
            assert [e.text for e in reader.all()] == ["committed"] and not reader.read_only
        source = PluginHost(load_entrypoints=True, allow=["human"]).build("feedback_source", "human", {"db": str(db)})
        items = source.feedback(problem(pid="sort-12"), rollout("21", "sort-12"), verdict(False))
        assert [i.text for i in items] == ["committed"]
        source.store.close()
        done = subprocess.run(distil_argv("corrections", "export", str(out), "--db", str(db)), env=plugin_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Exported 1 entries" in done.stdout, done.stderr
        assert holder.proc.poll() is None  # the lock was held all along
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["committed"]
    with CorrectionStore(str(db), create=False) as store:
        assert [e.text for e in store.all()] == ["committed", "pending"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_a_thread_that_ends_leaves_no_connection_open(tmp_path):
    """A server's worker threads come and go; each one's connection closes when it ends."""
    import gc

    store = CorrectionStore(str(tmp_path / "h.sqlite"))
    store.count()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):  # one short-lived worker after another, each reading the store
        worker = threading.Thread(target=store.count)
        worker.start()
        worker.join()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert store.count() == 0  # the store itself stays usable
    store.close()


_V2_COLUMNS = ("id TEXT PRIMARY KEY, problem_id TEXT NOT NULL, response_hash TEXT, kind TEXT NOT NULL, text TEXT NOT NULL, "
               "author TEXT NOT NULL, created_at TEXT NOT NULL, run_dir TEXT, step INTEGER, response_text TEXT, "
               "verdict TEXT, verified INTEGER")


def _hand_made_store(path, version, columns=None):
    """A store as something other than distil-human left it: a `meta` table saying ``version``
    and, unless ``columns`` is None, a `corrections` table with those columns and no rows."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
        if columns is not None:
            conn.execute(f"CREATE TABLE corrections ({columns})")
    conn.close()


@pytest.mark.parametrize("columns, said", [
    (None, r"its 'meta' table says schema version 2, but it has no 'corrections' table, so it holds no entries"
           r".*Move it aside"),
    (_V2_COLUMNS.replace(", verified INTEGER", ""),
     r"its 'corrections' table lacks the column verified, which schema version 2 has.*Add it with `sqlite3 "),
    (_V2_COLUMNS.replace(", verified INTEGER", "").replace(", text TEXT NOT NULL", ""),
     r"lacks the columns text, verified, .*cannot be read without them: move it aside and import your last export"),
], ids=["no-corrections-table", "a-column-that-can-be-added", "a-required-column"])
def test_a_store_whose_tables_do_not_match_its_version_is_refused_when_opened(tmp_path, columns, said):
    """Before, it opened, and every read then failed with "no such column" and advice to check
    that the disk is mounted; a training run's `human` source was built and failed at its first step."""
    db = tmp_path / "human.sqlite"
    _hand_made_store(db, SCHEMA_VERSION, columns)
    refused = f"{db} is not a complete corrections store: .*{said}"
    for read_only in (None, True):
        with pytest.raises(ConfigError, match=refused) as err:
            CorrectionStore(str(db), create=False, read_only=read_only)
        assert "disk" not in str(err.value)
    with pytest.raises(ConfigError, match=refused):
        PluginHost(load_entrypoints=True, allow=["human"]).build("feedback_source", "human", {"db": str(db)})
    done = subprocess.run(distil_argv("corrections", "export", "-", "--db", str(db)), env=plugin_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a complete corrections store" in done.stderr and done.stdout == ""
    if "Add it with" in str(err.value):  # the advice works: the store opens once it is followed
        statement = str(err.value).split(f"sqlite3 {db} \"")[1].split('"`')[0]
        with sqlite3.connect(db) as conn:
            conn.execute(statement)
        conn.close()
        with CorrectionStore(str(db), create=False) as store:
            assert store.count() == 0


def test_upgrading_a_version_1_store_adds_only_the_columns_it_lacks(tmp_path):
    """Before, a version-1 store that already had `verified` failed its upgrade with "duplicate
    column" and advice to check the disk's free space, and one without a `corrections` table
    with "no such table"."""
    db = tmp_path / "human.sqlite"
    _hand_made_store(db, 1, _V2_COLUMNS)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO corrections (id, problem_id, kind, text, author, created_at, verified) VALUES "
                     "('a1', 'sort-12', 'solution', '12', 'ada', '2025-01-01T00:00:00.000000+00:00', 1)")
    conn.close()
    with CorrectionStore(str(db), create=False) as store:
        assert store.schema_version() == SCHEMA_VERSION and [(e.id, e.verified) for e in store.all()] == [("a1", True)]
    empty = tmp_path / "empty.sqlite"
    _hand_made_store(empty, 1)
    with pytest.raises(ConfigError, match=f"{empty} is not a complete corrections store: its 'meta' table says "
                                          "schema version 1, but it has no 'corrections' table"):
        CorrectionStore(str(empty))
    with sqlite3.connect(empty) as conn:  # refused before anything was changed
        assert conn.execute("SELECT value FROM meta").fetchall() == [("1",)]
    conn.close()


@pytest.mark.parametrize("column, value, said", [
    ("kind", "'comment'", "field 'kind': Input should be 'correction' or 'solution' (it holds 'comment')"),
    ("created_at", "'yesterday'", "field 'created_at': Input should be a valid datetime or date, input is too short "
                                  "(it holds 'yesterday')"),
    ("verdict", "'{not json'", "field 'verdict': not valid JSON (Expecting property name enclosed in double quotes "
                               "at character 2; it holds '{not json')"),
    ("verdict", "'[1, 2]'", "field 'verdict': Input should be a valid dictionary (it holds [1, 2])"),
    ("text", "X'fffe'", "field 'text': holds binary data (a BLOB of 2 bytes), not text"),
    ("text", "CAST(X'68ff69' AS TEXT)", "field 'text': is not UTF-8 text (byte 0xff at offset 1)"),
], ids=["kind", "created_at", "verdict-not-json", "verdict-a-list", "text-a-blob", "text-not-utf8"])
def test_a_row_that_is_not_an_entry_is_named_by_row_id_and_field(tmp_path, column, value, said):
    """Before, the message carried pydantic's boilerplate and a URL, or (text that is not UTF-8)
    advice to check that the disk is mounted."""
    db = tmp_path / "human.sqlite"
    _hand_made_store(db, SCHEMA_VERSION, _V2_COLUMNS)  # without distil-human's CHECK on `kind`
    with CorrectionStore(str(db)) as store:
        store.add(entry(text="fine", created_at="2025-01-01T00:00:00+00:00"))
        store._db.execute("INSERT INTO corrections (id, problem_id, kind, text, author, created_at) VALUES "
                          "('bad', 'sort-12', 'correction', 'x', '', '2025-01-02T00:00:00+00:00')")
        store._db.execute(f"UPDATE corrections SET {column} = {value} WHERE id = 'bad'")
    with CorrectionStore(str(db), create=False) as store:
        with pytest.raises(DistilError) as err:
            store.all()
    message = str(err.value)
    assert message.startswith(f"The corrections store {db} holds an entry that cannot be read: row 2 (id 'bad'), "
                              f"{said}. Fix or delete that row with the sqlite3 tool (`sqlite3 {db} \"SELECT * FROM "
                              "corrections WHERE rowid = 2\"` shows it)"), message
    assert "pydantic" not in message and "http" not in message and "disk" not in message
    done = subprocess.run(distil_argv("corrections", "export", "-", "--db", str(db)), env=plugin_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and said in done.stderr and "Traceback" not in done.stderr
