"""The `human` feedback source: which entries it returns for a rollout, and as what."""

from datetime import datetime, timedelta, timezone

import pytest
from human_testlib import entry

from distil_core import ConfigError, ContextTemplate, FeedbackSource, PluginHost, Problem, Rollout, Verdict
from distil_human.feedback import HumanFeedback
from distil_human.store import CorrectionStore

PROBLEM = Problem(id="sort-12", prompt="sort 12", reference="12")
WRONG = Rollout(problem_id="sort-12", group_index=0, response_text="21", response_ids=[5, 6])
OTHER = Rollout(problem_id="sort-12", group_index=1, response_text="11", response_ids=[5, 5])
FAILED = Verdict(score=0.0, passed=False, answer="21")
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "human.sqlite")
    with CorrectionStore(path) as store:
        store.add(entry(response="21", text="You swapped the digits.", created_at=T0))
        store.add(entry(response="21", kind="solution", text="12", created_at=T0 + timedelta(hours=1)))
        store.add(entry(response=None, text="Sorting means smallest digit first.", created_at=T0 + timedelta(hours=2)))
        store.add(entry(response="11", text="You lost the 2.", created_at=T0 + timedelta(hours=3)))
        store.add(entry(problem_id="sort-34", response="21", text="Another problem entirely.", created_at=T0))
    return path


def _texts(items):
    return [(i.kind, i.text, i.data["about"]) for i in items]


def test_entries_about_this_response_and_the_problem_become_items(db):
    source = HumanFeedback(db=db)
    assert isinstance(source, FeedbackSource)
    items = source.feedback(PROBLEM, WRONG, FAILED, [])
    assert _texts(items) == [
        ("demonstration", "Correct solution: 12", "this response"),
        ("human_correction", "You swapped the digits.", "this response"),
        ("human_correction", "Sorting means smallest digit first.", "the problem"),
    ]
    assert {i.source for i in items} == {"human"} and items[1].data["author"] == ""
    assert _texts(source.feedback(PROBLEM, OTHER, FAILED, [])) == [
        ("human_correction", "You lost the 2.", "this response"),
        ("human_correction", "Sorting means smallest digit first.", "the problem"),
    ]
    unknown = Problem(id="sort-56", prompt="sort 56", reference="56")
    assert source.feedback(unknown, WRONG.model_copy(update={"problem_id": "sort-56"}), FAILED, []) == []


def test_match_problem_uses_every_entry_of_the_problem_and_max_items_cuts(db):
    items = HumanFeedback(db=db, match="problem", max_items=10).feedback(PROBLEM, WRONG, FAILED, [])
    assert _texts(items)[-1] == ("human_correction", "You lost the 2.", "another response") and len(items) == 4
    two = HumanFeedback(db=db, match="problem", max_items=2).feedback(PROBLEM, OTHER, FAILED, [])
    assert _texts(two) == [("human_correction", "You lost the 2.", "this response"),
                           ("human_correction", "Sorting means smallest digit first.", "the problem")]


def test_items_are_rendered_into_the_expert_context_as_feedback(db):
    items = HumanFeedback(db=db).feedback(PROBLEM, WRONG, FAILED, [])
    text = ContextTemplate().render("sort 12", items, None)
    assert text == ("sort 12\nFeedback on an earlier unsuccessful attempt: Correct solution: 12\n"
                    "You swapped the digits.\nSorting means smallest digit first.\n"
                    "Solve the original question correctly.")


def test_built_by_name_through_the_entry_point(db, tmp_path):
    host = PluginHost(load_entrypoints=True, allow=["human"])
    info = host.plugins["human"]
    assert info.error is None and info.distribution == "distil-human"
    assert set(info.registered) == {("feedback_source", "human"), ("command", "review"), ("command", "corrections")}
    source = host.build("feedback_source", "human", {"db": db, "match": "problem", "max_items": 1})
    assert len(source.feedback(PROBLEM, WRONG, FAILED, [])) == 1
    with pytest.raises(ConfigError, match="Did you mean 'max_items'"):
        host.build("feedback_source", "human", {"db": db, "max_item": 1})
    with pytest.raises(ConfigError, match="match must be 'response' or 'problem'"):
        host.build("feedback_source", "human", {"db": db, "match": "exact"})
    with pytest.raises(ConfigError, match="No corrections store at .*point the `db` option"):
        host.build("feedback_source", "human", {"db": str(tmp_path / "missing.sqlite")})


def test_the_store_sits_out_the_tiny_bases_pretraining(db):
    """Before, the base was pretrained on what the store held that day, under a cache key that
    held only its path: adding `human` rebuilt the base, and the run that used the corrections
    started from other weights than the ones whose responses were reviewed."""
    from distil_core.config import load_config
    from distil_core.training.runtime import base_feedback_components

    host = PluginHost(load_entrypoints=True, allow=["human"])
    config = load_config(None, ["feedback=[answer_check, {name: human, options: {db: %s}}]" % db])
    assert base_feedback_components(config, host)["feedback"] == [{"name": "answer_check", "options": {}}]


@pytest.mark.parametrize("options, said", [
    ({"db": 123}, "db must be the path of a store \\(got 123\\)"),
    ({"max_items": True}, "max_items must be a whole number >= 1 \\(got True\\)"),
])
def test_option_values_of_the_wrong_type_are_named(db, options, said):
    host = PluginHost(load_entrypoints=True, allow=["human"])
    with pytest.raises(ConfigError, match=f"feedback source 'human': {said}"):
        host.build("feedback_source", "human", {"db": db, **options})


def test_the_same_advice_stored_twice_takes_one_place(tmp_path):
    """A store written before entries had content ids can hold one text twice (a double save);
    it is given once, so it does not push distinct advice out of max_items."""
    path = str(tmp_path / "twice.sqlite")
    with CorrectionStore(path) as store:
        for hours in (0, 1):
            store.add(entry(response="21", text="You swapped the digits.", created_at=T0 + timedelta(hours=hours)))
        store.add(entry(response=None, text="Sorting means smallest digit first.", created_at=T0))
        assert store.count() == 3
    items = HumanFeedback(db=path, max_items=2).feedback(PROBLEM, WRONG, FAILED, [])
    assert _texts(items) == [("human_correction", "You swapped the digits.", "this response"),
                             ("human_correction", "Sorting means smallest digit first.", "the problem")]
