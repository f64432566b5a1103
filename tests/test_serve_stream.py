"""`distil serve` with `"stream": true`, through the official openai client against a real server
on 127.0.0.1: the chunks add up to the unstreamed answer, arrive while the model is still
decoding, never split a UTF-8 character or show part of a stop string, and a client that hangs
up stops the decoding, streamed or not. Two models: the untrained tiny model (random bytes, seeded sampling) and
a scripted one whose greedy answer is a chain of tokens we choose."""

import asyncio
import json
import socket
import struct
import threading

import openai
import pytest
import torch

from distil_core.serving import LocalOpenAIServer, Vocabulary
from distil_core.testing import tiny_model, tiny_tokenizer, wait_until


CHAT = [{"role": "user", "content": "Sort the digits 3 1 2."}]




def texts_by_choice(chunks, field):
    out = {}
    for chunk in chunks:
        for choice in chunk.choices:
            piece = getattr(choice, field) if field == "text" else choice.delta.content
            out[choice.index] = out.get(choice.index, "") + (piece or "")
    return out


def finish_reasons(chunks):
    return {c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason}


def test_streamed_completions_add_up_to_the_unstreamed_answer_with_usage(client):
    ask = dict(model="tiny", prompt=["1 2 3", "4 5"], max_tokens=24, temperature=1.0, seed=11, n=2)
    whole = client.completions.create(**ask)
    chunks = list(client.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert texts_by_choice(chunks, "text") == {c.index: c.text for c in whole.choices}
    assert finish_reasons(chunks) == {c.index: c.finish_reason for c in whole.choices}
    assert len(chunks) > 2 * 4  # piece by piece, not one chunk per choice
    *pieces, last = chunks
    assert last.choices == [] and last.usage == whole.usage and all(c.usage is None for c in pieces)
    assert len({chunk.id for chunk in chunks}) == 1


def test_streamed_chat_sends_the_role_then_the_content_then_the_finish(client):
    ask = dict(model="tiny", messages=CHAT, max_tokens=20, seed=5, n=2)
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert all(chunk.object == "chat.completion.chunk" and chunk.usage is None for chunk in chunks)
    for index in (0, 1):
        mine = [chunk.choices[0] for chunk in chunks if chunk.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[0].delta.content == ""
        assert mine[-1].finish_reason == whole.choices[index].finish_reason and mine[-1].delta.content is None
        assert all(c.finish_reason is None for c in mine[:-1])
    assert texts_by_choice(chunks, "delta") == {c.index: c.message.content for c in whole.choices}


def test_async_streams_run_side_by_side_and_match_the_unstreamed_answers(server, client):
    completion = dict(model="tiny", prompt="7 7", max_tokens=30, temperature=0.8, seed=3)
    chat = dict(model="tiny", messages=CHAT, max_tokens=30, temperature=0.8, seed=4,
                stream_options={"include_usage": True})

    async def both():
        async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as aclient:
            async def collect(stream):
                return [chunk async for chunk in await stream]
            return await asyncio.gather(collect(aclient.completions.create(**completion, stream=True)),
                                        collect(aclient.chat.completions.create(**chat, stream=True)))

    streamed_completion, streamed_chat = asyncio.run(both())
    assert texts_by_choice(streamed_completion, "text")[0] == client.completions.create(**completion).choices[0].text
    whole_chat = client.chat.completions.create(**{k: v for k, v in chat.items() if k != "stream_options"})
    assert texts_by_choice(streamed_chat, "delta")[0] == whole_chat.choices[0].message.content
    assert streamed_chat[-1].usage == whole_chat.usage


# -- a scripted model: greedy decoding walks a chain of tokens we choose


def chain_model(chain):
    """The tiny model rewired so that, greedily, token ``chain[i]`` is followed by ``chain[i+1]``:
    one-hot embeddings, attention and MLP outputs zeroed, and an untied head mapping each token
    to its successor. A real transformers model, only its weights are set by hand."""
    tok = tiny_tokenizer()
    model = tiny_model(hidden_size=len(tok))
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(len(tok)))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(len(tok), len(tok))
        for a, b in zip(chain, chain[1:]):
            head[b, a] = 1.0
        model.lm_head.weight = torch.nn.Parameter(head)
    return model


def byte_ids(text):
    """The single-byte tokens that spell ``text`` byte by byte (the tiny tokenizer is byte-level)."""
    vocab = Vocabulary(tiny_tokenizer())
    return [vocab.bytes.index(bytes([b])) for b in text.encode("utf-8")]


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # none of them is in the other chain


@pytest.fixture(scope="module")
def scripted():
    """x → é ☃ 日 ! → EOS (characters of 2, 3 and 3 bytes, one token per byte), and
    y → A B C … Z → A … (a loop that never ends)."""
    eos = tiny_tokenizer().eos_token_id
    utf8 = [*byte_ids("x"), *byte_ids("é☃日!"), eos]
    loop = [*byte_ids("y" + LETTERS), byte_ids("A")[0]]
    model = chain_model(utf8)
    with torch.no_grad():
        for a, b in zip(loop, loop[1:]):
            model.lm_head.weight[b, a] = 1.0
    with LocalOpenAIServer(model, tiny_tokenizer(), model_name="scripted") as server:
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as client:
            yield server, client


def test_a_character_split_across_tokens_is_sent_whole(scripted):
    _, client = scripted
    ask = dict(model="scripted", prompt=byte_ids("x"), max_tokens=20, temperature=0)
    whole = client.completions.create(**ask)
    assert whole.choices[0].text == "é☃日!" and whole.usage.completion_tokens == 10  # 9 bytes and EOS
    chunks = list(client.completions.create(**ask, stream=True))
    pieces = [c.choices[0].text for c in chunks if c.choices[0].text]
    # how steps group into chunks depends on thread timing; what a piece may hold does not
    assert "".join(pieces) == "é☃日!" and not any("\ufffd" in p for p in pieces)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stop, text, tokens", [("☃", "é", 2), ("日", "é☃", 5), ("!", "é☃日", 8)])
def test_a_stop_string_after_split_characters_keeps_every_token_of_the_text(scripted, stop, text, tokens):
    """Tokens, log-probs, usage and text_offset agree with the text: each character here is 2 or 3
    one-byte tokens, and a token holding part of one decodes alone as one U+FFFD."""
    _, client = scripted
    vocab = Vocabulary(tiny_tokenizer())
    ask = dict(model="scripted", prompt=byte_ids("x"), max_tokens=20, temperature=0, stop=[stop], logprobs=0,
               extra_body={"return_tokens_as_token_ids": True})
    whole = client.completions.create(**ask)
    choice = whole.choices[0]
    ids = [int(t.removeprefix("token_id:")) for t in choice.logprobs.tokens]
    assert choice.text == text and choice.finish_reason == "stop" and vocab.text(ids) == text
    assert len(ids) == len(choice.logprobs.token_logprobs) == whole.usage.completion_tokens == tokens
    starts = [0, 0, 1, 1, 1, 2, 2, 2]  # where each token's character starts: é, then ☃, then 日
    assert choice.logprobs.text_offset == starts[:tokens]
    echoed = client.completions.create(**{**ask, "prompt": byte_ids("xé"), "echo": True}).choices[0]
    # the echoed prompt x é (3 tokens), then the same answer without its é: offsets from "xé"'s 2
    assert echoed.text == "x" + text and echoed.logprobs.text_offset == [0, 1, 1] + [1 + s for s in starts[2:tokens]]
    streamed = client.completions.create(**{k: v for k, v in ask.items() if k != "logprobs"}, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == text


def rows_growing(ids, done_at=None):
    """A row after each of its tokens, as the model thread publishes it."""
    from distil_core.serving.batcher import Generation

    for end in range(1, len(ids) + 1):
        yield Generation(ids=list(ids[:end]), done=end == done_at)


def test_text_pieces_wait_for_whole_characters_and_hold_back_stop_string_starts():
    from distil_core.serving.text import TextDeltas

    vocab = Vocabulary(tiny_tokenizer())
    deltas = TextDeltas(vocab, stops=[], skip_special=True)
    assert [deltas.update(row) for row in rows_growing(byte_ids("é☃日!"))] == ["", "é", "", "", "☃", "", "", "日", "!"]
    deltas = TextDeltas(vocab, stops=["cdx", "e"], skip_special=True)
    assert [deltas.update(row) for row in rows_growing(byte_ids("abcdf"))] == ["a", "b", "", "", "cdf"]
    stopped = list(rows_growing(byte_ids("abcdx"), done_at=5))[-1]
    stopped.finish_reason, stopped.cut_text = "stop", "ab"
    deltas = TextDeltas(vocab, stops=["cdx"], skip_special=True)
    assert [deltas.update(row) for row in [*rows_growing(byte_ids("abcd")), stopped]] == ["a", "b", "", "", ""]


def test_a_stop_string_across_tokens_is_never_shown(scripted):
    _, client = scripted
    ask = dict(model="scripted", prompt=byte_ids("y"), max_tokens=40, temperature=0, stop=["KLMN", "ZZ"])
    whole = client.completions.create(**ask)
    assert whole.choices[0].text == "ABCDEFGHIJ" and whole.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(**ask, stream=True))
    pieces = [c.choices[0].text for c in streamed if c.choices[0].text]
    assert "".join(pieces) == "ABCDEFGHIJ" and not any("K" in p for p in pieces)
    assert streamed[-1].choices[0].finish_reason == "stop"


class Gate:
    """A forward hook that holds the model thread at its ``at``-th forward pass until opened."""

    def __init__(self, model, at):
        self.calls, self.at, self.open, self.waiting = 0, at, threading.Event(), threading.Event()
        self.handle = model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        if self.calls == self.at:
            self.waiting.set()
            assert self.open.wait(60), "the test never opened the gate"


def test_chunks_arrive_while_the_model_is_still_decoding(scripted):
    server, client = scripted
    gate = Gate(server.lm.model, at=4)  # the prompt's pass and two steps: 3 tokens, then it waits
    try:
        stream = client.completions.create(model="scripted", prompt=byte_ids("y"), max_tokens=26,
                                           temperature=0, stream=True)
        first = ""
        while len(first) < 3:  # steps the model thread made in between may come as one chunk
            first += next(stream).choices[0].text
        # the model cannot finish before the gate opens, so these came while it was decoding
        assert first == "ABC" and gate.waiting.wait(30) and server.lm.open_jobs() == 1
        gate.open.set()
        rest = "".join(chunk.choices[0].text for chunk in stream)
        assert first + rest == LETTERS
    finally:
        gate.open.set()
        gate.handle.remove()


@pytest.mark.parametrize("streamed", [True, False])
def test_a_client_that_hangs_up_stops_the_decoding(scripted, streamed):
    """Streamed, the client closes its stream; unstreamed, its own timeout ends the request (then,
    usually, it retries). Either way the abandoned rows stop instead of running to max_tokens."""
    server, client = scripted
    server.reset_stats()
    gate = Gate(server.lm.model, at=3)
    ask = dict(model="scripted", prompt=byte_ids("y"), max_tokens=240, temperature=0)
    try:
        if streamed:
            stream = client.completions.create(**ask, stream=True)
            assert next(stream).choices[0].text.startswith("A")
            stream.close()  # noticed when the next chunk cannot be sent
        else:
            with pytest.raises(openai.APITimeoutError):
                client.with_options(timeout=0.5).completions.create(**ask)
            wait_until(lambda: server.stats["hung_up"] == 1)  # noticed while the model thread is held
        gate.open.set()
        wait_until(lambda: server.lm.open_jobs() == 0 and server.stats["in_flight"] == 0)
        # far fewer forward passes than the 240 tokens asked for; unstreamed, the held one and one more
        assert gate.calls < (120 if streamed else 5)
        wait_until(lambda: server.stats["hung_up"] == 1)  # counted alike, streamed or not
    finally:
        gate.open.set()
        gate.handle.remove()
    assert client.completions.create(model="scripted", prompt=byte_ids("y"), max_tokens=3,
                                     temperature=0).choices[0].text == "ABC"  # the server goes on


def test_stats_reset_while_a_request_is_answered_still_count_it_out(scripted):
    """Before: resetting the stats zeroed ``in_flight`` under a request still being answered, whose
    end then took it to -1 for good (a test that reset the stats as the previous test's stream sent
    its last bytes waited in vain for 0)."""
    server, client = scripted
    gate = Gate(server.lm.model, at=3)
    try:
        stream = client.completions.create(model="scripted", prompt=byte_ids("y"), max_tokens=8, temperature=0,
                                           stream=True)
        assert gate.waiting.wait(30) and server.stats["in_flight"] == 1
        server.reset_stats()
        assert server.stats["in_flight"] == 1 and server.stats["max_in_flight"] == 1 and server.stats["requests"] == 0
        gate.open.set()
        assert "".join(chunk.choices[0].text for chunk in stream) == LETTERS[:8]
    finally:
        gate.open.set()
        gate.handle.remove()
    wait_until(lambda: server.stats["in_flight"] <= 0)
    assert server.stats["in_flight"] == 0


def test_a_stream_read_to_its_end_is_not_counted_as_a_hang_up_however_the_client_closes(scripted):
    """A client may reset the connection as soon as it has read ``data: [DONE]``, before the
    chunked body's last empty chunk is sent: its answer was whole, so it did not hang up."""
    server, client = scripted
    server.reset_stats()
    assert "".join(c.choices[0].text for c in client.completions.create(
        model="scripted", prompt=byte_ids("x"), max_tokens=20, temperature=0, stream=True)) == "é☃日!"
    body = json.dumps({"model": "scripted", "prompt": byte_ids("x"), "max_tokens": 20, "temperature": 0,
                       "stream": True}).encode()
    for _ in range(20):
        with socket.create_connection((server.host, server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            seen = b""
            while b"data: [DONE]" not in seen:
                piece = sock.recv(65536)
                assert piece, seen
                seen += piece
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    wait_until(lambda: server.stats["in_flight"] == 0)
    assert server.stats["hung_up"] == 0


@pytest.mark.parametrize("asked", [
    dict(prompt="y", max_tokens=50, temperature=0),  # another batch key: it waits in the batcher's queue
    dict(prompt="yAB", max_tokens=0, echo=True, logprobs=1),  # prompt scoring waits for the model itself
])
def test_a_request_whose_client_hangs_up_while_the_model_is_busy_is_never_run(scripted, asked):
    server, client = scripted
    server.reset_stats()
    gate = Gate(server.lm.model, at=1)  # holds the first request's prompt pass
    held = threading.Thread(target=lambda: client.completions.create(
        model="scripted", prompt=byte_ids("x"), max_tokens=20, temperature=0))
    try:
        held.start()
        assert gate.waiting.wait(30)
        with pytest.raises(openai.APITimeoutError):
            client.with_options(timeout=0.5).completions.create(
                model="scripted", **{**asked, "prompt": byte_ids(asked["prompt"])})
        wait_until(lambda: server.stats["hung_up"] == 1)
        gate.open.set()
        held.join(30)
        assert not held.is_alive()
        wait_until(lambda: server.lm.open_jobs() == 0 and server.stats["in_flight"] == 0)
        # the held request's one batch: its prompt pass and 9 steps (é☃日! and EOS), nothing else
        assert server.stats["batches"] == 1 and gate.calls == 10
    finally:
        gate.open.set()
        gate.handle.remove()
    again = client.completions.create(model="scripted", **{**asked, "prompt": byte_ids(asked["prompt"])})
    assert again.choices[0].text.startswith("yAB" if asked.get("echo") else "ABC")  # the server goes on


def test_a_watcher_that_fails_withdraws_its_job_and_leaves_no_open_job():
    from distil_core.serving.batcher import Batcher, Job, watching_client

    release = threading.Event()

    def decode(jobs):  # holds the batch until released, then ends every row
        release.wait(30)
        for job in jobs:
            for gen in job.gens:
                gen.done = True
            job.finish()

    def broken():
        raise RuntimeError("watcher broke")

    batcher = Batcher(decode, max_rows=8)
    try:
        with watching_client(broken), pytest.raises(RuntimeError, match="watcher broke"):
            batcher.run(Job([[1, 2]], 4, {"temperature": 0, "top_p": 1.0, "top_k": 0}, 0, None))
        release.set()  # the batch it was in ends; the job is not left open
        wait_until(lambda: batcher.open_jobs() == 0)
    finally:
        release.set()
        batcher.close()


def test_hung_up_tells_a_waiting_client_from_one_that_left():
    import socket

    from distil_core.serving.connections import hung_up

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        with served:
            served.settimeout(30)  # as the handler's socket: a peek must not wait for it
            assert not hung_up(served)
            client.sendall(b"GET")  # a pipelined next request: still there
            wait_until(lambda: served.recv(3, socket.MSG_PEEK) == b"GET")
            assert not hung_up(served)
            served.recv(3)
            client.close()
            wait_until(lambda: hung_up(served))
        assert hung_up(served)  # closed under us
        if hasattr(socket, "TCP_INFO"):  # Linux: the end of the stream behind bytes not read yet
            client = socket.create_connection(listener.getsockname())
            served, _ = listener.accept()
            with served:
                client.sendall(b"x" * 65536)  # a large pipelined request, then gone
                client.close()
                wait_until(lambda: hung_up(served))
                assert served.recv(1, socket.MSG_PEEK) == b"x"  # its bytes were not read to see it
