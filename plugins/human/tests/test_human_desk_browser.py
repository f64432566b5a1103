"""The review desk over a real run, driven in a real headless Chromium.

A reviewer opens the queue, opens the worst problem, has a wrong solution refused with the
verifier's reason, stores a right one and a critique; the export holds exactly those two, and
the next training run puts both into the expert's context. Two reviewers saving at the same
moment lose nothing. The screenshots in docs/plugins/human.md come from this file
(``DISTIL_DOCS_SCREENSHOTS=plugins/human/docs``).
"""

import json
import subprocess
import threading
import urllib.request

import pytest
from desk_testlib import DeskProcess, browser_paths, chrome, screenshot_path, train
from human_testlib import distil_argv, plugin_env

from distil_human.review_queue import build_queue, read_records
from distil_human.store import CorrectionStore
from distil_human.text import shown_escaped


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    browser_paths()  # skip (or, under CI, fail) before spending time on training
    run_dir = tmp_path_factory.mktemp("desk") / "run"
    train(run_dir, steps=2)
    return run_dir


def _wait(browser, css, timeout=30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def _saved_after(browser, before: str, timeout=30):
    """Wait until the page says an entry was saved, other than ``before``; return its text."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(b):
        try:
            found = b.find_elements(By.CSS_SELECTOR, "#saved")
            return found and found[0].text != before and found[0].text
        except WebDriverException as exc:
            # the page is replaced after the save: an element found on the old one goes stale, which
            # chromedriver reports as stale or, mid-replacement, as a node not in the document; look again
            if isinstance(exc, StaleElementReferenceException) or "does not belong to the document" in str(exc):
                return False
            raise
    return WebDriverWait(browser, timeout).until(shown)


def _wrong(reference: str) -> str:
    return str((int(reference) + 1) % 10 ** len(reference)).zfill(len(reference))


@pytest.mark.slow
def test_queue_problem_refused_and_stored_entries_export_and_next_run(run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    db = str(tmp_path / "team.sqlite")
    records, _ = read_records(str(run))
    queue = build_queue(records, set(), "failing")
    top = queue[0]
    reference = str(top.reference)
    desk = DeskProcess(run, "--db", db, "--author", "nobody")
    browser = chrome()
    try:
        browser.get(desk.url)
        links = browser.find_elements(By.CSS_SELECTOR, "#queue a.problem")
        assert [a.text for a in links] == [g.problem_id for g in queue]
        assert f"{len(queue)} problems" in browser.find_element(By.ID, "counts").text
        browser.save_screenshot(screenshot_path("desk-queue.png", tmp_path))

        links[0].click()
        assert _wait(browser, "#problem h2").text == f"Problem {top.problem_id}"
        page = browser.find_element(By.TAG_NAME, "body").text
        # an untrained student's responses hold control characters: the desk shows their escapes
        assert top.prompt in page and all(shown_escaped(i.record["response_text"]) in page for i in top.items)
        shown = [p.text for p in browser.find_elements(By.CSS_SELECTOR, ".response .context pre")]
        assert any(top.prompt in t for t in shown), "the expert's context (from provenance.jsonl) is shown"
        assert any(f"The expected answer is {reference}" in t for t in shown)
        reviewer = browser.find_element(By.ID, "reviewer")
        reviewer.clear()
        reviewer.send_keys("ada")

        whole = browser.find_element(By.CSS_SELECTOR, "form.entry.whole textarea")
        whole.send_keys(_wrong(reference))
        browser.find_element(By.CSS_SELECTOR, "form.entry.whole button.save").click()
        refusal = _wait(browser, "form.entry.whole .msg.error").text
        assert refusal.startswith("Refused: verifier 'exact_match': failed")
        assert f"expected: {reference}" in refusal and f"got: {_wrong(reference)}" in refusal
        assert browser.find_elements(By.CSS_SELECTOR, "form.entry.whole button.anyway")
        assert CorrectionStore(db).count() == 0

        whole = browser.find_element(By.CSS_SELECTOR, "form.entry.whole textarea")
        assert whole.get_attribute("value") == _wrong(reference)  # the refused text is kept for editing
        whole.clear()
        whole.send_keys(reference, Keys.CONTROL, Keys.ENTER)  # the save shortcut
        first = _saved_after(browser, "")

        critique = "The digits are sorted in descending order; sort them in ascending order."
        browser.find_element(By.CSS_SELECTOR, "form.entry.response textarea").send_keys(critique)
        browser.find_element(By.CSS_SELECTOR, "form.entry.response button.save").click()
        _saved_after(browser, first)
        assert "verified" in browser.find_element(By.CSS_SELECTOR, ".stored[data-kind=solution]").text
        browser.save_screenshot(screenshot_path("desk-problem.png", tmp_path))
        from_button = urllib.request.urlopen(browser.find_element(By.ID, "export").get_attribute("href")).read()
    finally:
        browser.quit()
        desk.stop()

    out = tmp_path / "export.jsonl"
    done = subprocess.run(distil_argv("corrections", "export", str(out), "--db", db), env=plugin_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == from_button, "the desk's export button gives the same JSONL"
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(e["kind"], e["author"], e["problem_id"]) for e in entries] == [
        ("solution", "ada", top.problem_id), ("correction", "ada", top.problem_id)]
    assert entries[0]["text"] == reference and entries[0]["verified"] is True
    assert entries[1]["text"] == critique and entries[1]["response_hash"] == top.items[0].key[1]

    feedback = f"[answer_check, {{name: human, options: {{db: '{db}', match: problem}}}}]"
    train(tmp_path / "next", steps=3, feedback=feedback)
    lines = [json.loads(line) for line in (tmp_path / "next" / "provenance.jsonl").read_text().splitlines()]
    mine = [p for p in lines if p["problem_id"] == top.problem_id]
    assert mine, "the same seed samples the reviewed problem again"
    for p in mine:
        assert {"source": "human", "kind": "demonstration"} in p["feedback"]
        assert {"source": "human", "kind": "human_correction"} in p["feedback"]
    failed = [" ".join(m["content"] for m in p["context"]) for p in mine if not p["passed"]]
    assert failed and all(f"Correct solution: {reference}" in t and critique in t for t in failed)
    others = [f for p in lines if p["problem_id"] != top.problem_id for f in p["feedback"]]
    assert all(f["source"] != "human" for f in others), "entries reach only their own problem"


@pytest.mark.slow
def test_two_reviewers_saving_at_the_same_moment_lose_nothing(run, tmp_path):
    from selenium.webdriver.common.by import By

    db = str(tmp_path / "team.sqlite")
    top = build_queue(read_records(str(run))[0], set(), "failing")[0]
    desk = DeskProcess(run, "--db", db)
    browsers = [chrome(), chrome()]
    rounds, barrier, errors = 3, threading.Barrier(2), []

    def review(browser, name):
        try:
            browser.get(desk.url)
            browser.find_element(By.CSS_SELECTOR, "#queue a.problem").click()
            _wait(browser, "#problem")
            reviewer = browser.find_element(By.ID, "reviewer")
            reviewer.clear()
            reviewer.send_keys(name)
            before = ""
            for i in range(rounds):
                browser.find_element(By.CSS_SELECTOR, "form.entry.response textarea").send_keys(f"{name} note {i}")
                barrier.wait(timeout=60)  # both click Save together
                browser.find_element(By.CSS_SELECTOR, "form.entry.response button.save").click()
                before = _saved_after(browser, before)
        except BaseException as exc:  # reported by the main thread
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            barrier.abort()

    try:
        threads = [threading.Thread(target=review, args=(b, n)) for b, n in zip(browsers, ("ada", "bo"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not errors, errors
        browsers[0].refresh()
        shown = browsers[0].find_element(By.CSS_SELECTOR, f"#r-{top.items[0].key[1]}").text
    finally:
        for b in browsers:
            b.quit()
        desk.stop()
    expected = {(n, f"{n} note {i}") for n in ("ada", "bo") for i in range(rounds)}
    stored = CorrectionStore(db).all()
    assert {(e.author, e.text) for e in stored} == expected and len(stored) == 2 * rounds
    assert all(e.response_hash == top.items[0].key[1] for e in stored)
    assert all(text in shown for _, text in expected), "every reviewer's entry is on the page"


def test_a_long_id_or_text_without_spaces_wraps_instead_of_widening_the_page(tmp_path):
    from human_testlib import rollout_record, write_run

    browser_paths()
    record, long = rollout_record("sort-12", "21"), "x" * 3000
    record.update(problem_id="p" + "y" * 400, prompt=long, reference=long)
    record["verdict"]["details"] = {"got": long}
    record["feedback"][0]["text"] = long
    desk = DeskProcess(write_run(tmp_path / "run", [record]), "--db", str(tmp_path / "h.sqlite"))
    browser = chrome(width=1280, height=900)
    try:
        for path in ("/", "/problem/" + record["problem_id"]):
            browser.get(desk.base + path)
            _wait(browser, "main")
            wide, shown = browser.execute_script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert wide <= shown, (path[:20], wide, shown)
    finally:
        browser.quit()
        desk.stop()
