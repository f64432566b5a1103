"""Loaders: the shipped fixtures load; a bad record stops the load naming file:line and field."""

import json

import pytest

from distil_tasks import CodeTask, MathTask, RecordError, ScienceTask
from distil_tasks.common import split_by_id

from tasks_testlib import fixture, fixture_records, write_jsonl

FORMATS = {
    "gsm8k": MathTask, "math": MathTask, "humaneval": CodeTask, "mbpp": CodeTask,
    "livecodebench": CodeTask, "sciknoweval": ScienceTask,
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fixture_loads_into_both_splits(fmt):
    task = FORMATS[fmt](path=fixture(fmt), format=fmt)
    train, test = task.problems("train"), task.problems("test")
    records = fixture_records(fmt)
    assert len(train) + len(test) == len(records) >= 4
    assert train and test
    for p in train + test:
        assert p.user_text().strip() and p.reference
        assert p.metadata["source"].startswith(fixture(fmt) + ":")


def test_gsm8k_reference_and_steps_come_from_the_answer():
    task = MathTask(path=fixture("gsm8k"), format="gsm8k", test_fraction=0.0)
    first = next(p for p in task.problems("train") if p.metadata["source"].endswith("gsm8k.jsonl:1"))
    assert first.reference == "29"
    assert first.metadata["steps"] == [{"expr": "6*8", "value": "48"}, {"expr": "48-19", "value": "29"}]
    assert "<<" not in first.metadata["solution"]


def test_math_reference_is_the_last_boxed_or_the_answer_field():
    problems = {p.user_text(): p for p in MathTask(path=fixture("math"), format="math", test_fraction=0.0).problems("train")}
    assert problems["What is $\\sqrt{50}$ in simplest radical form?"].reference == "5\\sqrt{2}"
    assert problems["Compute $3^4 - 4^2$."].reference == "65"


def test_humaneval_asserts_become_one_test_each_with_the_entry_point():
    problems = {p.id: p for p in CodeTask(path=fixture("humaneval"), format="humaneval", test_fraction=0.0).problems("train")}
    assert problems["Fixture/0"].reference["asserts"] == [
        "assert count_vowels('hello') == 2", "assert count_vowels('') == 0", "assert count_vowels('AEIOU xyz') == 5",
    ]
    assert problems["Fixture/2"].reference["asserts"] == ["check(is_palindrome)"]  # a loop: one test
    assert problems["Fixture/0"].metadata["solution"].startswith("def count_vowels")


def test_livecodebench_stdin_and_functional_tests():
    problems = {p.id: p for p in CodeTask(path=fixture("livecodebench"), format="livecodebench", test_fraction=0.0).problems("train")}
    assert problems["fx1"].reference["io"][0] == {"stdin": "1 2\n", "stdout": "3\n"}
    assert len(problems["fx1"].reference["io"]) == 3  # public + private
    assert problems["fx4"].reference == {
        "entry_point": "hasPairSum",
        "calls": [{"args": [[1, 4, 6], 10], "expected": True}, {"args": [[5], 10], "expected": False}],
    }


def test_sciknoweval_prompt_lists_the_options_and_asks_for_tags():
    problems = {p.id: p for p in ScienceTask(path=fixture("sciknoweval"), format="sciknoweval", test_fraction=0.0).problems("train")}
    p = problems["ske-2"]
    assert p.reference == "C" and "C) Newton" in p.prompt and "<answer></answer>" in p.prompt
    assert problems["ske-4"].metadata["labels"] == ["A", "B", "C", "D"]  # a plain list of choices
    assert problems["ske-5"].metadata["labels"] == ["A", "B", "C"]


def _broken(tmp_path, fmt, field, value, line=3):
    """The fixture with record ``line`` changed: ``field`` set to ``value`` (None deletes it)."""
    records = fixture_records(fmt)
    record = records[line - 1]
    if value is None:
        record.pop(field, None)
    else:
        record[field] = value
    return write_jsonl(tmp_path / f"bad-{fmt}.jsonl", records)


BAD = [
    ("gsm8k", "answer", "He has 5 apples.", "answer", "####"),
    ("gsm8k", "answer", "so #### five", "answer", "must be a number"),
    ("gsm8k", "question", None, "question", "missing"),
    ("gsm8k", "question", 7, "question", "must be a string"),
    ("math", "solution", "No box here.", "solution", "boxed"),
    ("math", "problem", "   ", "problem", "is empty"),
    ("humaneval", "test", "def check(candidate):\n    assert candidate(1) ==\n", "test", "not valid Python"),
    ("humaneval", "test", "assert True\n", "test", "check(candidate)"),
    ("humaneval", "entry_point", "not a name", "entry_point", "function name"),
    ("mbpp", "test_list", [], "test_list", "is empty"),
    ("mbpp", "test_list", ["assert f(1) == 1", 5], "test_list[1]", "assert statement"),
    ("mbpp", "test_list", "not json", "test_list", "not a JSON list"),
    ("mbpp", "test_imports", ["import math", "math.pi = 3"], "test_imports[1]", "import statement"),
    ("mbpp", "test_imports", ["import"], "test_imports[0]", "not valid Python"),
    ("mbpp", "text", None, "text", "and so is 'prompt'"),
    ("livecodebench", "public_test_cases", [{"input": "1", "testtype": "stdin"}], "public_test_cases[0].output", "must be a string"),
    ("livecodebench", "public_test_cases", [{"input": "1", "output": "1", "testtype": "file"}], "public_test_cases[0].testtype", "stdin"),
    ("livecodebench", "metadata", "{}", "metadata.func_name", "function to call"),
    ("sciknoweval", "answerKey", "E", "answerKey", "not one of the option letters"),
    ("sciknoweval", "answerKey", None, "answerKey", "missing"),
    ("sciknoweval", "choices", {"text": ["a", "b"], "label": ["A"]}, "choices.label", "one per option"),
    ("sciknoweval", "choices", "A or B", "choices", "missing"),
    ("sciknoweval", "choices", [1.5, float("inf"), 3, 4], "choices.text[1]", "is infinite; give a finite number"),
    ("sciknoweval", "explanation", "\udc80", "explanation", "unpaired surrogate (\\udc80)"),
]


@pytest.mark.parametrize("fmt,field,value,named,message", BAD, ids=[f"{b[0]}-{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_record_is_reported_with_file_line_and_field(tmp_path, fmt, field, value, named, message):
    path = _broken(tmp_path, fmt, field, value)
    with pytest.raises(RecordError) as info:
        FORMATS[fmt](path=path, format=fmt)
    err = info.value
    assert (err.path, err.line, err.field) == (path, 3, named)
    assert str(err).startswith(f"{path}:3: field {named!r}: ")
    assert message in str(err)


def test_broken_json_and_non_objects_and_duplicates_name_the_line(tmp_path):
    good = fixture_records("gsm8k")[0]
    path = write_jsonl(tmp_path / "a.jsonl", [good, "", '{"question": "x", ', good])
    with pytest.raises(RecordError, match=r"a\.jsonl:3: not valid JSON"):
        MathTask(path=path, format="gsm8k")
    # a line cut short is placed at its end (it was "column 1": the decoder read past the line's end)
    path = tmp_path / "cut.jsonl"
    path.write_text('{"question": "What is 3 times 11?", "answer": "#### 33"\n')
    with pytest.raises(RecordError, match=r"cut\.jsonl:1: not valid JSON \(Expecting ',' delimiter at column 56\)"):
        MathTask(path=str(path), format="gsm8k")
    path = write_jsonl(tmp_path / "b.jsonl", [good, [1, 2]])
    with pytest.raises(RecordError, match=r"b\.jsonl:2: a record must be a JSON object, not list"):
        MathTask(path=path, format="gsm8k")
    path = write_jsonl(tmp_path / "c.jsonl", [dict(good, id="x"), dict(good, id="y"), dict(good, id="x")])
    with pytest.raises(RecordError, match=r"c\.jsonl:3: duplicate problem id 'x' \(first at line 1\)"):
        MathTask(path=path, format="gsm8k")


def test_unknown_format_missing_file_and_empty_file_are_clear(tmp_path):
    with pytest.raises(ValueError, match="format must be one of \\['gsm8k', 'math'\\]"):
        MathTask(path=fixture("gsm8k"), format="gsm8")
    with pytest.raises(ValueError, match="does not exist"):
        MathTask(path=str(tmp_path / "none.jsonl"), format="gsm8k")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no records"):
        MathTask(path=str(empty), format="gsm8k")


def test_split_depends_on_ids_not_on_line_order(tmp_path):
    # distinct prompts: a repeated prompt follows its held-out copy (see the test below)
    records = [dict(r, id=f"q{i}", question=f"{r['question']} (#{i})") for i, r in enumerate(fixture_records("gsm8k") * 3)]
    a = MathTask(path=write_jsonl(tmp_path / "a.jsonl", records), format="gsm8k", test_fraction=0.25)
    b = MathTask(path=write_jsonl(tmp_path / "b.jsonl", records[::-1]), format="gsm8k", test_fraction=0.25)
    assert sorted(p.id for p in a.problems("test")) == sorted(p.id for p in b.problems("test"))
    assert len(a.problems("test")) == round(len(records) * 0.25)
    assert not {p.id for p in a.problems("test")} & {p.id for p in a.problems("train")}
    repeated = [dict(r, id=f"q{i}") for i, r in enumerate(fixture_records("gsm8k") * 3)]
    c = MathTask(path=write_jsonl(tmp_path / "c.jsonl", repeated), format="gsm8k", test_fraction=0.25)
    assert not {p.prompt for p in c.problems("test")} & {p.prompt for p in c.problems("train")}


def test_split_keeps_one_test_record_on_tiny_files_and_test_path_overrides(tmp_path):
    from distil_core import Problem

    two = [Problem(id=i, prompt=f"q{i}") for i in ("a", "b")]
    assert [len(v) for v in split_by_id(two, 0.2).values()] == [1, 1]
    assert split_by_id(two, 0.0)["test"] == []
    records = fixture_records("gsm8k")
    half = len(records) // 2
    train = write_jsonl(tmp_path / "train.jsonl", [dict(r, id=f"t{i}") for i, r in enumerate(records[:half])])
    test = write_jsonl(tmp_path / "test.jsonl", [dict(r, id=f"h{i}") for i, r in enumerate(records[half:])])
    task = MathTask(path=train, format="gsm8k", test_path=test)
    assert (len(task.problems("train")), len(task.problems("test"))) == (half, len(records) - half)


@pytest.mark.parametrize("field,value,message", [
    ("public_test_cases", json.dumps([{"input": "2\n1000", "output": "1" + "0" * 5000, "testtype": "functional"}]),
     r"field 'test case 0': holds an integer of more than 4300 digits"),
    ("public_test_cases", "[" * 50_000, r"field 'public_test_cases': holds JSON nested too deeply to read"),
    ("metadata", "[" * 50_000, r"field 'metadata': holds JSON nested too deeply to read"),
], ids=["long-integer-output", "nested-cases", "nested-metadata"])
def test_livecodebench_json_that_cannot_be_read_names_its_place_and_field(tmp_path, field, value, message):
    good = {"question_id": "a", "question_content": "Add.", "metadata": json.dumps({"func_name": "add"}),
            "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}])}
    path = write_jsonl(tmp_path / "lcb.jsonl", [good, dict(good, question_id="b", **{field: value})])
    with pytest.raises(RecordError, match=rf"lcb\.jsonl:2: {message}"):
        CodeTask(path=path, format="livecodebench")


def test_gsm8k_reference_is_the_text_after_the_last_marker(tmp_path):
    record = {"question": "q", "answer": "First #### was a slip. <<2+3=5>> #### 5"}
    [problem] = MathTask(path=write_jsonl(tmp_path / "g.jsonl", [record]), format="gsm8k", test_fraction=0.0).problems("train")
    assert problem.reference == "5" and problem.metadata["steps"] == [{"expr": "2+3", "value": "5"}]
