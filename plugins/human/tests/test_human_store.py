"""The SQLite store: round trip, several writing processes at once, schema versions, location."""

import multiprocessing
import os
import shutil
import sqlite3
import subprocess
from datetime import timezone

import pytest
from human_testlib import (Terminal, distil_argv, entry, plugin_env, response_hash, rollout_record, write_entries,
                           write_run)

from distil_core import ConfigError, DistilError, PluginHost
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
