"""The desk's HTTP side, on a real `distil review --web` process on 127.0.0.1 (or the app served
in a thread of the test): the token, forms and names from other sites, bad query values,
saving, the export, and a save waiting for the store's lock (no browser needed)."""

import json
import re
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from desk_testlib import DeskProcess, DeskThread
from human_testlib import response_hash, rollout_record, write_run

from distil_human.store import CorrectionStore
from distil_core.serving.guard import loopback_address

pytest.importorskip("starlette", reason="the review desk needs the web extra: pip install -e 'plugins/human[web]'")

RECORDS = [rollout_record("sort-12", "21"), rollout_record("sort-34", "43", reference="34"),
           rollout_record("sort-34", "44", step=2, reference="34")]


def _get(url, headers=None, data=None, timeout=60):
    """(status, body, headers) of one request; an error status is an answer, not an exception."""
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read().decode(), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture
def desk(tmp_path):
    run = write_run(tmp_path / "run", RECORDS)
    process = DeskProcess(run, "--db", str(tmp_path / "h.sqlite"), "--token", "s3cret", "--author", "cli")
    yield process
    process.stop()


def test_every_request_needs_the_token(desk):
    assert desk.url == f"{desk.base}/?token=s3cret"
    status, body, _ = _get(desk.base + "/")
    assert status == 401 and "needs its token" in body
    assert _get(desk.base + "/export")[0] == 401 and _get(desk.base + "/problem/sort-12")[0] == 401
    assert _get(desk.base + "/?token=wrong")[0] == 401
    status, body, headers = _get(desk.url)
    port = desk.base.rsplit(":", 1)[1]
    cookie = f"distil_desk_token_{port}"  # per port: browsers share one host's cookies across its ports
    assert status == 200 and "sort-34" in body and f"{cookie}=s3cret" in headers["set-cookie"]
    assert _get(desk.base + "/", {"Cookie": f"{cookie}=s3cret"})[0] == 200
    assert _get(desk.base + "/", {"Cookie": "distil_desk_token_1=s3cret"})[0] == 401  # another desk's
    assert _get(desk.base + "/export", {"Authorization": "Bearer s3cret"})[0] == 200
    assert headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in headers["content-security-policy"]


def test_saves_forms_from_other_sites_and_bad_values(desk, tmp_path):
    auth = {"Authorization": "Bearer s3cret"}
    status, body, _ = _get(desk.base + "/?sort=worst", auth)
    assert status == 400 and "sort 'worst' is not one of failing" in body
    assert _get(desk.base + "/?sort=failing&steps=x", auth)[0] == 400
    assert _get(desk.base + "/problem/sort-99", auth)[0] == 404
    form = urllib.parse.urlencode({"response_hash": response_hash("43"), "kind": "correction",
                                   "text": "Ascending, please.", "author": "ada"}).encode()
    status, body, _ = _get(desk.base + "/save/sort-34", {**auth, "Origin": "http://elsewhere.example"}, form)
    assert status == 403 and "another site" in body
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(desk.base + "/save/sort-34?sort=failing&verdict=failed", data=form,
                                     headers={**auth, "Origin": desk.base})
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request)
    assert redirect.value.code == 303 and redirect.value.headers["location"].startswith("/problem/sort-34?")
    empty = urllib.parse.urlencode({"kind": "correction", "text": "  "}).encode()
    status, body, _ = _get(desk.base + "/save/sort-34", auth, empty)
    assert status == 422 and "The correction is empty; nothing was saved." in body
    status, body, _ = _get(desk.base + "/save/sort-34", auth, urllib.parse.urlencode(
        {"kind": "solution", "text": "34"}).encode())
    assert status == 200 and "Saved entry" in body  # not checked: this hand-written run has no config.yaml
    [entry] = [json.loads(line) for line in _get(desk.base + "/export", auth)[1].splitlines()][:1]
    assert (entry["author"], entry["text"], entry["response_hash"]) == ("ada", "Ascending, please.", response_hash("43"))
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        assert [(e.kind, e.author, e.verified) for e in store.all()] == [("correction", "ada", None),
                                                                         ("solution", "cli", None)]
    status, body, _ = _get(desk.base + "/problem/sort-34", auth)
    assert "not checked" in body and "Ascending, please." in body


def test_only_loopback_addresses_go_without_a_token():
    assert loopback_address("127.0.0.1") and loopback_address("::1") and loopback_address("localhost")
    assert not loopback_address("0.0.0.0") and not loopback_address("192.168.1.5") and not loopback_address("desk.example")


def _form(text, author="ada", response="43", **extra):
    return urllib.parse.urlencode({"response_hash": response_hash(response), "kind": "correction", "text": text,
                                   "author": author, **extra}).encode()


@pytest.fixture
def open_desk(tmp_path):
    """The desk on 127.0.0.1 without a token, as `distil review RUN --web` starts it."""
    run = write_run(tmp_path / "run", RECORDS)
    process = DeskProcess(run, "--db", str(tmp_path / "h.sqlite"), "--author", "cli")
    yield process
    process.stop()


def test_pages_of_other_sites_can_neither_write_nor_read_the_store(open_desk, tmp_path):
    base, port = open_desk.base, open_desk.base.rsplit(":", 1)[1]
    opener = urllib.request.build_opener(_NoRedirect)
    refused = [
        {"Origin": "null"},  # a sandboxed frame or a data: page posting a form
        {},  # no Origin at all
        {"Origin": base, "Sec-Fetch-Site": "cross-site"},
        {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},  # DNS rebinding
    ]
    for headers in refused:
        status, body, _ = _get(base + "/save/sort-34", headers, _form(f"from {headers}", author="evil"))
        assert status == 403 and "Refused" in body, (headers, status, body)
    status, body, _ = _get(base + "/export", {"Host": f"evil.example:{port}"})
    assert status == 403 and "answers only at 127.0.0.1, localhost or [::1]" in body
    # the desk's own pages, by either loopback name, or through a forwarded port (ssh -L 9000:...)
    hosts = (f"127.0.0.1:{port}", f"localhost:{port}", "localhost:9000")
    for host in hosts:
        request = urllib.request.Request(base + "/save/sort-34", data=_form(f"via {host}"),
                                         headers={"Host": host, "Origin": f"http://{host}"})
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(request)
        assert redirect.value.code == 303
    assert _get(base + "/export", {"Host": "localhost:9000"})[0] == 200
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        assert [(e.author, e.text) for e in store.all()] == [("ada", f"via {host}") for host in hosts]


def test_the_reviewers_name_survives_its_cookie(open_desk, tmp_path):
    origin = {"Origin": open_desk.base}
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as saved:
        opener.open(urllib.request.Request(open_desk.base + "/save/sort-34", data=_form("first", "Ada Lovelace"),
                                           headers=origin))
    cookie = saved.value.headers["set-cookie"].split(";")[0]
    _, page, _ = _get(open_desk.base + "/problem/sort-34", {"Cookie": cookie})
    shown = re.search(r'id="reviewer" value="([^"]*)"', page).group(1)
    assert shown == "Ada Lovelace"
    with pytest.raises(urllib.error.HTTPError):
        opener.open(urllib.request.Request(open_desk.base + "/save/sort-34", data=_form("second", shown),
                                           headers={**origin, "Cookie": cookie}))
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        assert [e.author for e in store.all()] == ["Ada Lovelace", "Ada Lovelace"]


def test_a_token_with_characters_urls_and_cookies_reserve_works_from_the_printed_address(tmp_path):
    token = "Ab+c;d%2F/e=f g"
    desk = DeskProcess(write_run(tmp_path / "run", RECORDS), "--db", str(tmp_path / "h.sqlite"), "--token", token)
    try:
        status, _, headers = _get(desk.url)
        assert status == 200, desk.url
        cookie = headers["set-cookie"].split(";")[0]
        assert _get(desk.base + "/", {"Cookie": cookie})[0] == 200
        assert _get(desk.base + "/", {"Authorization": f"Bearer {token}"})[0] == 200
        assert _get(desk.base + "/", {"Cookie": cookie.split("=", 1)[0] + "=Ab+c"})[0] == 401
    finally:
        desk.stop()


def test_a_file_upload_is_refused_not_stored_as_its_name(open_desk, tmp_path):
    bound = "B0UND"
    body = (f"--{bound}\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\ncorrection\r\n"
            f"--{bound}\r\nContent-Disposition: form-data; name=\"text\"; filename=\"a.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\nhello file\r\n--{bound}--\r\n").encode()
    status, said, _ = _get(open_desk.base + "/save/sort-34", {"Origin": open_desk.base,
                           "Content-Type": f"multipart/form-data; boundary={bound}"}, body)
    assert status == 400 and "field 'text' was sent as a file upload" in said
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        assert store.count() == 0


@pytest.mark.parametrize("parts, words", [
    ([("text", None, "typed"), ("text", "a.txt", "hello file")], "field 'text' was sent as a file upload"),
    ([("text", "a.txt", "hello file"), ("text", None, "typed")], "field 'text' was sent as a file upload"),
    ([("text", None, "one"), ("text", None, "two")], "field 'text' was sent more than once"),
])
def test_a_file_or_a_field_sent_twice_is_refused_whatever_comes_last(open_desk, tmp_path, parts, words):
    """Before, only each field's last part was checked: a file behind a text field of its name passed."""
    bound = "B0UND"
    body = f"--{bound}\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\ncorrection\r\n"
    for name, filename, value in parts:
        file = f'; filename="{filename}"\r\nContent-Type: text/plain' if filename else ""
        body += f"--{bound}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n{value}\r\n"
    body += f"--{bound}--\r\n"
    status, said, _ = _get(open_desk.base + "/save/sort-34", {"Origin": open_desk.base,
                           "Content-Type": f"multipart/form-data; boundary={bound}"}, body.encode())
    assert status == 400 and words in said, said
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        assert store.count() == 0


def test_a_problem_id_with_dot_segments_is_linked_and_saved_by_its_whole_id(tmp_path):
    """Before, links were written with "/" unescaped: a browser dropped the id's "/../" and
    opened another problem (or a 404), and the form's Save posted to another id."""
    odd = "set/../a/./b"
    run = write_run(tmp_path / "run", [rollout_record(odd, "21")])
    desk = DeskProcess(run, "--db", str(tmp_path / "h.sqlite"), "--author", "cli")
    try:
        status, body, _ = _get(desk.base + "/")
        link = re.search(r'href="(/problem/[^"?]+)\?', body).group(1)
        assert link == "/problem/" + urllib.parse.quote(odd, safe="")
        status, page, _ = _get(desk.base + link)  # urllib, like a browser, would drop an unescaped "/../"
        assert status == 200 and odd in page
        action = re.search(r'action="(/save/[^"?]+)\?', page).group(1)
        assert action == "/save/" + urllib.parse.quote(odd, safe="")
        form = urllib.parse.urlencode({"response_hash": response_hash("21"), "kind": "correction",
                                       "text": "Sorted, please.", "author": "ada"}).encode()
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(urllib.request.Request(desk.base + action, data=form, headers={"Origin": desk.base}))
        assert redirect.value.code == 303
    finally:
        desk.stop()
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        assert [e.problem_id for e in store.all()] == [odd]


def test_a_save_waiting_for_the_store_lock_holds_up_no_other_request(tmp_path):
    from distil_human.web.desk import Desk

    db = str(tmp_path / "h.sqlite")
    store = CorrectionStore(db)
    desk = Desk(write_run(tmp_path / "run", RECORDS), store, author="cli")
    waiting, add = threading.Event(), store.add

    def add_when_told(entry):  # set when SQLite starts the BEGIN IMMEDIATE that must wait for the lock
        store._db.set_trace_callback(lambda sql: sql.startswith("BEGIN IMMEDIATE") and waiting.set())
        return add(entry)

    store.add = add_when_told
    server, holder, result = DeskThread(desk), sqlite3.connect(db, isolation_level=None), {}
    holder.execute("BEGIN IMMEDIATE")  # another process (an import, say) holds the write lock
    try:
        def save():
            result["save"] = _get(server.base + "/save/sort-34", {"Origin": server.base}, _form("patient"))[0]

        saver = threading.Thread(target=save)
        saver.start()
        assert waiting.wait(30)
        # while that save waits for the lock, other reviewers read pages and the export (held up,
        # they would wait for the save's 30 s busy timeout; 20 s leaves room for a loaded machine)
        assert _get(server.base + "/export", timeout=20)[0] == 200
        assert _get(server.base + "/problem/sort-12", timeout=20)[0] == 200
        assert saver.is_alive() and "save" not in result  # it is still waiting: nothing waited on it
    finally:
        holder.execute("COMMIT")
        holder.close()
    saver.join(60)
    assert result["save"] == 200  # redirected to the problem's page, saved
    assert [e.text for e in store.all()] == ["patient"]
    server.stop()
    store.close()


def _unstorable(tmp_path):
    """A desk on a run whose one rollout (sort-34, "43") the store cannot hold: every save is refused."""
    odd = rollout_record("sort-34", "43", reference="34")
    answer: list = []
    for _ in range(40):  # an answer nested deeper than a stored verdict may be
        answer = [answer]
    odd["verdict"]["answer"] = answer
    return DeskProcess(write_run(tmp_path / "run", [odd]), "--db", str(tmp_path / "h.sqlite"))


def test_a_rollout_the_store_cannot_hold_gives_the_form_back_with_the_text(tmp_path):
    desk = _unstorable(tmp_path)
    try:
        typed = "My long and careful correction."
        status, page, _ = _get(desk.base + "/save/sort-34", {"Origin": desk.base}, _form(typed))
        assert status == 422 and "NOT saved: verdict: Value error, nested more than 32" in page and typed in page
    finally:
        desk.stop()


def _saved(base, path, form, headers=None):
    """The status of a form posted from the desk's own page (303: saved, redirected)."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(base + path, data=form, headers={"Origin": base, **(headers or {})})
    try:
        with opener.open(request, timeout=60) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _run_with_context(tmp_path, record, context):
    """A run of one rollout of problem sort-12 (response "21") whose expert was shown ``context``."""
    run = write_run(tmp_path / "run", [record])
    with open(f"{run}/provenance.jsonl", "w") as fh:
        fh.write(json.dumps({"step": 1, "problem_id": "sort-12", "response_hash": response_hash("21"),
                             "feedback": [{"source": "answer_check", "kind": "answer_check"}],
                             "context": [{"role": "user", "content": context}]}) + "\n")
    return run


def test_a_rollout_holding_half_a_surrogate_pair_is_shown_and_can_be_corrected(tmp_path):
    record = rollout_record("sort-12", "21")
    record.update(prompt="sort 12 \ud83d", response_text="21 \ud83d")  # an emoji cut in half, escaped in the JSON
    record["verdict"].update(answer="2\ud83d", details={"got\udc00": "\ud83d"})
    record["feedback"][0]["text"] = "wrong \udc00"
    desk = DeskProcess(_run_with_context(tmp_path, record, "what \ud83d"), "--db", str(tmp_path / "h.sqlite"))
    try:
        status, page, _ = _get(desk.base + "/")
        assert status == 200 and "sort 12 \ufffd" in page
        status, page, _ = _get(desk.base + "/problem/sort-12")
        assert status == 200, page
        assert all(shown in page for shown in ("21 \ufffd", "answer 2\ufffd", "got\ufffd: \ufffd", "wrong \ufffd",
                                               "what \ufffd"))
        assert _saved(desk.base, "/save/sort-12", _form("Ascending.", response="21")) == 303
        status, exported, _ = _get(desk.base + "/export")
        [entry] = [json.loads(line) for line in exported.splitlines()]
        assert status == 200 and entry["response_text"] == "21 \ufffd" and entry["verdict"]["answer"] == "2\ufffd"
    finally:
        desk.stop()


def test_controls_and_direction_overrides_from_outside_are_shown_as_escapes(tmp_path):
    """A response, its feedback, the expert's context and a stored entry are the desk's text from
    outside: a direction override in them would reverse what the reviewer reads after it ("passed
    \\u202edeliaf" reads "passed failed"), so each is shown as its escape, as on the terminal."""
    record = rollout_record("sort-12", "21")
    record["response_text"] = "21 tests passed \u202edeliaf"
    record["feedback"][0]["text"] = "stdout: ok\x1b[2J\rall good \u2067x"
    run = _run_with_context(tmp_path, record, "shown \u200fto the expert")
    desk = DeskProcess(run, "--db", str(tmp_path / "h.sqlite"))
    try:
        assert _saved(desk.base, "/save/sort-12", _form("a note \u202eton", response="21")) == 303
        status, page, _ = _get(desk.base + "/problem/sort-12")
        assert status == 200, page
        for raw in ("\u202e", "\u2067", "\u200f", "\x1b"):
            assert raw not in page, ascii(raw)
        for escaped in ("21 tests passed \\u202edeliaf", "stdout: ok\\x1b[2J\\rall good \\u2067x",
                        "shown \\u200fto the expert", "a note \\u202eton"):
            assert escaped in page, escaped
        status, exported, _ = _get(desk.base + "/export")
        assert status == 200 and json.loads(exported)["text"] == "a note \u202eton"  # stored as written
    finally:
        desk.stop()


def test_an_entry_holding_a_control_character_is_refused_and_given_back(tmp_path):
    desk = DeskProcess(write_run(tmp_path / "run", RECORDS), "--db", str(tmp_path / "h.sqlite"))
    try:
        status, page, _ = _get(desk.base + "/save/sort-34", {"Origin": desk.base}, _form("up\x00wards"))
        assert status == 422 and "holds the control character \\x00 at position 2" in page
        assert "up\x00wards</textarea>" in page  # the form holds what was sent, to be mended
        assert _saved(desk.base, "/save/sort-34", _form("up\r\nwards")) == 303  # a form's own line breaks are text
        status, exported, _ = _get(desk.base + "/export")
        assert json.loads(exported)["text"] == "up\r\nwards"
    finally:
        desk.stop()


def test_the_source_filter_sends_the_source_as_recorded_though_it_shows_its_escape(tmp_path):
    record = rollout_record("sort-12", "21")
    record["feedback"][0]["source"] = "src\u202e"
    desk = DeskProcess(write_run(tmp_path / "run", [record, rollout_record("sort-34", "43")]),
                       "--db", str(tmp_path / "h.sqlite"))
    try:
        status, page, _ = _get(desk.base + "/")
        assert status == 200 and '<option value="src\u202e">src\\u202e</option>' in page
        status, page, _ = _get(desk.base + "/?sort=failing&source=" + urllib.parse.quote("src\u202e"))  # the form
        assert status == 200 and "sort-12" in page and "sort-34" not in page
    finally:
        desk.stop()


def test_a_refused_entry_comes_back_in_its_form_as_it_was_written(tmp_path):
    desk = _unstorable(tmp_path)
    try:
        typed = "keep \u202eme <b>as typed</b>"
        status, page, _ = _get(desk.base + "/save/sort-34", {"Origin": desk.base}, _form(typed))
        assert status == 422
        assert "keep \u202eme &lt;b&gt;as typed&lt;/b&gt;</textarea>" in page  # saving again sends the same text
    finally:
        desk.stop()


def test_each_skipped_line_is_named_by_file_and_line_and_odd_records_break_no_page(tmp_path):
    good, odd_source = rollout_record("sort-34", "43", reference="34"), rollout_record("sort-12", "21")
    odd_source["feedback"][0]["source"] = ["a", "list"]  # not hashable: the source filter compares it as text
    lines = [json.dumps(good), '{"step": 3, "problem_id": "sort-1', "[" * 100_000, '{"step": ' + "9" * 5000 + "}",
             json.dumps({**good, "problem_id": "p\ud83d"}), json.dumps({**good, "verdict": "failed"}),
             json.dumps(odd_source)]
    run = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "rollouts.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "run" / "provenance.jsonl").write_text(
        json.dumps({"problem_id": "sort-34", "response_hash": response_hash("43"), "context": 5}) + "\n"
        + json.dumps({"problem_id": "sort-34", "response_hash": response_hash("43"), "feedback": [],
                      "context": [{"role": "user", "content": "the expert read this"}]}) + "\n")
    desk = DeskProcess(run, "--db", str(tmp_path / "h.sqlite"))
    try:
        said = [f"{run}/rollouts.jsonl:2: not a JSON line (Unterminated string",
                f"{run}/rollouts.jsonl:3: not a JSON line (nested too deeply)",
                f"{run}/rollouts.jsonl:4: not a JSON line (an integer too long to read)",
                f"{run}/rollouts.jsonl:5: field 'problem_id' holds a lone UTF-16 surrogate",
                f"{run}/rollouts.jsonl:6: field 'verdict' is not an object",
                f"{run}/provenance.jsonl:1: field 'context' is not a list of objects"]
        assert "note: skipped 6 unreadable line(s): " in desk.output
        assert all(s in desk.output for s in said[:5]) and "; and 1 more" in desk.output, desk.output
        status, page, _ = _get(desk.base + "/")
        assert status == 200 and 'id="skipped"' in page and said[0] in page
        status, page, _ = _get(desk.base + "/problem/sort-34")
        assert status == 200 and "the expert read this" in page
        for query in ("/?sort=failing&verdict=failed&source=x", "/problem/sort-12?source=x&sort=failing"):
            assert _get(desk.base + query)[0] == 200, query
    finally:
        desk.stop()


def test_names_and_paths_that_are_not_plain_text_neither_break_pages_nor_saves(tmp_path):
    import os

    run = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"run-\xff"))  # a folder name that is not UTF-8
    write_run(run, RECORDS)
    with open(os.path.join(run, "rollouts.jsonl"), "a") as fh:
        fh.write("{half a line\n")  # noted on the queue page, under the path
    desk = DeskProcess(run, "--db", str(tmp_path / "h.sqlite"), "--author", os.fsdecode(b"cli-\xff"))
    try:
        for path in ("/", "/problem/sort-34"):
            status, page, _ = _get(desk.base + path)
            assert status == 200 and "run-\ufffd" in page and 'value="cli-\ufffd"' in page, path
        assert "run-\ufffd/rollouts.jsonl:4: not a JSON line" in _get(desk.base + "/")[1]
        names = ["\u202eadA", "x\x00y", "Ada\nOn record: none", "\uff21\uff44\uff41", "Ada\u200b Lovelace", "  "]
        for name in names:
            assert _saved(desk.base, "/save/sort-34", _form(f"by {name!r}", author=name)) == 303, name
        status, page, _ = _get(desk.base + "/save/sort-34", {"Origin": desk.base}, _form("long", author="n" * 201))
        assert status == 422 and "at most 200 are kept" in page
        with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
            entries = store.all()
        assert [e.author for e in entries] == ["adA", "xy", "Ada On record: none", "Ada", "Ada Lovelace", "cli-\ufffd"]
        assert {e.run_dir for e in entries} == {os.path.abspath(run).replace("\udcff", "\ufffd")}
    finally:
        desk.stop()


def test_the_same_entry_saved_twice_at_once_is_stored_once(open_desk, tmp_path):
    """A double click on Save sends the form twice. Before, each save stored its own entry (40
    concurrent saves: 40 rows), and the copies took the feedback's max_items places."""
    form, origin = _form("The 4 goes first."), {"Origin": open_desk.base}
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(_get(open_desk.base + "/save/sort-34", origin, form)[0]))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 8 and set(answers) <= {200, 303}, answers
    _get(open_desk.base + "/save/sort-34", origin, _form("Another point."))
    with CorrectionStore(str(tmp_path / "h.sqlite")) as store:
        assert sorted(e.text for e in store.all()) == ["Another point.", "The 4 goes first."]


@pytest.mark.parametrize("port", [70000, -1])
def test_a_port_out_of_range_is_refused_not_wrapped_around(port):
    """Before, --port 70000 listened on 4464 (the resolver takes the port modulo 65536)."""
    from distil_core import ConfigError
    from distil_human.web.serve import bind

    with pytest.raises(ConfigError, match=f"--port {port}: a port is a number from 0 to 65535"):
        bind("127.0.0.1", port)
