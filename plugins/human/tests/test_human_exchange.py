"""JSONL export and import, in process and through `distil corrections`."""

import json
import os
import subprocess

import pytest
from human_testlib import distil_argv, entry, plugin_env, write_version_1_store

from distil_core import ConfigError
from distil_human.exchange import export_jsonl, import_jsonl
from distil_human.store import CorrectionStore


def _filled(path):
    store = CorrectionStore(str(path))
    store.add(entry(text="The digits must go up.", author="ada", run_dir="/runs/a", step=2, response_text="21",
                    verdict={"score": 0.0, "passed": False, "answer": "21"}))
    store.add(entry(problem_id="sort-90", response=None, kind="solution", text="09", author="bo"))
    store.add(entry(problem_id="add-1-2", response="4", text="1 + 2 is 3, ünïcode kept"))
    return store


def test_export_then_import_gives_the_same_entries(tmp_path):
    source = _filled(tmp_path / "a.sqlite")
    out = tmp_path / "out" / "corrections.jsonl"
    assert export_jsonl(source, str(out)) == 3
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["problem_id"] for line in lines] == ["sort-12", "sort-90", "add-1-2"]
    assert os.listdir(out.parent) == ["corrections.jsonl"]  # no temporary file left behind
    target = CorrectionStore(str(tmp_path / "b.sqlite"))
    assert import_jsonl(target, str(out)) == (3, 0)
    assert target.all() == source.all()
    assert import_jsonl(target, str(out)) == (0, 3)  # importing again adds nothing
    assert export_jsonl(target, str(out), problem_id="sort-90") == 1
    assert json.loads(out.read_text())["text"] == "09"


def test_an_imported_entry_holding_a_control_character_is_refused_by_line_and_field(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"problem_id": "sort-12", "kind": "correction", "text": "Up,\u0000 not down."}) + "\n")
    store = CorrectionStore(str(tmp_path / "h.sqlite"))
    with pytest.raises(ConfigError, match=r"in\.jsonl:1: field 'text': Value error, holds the control character "
                       r"\\x00 at position 3"):
        import_jsonl(store, str(path))
    assert store.count() == 0


def test_an_entry_stored_before_the_control_character_check_still_reads_and_exports(tmp_path):
    store = CorrectionStore(str(tmp_path / "h.sqlite"))
    store.add(entry(text="old\x00entry"))  # as an earlier version stored it: only entries being entered are checked
    assert [e.text for e in CorrectionStore(str(tmp_path / "h.sqlite")).all()] == ["old\x00entry"]
    assert export_jsonl(store, str(tmp_path / "out.jsonl")) == 1


def test_a_bad_record_is_reported_by_line_and_field_and_nothing_is_imported(tmp_path):
    good = {"problem_id": "sort-12", "kind": "correction", "text": "Up, not down."}
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([
        json.dumps(good),
        "",
        json.dumps({**good, "kind": "fix"}),
        json.dumps({**good, "problem_id": "sort-34", "response_hash": "not-a-hash"}),
        json.dumps(good),
    ]) + "\n")
    store = CorrectionStore(str(tmp_path / "s.sqlite"))
    with pytest.raises(ConfigError) as err:
        import_jsonl(store, str(path))
    message = str(err.value)
    assert f"{path}:3: field 'kind': Input should be 'correction' or 'solution' (got 'fix')" in message
    assert f"{path}:4: field 'response_hash'" in message and "nothing was imported" in message
    assert f"{path}:1:" not in message and store.count() == 0
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: not valid JSON"):
        import_jsonl(store, str(path))
    path.write_text(json.dumps(good) + "\n" + json.dumps({"problem_id": "x", "kind": "solution", "txt": "a"}) + "\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: field 'text': Field required; {path}:2: field 'txt': Extra"):
        import_jsonl(store, str(path))
    assert store.count() == 0


def test_an_id_already_stored_with_other_content_imports_nothing(tmp_path):
    store = _filled(tmp_path / "s.sqlite")
    first = store.all()[0].to_json()
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"problem_id": "new-1", "kind": "correction", "text": "fresh"}) + "\n"
                    + json.dumps({**first, "text": "edited"}) + "\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: field 'id': id '{first['id']}' is already in the store"):
        import_jsonl(store, str(path))
    assert store.count() == 3 and store.all("new-1") == []


def test_distil_corrections_command(tmp_path):
    _filled(tmp_path / "a.sqlite").close()
    out, bad = tmp_path / "c.jsonl", tmp_path / "bad.jsonl"

    def run(*args):
        return subprocess.run(distil_argv("corrections", *args), env=plugin_env(), capture_output=True, text=True)

    done = run("export", str(out), "--db", str(tmp_path / "a.sqlite"))
    assert done.returncode == 0 and "Exported 3 entries" in done.stdout
    done = run("import", str(out), "--db", str(tmp_path / "b.sqlite"))
    assert done.returncode == 0 and "Imported 3 entries" in done.stdout
    done = run("export", "-", "--db", str(tmp_path / "a.sqlite"))  # the entries alone on stdout, the note on stderr
    assert done.returncode == 0 and done.stdout == out.read_text(encoding="utf-8")
    assert "Exported 3 entries from" in done.stderr and "to standard output" in done.stderr
    stdout = tmp_path / "stdout"  # what /dev/stdout is: a link to the process's output, here a pipe
    stdout.symlink_to("/proc/self/fd/1")
    done = run("export", str(stdout), "--db", str(tmp_path / "a.sqlite"))
    assert done.returncode == 0 and done.stdout.startswith(out.read_text(encoding="utf-8"))
    assert stdout.is_symlink()  # written through, not a file renamed over the link
    bad.write_text('{"problem_id": "p", "kind": "correction"}\n')
    done = run("import", str(bad), "--db", str(tmp_path / "b.sqlite"))
    assert done.returncode == 2 and f"error: {bad} has invalid records" in done.stderr
    assert f"{bad}:1: field 'text': Field required" in done.stderr and "Traceback" not in done.stderr


LINE_BREAKS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r\n"]


def test_every_line_break_character_survives_export_and_import(tmp_path):
    source = CorrectionStore(str(tmp_path / "a.sqlite"))
    for n, brk in enumerate(LINE_BREAKS):
        source.add(entry(problem_id=f"p{brk}{n}", text=f"first{brk}second", author=f"a{brk}b", run_dir=f"/r{brk}",
                         response_text=f"2{brk}1", verdict={"answer": f"x{brk}y", f"k{brk}": [brk]}))
    source.add(entry(text="\n".join(LINE_BREAKS) + "\nend"))
    source.close()
    out, again = tmp_path / "backup.jsonl", tmp_path / "again.jsonl"

    def run(*args):
        done = subprocess.run(distil_argv("corrections", *args), env=plugin_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "Exported 11 entries" in run("export", str(out), "--db", str(tmp_path / "a.sqlite"))
    # one record a line for every reader: no character that any of them takes for a line break
    assert len(out.read_text(encoding="utf-8").splitlines()) == 11
    assert "Imported 11 entries" in run("import", str(out), "--db", str(tmp_path / "b.sqlite"))
    with CorrectionStore(str(tmp_path / "a.sqlite")) as a, CorrectionStore(str(tmp_path / "b.sqlite")) as b:
        assert b.all() == a.all() and len(a.all()) == 11
    run("export", str(again), "--db", str(tmp_path / "b.sqlite"))
    assert again.read_bytes() == out.read_bytes()


def test_a_file_with_raw_line_break_characters_inside_strings_still_imports(tmp_path):
    path = tmp_path / "raw.jsonl"
    texts = [f"before{brk}after" for brk in ("\x85", "\u2028", "\u2029")]
    path.write_text("".join(json.dumps({"problem_id": "p", "kind": "correction", "text": t}, ensure_ascii=False)
                            + "\n" for t in texts), encoding="utf-8")
    store = CorrectionStore(str(tmp_path / "s.sqlite"))
    assert import_jsonl(store, str(path)) == (3, 0)
    assert sorted(e.text for e in store.all()) == sorted(texts)


def test_hostile_values_are_reported_by_line_and_field_and_nothing_is_imported(tmp_path):
    good = {"problem_id": "sort-12", "kind": "correction", "text": "Up, not down."}
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    cases = [
        ('{"problem_id": "p", "kind": "correction", "text": "\\ud800"}', "text", "lone UTF-16 surrogate"),
        ('{"problem_id": "p", "kind": "correction", "text": "ok", "author": "x\\udc80"}', "author", "surrogate"),
        (json.dumps({**good, "created_at": "9999-12-31T23:59:59-05:00"}), "created_at", "outside the years 1 to 9999"),
        (json.dumps({**good, "created_at": "0001-01-01T00:00:00+05:00"}), "created_at", "outside the years 1 to 9999"),
        (json.dumps({**good, "step": 10**20}), "step", "less than or equal to 9223372036854775807"),
        ('{"problem_id": "p", "kind": "correction", "text": "ok", "verdict": ' + deep + "}", "verdict",
         "nested too deeply"),
        (json.dumps({**good, "verdict": json.loads("[" * 40 + "]" * 40)}), "verdict", "Input should be a valid"),
        (json.dumps({**good, "verdict": {"answer": json.loads('{"a":' * 40 + "1" + "}" * 40)}}), "verdict",
         "nested more than 32 levels deep (at answer.a.a."),
    ]
    store_path = tmp_path / "s.sqlite"
    for line, field, why in cases:
        path = tmp_path / "in.jsonl"
        path.write_text(json.dumps(good) + "\n" + line + "\n", encoding="utf-8")
        store = CorrectionStore(str(store_path))
        with pytest.raises(ConfigError) as err:
            import_jsonl(store, str(path))
        message = str(err.value)
        assert f"{path}:2: field '{field}'" in message and why in message, message
        assert "nothing was imported" in message and len(message) < 2000 and store.count() == 0
        store.close()
    done = subprocess.run(distil_argv("corrections", "import", str(path), "--db", str(tmp_path / "new.sqlite")),
                          env=plugin_env(), capture_output=True, text=True)
    assert done.returncode == 2 and f"{path}:2: field 'verdict'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "new.sqlite").exists()  # a bad file does not create a store either


def test_numbers_json_cannot_hold_are_refused_by_line_and_field(tmp_path):
    path = tmp_path / "in.jsonl"
    good = '{"problem_id": "p", "kind": "correction", "text": "t"'
    path.write_text(good + "}\n" + good + ', "verdict": {"score": NaN}}\n'
                    + good + ', "verdict": {"answer": [1, -Infinity]}}\n')
    store = CorrectionStore(str(tmp_path / "s.sqlite"))
    with pytest.raises(ConfigError) as err:
        import_jsonl(store, str(path))
    assert f"{path}:2: field 'verdict': Value error, holds nan at score, which is not a finite number" in str(err.value)
    assert f"{path}:3: field 'verdict': Value error, holds -inf at answer.1" in str(err.value)
    assert store.count() == 0
    out = tmp_path / "out.jsonl"  # so an export always reads back as exactly what was stored
    path.write_text(good + ', "verdict": {"score": 0.5, "passed": false}}\n')
    import_jsonl(store, str(path))
    export_jsonl(store, str(out))
    again = CorrectionStore(str(tmp_path / "t.sqlite"))
    assert import_jsonl(again, str(out)) == (1, 0) and import_jsonl(store, str(out)) == (0, 1)


def test_a_file_of_entries_without_ids_imported_twice_adds_nothing_the_second_time(tmp_path):
    """Before, each import gave every id-less line a new random id: the entries doubled."""
    path = tmp_path / "mine.jsonl"
    lines = [{"problem_id": "sort-12", "kind": "correction", "text": "Smallest digit first."},
             {"problem_id": "sort-90", "kind": "solution", "text": "09", "author": "bo"},
             {"problem_id": "sort-12", "kind": "correction", "text": "Smallest digit first."}]  # the same advice
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = CorrectionStore(str(tmp_path / "s.sqlite"))
    assert import_jsonl(store, str(path)) == (2, 1)
    assert import_jsonl(store, str(path)) == (0, 3)
    assert store.count() == 2
    # the same text from another author is another entry; an id given is kept as given
    path.write_text(json.dumps({**lines[0], "author": "cy"}) + "\n" + json.dumps({**lines[1], "id": "mine-1"}) + "\n")
    assert import_jsonl(store, str(path)) == (2, 0) and store.count() == 4


def test_export_reads_an_existing_store_only_and_never_writes_over_it(tmp_path):
    """Before, a mistyped --db made an empty store there and wrote its 0 entries over the backup;
    exporting a store onto its own path replaced the SQLite file with JSONL."""
    _filled(tmp_path / "s.sqlite").close()
    backup = tmp_path / "backup.jsonl"
    backup.write_text('{"kept": true}\n')

    def run(*args):
        return subprocess.run(distil_argv("corrections", *args), env=plugin_env(), capture_output=True, text=True)

    done = run("export", str(backup), "--db", str(tmp_path / "s.sqllite"))
    assert done.returncode == 2 and "No corrections store at" in done.stderr, done.stderr
    assert backup.read_text() == '{"kept": true}\n' and not (tmp_path / "s.sqllite").exists()
    done = run("export", str(tmp_path / "s.sqlite"), "--db", str(tmp_path / "s.sqlite"))
    assert done.returncode == 2 and "is the store being exported; give another FILE" in done.stderr, done.stderr
    with CorrectionStore(str(tmp_path / "s.sqlite"), create=False) as store:
        assert store.count() == 3
    old = tmp_path / "v1.sqlite"  # a version-1 store: export upgrades it
    write_version_1_store(old)
    done = run("export", str(backup), "--db", str(old))
    assert done.returncode == 0 and "Exported 1 entries" in done.stdout, done.stderr
