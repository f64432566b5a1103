"""From an API's scored prompt tokens to top-k rows on the student's response positions.

An API answers prompt scoring with one entry per token *of its own tokenisation*: the token's
text (or bytes, or id), its log-prob given the tokens before it, and the top-k alternatives at
that position. :func:`parse_echo` (OpenAI's legacy ``echo`` + ``logprobs``) and
:func:`parse_prompt_logprobs` (vLLM's ``prompt_logprobs``) turn both formats into
:class:`ApiToken` lists.

Two ways to put them on the student's positions:

- **by id** (:func:`rows_by_id`): the prompt was sent as the student's token ids to an API with
  the same tokenizer, so API token ``len(context) + t`` is student token ``t`` (checked).
- **by bytes** (:func:`rows_by_bytes`): the prompt was sent as text. Each API token covers a byte
  span of the prompt; a student response token is *aligned* when one API token covers exactly
  its span. Its row is that API position's top-k, each alternative mapped to the student token
  with the same bytes (alternatives with no such student token fold into the tail). A response
  with any unaligned token gets no rows: the caller falls back for that query.

Rows have exactly ``k`` entries, best first; missing entries are distinct unused ids with
log-prob ``PAD_LOGPROB`` (no mass, so they add nothing to the loss).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from distil_core.serving import token_bytes_table

PAD_LOGPROB = -1e4
_HEX = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclass
class ApiToken:
    """One token of the API's tokenisation of the prompt."""

    raw: Optional[bytes]  # its bytes; None when the API did not say (an undecodable fragment)
    token_id: Optional[int] = None  # when the API gave ids (vLLM, ``token_id:N``)
    logprob: Optional[float] = None  # log p(this token | the ones before); None for the first
    top: list[tuple[Optional[bytes], Optional[int], float]] = field(default_factory=list)


def parse_token(text: str) -> tuple[Optional[bytes], Optional[int]]:
    """(bytes, id) of one token as an API spells it: text, ``bytes:\\xNN…`` or ``token_id:N``."""
    if text.startswith("token_id:") and text[9:].lstrip("-").isdigit():
        return None, int(text[9:])
    if text.startswith("bytes:"):
        return bytes(int(h, 16) for h in _HEX.findall(text[6:])), None
    if "\ufffd" in text:  # a partial character decoded on its own: its bytes are lost
        return None, None
    return text.encode("utf-8"), None


class NoLogprobs(ValueError):
    """The answer has no (or incomplete) log-probs where the request asked for them."""


def parse_echo(choice: dict[str, Any]) -> list[ApiToken]:
    """OpenAI's legacy ``logprobs`` of an echoed prompt: tokens, token_logprobs, top_logprobs."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not lp.get("tokens"):
        raise NoLogprobs("the answer has no log-probs for the echoed prompt")
    tokens, token_lps, tops = lp["tokens"], lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
    if len(token_lps) != len(tokens) or len(tops) != len(tokens):
        raise NoLogprobs("the answer's token_logprobs/top_logprobs do not cover every prompt token")
    out = []
    for j, text in enumerate(tokens):
        raw, tid = parse_token(str(text))
        top = []
        if j > 0:
            if not isinstance(tops[j], dict) or token_lps[j] is None:
                raise NoLogprobs(f"the answer has no top log-probs at prompt token {j}")
            for alt, value in tops[j].items():
                a_raw, a_id = parse_token(str(alt))
                top.append((a_raw, a_id, float(value)))
        out.append(ApiToken(raw, tid, None if j == 0 else float(token_lps[j]), top))
    return out


def parse_prompt_logprobs(choice: dict[str, Any], prompt_ids: Sequence[int]) -> list[ApiToken]:
    """vLLM's ``prompt_logprobs``: per prompt token a dict {id: {logprob, rank, decoded_token}}, first null."""
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(prompt_ids):
        raise NoLogprobs("the answer has no prompt_logprobs for every prompt token")
    out = []
    for j, (tid, entry) in enumerate(zip(prompt_ids, entries)):
        if j == 0:
            out.append(ApiToken(None, tid))
            continue
        if not isinstance(entry, dict) or str(tid) not in entry:
            raise NoLogprobs(f"prompt_logprobs at token {j} does not include the prompt token")
        own = entry[str(tid)]
        raw, _ = parse_token(str(own.get("decoded_token", "")))
        top = []
        for key, item in entry.items():  # the top-k, plus the prompt token when it is not among them
            a_raw, _ = parse_token(str(item.get("decoded_token", "")))
            top.append((a_raw, int(key), float(item["logprob"])))
        out.append(ApiToken(raw, tid, float(own["logprob"]), top))
    return out


class StudentVocab:
    """The student's tokens as bytes, and the way back from bytes to ids."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.bytes = token_bytes_table(tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.ids_of: dict[bytes, int] = {}
        # ordinary tokens win over special ones with the same text
        for tid in sorted(range(len(self.bytes)), key=lambda i: (i not in special, -i)):
            if self.bytes[tid]:
                self.ids_of[self.bytes[tid]] = tid

    def text(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.bytes[i] for i in ids)


def topk_row(alternatives: Sequence[tuple[Optional[int], float]], own: Optional[tuple[int, float]],
             k: int) -> tuple[list[int], list[float]]:
    """``k`` (id, log-prob) pairs best first: the alternatives, then the actual token if room, then padding."""
    chosen: dict[int, float] = {}
    for tid, lp in sorted(alternatives, key=lambda a: -a[1]):
        if tid is not None and tid not in chosen and len(chosen) < k:
            chosen[tid] = lp
    if own is not None and own[0] not in chosen and len(chosen) < k:
        chosen[own[0]] = own[1]
    ids, lps = list(chosen), list(chosen.values())
    filler = 0
    while len(ids) < k:
        while filler in chosen:
            filler += 1
        ids.append(filler)
        lps.append(PAD_LOGPROB)
        filler += 1
    return ids, lps


@dataclass
class Alignment:
    """Rows for every response position, or the first position that could not be aligned."""

    ids: Optional[list[list[int]]] = None
    logprobs: Optional[list[list[float]]] = None
    unaligned_at: Optional[int] = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.ids is not None


def rows_by_id(tokens: Sequence[ApiToken], context_ids: Sequence[int], response_ids: Sequence[int],
               vocab: StudentVocab, k: int) -> Alignment:
    """Same tokenizer, prompt sent as ids: API position ``len(context) + t`` is student position t.

    Every prompt token the API spells back is checked against the id sent, context included:
    an API whose ids mean other bytes would score a different text.
    """
    sent = list(context_ids) + list(response_ids)
    if len(tokens) != len(sent):
        return Alignment(unaligned_at=0, reason=f"the API scored {len(tokens)} tokens, the student sent {len(sent)}")
    for j, (tok, tid) in enumerate(zip(tokens, sent)):
        if tok.raw is not None:
            same = tok.raw == vocab.bytes[tid]
        else:
            same = tok.token_id is None or tok.token_id == tid
        if not same:
            where = max(0, j - len(context_ids))
            return Alignment(unaligned_at=where, reason=f"the API reads prompt token {j} (id {tid}) as {tok.raw!r}, "
                                                        f"the student as {vocab.bytes[tid]!r}")
    ids, lps = [], []
    for t, student_id in enumerate(response_ids):
        tok = tokens[len(context_ids) + t]
        if tok.logprob is None:
            return Alignment(unaligned_at=t, reason=f"no log-prob for response token {t}")
        alts = [(a_id if a_id is not None else vocab.ids_of.get(a_raw), lp) for a_raw, a_id, lp in tok.top]
        row = topk_row(alts, (student_id, tok.logprob), k)
        ids.append(row[0])
        lps.append(row[1])
    return Alignment(ids, lps)


def api_spans(tokens: Sequence[ApiToken], data: bytes) -> list[Optional[tuple[int, int]]]:
    """The byte span of ``data`` each API token covers; None where it cannot be placed.

    Tokens are laid end to end. A token whose bytes are unknown or do not match (a leading BOS,
    a fragment the API could not spell) gets no span, and the walk picks up again at the next
    token found within a few bytes.
    """
    spans: list[Optional[tuple[int, int]]] = []
    cursor, lost = 0, False
    for tok in tokens:
        raw = tok.raw
        if raw and data.startswith(raw, cursor):
            spans.append((cursor, cursor + len(raw)))
            cursor += len(raw)
            lost = False
            continue
        if raw and lost:
            found = data.find(raw, cursor, cursor + len(raw) + 8)
            if found >= 0:
                spans.append((found, found + len(raw)))
                cursor, lost = found + len(raw), False
                continue
        spans.append(None)
        lost = True
    return spans


def rows_by_bytes(tokens: Sequence[ApiToken], sent: bytes, context: bytes, response_ids: Sequence[int],
                  vocab: StudentVocab, k: int) -> Alignment:
    """Text prompt: match each student response token's byte span to one API token's span."""
    by_span = {span: j for j, span in enumerate(api_spans(tokens, sent)) if span is not None}
    ids, lps = [], []
    start = len(context)
    for t, student_id in enumerate(response_ids):
        piece = vocab.bytes[student_id]
        span = (start, start + len(piece))
        start += len(piece)
        j = by_span.get(span)
        if not piece or j is None or sent[span[0]:span[1]] != piece or tokens[j].logprob is None:
            return Alignment(unaligned_at=t, reason=f"student token {t} ({piece!r}) is not one API token")
        alts = [(vocab.ids_of.get(a_raw) if a_raw is not None else None, lp) for a_raw, _, lp in tokens[j].top]
        row = topk_row(alts, (student_id, tokens[j].logprob), k)
        ids.append(row[0])
        lps.append(row[1])
    return Alignment(ids, lps)


def same_tokenization(tokens: Sequence[ApiToken], student_ids: Sequence[int], vocab: StudentVocab) -> bool:
    """Whether the API tokenised a text exactly as the student does (a leading BOS allowed)."""
    raws = [t.raw for t in tokens]
    student = [vocab.bytes[i] for i in student_ids]
    return raws == student or (len(raws) == len(student) + 1 and raws[1:] == student)
