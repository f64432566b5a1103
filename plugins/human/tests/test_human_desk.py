"""The desk's HTTP side, on a real `distil review --web` process on 127.0.0.1: the token, forms
from other sites, bad query values, saving and the export (no browser needed)."""

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from desk_testlib import DeskProcess
from human_testlib import response_hash, rollout_record, write_run

from distil_human.store import CorrectionStore
from distil_human.web.serve import is_loopback

pytest.importorskip("starlette", reason="the review desk needs the web extra: pip install -e 'plugins/human[web]'")

RECORDS = [rollout_record("sort-12", "21"), rollout_record("sort-34", "43", reference="34"),
           rollout_record("sort-34", "44", step=2, reference="34")]


def _get(url, headers=None, data=None):
    """(status, body, headers) of one request; an error status is an answer, not an exception."""
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request) as reply:
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
    assert status == 200 and "sort-34" in body and "distil_desk_token=s3cret" in headers["set-cookie"]
    assert _get(desk.base + "/", {"Cookie": "distil_desk_token=s3cret"})[0] == 200
    assert _get(desk.base + "/export", {"Authorization": "Bearer s3cret"})[0] == 200


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
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("desk.example")
