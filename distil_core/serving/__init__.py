"""Serving: ``distil serve``, an OpenAI-compatible HTTP server over a local policy.

``http`` is the server and how it answers a request, ``handler`` one connection's requests read
off the socket (each within its deadline) and answered, ``guard`` which requests a web page may
not send, ``limits`` how much work one request may ask for, ``routes`` the paths it answers,
``connections`` the listening side (a bounded thread per connection; whether a client hung up),
``bodies`` the request bodies read off the connection (by Content-Length or chunked),
``requests`` the validated request bodies (and the parameters refused by name), ``engine`` the
generation and scoring behind it (``LocalLM``), ``next_token`` how a decoding step picks its
tokens from the logits, ``batcher`` the model thread that decodes concurrent requests together,
``streaming`` the server-sent chunks of ``"stream": true``, ``text`` a generation's text (whole,
or in pieces that never split a character), ``logprobs`` the answer formats, ``weights`` the
hot-swapped weights a trainer pushes to it, ``tokens`` the byte-level token tables the API
answers with, and ``faults`` a server whose answers fail on schedule, for testing clients.

May import the contract layer, ``models`` and ``rollouts``; never ``training`` or ``cli``.
Importing this package loads neither torch nor transformers.
"""

from distil_core.serving.connections import check_port
from distil_core.serving.faults import FAULT_KINDS, Fault, FaultyServer, parse_fault
from distil_core.serving.guard import loopback_address, loopback_host
from distil_core.serving.http import LocalOpenAIServer
from distil_core.serving.requests import ApiError
from distil_core.serving.tokens import Vocabulary, token_bytes_table, token_string

__all__ = [
    "LocalOpenAIServer",
    "FaultyServer",
    "Fault",
    "FAULT_KINDS",
    "parse_fault",
    "ApiError",
    "Vocabulary",
    "token_bytes_table",
    "token_string",
    "check_port",
    "loopback_address",
    "loopback_host",
]
