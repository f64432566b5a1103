"""The dataset task: the same records from JSONL, Parquet, CSV and datasets directories; bad rows
and missing keys named by place and field; the fixed formats load through the same path."""

import json
import re
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distil_core import ConfigError

from distil_tasks import DatasetTask, MathAnswerVerifier, MathTask, RecordError
from distil_tasks.records import prompt_id

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


def test_the_same_records_load_alike_from_jsonl_parquet_csv_json_and_a_datasets_directory(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("question,target\n" + "".join(f"{r['question']},{r['target']}\n" for r in ROWS))
    whole = tmp_path / "rows.json"
    whole.write_text(json.dumps(ROWS, indent=1))
    paths = [write_jsonl(tmp_path / "rows.jsonl", ROWS), parquet(tmp_path / "rows.parquet", ROWS),
             str(csv), saved(tmp_path / "rows_ds", ROWS), str(whole)]
    loaded = [DatasetTask(path=p, prompt_key="question", answer_key="target", test_fraction=0.25) for p in paths]
    expected = {r["question"]: r["target"] for r in ROWS}
    for task in loaded:
        assert _by_prompt(task) == expected
        assert (len(task.problems("train")), len(task.problems("test"))) == (9, 3)
    sources = [{p.user_text(): p.metadata["source"] for s in ("train", "test") for p in t.problems(s)} for t in loaded]
    assert [s[ROWS[3]["question"]] for s in sources] == [
        f"{paths[0]}:4", f"{paths[1]} row 3", f"{paths[2]} row 3", f"{paths[3]} row 3", f"{paths[4]} row 3"]


def test_datasetdict_splits_are_the_train_and_test_splits_and_split_names_are_options(tmp_path):
    path = str(tmp_path / "dd")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                          "validation": datasets.Dataset.from_list(ROWS[8:])}).save_to_disk(path)
    task = DatasetTask(path=path, prompt_key="question", answer_key="target", test_split="validation")
    assert [p.reference for p in task.problems("test")] == ["10", "11", "12", "13"]
    first = task.problems("test")[0]
    assert len(task.problems("train")) == 8 and first.id == prompt_id(first.prompt)  # not its row in the split
    with pytest.raises(ValueError, match=r"has the splits \['train', 'validation'\]; set options.split"):
        DatasetTask(path=path, prompt_key="question", answer_key="target", split="training")
    # a named test split that repeats a train prompt is refused like any other test split
    leaky = str(tmp_path / "leaky")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                          "test": datasets.Dataset.from_list(ROWS[6:])}).save_to_disk(leaky)
    with pytest.raises(ValueError, match=r"leaky' \(test\) shares 2 problems with \(train\): the same prompt "
                                         r"\(e\.g\. test 'p-[0-9a-f]+' is train 'p-[0-9a-f]+'\); the test split must be held out"):
        DatasetTask(path=leaky, prompt_key="question", answer_key="target")


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


def test_csv_and_tsv_cells_are_the_strings_the_file_holds(tmp_path):
    """No type guessing: 3 stays '3' beside 2.5, an id 1 stays '1' beside a blank one, 'NA' is an
    answer; only an empty cell is missing."""
    csv = tmp_path / "rows.csv"
    csv.write_text("id,question,target\n1,one,3\n,two,2.5\n3,three,NA\n4,four,007\n")
    tsv = tmp_path / "rows.tsv"
    tsv.write_text(csv.read_text().replace(",", "\t"))
    made = set()
    for path in (csv, tsv):
        task = DatasetTask(path=str(path), prompt_key="question", answer_key="target", test_fraction=0.0)
        got = [(p.id, p.reference) for p in task.problems("train")]
        assert [ref for _, ref in got] == ["3", "2.5", "NA", "007"] and [got[0][0], *[i for i, _ in got[2:]]] == ["1", "3", "4"]
        made.add(got[1][0])  # the id-less row's id comes from its prompt, not from the file or its place
    assert made == {prompt_id("two")}
    csv.write_text("question,target\none,3\ntwo,\n")
    with pytest.raises(RecordError, match=r"rows\.csv row 1: field 'target': missing"):
        DatasetTask(path=str(csv), prompt_key="question", answer_key="target")


def test_a_json_file_keeps_its_numbers_and_may_hold_json_lines(tmp_path):
    whole = tmp_path / "a.json"
    whole.write_text(json.dumps([{"prompt": "p1", "answer": 3}, {"prompt": "p2", "answer": 2.5}]))
    task = DatasetTask(path=str(whole), test_fraction=0.0)
    assert [p.reference for p in task.problems("train")] == ["3", "2.5"]
    lines = tmp_path / "b.json"
    lines.write_text('{"prompt": "p1", "answer": 3}\n{"prompt": "p2", "answer": 4}\n')
    ids = [p.id for p in DatasetTask(path=str(lines), test_fraction=0.0).problems("train")]
    assert ids == [prompt_id("p1"), prompt_id("p2")] and all(re.fullmatch(r"p-[0-9a-f]{12}", i) for i in ids)
    one = tmp_path / "one.json"
    one.write_text('{"prompt": "p1", "answer": 5}\n')  # one object: one record (JSON Lines of one line)
    [problem] = DatasetTask(path=str(one), test_fraction=0.0).problems("train")
    assert problem.id == prompt_id("p1") and problem.reference == "5" and problem.metadata["source"].endswith("one.json:1")
    whole.write_text('"p1"')
    with pytest.raises(ValueError, match=r"a\.json: a JSON file must hold a list of records \(JSON objects\), not str"):
        DatasetTask(path=str(whole))


def test_a_test_split_that_shares_problems_with_the_train_split_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [dict(r, id=f"q{i}") for i, r in enumerate(ROWS[:8])])
    test = write_jsonl(tmp_path / "test.jsonl", [dict(r, id=f"t{i}") for i, r in enumerate(ROWS)][6:])
    with pytest.raises(ValueError, match=r"test_path shares 2 problems with path: the same prompt \(e\.g\. test "
                                         r"'t6' is train 'q6'\); the test split must be held out"):
        DatasetTask(path=train, test_path=test, prompt_key="question", answer_key="target")
    rows = [dict(ROWS[i % 6], id=f"q{i}", part="fit" if i < 6 else "eval") for i in range(8)]
    path = write_jsonl(tmp_path / "parts.jsonl", rows)
    with pytest.raises(ValueError, match=r"\(part=eval\) shares 2 problems with part=fit: the same prompt \(e\.g\. "
                                         r"test 'q6' is train 'q0'\); the test split must be held out"):
        DatasetTask(path=path, prompt_key="question", answer_key="target", split_key="part", split="fit",
                    test_split="eval")
    # splits numbered on their own, or files of the same name without ids, hold different problems: fine
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    own = write_jsonl(tmp_path / "a" / "qa.jsonl", [dict(r, id=i) for i, r in enumerate(ROWS[:8])])
    other = write_jsonl(tmp_path / "b" / "qa.jsonl", [dict(r, id=i) for i, r in enumerate(ROWS[8:])])
    task = DatasetTask(path=own, test_path=other, prompt_key="question", answer_key="target")
    assert len(task.problems("test")) == len(ROWS) - 8
    bare = [write_jsonl(tmp_path / d / "bare.jsonl", rows) for d, rows in (("a", ROWS[:8]), ("b", ROWS[8:]))]
    task = DatasetTask(path=bare[0], test_path=bare[1], prompt_key="question", answer_key="target")
    assert len(task.problems("test")) == len(ROWS) - 8


def test_the_split_of_id_less_records_survives_reordering_renaming_and_edits(tmp_path):
    """Before, an id-less record's id was file:line: reversing the file, renaming it, or fixing a
    bad line (as the loader's own error asks) moved test problems into training. Now the id is
    made from the prompt, so an edited answer does not move its record either."""
    rows = [{"question": f"What is {i} plus {i}?", "target": str(2 * i)} for i in range(30)]

    def split(path):
        task = DatasetTask(path=str(path), prompt_key="question", answer_key="target")
        return {p.prompt for p in task.problems("test")}

    first = split(write_jsonl(tmp_path / "qa.jsonl", rows))
    assert 0 < len(first) < len(rows)
    assert split(write_jsonl(tmp_path / "reversed.jsonl", rows[::-1])) == first
    (tmp_path / "other").mkdir()
    assert split(write_jsonl(tmp_path / "other" / "renamed.jsonl", rows)) == first
    edited = [dict(r, target=r["target"] + " ", note="checked") for r in rows]  # answers and fields edited
    assert split(write_jsonl(tmp_path / "edited.jsonl", edited)) == first
    for extra in range(5):  # a line added back, whichever: at most one prompt crosses the boundary, each way
        fixed = rows[:3] + [{"question": f"What is {100 + extra} plus 1?", "target": str(101 + extra)}] + rows[3:]
        now = split(write_jsonl(tmp_path / f"fixed{extra}.jsonl", fixed)) - {f"What is {100 + extra} plus 1?"}
        assert len(first - now) <= 1 and len(now - first) <= 1


def test_a_split_column_of_integers_or_booleans_is_selected_by_its_text(tmp_path):
    rows = [dict(r, fold=1 + i % 2, held=i % 3 == 0) for i, r in enumerate(ROWS)]
    path = parquet(tmp_path / "folds.parquet", rows)
    task = DatasetTask(path=path, prompt_key="question", answer_key="target", split_key="fold", split=1, test_split=2)
    assert (len(task.problems("train")), len(task.problems("test"))) == (6, 6)
    task = DatasetTask(path=path, prompt_key="question", answer_key="target", split_key="held", split=False,
                       test_split="True")
    assert sorted(int(p.reference) - 2 for p in task.problems("test")) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match=r"no record has fold = '3' \(values found: '1', '2'\)"):
        DatasetTask(path=path, prompt_key="question", answer_key="target", split_key="fold", split=1, test_split=3)


UNFIT_JSONL = [  # (line as written, field named, message)
    ('{"prompt": "p", "answer": NaN}', "answer", "is NaN; give a finite number or a string"),
    ('{"prompt": "p", "answer": Infinity}', "answer", "is infinite; give a finite number or a string"),
    ('{"prompt": "p", "answer": -Infinity}', "answer", "is infinite; give a finite number or a string"),
    ('{"prompt": "p", "answer": 1e999}', "answer", "is infinite; give a finite number or a string"),
    ('{"prompt": "x\\ud800", "answer": "1"}', "prompt", r"holds an unpaired surrogate (\ud800); the text is not valid Unicode"),
    ('{"prompt": [{"role": "user", "content": "\\udfff"}], "answer": "1"}', "prompt[0].content", "unpaired surrogate (\\udfff)"),
    ('{"prompt": "p", "answer": "1\\ud83d"}', "answer", "unpaired surrogate (\\ud83d)"),
    ('{"prompt": "p", "answer": "1", "id": "\\ud800"}', "id", "unpaired surrogate"),
    ('{"prompt": "p", "answer": "1", "sys": "\\ud800"}', "sys", "unpaired surrogate"),
    ('{"prompt": "p", "answer": "1", "m": ["\\ud800"]}', "m", "unpaired surrogate"),
]


@pytest.mark.parametrize("line,field,message", UNFIT_JSONL, ids=[f"{u[1]}-{i}" for i, u in enumerate(UNFIT_JSONL)])
def test_a_value_no_prompt_or_answer_can_hold_is_refused_by_place_and_field(tmp_path, line, field, message):
    path = write_jsonl(tmp_path / "a.jsonl", ['{"prompt": "ok", "answer": "2", "id": "first", "sys": "s"}', line])
    with pytest.raises(RecordError) as info:
        DatasetTask(path=path, system_prompt_key="sys" if field == "sys" else None, metadata_keys=["m"])
    assert info.value.field == field and str(info.value).startswith(f"{path}:2: field {field!r}: ")
    assert message in str(info.value)
    str(info.value).encode("utf-8")  # the message names the surrogate without holding it


def test_a_float_column_nan_answer_is_refused(tmp_path):
    path = parquet(tmp_path / "n.parquet", [{"prompt": "a", "answer": 1.5}, {"prompt": "b", "answer": float("nan")}])
    with pytest.raises(RecordError, match=r"n\.parquet row 1: field 'answer': is NaN; give a finite number or a string"):
        DatasetTask(path=path)


@pytest.mark.parametrize("content,message", [
    ("[" * 100_000, "not readable JSON: nested too deeply"),
    ('{"prompt": "p", "answer": ' + "1" * 5000 + "}", "not readable JSON: an integer has more than 4300 digits"),
    ('{"prompt": "p", "answer": "', "not valid JSON"),
], ids=["nested", "long-integer", "cut-short"])
def test_json_that_cannot_be_read_names_the_file_and_line(tmp_path, content, message):
    path = write_jsonl(tmp_path / "a.jsonl", ['{"prompt": "ok", "answer": "2"}', content])
    with pytest.raises(RecordError, match=rf"a\.jsonl:2: {message}"):
        DatasetTask(path=path)
    whole = tmp_path / "a.json"
    whole.write_text(content)
    with pytest.raises(ValueError, match=rf"a\.json(:1)?: {message}"):
        DatasetTask(path=str(whole))


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"prompt": "ok", "answer": "2"}\n\n{"prompt": "caf\xff", "answer": "2"}\n')
    with pytest.raises(RecordError, match=r"a\.jsonl:3: not valid UTF-8 \(byte 0xff at byte 16 of the line\); "
                                          r"save the file as UTF-8"):
        DatasetTask(path=str(path))
    whole = tmp_path / "a.json"
    whole.write_bytes(b'[\n{"prompt": "caf\xff", "answer": "2"}]')
    with pytest.raises(RecordError, match=r"a\.json:2: not valid UTF-8 \(byte 0xff\)"):
        DatasetTask(path=str(whole))


@pytest.mark.parametrize("option,value,message", [
    ("test_fraction", "0.2", r"options\.test_fraction must be a number in \[0, 1\) \(got '0\.2', a str\)"),
    ("test_fraction", True, r"options\.test_fraction must be a number"),
    ("test_fraction", 1.0, r"options\.test_fraction must be in \[0, 1\) \(got 1\.0\)"),
    ("test_path", 3, r"options\.test_path must be a string \(got 3, a int\)"),
    ("split", ["train"], r"options\.split must be a split name"),
    ("prompt_key", None, r"options\.prompt_key must be a key of the records \(got None"),
    ("answer_key", 1, r"options\.answer_key must be a key of the records"),
    ("metadata_keys", [1], r"options\.metadata_keys must be a list of keys"),
    ("test_split", "train", r"options\.split and options\.test_split must differ \(both 'train'\)"),
])
def test_option_values_of_the_wrong_type_are_refused_naming_the_option(tmp_path, option, value, message):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    options = {"prompt_key": "question", "answer_key": "target", option: value}
    with pytest.raises(ValueError, match=message):
        DatasetTask(path=path, **options)


def test_an_empty_test_split_is_empty_and_evaluating_on_it_says_what_to_set(tmp_path):
    from distil_core.training.evaluate import evaluation_split

    one = DatasetTask(path=write_jsonl(tmp_path / "one.jsonl", ROWS[:1]), prompt_key="question", answer_key="target")
    assert len(one.problems("train")) == 1 and one.problems("test") == []  # eval.split: validation needs none
    none = DatasetTask(path=write_jsonl(tmp_path / "a.jsonl", ROWS), prompt_key="question", answer_key="target",
                       test_fraction=0.0)
    for task in (one, none):
        with pytest.raises(ConfigError, match=r"task 'dataset' has no test problems to evaluate on; give it a test "
                                             r"split \(for the dataset task: options\.test_path, or "
                                             r"options\.test_fraction > 0\), or set eval\.split=validation"):
            evaluation_split(task, "test", 10)
    train, held = evaluation_split(none, "validation", 2)
    assert (len(train), len(held)) == (len(ROWS) - 2, 2)


def test_numeric_answers_are_written_as_plain_decimals(tmp_path):
    rows = [{"prompt": "p1", "answer": 0.00001}, {"prompt": "p2", "answer": 1e20}, {"prompt": "p3", "answer": float(2**60)},
            {"prompt": "p4", "answer": 2.5}, {"prompt": "p5", "answer": -0.1}, {"prompt": "p6", "answer": 7}]
    expected = ["0.00001", "100000000000000000000", "1152921504606846976", "2.5", "-0.1", "7"]
    jsonl = DatasetTask(path=write_jsonl(tmp_path / "a.jsonl", rows), test_fraction=0.0)
    assert [p.reference for p in jsonl.problems("train")] == expected
    table = DatasetTask(path=parquet(tmp_path / "a.parquet", [dict(r, answer=float(r["answer"])) for r in rows]),
                        test_fraction=0.0)
    assert [p.reference for p in table.problems("train")] == expected
    verifier = MathAnswerVerifier()
    assert all(verifier.verify(p, rollout(f"\\boxed{{{p.reference}}}")).passed for p in jsonl.problems("train"))


def test_a_utf8_byte_order_mark_opening_a_file_is_skipped(tmp_path):
    body = "".join(json.dumps(r) + "\n" for r in ROWS)
    for name, text in (("a.jsonl", body), ("a.json", json.dumps(ROWS))):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        task = DatasetTask(path=str(path), prompt_key="question", answer_key="target", test_fraction=0.0)
        assert [p.prompt for p in task.problems("train")] == [r["question"] for r in ROWS]
    path = tmp_path / "bad.jsonl"  # a bad byte after the mark is still placed by the file's bytes
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xff", "answer": "2"}\n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: not valid UTF-8 \(byte 0xff at byte 19 of the line\)"):
        DatasetTask(path=str(path))


@pytest.mark.parametrize("tests,message", [
    ("[" * 100_000, "holds JSON nested too deeply to read"),
    ("[" + "9" * 5000 + "]", "holds an integer of more than 4300 digits, more than Python reads from JSON; write it as a string"),
], ids=["nested", "long-integer"])
def test_a_json_string_field_that_cannot_be_read_names_its_place_and_field(tmp_path, tests, message):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "ok", "tests": ["assert True"]}, {"prompt": "p", "tests": tests}])
    with pytest.raises(RecordError, match=rf"t\.jsonl:2: field 'tests': {message}"):
        DatasetTask(path=path, tests_key="tests", test_fraction=0.0)


def test_the_held_out_share_keeps_every_record_of_a_test_prompt_out_of_train(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": r["question"], "answer": r["target"]} for r in ROWS] * 2)
    task = DatasetTask(path=path)
    train, test = task.problems("train"), task.problems("test")
    assert test and len(train) + len(test) == 2 * len(ROWS)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert len(test) == 2 * len({p.prompt for p in test})  # both copies of each held-out prompt
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "q", "answer": "1"}] * 3)
    with pytest.raises(ValueError, match=r"test_fraction 0\.2 leaves no train problem: every record repeats a prompt"):
        DatasetTask(path=same)
