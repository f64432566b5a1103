"""What `distil serve` refuses to let one client or one web page take: every test runs a real
server on 127.0.0.1 and talks to it over a socket, as a browser, a slow client or a careless
script would.

- a web page's request (another site's Origin, or a rebound name in Host) is a 403;
- a request asking for more generations than ``max_request_rows`` is a 400, before decoding;
- a text prompt too long for the context is refused before it is tokenized;
- a request trickled in a byte at a time loses its connection at its deadline;
- ``stop()`` ends the connections kept open, so none is answered by a stopped server.
"""

import http.client
import json
import socket
import time

import pytest

from distil_core.serving import LocalOpenAIServer
from distil_core.serving.guard import browser_refusal, loopback_address, loopback_host
from distil_core.testing import tiny_model, tiny_tokenizer, wait_until

BODY = json.dumps({"model": "tiny", "prompt": "sort 31", "max_tokens": 2, "temperature": 0}).encode()


def post(server, path, body, headers=None):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


@pytest.fixture(scope="module")
def served():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", max_request_rows=12,
                           request_deadline_s=1.0) as server:
        yield server


@pytest.mark.parametrize("headers", [
    {"Origin": "http://attacker.example", "Host": "127.0.0.1"},
    {"Origin": "http://127.0.0.1:1", "Host": "127.0.0.1:2"},  # another local port is another site
    {"Origin": "null"},  # a sandboxed frame, a data: page
    {"Sec-Fetch-Site": "cross-site"},
    {"Host": "attacker.example"},  # a page whose name was re-pointed at 127.0.0.1
    {"Host": "attacker.example:8000", "Origin": "http://attacker.example:8000"},  # same-origin to the browser
])
def test_a_web_pages_request_is_refused_before_anything_runs(served, headers):
    """Before, a page could POST a text/plain body (no preflight) to /collective_rpc and reload the
    served weights from any directory, or read the answers after rebinding its name."""
    served.reset_stats()
    for path in ("/v1/completions", "/collective_rpc"):
        status, body = post(served, path, BODY, headers)
        assert status == 403 and body["error"]["type"] == "permission_error", body
        assert "web page" in body["error"]["message"] or "answers only at 127.0.0.1" in body["error"]["message"]
    assert served.stats["requests"] == 0 and served.stats["paths"] == {}


@pytest.mark.parametrize("headers", [{}, {"Host": "localhost:9"}, {"Host": "[::1]"}, {"Host": "127.0.0.2:8000"},
                                     {"Host": "0.0.0.0:8000"}, {"Host": "[::ffff:127.0.0.1]:9"},
                                     {"Origin": "http://127.0.0.1:{port}"}, {"Sec-Fetch-Site": "none"}])
def test_clients_and_the_servers_own_origin_are_answered(served, headers):
    headers = {k: v.format(port=served.port) for k, v in headers.items()}
    status, body = post(served, "/v1/completions", BODY, headers)
    assert status == 200 and body["choices"][0]["text"] is not None


def test_a_server_on_another_loopback_address_answers_at_its_own_address():
    """The review found a server on 127.0.0.2 refusing its own base_url as "not loopback"."""
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", host="127.0.0.2") as server:
        assert post(server, "/v1/completions", BODY)[0] == 200


def test_with_an_api_key_the_key_decides_whatever_the_host_or_origin():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", api_key="k") as server:
        key = {"Authorization": "Bearer k"}
        assert post(server, "/v1/completions", BODY, {**key, "Host": "gpu-box.internal:8000"})[0] == 200
        assert post(server, "/v1/completions", BODY, {"Host": "gpu-box.internal:8000"})[0] == 401
        assert post(server, "/v1/completions", BODY, {"Origin": "http://attacker.example"})[0] == 401
        # a browser extension sends its own origin, and the key, which no page can send
        assert post(server, "/v1/completions", BODY, {**key, "Origin": "chrome-extension://abc"})[0] == 200


def test_the_constructor_refuses_limits_that_would_refuse_every_request():
    for options in ({"max_request_rows": 0}, {"request_deadline_s": 0}, {"request_deadline_s": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(options))):
            LocalOpenAIServer(tiny_model(), tiny_tokenizer(), **options)


def test_the_guard_reads_hosts_and_listening_addresses():
    assert loopback_host("127.0.0.1:8000") and loopback_host("LOCALHOST") and loopback_host("[::1]:80")
    assert not loopback_host("127.0.0.1.attacker.example") and not loopback_host("attacker.example:80")
    assert loopback_host("0.0.0.0:8000") and loopback_host("[0:0:0:0:0:0:0:1]") and not loopback_host("10.0.0.1")
    assert loopback_address("127.0.0.5") and loopback_address("::1") and loopback_address("localhost")
    assert not loopback_address("0.0.0.0") and not loopback_address("10.0.0.2") and not loopback_address("gpu")
    assert browser_refusal({"Host": "x"}, check_host=False) is None  # a server exposed on purpose


def test_a_request_for_more_generations_than_the_cap_is_refused_before_decoding(served):
    """Before, 200 copies of a short prompt with n=128 (under 3 KB) made 25,600 rows in one batch."""
    served.reset_stats()
    many = json.dumps({"model": "tiny", "prompt": ["sort 31"] * 4, "n": 4, "max_tokens": 1}).encode()
    status, body = post(served, "/v1/completions", many)
    assert status == 400 and body["error"]["param"] == "n"
    assert "4 prompt(s) × n=4 = 16 generations" in body["error"]["message"] and "at most 12" in body["error"]["message"]
    assert served.stats["batches"] == 0
    chat = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 13}).encode()
    assert post(served, "/v1/chat/completions", chat)[0] == 400
    fits = json.dumps({"model": "tiny", "prompt": ["sort 31"] * 3, "n": 4, "max_tokens": 1}).encode()
    status, body = post(served, "/v1/completions", fits)
    assert status == 200 and len(body["choices"]) == 12


def test_a_text_prompt_too_long_for_the_context_is_refused_before_it_is_tokenized(served, monkeypatch):
    """Before, a 30 MB text prompt was tokenized whole (12 GB, two minutes) and then refused."""
    calls = []
    tokenizer = served.lm.tokenizer
    original = type(tokenizer).encode
    monkeypatch.setattr(type(tokenizer), "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    positions = served.lm.max_positions()
    huge = json.dumps({"model": "tiny", "prompt": "7" * (positions * 64 + 1), "max_tokens": 1}).encode()
    status, body = post(served, "/v1/completions", huge)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert f"maximum context length is {positions} tokens" in body["error"]["message"]
    chat = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "7" * (positions * 64 + 1)}]})
    status, body = post(served, "/v1/chat/completions", chat.encode())
    assert status == 400 and body["error"]["param"] == "messages"
    assert calls == []
    status, body = post(served, "/v1/completions", json.dumps({"model": "tiny", "prompt": "7" * (positions + 1),
                                                              "max_tokens": 1}).encode())
    assert status == 400 and calls  # near the bound it is tokenized, and refused by its token count


def closed(sock):
    """Whether the server has closed ``sock`` (read without waiting: the end of the stream, or a reset)."""
    sock.setblocking(False)
    try:
        return sock.recv(1 << 16) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


@pytest.mark.parametrize("trickle", ["headers", "body"])
def test_a_request_trickled_in_loses_its_connection_at_its_deadline(served, trickle):
    """Before, a client sending one header line (or a few body bytes) every 20 s never tripped the
    60 s read timeout, and held its connection slot for as long as it kept trickling."""
    with socket.create_connection((served.host, served.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        if trickle == "body":
            sock.sendall(b"Content-Length: 1000\r\n\r\n")
        sent = 0
        while not closed(sock):
            assert sent < 40, "the server kept the connection open for 4 s of trickling (its deadline is 1 s)"
            try:
                sock.sendall(b"X-Pad: a\r\n" if trickle == "headers" else b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            time.sleep(0.1)  # the client's pace, well inside the 60 s read timeout
    assert sent >= 3  # it read on while the deadline (1 s) had time left
    assert post(served, "/v1/completions", BODY)[0] == 200  # the server goes on


def test_stop_ends_the_connections_kept_open():
    """Before, a kept-alive connection was still answered after stop(), and restarted the model
    thread; after a new server took the port it was still answered by the old one."""
    server = LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny")
    server.start()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.request("POST", "/v1/completions", body=BODY, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Connection") != "close"
    response.read()
    server.stop()
    wait_until(lambda: closed(connection.sock), what="the kept-alive connection to be closed")
    connection.close()


def test_a_request_read_before_stop_starts_no_model_thread_after_it():
    """Before, a request whose thread was still tokenizing when stop() ran queued its job after
    the model thread had ended, which started a new one that outlived the server."""
    import threading

    def model_threads():
        return {t for t in threading.enumerate() if t.name == "distil-serve-model" and t.is_alive()}

    others = model_threads()  # other tests' servers
    server = LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny")
    server.start()
    inside, release, encode = threading.Event(), threading.Event(), server.lm.encode

    def held_encode(text):  # a long prompt being tokenized while the server stops
        inside.set()
        release.wait(30)
        return encode(text)

    server.lm.encode = held_encode
    answered = []

    def ask():
        try:
            answered.append(post(server, "/v1/completions", BODY)[0])
        except OSError:  # the connection ended by stop() (http.client's RemoteDisconnected)
            answered.append(None)

    before = set(threading.enumerate())
    client = threading.Thread(target=ask, daemon=True)
    client.start()
    assert inside.wait(30)
    server.stop()
    release.set()
    for thread in set(threading.enumerate()) - before - {client}:  # the request's handler thread
        thread.join(30)
    assert server.lm._batcher._thread is None
    wait_until(lambda: model_threads() <= others, what="no model thread of the stopped server")
    client.join(30)
    assert answered in ([None], [503])  # the connection was ended, or its request answered "shutting down"
    server.lm.encode = encode
    server.start()  # started again, it answers again
    try:
        assert post(server, "/v1/completions", BODY)[0] == 200
    finally:
        server.stop()
