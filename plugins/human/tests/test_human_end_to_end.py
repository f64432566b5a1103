"""A real `distil train` run, reviewed through a real pseudo-terminal.

The run also reads solutions from a store (feedback source `human`), so its provenance and
its rollouts.jsonl show the human demonstrations reaching the expert's context.
"""

import json
import subprocess

import pytest
from human_testlib import Terminal, distil_argv, entry, plugin_env

from distil_core.builtin import DigitsTask
from distil_human.review import PROMPT, TEXT_PROMPT
from distil_human.review_queue import build_queue, queue_items, read_records
from distil_human.store import CorrectionStore
from distil_core.testing import FAST_RUN

TASK = {"length": 2, "train_size": 80, "test_size": 16}
RUN = FAST_RUN + [
    "model.tiny={hidden_size: 32, layers: 1, heads: 2, steps: 10, batch_size: 16, lr: 0.005, plain_fraction: 0.3}",
    "train.steps=2", "train.save_every=0", "eval.problems=4", "eval.samples=1", "eval.ks=[1]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run dir, ids of the problems that have a stored solution) after a two-step run."""
    root = tmp_path_factory.mktemp("human-e2e")
    solved = {p.id: p.reference for p in DigitsTask(**TASK).problems("train")[::2]}
    with CorrectionStore(str(root / "solutions.sqlite")) as store:
        for problem_id, answer in solved.items():
            store.add(entry(problem_id=problem_id, response=None, kind="solution", text=answer))
    feedback = f"feedback=[answer_check, {{name: human, options: {{db: '{root / 'solutions.sqlite'}'}}}}]"
    args = [a for item in RUN + [feedback] for a in ("--set", item)]
    done = subprocess.run(distil_argv("train", *args, "--output-dir", str(root / "run"), "--quiet"),
                          env=plugin_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", set(solved)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_stored_solutions_reach_the_expert_context(run):
    run_dir, solved = run
    provenance, rollouts = _rows(run_dir / "provenance.jsonl"), _rows(run_dir / "rollouts.jsonl")
    assert len(provenance) == len(rollouts) == 2 * 16
    for p, r in zip(provenance, rollouts):
        assert (p["problem_id"], p["response_hash"]) == (r["problem_id"], r["response_hash"])
        human = [f for f in p["feedback"] if f["source"] == "human"]
        assert human == ([{"source": "human", "kind": "demonstration"}] if p["problem_id"] in solved else [])
        texts = [f["text"] for f in r["feedback"] if f["source"] == "human"]
        assert texts == ([f"Correct solution: {r['reference']}"] if r["problem_id"] in solved else [])


@pytest.mark.slow
def test_review_in_a_terminal_saves_each_entry_as_it_is_entered(run, tmp_path):
    run_dir, _ = run
    items = queue_items(build_queue(read_records(str(run_dir))[0], set()))  # the order the terminal shows
    assert len(items) >= 4, "the run needs four distinct failed responses for this test"
    db, n = str(tmp_path / "review.sqlite"), len(items)
    review = distil_argv("review", str(run_dir), "--db", db, "--author", "tester")

    def shows_item(term, number, total, item):
        term.expect(f"=== {number}/{total}: problem {item.key[0]} ")
        term.expect(f"Response {item.key[1]}")
        return term.expect(PROMPT)

    def enter(term, key, lines):
        term.line(key)
        for line in lines:
            term.expect(TEXT_PROMPT)
            term.line(line)

    term = Terminal(review, plugin_env())
    first = shows_item(term, 1, n, items[0])
    assert "[answer_check/answer_check] Your answer" in first and "On record: none" in first
    enter(term, "c", ["The digits must be in ascending order.", "  You reversed them instead.", "."])
    term.expect("Saved correction")
    shows_item(term, 2, n, items[1])
    term.line("n")
    shows_item(term, 3, n, items[2])
    enter(term, "s", [str(items[2].record["reference"]), "."])
    term.expect("Saved solution")
    shows_item(term, 4, n, items[3])
    term.line("b")
    back = shows_item(term, 3, n, items[2])
    assert "solution by tester" in back and f"        {items[2].record['reference']}" in back
    term.line("n")
    shows_item(term, 4, n, items[3])
    enter(term, "c", ["Half a thought"])
    term.expect(TEXT_PROMPT)
    term.type("and the rest of it")
    term.type("\x03")  # Ctrl-C in the middle of typing
    term.expect("Stopped.")
    term.expect("Saved 2 entries this session")
    assert term.wait() == 0

    entries = CorrectionStore(db).all()
    assert [(e.problem_id, e.response_hash, e.kind) for e in entries] == [
        (*items[0].key, "correction"), (*items[2].key, "solution")]
    assert entries[0].text == "The digits must be in ascending order.\n  You reversed them instead."
    assert entries[0].run_dir == str(run_dir) and entries[0].response_text == items[0].record["response_text"]
    assert entries[1].text == str(items[2].record["reference"]) and entries[1].author == "tester"

    term = Terminal(review + ["--only-unreviewed"], plugin_env())
    term.expect(f"{n - 2} failed responses from {run_dir}, 2 already reviewed left out.")
    shows_item(term, 1, n - 2, items[1])
    term.line("q")
    term.expect("Saved 0 entries this session")
    assert term.wait() == 0
