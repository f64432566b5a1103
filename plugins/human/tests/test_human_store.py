"""The SQLite store: round trip, several writing processes at once, schema versions, location."""

import multiprocessing
import sqlite3
from datetime import timezone

import pytest
from human_testlib import entry, response_hash, write_entries

from distil_core import ConfigError
from distil_human.store import SCHEMA_VERSION, CorrectionStore, default_db_path


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
