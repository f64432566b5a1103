"""The review queue (grouping, sorting, filters) and the verifier check of solutions, shared by
the terminal and the browser desk; the store's `verified` mark and the feedback option that
skips unverified solutions."""


import pytest
from human_testlib import Terminal, distil_argv, entry, plugin_env, response_hash, rollout_record, write_run, write_version_1_store

from distil_core import ConfigError, Problem, Verdict
from distil_core.builtin import DigitsTask
from distil_human.feedback import HumanFeedback
from distil_human.review import PROMPT, STORE_ANYWAY, TEXT_PROMPT
from distil_human.review_queue import QueueFilter, build_queue, parse_steps, queue_items, read_records, read_rollouts
from distil_human.schema import SCHEMA_VERSION
from distil_human.store import CorrectionStore
from distil_human.verify import SolutionChecker

TASK = {"length": 2, "train_size": 80, "test_size": 16}


def _cut_off(record):
    return {**record, "finished": False, "verdict": {**record["verdict"], "answer": None}}


RECORDS = [
    rollout_record("sort-12", "21", step=1),
    rollout_record("sort-12", "12", passed=True, step=1, group_index=1),
    rollout_record("sort-34", "43", step=1, reference="34"),
    rollout_record("sort-34", "44", step=2, reference="34"),
    rollout_record("sort-34", "43", step=2, group_index=1, reference="34"),
    rollout_record("sort-56", "65", step=3, reference="56"),
    rollout_record("sort-56", "56", passed=True, step=3, group_index=1, reference="56"),
    rollout_record("sort-56", "56", passed=True, step=3, group_index=2, reference="56"),
    _cut_off(rollout_record("sort-78", "7", step=2, reference="78")),
]


def _queue(tmp_path, sort="failing", reviewed=frozenset(), **filters):
    records, _ = read_records(write_run(tmp_path / "run", RECORDS))
    return build_queue(records, set(reviewed), sort, QueueFilter(**filters))


def test_problems_are_grouped_and_sorted_by_each_criterion(tmp_path):
    queue = _queue(tmp_path)
    assert [(g.problem_id, g.failing, g.samples, len(g.items)) for g in queue] == [
        ("sort-34", 3, 3, 2), ("sort-12", 1, 2, 1), ("sort-56", 1, 3, 1), ("sort-78", 1, 1, 1)]
    assert queue[0].items[0].seen == 2 and queue[0].items[0].steps == [1, 2]
    assert [g.problem_id for g in _queue(tmp_path, "pass_rate")] == ["sort-34", "sort-78", "sort-12", "sort-56"]
    assert [g.problem_id for g in _queue(tmp_path, "recent")] == ["sort-56", "sort-34", "sort-78", "sort-12"]
    done = {("sort-34", response_hash("43")), ("sort-34", response_hash("44"))}
    assert [g.problem_id for g in _queue(tmp_path, "unreviewed", done)][-1] == "sort-34"
    assert [g.problem_id for g in _queue(tmp_path, reviewed=done, only_unreviewed=True)] == [
        "sort-12", "sort-56", "sort-78"]
    assert [i.key[0] for i in queue_items(queue)] == ["sort-34", "sort-34", "sort-12", "sort-56", "sort-78"]
    with pytest.raises(ConfigError, match="sort 'worst' is not one of failing, pass_rate"):
        _queue(tmp_path, "worst")


def test_a_verdict_whose_passed_is_not_a_boolean_is_skipped_naming_the_field(tmp_path):
    odd = rollout_record("sort-90", "90", step=1, reference="09")
    odd["verdict"]["passed"] = "false"  # a true string: it would hide a failure from the queue
    records, skipped = read_rollouts(write_run(tmp_path / "run", RECORDS + [odd]))
    assert len(records) == len(RECORDS)
    assert len(skipped) == 1 and skipped[0].endswith(f":{len(RECORDS) + 1}: field 'verdict.passed' is not true or false")


def test_filters_by_verdict_source_and_step(tmp_path):
    assert [g.problem_id for g in _queue(tmp_path, verdict="cut_off")] == ["sort-78"]
    assert [g.problem_id for g in _queue(tmp_path, verdict="no_answer")] == ["sort-78"]
    assert "sort-78" not in [g.problem_id for g in _queue(tmp_path, verdict="wrong_answer")]
    assert _queue(tmp_path, source="human") == []
    assert len(_queue(tmp_path, source="answer_check")) == 4
    step2 = _queue(tmp_path, steps=parse_steps("2"))
    assert [(g.problem_id, g.failing, g.samples) for g in step2] == [("sort-34", 2, 2), ("sort-78", 1, 1)]
    assert [g.problem_id for g in _queue(tmp_path, steps=parse_steps("3-"))] == ["sort-56"]
    assert parse_steps("-2") == (None, 2) and parse_steps("") == (None, None)
    with pytest.raises(ConfigError, match=r"--steps 'two': give a step \(7\) or a range"):
        parse_steps("two")
    with pytest.raises(ConfigError, match=r"--steps '5-1': the range runs backwards; give the first step first \(1-5\)"):
        parse_steps("5-1")  # before: "Nothing to review"
    with pytest.raises(ConfigError, match="verdict filter 'odd' is not one of failed"):
        QueueFilter(verdict="odd")


def _run_with_config(tmp_path):
    """A hand-written run of the digits task with the config.yaml a run writes."""
    problem = DigitsTask(**TASK).problems("train")[0]
    run = write_run(tmp_path / "run", [rollout_record(problem.id, "x", reference=problem.reference),
                                       rollout_record(problem.id, "y", group_index=1, reference=problem.reference)])
    (tmp_path / "run" / "config.yaml").write_text(
        "task: {name: digits, options: {length: 2, train_size: 80, test_size: 16}}\nverifier: {name: exact_match}\n")
    return run, problem


def test_a_solution_is_graded_by_the_runs_own_verifier(tmp_path):
    run, problem = _run_with_config(tmp_path)
    checker = SolutionChecker(run)
    good, bad = checker.check(problem.id, problem.reference), checker.check(problem.id, "999")
    assert good.verified is True and not good.refused
    assert bad.refused and bad.reason == (f"verifier 'exact_match': failed, score 0.00, answer '999' "
                                          f"(expected: {problem.reference}; got: 999; finished: true)")
    unknown = checker.check("sort-nope", "1")
    assert unknown.verified is None and "the run's task has no problem 'sort-nope'" in unknown.reason
    bare = SolutionChecker(write_run(tmp_path / "bare", RECORDS)).check("sort-12", "12")
    assert bare.verified is None and "config.yaml does not exist" in bare.reason
    (tmp_path / "run" / "config.yaml").write_text("task: {name: no-such-task}\n")
    broken = SolutionChecker(run).check(problem.id, "1")
    assert broken.verified is None and "could not be built from" in broken.reason and "no-such-task" in broken.reason


def test_the_terminal_refuses_a_failing_solution_unless_told_to_keep_it(tmp_path):
    run, problem = _run_with_config(tmp_path)
    db = str(tmp_path / "human.sqlite")
    term = Terminal(distil_argv("review", run, "--db", db, "--author", "bo"), plugin_env())
    for text, keep in (("999", "n"), ("998", "y"), (str(problem.reference), None)):
        term.expect(PROMPT)
        term.line("s")
        term.expect(TEXT_PROMPT)
        term.line(text)
        term.expect(TEXT_PROMPT)
        term.line(".")
        if keep is None:
            term.expect("Checked: verifier 'exact_match': passed")
            term.expect("Saved solution")
            break
        term.expect(f"Refused: verifier 'exact_match': failed, score 0.00, answer '{text}'")
        term.expect(STORE_ANYWAY)
        term.line(keep)
        term.expect(f"Not saved. Your solution was:\n    {text}" if keep == "n" else "Saved solution")
    term.expect("That was the last failed rollout.")
    assert term.wait() == 0
    stored = [(e.text, e.verified) for e in CorrectionStore(db).all()]
    assert stored == [("998", False), (str(problem.reference), True)]


def test_skip_unverified_leaves_out_solutions_the_verifier_did_not_pass(tmp_path):
    db = str(tmp_path / "human.sqlite")
    with CorrectionStore(db) as store:
        for text, verified in (("12", True), ("21", False), ("13", None)):
            store.add(entry(response=None, kind="solution", text=text, verified=verified))
        store.add(entry(response=None, text="A critique is never verified."))
    problem = Problem(id="sort-12", prompt="sort 12", reference="12")
    from distil_core.testing import rollout
    texts = {f.text for f in HumanFeedback(db, max_items=9, skip_unverified=True).feedback(
        problem, rollout("21", "sort-12"), Verdict(score=0, passed=False))}
    assert texts == {"Correct solution: 12", "A critique is never verified."}
    assert len(HumanFeedback(db, max_items=9).feedback(problem, rollout("21", "sort-12"),
                                                       Verdict(score=0, passed=False))) == 4
    with pytest.raises(ConfigError, match="skip_unverified must be true or false"):
        HumanFeedback(db, skip_unverified="yes")


def test_a_version_1_store_is_upgraded_in_place_and_keeps_its_entries(tmp_path):
    path = str(tmp_path / "old.sqlite")
    write_version_1_store(path)
    with CorrectionStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        [old] = store.all()
        assert (old.id, old.text, old.verified) == ("a1", "12", None)
        store.add(entry(kind="solution", text="12", verified=True))
        assert [e.verified for e in store.all()] == [None, True]
