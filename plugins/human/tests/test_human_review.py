"""`distil review` on a hand-written rollouts.jsonl: what it shows, each key, and quitting."""

import pytest
from human_testlib import Terminal, distil_argv, entry, plugin_env, response_hash, rollout_record, write_run

from distil_core import ConfigError
from distil_human.review import PROMPT, TEXT_PROMPT, ReviewSession, load_failed_rollouts
from distil_human.store import CorrectionStore

RECORDS = [
    rollout_record("sort-12", "12", passed=True),
    rollout_record("sort-12", "21", group_index=1),
    rollout_record("sort-12", "21", group_index=2),
    rollout_record("sort-34", "43", reference="34"),
    rollout_record("sort-56", "", reference="56"),
    rollout_record("sort-12", "21", step=2),
]


def _session(tmp_path, answers):
    """A session reading ``answers`` (then end of input); returns it, its store and what it wrote."""
    run = write_run(tmp_path / "run", RECORDS)
    items, _ = load_failed_rollouts(run)
    store = CorrectionStore(str(tmp_path / "human.sqlite"))
    shown, replies = [], iter(answers)

    def read(prompt):
        try:
            answer = next(replies)
        except StopIteration:
            raise EOFError from None
        if isinstance(answer, Exception):
            raise answer
        return answer

    return ReviewSession(items, store, author="ada", run_dir=run, read=read, write=shown.append), store, shown


def test_failed_responses_are_listed_once_in_sampling_order(tmp_path):
    run = write_run(tmp_path / "run", RECORDS)
    with open(f"{run}/rollouts.jsonl", "a") as fh:
        fh.write('{"step": 3, "problem_id": "sort-1')  # a run killed mid-write
    items, unreadable = load_failed_rollouts(run)
    assert [(i.key, i.seen) for i in items] == [(("sort-12", response_hash("21")), 3),
                                                (("sort-34", response_hash("43")), 1),
                                                (("sort-56", response_hash("")), 1)]
    assert unreadable == 1
    assert [i.key[0] for i in load_failed_rollouts(run, problem_id="sort-34")[0]] == ["sort-34"]
    with pytest.raises(ConfigError, match="has no rollouts.jsonl: .*train.log_rollouts: false"):
        load_failed_rollouts(str(tmp_path))
    with pytest.raises(ConfigError, match="is not a directory"):
        load_failed_rollouts(str(tmp_path / "nowhere"))


def test_each_key_does_what_it_says(tmp_path):
    session, store, written = _session(tmp_path, [
        "b",                                         # at the first one already
        "x",                                         # unknown
        "?",
        "c", "", ".",                                # empty: nothing saved
        "c", "  Swapped digits.", "", "Sort them.", "", ".",
        "s", "34", ".",
        "b", "n",                                    # back to sort-34, and on again
        "n",
    ])
    assert session.run() == 2
    shown = "\n".join(written)
    assert "This is the first one." in shown and "Unknown choice 'x'; type ? for help." in shown
    assert "end it with a line holding only '.'" in shown and "Nothing entered, nothing saved." in shown
    assert "That was the last failed rollout." in shown and "Saved 2 entries this session" in shown
    first, second = store.all()
    assert (first.problem_id, first.response_hash, first.kind) == ("sort-12", response_hash("21"), "correction")
    assert first.text == "  Swapped digits.\n\nSort them." and first.author == "ada" and first.step == 1
    assert first.response_text == "21" and first.verdict == {"score": 0.0, "passed": False, "answer": "21"}
    assert (second.problem_id, second.kind, second.text) == ("sort-34", "solution", "34")


def test_what_a_rollout_shows(tmp_path):
    session, store, _ = _session(tmp_path, [])
    store.add(entry(response="21", text="Earlier note."))
    store.add(entry(response="99", text="On another response."))
    screen = session.render(0)
    for part in ("=== 1/3: problem sort-12 (step 1, sample 1, seen 3 times) ===", "Problem:\n    sort 12",
                 "Reference: 12", f"Response {response_hash('21')}:\n    21",
                 "Verdict: failed, score 0.00, answer '21'",
                 "    expected: 12", "Feedback:\n    [answer_check/answer_check] Your answer 21 is wrong.",
                 "On record:\n    correction by ?, ", "        Earlier note.",
                 "(1 more on other responses to this problem)"):
        assert part in screen, part
    assert "Response" in session.render(2) and "    (empty)" in session.render(2)
    assert "On record: none" in session.render(1)


CLIPBOARD = "\x1b]52;c;ZWNobyBvd25lZA==\x07"  # OSC 52: write the reviewer's clipboard
CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home


def test_control_sequences_from_a_run_are_shown_as_escapes_not_sent_to_the_terminal(tmp_path):
    """A response, a program's output in feedback and a stored correction are text from outside:
    on a real terminal their escape sequences, a bare CR and a direction override are shown as
    escapes, so none of them can rewrite the screen, the clipboard or the order of the text."""
    record = rollout_record("sort-12", f"21{CLIPBOARD}")
    record["feedback"][0]["text"] = f"stdout: ok{CLEAR}\rall tests passed \u202edessap"
    run = write_run(tmp_path / "run", [record])
    db = str(tmp_path / "human.sqlite")
    CorrectionStore(db).add(entry(response=f"21{CLIPBOARD}", text="Looks fine\x1b[8m hidden"))
    term = Terminal(distil_argv("review", run, "--db", db, "--author", "bo"), plugin_env())
    shown = term.expect(PROMPT)
    term.line("q")
    assert term.wait() == 0
    for raw in (CLIPBOARD, CLEAR, "\x1b[8m", "\u202e"):
        assert raw not in shown
    for escaped in ("21\\x1b]52;c;ZWNobyBvd25lZA==\\x07", "ok\\x1b[2J\\x1b[H\\rall tests passed \\u202edessap",
                    "Looks fine\\x1b[8m hidden"):
        assert escaped in shown, escaped


def test_end_of_input_in_a_real_terminal_quits_and_keeps_what_was_saved(tmp_path):
    run = write_run(tmp_path / "run", RECORDS)
    db = str(tmp_path / "human.sqlite")
    term = Terminal(distil_argv("review", run, "--db", db, "--author", "bo", "--problem", "sort-34"), plugin_env())
    term.expect("1 failed response of problem 'sort-34' from ")
    term.expect("=== 1/1: problem sort-34")
    term.expect(PROMPT)
    term.line("s")
    term.expect(TEXT_PROMPT)
    term.line("34")
    term.expect(TEXT_PROMPT)
    term.line(".")
    term.expect("Saved solution")
    term.expect("That was the last failed rollout.")
    assert term.wait() == 0
    term = Terminal(distil_argv("review", run, "--db", db, "--author", "bo"), plugin_env())
    term.expect(PROMPT)
    term.line("c")
    term.expect(TEXT_PROMPT)
    term.line("not finished")
    term.expect(TEXT_PROMPT)
    term.type("\x04")  # Ctrl-D at the start of a line: end of input
    term.expect("Stopped.")
    term.expect("Saved 0 entries this session")
    assert term.wait() == 0
    stored = [(e.problem_id, e.kind, e.text, e.author) for e in CorrectionStore(db).all()]
    assert stored == [("sort-34", "solution", "34", "bo")]


def test_a_save_the_disk_refuses_gives_the_text_back_and_the_session_goes_on(tmp_path):
    run = write_run(tmp_path / "run", RECORDS)
    db = str(tmp_path / "human.sqlite")
    CorrectionStore(db).close()
    limit = 32 * 1024  # any file the review writes past 32 KiB fails, as on a full disk
    term = Terminal(distil_argv("review", run, "--db", db, "--author", "bo"), plugin_env(), max_file_size=limit)
    term.expect(PROMPT)
    term.line("c")
    term.expect(TEXT_PROMPT)
    term.line("Swapped digits.")
    term.expect(TEXT_PROMPT)
    term.line(".")
    term.expect("Saved correction")
    term.expect(PROMPT)
    term.line("s")
    long_lines = [f"line {i}: " + "x" * 3000 for i in range(14)]  # 42 KB: the write-ahead log outgrows the limit
    for text in long_lines:
        term.expect(TEXT_PROMPT)
        term.line(text)
    term.expect(TEXT_PROMPT)
    term.line(".")
    term.expect("NOT saved: Could not write to the corrections store")
    term.expect("Your solution was:\n")
    shown = term.expect(PROMPT)  # the session is still there, on the same rollout
    assert [line.strip() for line in shown.splitlines()[: len(long_lines)]] == long_lines
    term.line("q")
    term.expect("Saved 1 entry this session")
    assert term.wait() == 0 and "Traceback" not in term.screen
    with CorrectionStore(db) as store:  # the failed write was rolled back: the store is whole and writable
        assert [e.text for e in store.all()] == ["Swapped digits."]
        store.add(entry(text="after the failure"))


def test_input_that_is_not_utf8_is_kept_as_replacement_characters(tmp_path):
    run = write_run(tmp_path / "run", RECORDS)
    db = str(tmp_path / "human.sqlite")
    term = Terminal(distil_argv("review", run, "--db", db, "--author", "bo", "--problem", "sort-34"), plugin_env())
    term.expect(PROMPT)
    term.line("c")
    term.expect(TEXT_PROMPT)
    term.line("caf\xe9 is Latin-1: ".encode("latin-1") + "ünï".encode("utf-8") + b" \xff\xfe end")
    term.expect("(That line held bytes that are not valid UTF-8; each is kept as U+FFFD.)")
    term.expect(TEXT_PROMPT)
    term.line(".")
    term.expect("Saved correction")
    term.expect("That was the last failed rollout.")
    assert term.wait() == 0 and "Traceback" not in term.screen
    [saved] = CorrectionStore(db).all()
    assert saved.text == "caf\ufffd is Latin-1: ünï \ufffd\ufffd end"


def test_a_correction_holding_a_control_character_is_given_back_not_saved(tmp_path):
    """A NUL or a terminal's escape sequence pasted into an entry is refused, naming it, and the
    entry is given back; the next try is saved."""
    session, store, written = _session(tmp_path, ["c", "sort \x1b[201~them", ".", "c", "sort them", ".", "q"])
    session.run()
    shown = "\n".join(written)
    assert "NOT saved: text: Value error, holds the control character \\x1b at position 5" in shown
    assert "\x1b" not in shown  # given back as an escape
    assert [e.text for e in store.all()] == ["sort them"]


def test_a_line_a_strict_reader_cannot_decode_is_asked_again(tmp_path):
    bad = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    session, store, written = _session(tmp_path, ["c", bad, "kept", ".", "q"])
    assert session.run() == 1
    assert "That line was not valid UTF-8 (invalid start byte at byte 0) and could not be read; type it again." \
        in written
    assert [e.text for e in store.all()] == ["kept"]


def test_records_with_fields_of_the_wrong_type_are_skipped_not_a_crash(tmp_path):
    good = rollout_record("sort-34", "43", reference="34")
    odd = [{**rollout_record("sort-12", "21"), **change} for change in (
        {"verdict": "failed"}, {"feedback": {"source": "x"}}, {"step": 2.5}, {"problem_id": 12},
        {"response_text": None}, {"response_hash": "not hex"}, {"feedback": ["text"]}, {"finished": "no"},
        {"verdict": {"passed": False, "details": "none"}}, {"step": -1},
    )]
    run = write_run(tmp_path / "run", odd + [good])
    items, unreadable = load_failed_rollouts(run)
    assert [i.key for i in items] == [("sort-34", response_hash("43"))] and unreadable == len(odd)
    term = Terminal(distil_argv("review", run, "--db", str(tmp_path / "h.sqlite")), plugin_env())
    term.expect(f"note: skipped {len(odd)} unreadable line(s)")
    term.expect(PROMPT)
    term.line("c")
    term.expect(TEXT_PROMPT)
    term.line("Ascending.")
    term.expect(TEXT_PROMPT)
    term.line(".")
    term.expect("Saved correction")
    assert term.wait() == 0 and "Traceback" not in term.screen


def test_a_verdict_score_that_is_not_a_finite_number_is_stored_as_null(tmp_path):
    record = rollout_record("sort-12", "21")
    record["verdict"]["score"] = float("nan")  # json.dumps writes NaN, json.loads reads it back
    run = write_run(tmp_path / "run", [record])
    items, _ = load_failed_rollouts(run)
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        written = []
        replies = iter(["c", "Up.", ".", "q"])
        session = ReviewSession(items, store, author="ada", run_dir=run, read=lambda _: next(replies),
                                write=written.append)
        assert session.run() == 1, written
        [stored] = store.all()
        assert stored.verdict == {"score": None, "passed": False, "answer": "21"}


def test_a_rollout_holding_half_a_surrogate_pair_can_be_corrected_in_the_terminal(tmp_path):
    record = rollout_record("sort-12", "21")
    record.update(prompt="sort \ud83d", response_text="21 \ud83d")  # an emoji cut in half, escaped in the JSON
    record["verdict"]["answer"] = "2\ud83d"
    run = write_run(tmp_path / "run", [record])
    items, unreadable = load_failed_rollouts(run)
    assert unreadable == 0 and items[0].record["response_text"] == "21 \ufffd"
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        written, replies = [], iter(["c", "Up.", ".", "q"])
        session = ReviewSession(items, store, author="ada", run_dir=run, read=lambda _: next(replies),
                                write=written.append)
        assert session.run() == 1, written
        [stored] = store.all()
        assert (stored.response_text, stored.verdict["answer"]) == ("21 \ufffd", "2\ufffd")


def test_the_terminal_names_each_skipped_line_and_keeps_odd_names_as_text(tmp_path):
    import json
    import os

    run = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"run-\xff"))  # a folder name that is not UTF-8
    write_run(run, RECORDS)
    with open(f"{run}/rollouts.jsonl", "a") as fh:
        fh.write("[" * 100_000 + "\n")  # no JSON reader reads this deep
        fh.write(json.dumps({**RECORDS[1], "step": True}) + "\n")
    term = Terminal(distil_argv("review", run, "--db", str(tmp_path / "h.sqlite"), "--problem", "sort-34",
                                "--author", os.fsdecode("\uff21da\u202e-".encode("utf-8") + b"\xff")),
                    plugin_env())
    term.expect(f"note: skipped 2 unreadable line(s): {run}/rollouts.jsonl:7: not a JSON line (nested too deeply); "
                f"{run}/rollouts.jsonl:8: field 'step' is not a whole number".replace("\udcff", "\\udcff"))
    term.expect(PROMPT)
    for line in ("c", "Ascending.", "."):
        term.line(line)
    term.expect("Saved correction")
    term.line("q")
    assert term.wait() == 0 and "Traceback" not in term.screen
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        [stored] = store.all()
    assert stored.author == "Ada-\ufffd" and stored.run_dir == os.path.abspath(run).replace("\udcff", "\ufffd")


@pytest.mark.parametrize("front_end", [[], ["--web", "--port", "0"]])
def test_a_reviewer_name_past_the_limit_is_refused_before_anything_starts(tmp_path, front_end):
    import subprocess

    run = write_run(tmp_path / "run", [rollout_record("sort-12", "21", step=1)])
    done = subprocess.run(distil_argv("review", run, "--db", str(tmp_path / "h.sqlite"), "--author", "n" * 300,
                                      *front_end),
                          env=plugin_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the reviewer's name (--author) is 300 characters long; give one of at most 200" in done.stderr
    assert not (tmp_path / "h.sqlite").exists()
