"""JSONL export and import, in process and through `distil corrections`."""

import json
import os
import subprocess

import pytest
from human_testlib import distil_argv, entry, plugin_env

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
    bad.write_text('{"problem_id": "p", "kind": "correction"}\n')
    done = run("import", str(bad), "--db", str(tmp_path / "b.sqlite"))
    assert done.returncode == 2 and f"error: {bad} has invalid records" in done.stderr
    assert f"{bad}:1: field 'text': Field required" in done.stderr and "Traceback" not in done.stderr
