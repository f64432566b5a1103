"""Serving: ``distil serve``, an OpenAI-compatible HTTP server over a local policy.

``http`` is the server and its request handling, ``engine`` the batched generation and scoring
behind it (``LocalLM``), ``weights`` the hot-swapped weights a trainer pushes to it, and
``tokens`` the byte-level token tables the API answers with.

May import the contract layer, ``models`` and ``rollouts``; never ``training`` or ``cli``.
"""
