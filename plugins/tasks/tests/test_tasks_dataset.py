"""The dataset task: the same records from JSONL, Parquet, CSV and datasets directories; bad rows
and missing keys named by place and field; the fixed formats load through the same path."""

import json
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distil_core import ConfigError

from distil_tasks import DatasetTask, MathAnswerVerifier, MathTask, RecordError

from tasks_testlib import fixture, fixture_records, rollout, write_jsonl

ROWS = [{"question": f"What is {i} plus 2?", "target": str(i + 2), "sys": "Answer with a number."} for i in range(12)]


def parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def saved(path, rows):
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def _by_prompt(task):
    return {p.user_text(): p.reference for split in ("train", "test") for p in task.problems(split)}


def test_the_same_records_load_alike_from_jsonl_parquet_csv_and_a_datasets_directory(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("question,target\n" + "".join(f"{r['question']},{r['target']}\n" for r in ROWS))
    paths = [write_jsonl(tmp_path / "rows.jsonl", ROWS), parquet(tmp_path / "rows.parquet", ROWS),
             str(csv), saved(tmp_path / "rows_ds", ROWS)]
    loaded = [DatasetTask(path=p, prompt_key="question", answer_key="target", test_fraction=0.25) for p in paths]
    expected = {r["question"]: r["target"] for r in ROWS}
    for task in loaded:
        assert _by_prompt(task) == expected
        assert (len(task.problems("train")), len(task.problems("test"))) == (9, 3)
    sources = [{p.user_text(): p.metadata["source"] for s in ("train", "test") for p in t.problems(s)} for t in loaded]
    assert [s[ROWS[3]["question"]] for s in sources] == [
        f"{paths[0]}:4", f"{paths[1]} row 3", f"{paths[2]} row 3", f"{paths[3]} row 3"]


def test_datasetdict_splits_are_the_train_and_test_splits_and_split_names_are_options(tmp_path):
    path = str(tmp_path / "dd")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                          "validation": datasets.Dataset.from_list(ROWS[8:])}).save_to_disk(path)
    task = DatasetTask(path=path, prompt_key="question", answer_key="target", test_split="validation")
    assert [p.reference for p in task.problems("test")] == ["10", "11", "12", "13"]
    assert len(task.problems("train")) == 8 and task.problems("test")[0].id == "validation:0"
    with pytest.raises(ValueError, match=r"has the splits \['train', 'validation'\]; set options.split"):
        DatasetTask(path=path, prompt_key="question", answer_key="target", split="training")


def test_a_split_column_decides_each_records_split(tmp_path):
    rows = [dict(r, part="eval" if i % 3 == 0 else "fit") for i, r in enumerate(ROWS)]
    path = parquet(tmp_path / "p.parquet", rows)
    task = DatasetTask(path=path, prompt_key="question", answer_key="target", split_key="part", split="fit", test_split="eval")
    assert sorted(int(p.reference) - 2 for p in task.problems("test")) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match=r"no record has part = 'train' \(values found: 'eval', 'fit'\)"):
        DatasetTask(path=path, prompt_key="question", answer_key="target", split_key="part")


def test_system_prompt_and_chat_prompts_and_ids(tmp_path):
    rows = [dict(r, key=f"k{i}") for i, r in enumerate(ROWS[:3])]
    task = DatasetTask(path=write_jsonl(tmp_path / "a.jsonl", rows), prompt_key="question", answer_key="target",
                       system_prompt_key="sys", id_key="key", test_fraction=0.0)
    p = task.problems("train")[0]
    assert p.id == "k0" and p.messages() == [{"role": "system", "content": "Answer with a number."},
                                             {"role": "user", "content": "What is 0 plus 2?"}]
    chat = [{"messages": [{"role": "user", "content": "hi"}], "answer": 3}]
    [q] = DatasetTask(path=write_jsonl(tmp_path / "c.jsonl", chat), prompt_key="messages").problems("train")
    assert q.user_text() == "hi" and q.reference == "3"


def test_tests_key_gives_code_exec_tests_and_math_answer_refuses_them(tmp_path):
    rows = [{"prompt": "Write f(x) = x + 1.", "tests": ["assert f(1) == 2"], "code": "def f(x): return x + 1"},
            {"prompt": "Echo.", "tests": json.dumps([{"stdin": "a\n", "stdout": "a"}])},
            {"prompt": "Double.", "tests": {"entry_point": "g", "calls": [{"args": [2], "expected": 4}]}}]
    task = DatasetTask(path=write_jsonl(tmp_path / "code.jsonl", rows), tests_key="tests", solution_key="code",
                       test_fraction=0.0)
    first, second, third = task.problems("train")
    assert first.reference == {"asserts": ["assert f(1) == 2"]} and task.answer_text(first) == "def f(x): return x + 1"
    assert second.reference == {"io": [{"stdin": "a\n", "stdout": "a"}]} and task.answer_text(second) is None
    assert third.reference["entry_point"] == "g" and task.kind == "tests" and "code_exec" in task.fits
    with pytest.raises(ConfigError, match="math_answer: problem .* holds code tests, not an answer.*verifier: code_exec"):
        MathAnswerVerifier().verify(first, rollout("2"))


BAD_ROWS = [  # (row index, key, bad value, field named, message)
    (2, "question", "   ", "question", "is empty"),
    (4, "target", None, "target", "missing"),
    (1, "tests", json.dumps(["assert f(1) =="]), "tests[0]", "is not valid Python"),
    (3, "tests", json.dumps({"calls": [{"args": [1], "expected": 2}]}), "tests", "calls need entry_point"),
]


def _written(tmp_path, kind, rows):
    if kind == "jsonl":
        return write_jsonl(tmp_path / "bad.jsonl", rows)
    if kind == "parquet":
        return parquet(tmp_path / "bad.parquet", rows)
    return saved(tmp_path / "bad_ds", rows)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets"])
@pytest.mark.parametrize("index,key,value,field,message", BAD_ROWS, ids=[b[3] for b in BAD_ROWS])
def test_a_bad_row_names_its_file_row_and_field(tmp_path, kind, index, key, value, field, message):
    rows = [dict(r, tests=json.dumps([f"assert f({i}) == {i}"])) for i, r in enumerate(ROWS)]
    rows[index][key] = value
    path = _written(tmp_path, kind, rows)
    keys = {"tests_key": "tests"} if key == "tests" else {"answer_key": "target"}
    with pytest.raises(RecordError) as info:
        DatasetTask(path=path, prompt_key="question", **keys)
    err = info.value
    where = f"{path}:{index + 1}" if kind == "jsonl" else f"{path} row {index}"
    assert err.field == field and str(err).startswith(f"{where}: field {field!r}: ")
    assert message in str(err)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets"])
def test_a_key_the_records_lack_names_the_option_and_the_keys_they_have(tmp_path, kind):
    path = _written(tmp_path, kind, ROWS)
    with pytest.raises(RecordError, match=r"field 'answer': missing; set options.answer_key to one of "
                                          r"\['question', 'sys', 'target'\]"):
        DatasetTask(path=path, prompt_key="question")
    with pytest.raises(RecordError, match=r"field 'prompt': missing; set options.prompt_key to one of "
                                          r"\['question', 'sys', 'target'\]"):
        DatasetTask(path=path, answer_key="target")


def test_hub_names_fail_clearly_offline_and_missing_files_and_libraries_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"'nobody/no-such-set' is not a local file or directory, and the Hugging "
                                         r"Face Hub is offline \(HF_HUB_OFFLINE=1\).*unset HF_HUB_OFFLINE"):
        DatasetTask(path="nobody/no-such-set")
    with pytest.raises(ValueError, match="'gone.parquet' does not exist; give the path of a JSONL, Parquet"):
        DatasetTask(path="gone.parquet")
    path = parquet(tmp_path / "p.parquet", ROWS)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(ValueError, match=r"needs the pyarrow package: pip install pyarrow .*distil-tasks\[datasets\]"):
        DatasetTask(path=path, prompt_key="question", answer_key="target")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"needs the datasets package: pip install datasets"):
        DatasetTask(path=str(tmp_path), prompt_key="question", answer_key="target")


def test_options_that_cannot_work_together_are_refused():
    with pytest.raises(ValueError, match="answer_key or options.tests_key, not both"):
        DatasetTask(path=fixture("gsm8k"), answer_key="a", tests_key="t")
    with pytest.raises(ValueError, match="set options.path"):
        DatasetTask()


@pytest.mark.parametrize("fmt,task", [("gsm8k", MathTask), ("mbpp", __import__("distil_tasks").CodeTask)])
def test_a_fixed_format_loads_the_same_from_parquet_as_from_jsonl(tmp_path, fmt, task):
    records = [dict(r, id=f"r{i}") for i, r in enumerate(fixture_records(fmt))]
    columns = {k for r in records for k in r}
    rows = [{k: (json.dumps(r[k]) if isinstance(r.get(k), list) else r.get(k)) for k in columns} for r in records]
    from_jsonl = task(path=write_jsonl(tmp_path / f"{fmt}.jsonl", records), format=fmt)
    from_parquet = task(path=parquet(tmp_path / f"{fmt}.parquet", rows), format=fmt)
    for split in ("train", "test"):
        a, b = from_jsonl.problems(split), from_parquet.problems(split)
        assert [(p.id, p.prompt, p.reference) for p in a] == [(p.id, p.prompt, p.reference) for p in b]
