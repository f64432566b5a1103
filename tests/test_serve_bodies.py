"""`distil serve`'s request bodies and connections, against a real server on 127.0.0.1: chat
roles (OpenAI's, in OpenAI's spelling; any other is a 400 naming it), bodies sent with
``Transfer-Encoding: chunked`` (decoded under the Content-Length cap, bad framing refused, a
stalled sender timed out), and clients that connect in a burst, dribble their headers or sit idle."""

import copy
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import distil_core.serving.handler as serving_handler
from distil_core.models.tiny import CHAT_TEMPLATE
from distil_core.serving import LocalOpenAIServer
from distil_core.serving.requests import CHAT_ROLES, ChatRequest, template_messages, validated
from distil_core.testing import tiny_model, tiny_tokenizer, wait_until


ASK = {"model": "tiny", "prompt": "1 2", "max_tokens": 3, "temperature": 0}
BODY = json.dumps(ASK).encode()


def refused(call):
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value


def answer(server, body=BODY):
    """The text of a greedy completion sent with a Content-Length."""
    request = urllib.request.Request(server.base_url + "/v1/completions", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as out:
        return json.loads(out.read())["choices"][0]["text"]


# -- chat roles


@pytest.mark.parametrize("role, words", [
    ("wizard", "which is not a chat role"),
    ("", "which is not a chat role"),
    ("System", "did you mean 'system'?"),
    ("USER", "did you mean 'user'?"),
    ("tool", "a tool message answers a tool call"),
    ("function", "tool and function calling is not supported"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_role_openai_does_not_take_is_a_400_naming_the_message_the_role_and_the_roles_taken(
        client, server, role, words, stream):
    messages = [{"role": "user", "content": "1 2"}, {"role": role, "content": "3", "tool_call_id": "call_1"}]
    before = server.stats["batches"]
    error = refused(lambda: client.chat.completions.create(model="tiny", messages=messages, max_tokens=1,
                                                           stream=stream))
    assert error.status_code == 400 and error.body["param"] == "messages"
    assert f"'messages[1].role' is {role!r}" in error.message and words in error.message, error.message
    assert all(repr(r) in error.message for r in CHAT_ROLES)
    assert server.stats["batches"] == before  # refused before any model work


def test_a_developer_message_reaches_a_template_without_that_role_as_a_system_message(client, server):
    said = [{"role": "user", "content": "1 2"}]
    ask = dict(model="tiny", max_tokens=4, temperature=0, logprobs=True)
    as_system = client.chat.completions.create(messages=[{"role": "system", "content": "3 4"}] + said, **ask)
    as_developer = client.chat.completions.create(messages=[{"role": "developer", "content": "3 4"}] + said, **ask)
    assert as_developer.usage.prompt_tokens == as_system.usage.prompt_tokens
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content
    assert [t.logprob for t in as_developer.choices[0].logprobs.content] == \
           [t.logprob for t in as_system.choices[0].logprobs.content]
    ids = server.lm.chat_prompt(validated(ChatRequest, {"messages": [{"role": "developer", "content": "3"}] + said}))[0]
    tok = server.lm.tokenizer
    assert tok.convert_ids_to_tokens(ids[0]) == "<|system|>"  # the tiny template's special token, not "<|developer|>"


DEVELOPER_ONLY = (  # a template that knows a developer role and refuses system messages
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System messages are not allowed; use the developer role.') }}{% endif %}"
    "{% if m['role'] == 'developer' %}<|system|>{% else %}<|{{ m['role'] }}|>{% endif %}"
    "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_template_that_names_the_developer_role_gets_it_and_its_refusals_are_a_400():
    tok = copy.deepcopy(tiny_tokenizer())  # tiny_tokenizer() is shared
    tok.chat_template = DEVELOPER_ONLY
    messages = [{"role": "developer", "content": "3"}, {"role": "user", "content": "1"}]
    assert template_messages(DEVELOPER_ONLY, messages) == messages
    assert template_messages(CHAT_TEMPLATE, messages)[0]["role"] == "system"
    assert tiny_tokenizer().chat_template == CHAT_TEMPLATE
    with LocalOpenAIServer(tiny_model(), tok, model_name="tiny") as server:
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as client:
            assert client.chat.completions.create(model="tiny", messages=messages, max_tokens=1).choices
            error = refused(lambda: client.chat.completions.create(
                model="tiny", messages=[{"role": "system", "content": "3"}], max_tokens=1))
            assert error.body["param"] == "messages"
            assert "chat template of 'tiny' refused the messages: System messages are not allowed" in error.message


# -- chunked request bodies


def pieces(body, size=7):
    return (body[i:i + size] for i in range(0, len(body), size))  # a generator: sent chunked, no length known


def test_chunked_bodies_from_requests_httpx_curl_and_a_raw_socket_are_read(server):
    url, plain = server.base_url + "/v1/completions", answer(server)
    try:
        import requests
    except ImportError:  # not a dependency of distil; httpx (openai's) and the raw socket below still run
        requests = None
    if requests is not None:
        sent = requests.post(url, data=pieces(BODY), timeout=30)
        assert sent.request.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in sent.request.headers
        assert sent.status_code == 200 and sent.json()["choices"][0]["text"] == plain, sent.text
    sent = httpx.post(url, content=pieces(BODY), timeout=30)
    assert sent.request.headers["Transfer-Encoding"] == "chunked"
    assert sent.status_code == 200 and sent.json()["choices"][0]["text"] == plain, sent.text
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sS", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", url],
                             input=BODY, capture_output=True, timeout=60)
        assert json.loads(out.stdout)["choices"][0]["text"] == plain, out
    # upper-case hex, extensions, an empty trailer field; then a second request on the same connection
    half = len(BODY) // 2
    framed = (b"%X;name=value\r\n%b\r\n%x ; ext\r\n%b\r\n0;last\r\nX-Checksum: none\r\n\r\n"
              % (half, BODY[:half], len(BODY) - half, BODY[half:]))
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: Chunked\r\n\r\n" + framed)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200 and response.getheader("Connection") != "close"
            assert json.loads(response.read())["choices"][0]["text"] == plain


def send_raw(server, raw, timeout_s=10.0):
    """(status, Connection header, the error message or the answer) of the answer to the raw request bytes."""
    with socket.create_connection((server.host, server.port), timeout=timeout_s) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        out = json.loads(response.read())
        return response.status, response.getheader("Connection"), out["error"]["message"] if "error" in out else out


HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
ONE = b"%x\r\n%b\r\n" % (len(BODY), BODY)


@pytest.mark.parametrize("raw, status, words", [
    (HEAD + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", 400, "the chunk size 'zz\\r\\n' is not a hexadecimal number"),
    (HEAD + b"0x5\r\nabcde\r\n0\r\n\r\n", 400, "is not a hexadecimal number"),
    (HEAD + b"-5\r\nabcde\r\n0\r\n\r\n", 400, "is not a hexadecimal number"),
    (HEAD + b" 5\r\nabcde\r\n0\r\n\r\n", 400, "is not a hexadecimal number"),
    (HEAD + b"\r\n" + ONE + b"0\r\n\r\n", 400, "is not a hexadecimal number"),
    (HEAD + BODY, 400, "is not a hexadecimal number"),  # chunked said, not sent
    (HEAD + b"%x\r\n%b0\r\n\r\n" % (len(BODY), BODY), 400, "a chunk's data is not followed by CRLF (got '0\\r'"),
    (HEAD + b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY) - 1, BODY), 400, "the size must count the data exactly"),
    (HEAD + b"%x\n%b\r\n0\r\n\r\n" % (len(BODY), BODY), 400, "a chunk-size line ends with a bare LF"),
    (HEAD + ONE + b"0\r\n\n", 400, "a trailer line ends with a bare LF"),
    (HEAD + b"5;" + b"e" * 5000 + b"\r\nabcde\r\n0\r\n\r\n", 400, "a chunk-size line is longer than 4096 bytes"),
    (HEAD + b"4000001\r\n", 413, "(a chunk of 67108865 bytes after 0) is larger than distil serve reads (64 MiB)"),
    (HEAD + b"f" * 40 + b"\r\n", 413, "is larger than distil serve reads (64 MiB)"),
    (HEAD + ONE + b"0\r\n" + b"X-More: 1\r\n" * 101 + b"\r\n", 400, "the trailers after the last chunk do not end"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n%b0\r\n\r\n"
     % (len(ONE) + 5, ONE), 400, "both Transfer-Encoding and Content-Length"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + ONE + b"0\r\n\r\n",
     400, "Transfer-Encoding 'gzip, chunked' is not supported"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     + ONE + b"0\r\n\r\n", 400, "Transfer-Encoding 'chunked,chunked' is not supported"),
    (b"POST /v1/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + ONE + b"0\r\n\r\n",
     400, "Transfer-Encoding is not defined for HTTP/1.0"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nContent-Length: 2\r\n\r\n%b"
     % (len(BODY), BODY), 400, "several Content-Length values"),
])
def test_chunked_framing_it_cannot_read_is_refused_and_the_connection_closed(server, raw, status, words):
    got, connection, message = send_raw(server, raw)
    assert (got, connection) == (status, "close") and words in message, message
    assert answer(server)  # the server goes on


def test_a_chunked_body_whose_chunks_together_pass_the_cap_is_a_413(server, monkeypatch):
    monkeypatch.setattr(serving_handler, "MAX_BODY_BYTES", len(BODY) + 10)
    framed = b"%x\r\n%b\r\n" % (len(BODY), BODY) + b"b\r\n" + b" " * 11 + b"\r\n0\r\n\r\n"
    got, connection, message = send_raw(server, HEAD + framed)
    assert (got, connection) == (413, "close")
    assert f"(a chunk of 11 bytes after {len(BODY)}) is larger than distil serve reads ({len(BODY) + 10} bytes)" \
        in message
    got, _, _ = send_raw(server, HEAD + b"%x\r\n%b\r\na\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY, b" " * 10))
    assert got == 200  # up to the cap exactly is read


@pytest.mark.parametrize("head, first", [
    (b"Content-Length: %d\r\n" % ((64 << 20) + 1), b"HTTP/1.1 413 "),
    (b"Transfer-Encoding: gzip\r\n", b"HTTP/1.1 400 "),
    (b"Content-Length: %d\r\n" % len(BODY), b"HTTP/1.1 100 Continue\r\n"),
])
def test_expect_100_continue_is_answered_with_the_refusal_when_the_headers_refuse_the_body(server, head, first):
    """A client that waits for 100 (Continue) before sending its body (curl does for large
    bodies) hears the 413 or 400 first and never sends it; a body that is taken gets the 100."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n" + head + b"\r\n")
        reader = sock.makefile("rb")
        line = reader.readline()
        assert line.startswith(first), line
        if first.startswith(b"HTTP/1.1 100"):
            assert reader.readline() == b"\r\n"
            sock.sendall(BODY)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200 and json.loads(response.read())["choices"][0]["text"] == answer(server)
        else:
            rest = reader.read()  # the server closes the connection after the refusal
            assert b"Connection: close" in rest and b"distil serve" in rest
    assert answer(server)  # the server goes on


@pytest.mark.parametrize("sent", [
    HEAD + b"40\r\n" + BODY[:10],  # half a chunk
    HEAD + b"%x\r\n%b" % (len(BODY), BODY),  # a chunk without its CRLF
    HEAD + b"4",  # half a size line
    HEAD + ONE + b"0\r\nX-Trailer: 1\r\n",  # trailers that never end
])
def test_a_client_that_stops_within_its_chunked_body_loses_the_connection(sent):
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", read_timeout_s=0.5) as server:
        with socket.create_connection((server.host, server.port), timeout=20) as sock:
            start = time.monotonic()
            sock.sendall(sent)
            assert sock.recv(1024) == b""  # closed by the server without an answer, long before our 20 s
            assert time.monotonic() - start < 10
        assert answer(server)


# -- connections


def test_a_burst_of_clients_connecting_at_once_is_accepted_without_retries(server):
    """A listen queue of 5 (http.server's) drops the SYNs of a burst; the kernel retries them a second later."""
    def connect(_):
        start = time.monotonic()
        sock = socket.create_connection((server.host, server.port), timeout=30)
        return time.monotonic() - start, sock

    with ThreadPoolExecutor(64) as pool:
        connected = list(pool.map(connect, range(64)))
    for _, sock in connected:
        sock.close()
    waits = sorted(wait for wait, _ in connected)
    assert waits[-1] < 0.5, waits[-8:]


def _held(server):
    """A connection the server has accepted (it answered on it) and keeps open, holding a slot."""
    sock = socket.create_connection((server.host, server.port), timeout=20)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    response = http.client.HTTPResponse(sock)
    response.begin()
    assert response.status == 200 and response.read() == b'{"status": "ok"}'
    return sock


def _health(server):
    """(status, headers, JSON) of GET /health on a fresh connection."""
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), json.loads(response.read())


def test_connections_past_the_cap_are_answered_503_and_a_freed_slot_serves_again():
    """Without a cap a flood of idle connections starts a thread each, for as long as the read timeout."""
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", max_connections=2) as server:
        held = [_held(server), _held(server)]
        status, headers, body = _health(server)
        assert status == 503 and headers["Retry-After"] == "1" and headers["Connection"] == "close"
        assert body["error"]["type"] == "server_busy" and "--max-connections" in body["error"]["message"]
        assert "(2)" in body["error"]["message"] and server.stats["busy_refused"] == 1
        held.pop().close()  # its thread reads the end of the stream, ends, and frees its slot
        wait_until(lambda: _health(server)[0] == 200)
        for sock in held:
            sock.close()
    with pytest.raises(ValueError, match="max_connections"):
        LocalOpenAIServer(tiny_model(), tiny_tokenizer(), max_connections=0)


def test_the_rollout_client_retries_a_busy_server_after_its_retry_after():
    from distil_core.rollouts.client import ServerClient

    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", max_connections=1) as server:
        held = _held(server)
        got = []
        client = threading.Thread(target=lambda: got.append(ServerClient(server.base_url, retries=3).get("/health")))
        client.start()
        wait_until(lambda: server.stats["busy_refused"] >= 1)  # refused once while the slot is held
        held.close()
        client.join(30)
        assert got == [{"status": "ok"}]


def test_clients_dribbling_their_headers_or_idle_between_requests_delay_no_one():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", read_timeout_s=1.0) as server:
        idle = socket.create_connection((server.host, server.port), timeout=20)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        health = http.client.HTTPResponse(idle)
        health.begin()
        assert health.status == 200 and health.read() == b'{"status": "ok"}'  # then it says nothing more
        stop, ended = threading.Event(), []
        head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 1000

        def dribble():  # a byte every 0.1 s: always inside the read timeout, never a whole request
            with socket.create_connection((server.host, server.port), timeout=20) as sock:
                try:
                    for byte in head:
                        if stop.is_set():
                            break
                        sock.sendall(bytes([byte]))
                        time.sleep(0.1)
                    ended.append(sock.recv(1024))  # stopped: the server closes it after its read timeout
                except OSError as exc:
                    ended.append(exc)

        dribblers = [threading.Thread(target=dribble) for _ in range(20)]
        for thread in dribblers:
            thread.start()
        time.sleep(1.5)  # past the read timeout: only what keeps sending is still open
        for _ in range(5):
            start = time.monotonic()
            assert answer(server)
            assert time.monotonic() - start < 5
        assert idle.recv(1024) == b""  # the idle keep-alive connection was closed after its read timeout
        idle.close()
        assert not ended  # the dribblers are still connected and sending
        stop.set()
        for thread in dribblers:
            thread.join(30)
        assert ended == [b""] * 20
