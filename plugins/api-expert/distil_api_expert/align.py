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

Answers are checked as they are parsed: every log-prob must be a finite number ≤ 0 (−∞, no
mass, becomes ``PAD_LOGPROB``), and the alternatives at one position must not hold more than
all the probability there is (their log-sum-exp at most ``LOGPROB_SLACK`` above 0, the
trainer's own tolerance), or the answer is refused with :class:`BadLogprobs` naming the
position, since a string, a boolean, +∞ or a row of near-certain alternatives would otherwise
reach the loss. An alternative whose
id lies outside the student's vocabulary has no student token to put mass on, and folds into
the tail like any alternative the student cannot spell.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from distil_core.serving import token_bytes_table

PAD_LOGPROB = -1e4
LOGPROB_SLACK = 1e-3  # rounding lets a server report log p = 0 as a hair above it
_HEX = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclass
class ApiToken:
    """One token of the API's tokenisation of the prompt."""

    raw: Optional[bytes]  # its bytes; None when the API did not say (an undecodable fragment)
    token_id: Optional[int] = None  # when the API gave ids (vLLM, ``token_id:N``)
    logprob: Optional[float] = None  # log p(this token | the ones before); None for the first
    top: list[tuple[Optional[bytes], Optional[int], float]] = field(default_factory=list)


def is_token_id(text: str) -> bool:
    """Whether ``text`` spells a token id: ASCII digits only (``str.isdigit`` also accepts "²",
    which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def parse_token(text: str) -> tuple[Optional[bytes], Optional[int]]:
    """(bytes, id) of one token as an API spells it: text, ``bytes:\\xNN…`` or ``token_id:N``."""
    if text.startswith("token_id:") and is_token_id(text[9:]):
        return None, int(text[9:])
    if text.startswith("bytes:"):
        return bytes(int(h, 16) for h in _HEX.findall(text[6:])), None
    if "\ufffd" in text:  # a partial character decoded on its own: its bytes are lost
        return None, None
    return text.encode("utf-8"), None


class NoLogprobs(ValueError):
    """The answer has no (or incomplete) log-probs where the request asked for them."""


class BadLogprobs(ValueError):
    """The answer's log-probs are there but are not log-probabilities (or not where they belong)."""


def logprob(value: Any, where: str) -> float:
    """``value`` as a log-prob: a finite real ≤ 0 (a hair above 0 is rounding; −∞ is no mass)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadLogprobs(f"{where}: the log-prob {_short(value)} is not a number")
    value = float(value)
    if math.isnan(value) or value > LOGPROB_SLACK:
        raise BadLogprobs(f"{where}: the log-prob {value!r} is not a number ≤ 0")
    return min(0.0, max(PAD_LOGPROB, value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def check_mass(top: Sequence[tuple[Any, Any, float]], where: str) -> None:
    """The alternatives at one position are distinct tokens: together they hold at most all of
    the probability (rounding allowed for), or the answer is not a distribution."""
    values = [lp for _, _, lp in top]
    if not values:
        return
    peak = max(values)
    total = peak + math.log(sum(math.exp(v - peak) for v in values))
    if total > LOGPROB_SLACK:
        raise BadLogprobs(f"{where}: the top log-probs add up to a probability of {math.exp(total):.4g}, more than 1")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadLogprobs(f"{where}: expected an object, got {_short(value)}")
    return value


def parse_echo(choice: dict[str, Any]) -> list[ApiToken]:
    """OpenAI's legacy ``logprobs`` of an echoed prompt: tokens, token_logprobs, top_logprobs."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not lp.get("tokens"):
        raise NoLogprobs("the answer has no log-probs for the echoed prompt")
    tokens, token_lps, tops = lp["tokens"], lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
    if not all(isinstance(x, list) for x in (tokens, token_lps, tops)):
        raise BadLogprobs("tokens, token_logprobs and top_logprobs must be lists")
    if len(token_lps) != len(tokens) or len(tops) != len(tokens):
        raise NoLogprobs("the answer's token_logprobs/top_logprobs do not cover every prompt token")
    out = []
    for j, text in enumerate(tokens):
        raw, tid = parse_token(str(text))
        top = []
        if j > 0:
            if tops[j] is None or token_lps[j] is None:
                raise NoLogprobs(f"the answer has no top log-probs at prompt token {j}")
            for alt, value in _mapping(tops[j], f"top_logprobs at prompt token {j}").items():
                a_raw, a_id = parse_token(str(alt))
                top.append((a_raw, a_id, logprob(value, f"top_logprobs at prompt token {j}")))
        own = None if j == 0 else logprob(token_lps[j], f"token_logprobs at prompt token {j}")
        if j > 0:  # the prompt's own token holds probability too, among the top-k or beside them
            among = any(a_raw == raw and (a_id is None or tid is None or a_id == tid) for a_raw, a_id, _ in top)
            check_mass(top if among else [*top, (raw, tid, own)], f"top_logprobs at prompt token {j}")
        out.append(ApiToken(raw, tid, own, top))
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
        where = f"prompt_logprobs at prompt token {j}"
        top = []
        for key, item in entry.items():  # the top-k, plus the prompt token when it is not among them
            item = _mapping(item, where)
            if not is_token_id(str(key)):
                raise BadLogprobs(f"{where}: {_short(key)} is not a token id")
            a_raw, _ = parse_token(str(item.get("decoded_token", "")))
            top.append((a_raw, int(key), logprob(item.get("logprob"), where)))
        check_mass(top, where)
        own = _mapping(entry[str(tid)], where)
        raw, _ = parse_token(str(own.get("decoded_token", "")))
        out.append(ApiToken(raw, tid, logprob(own.get("logprob"), where), top))
    return out


def check_written_logprobs(lp: Any, chat: bool) -> None:
    """The log-probs of an answer the expert wrote: present (NoLogprobs) and numbers (BadLogprobs).

    They are not trained on (they lie on the expert's path), but an answer whose log-probs are
    not log-probabilities is not the answer that was asked for.
    """
    entries = lp.get("content") if isinstance(lp, dict) and chat else None
    if not chat and isinstance(lp, dict) and isinstance(lp.get("tokens"), list):
        entries = [{"logprob": v, "top_logprobs": t} for v, t in
                   zip(lp.get("token_logprobs") or [], lp.get("top_logprobs") or [])]
    if not isinstance(entries, list):
        raise NoLogprobs("the answer has no log-probs")
    for j, entry in enumerate(entries):
        where = f"log-probs of answer token {j}"
        entry = _mapping(entry, where)
        logprob(entry.get("logprob"), where)
        tops = entry.get("top_logprobs") or []
        tops = list(tops.values()) if isinstance(tops, dict) else tops
        if not isinstance(tops, list):
            raise BadLogprobs(f"{where}: top_logprobs is {_short(tops)}, not a list")
        for alt in tops:
            logprob(alt.get("logprob") if isinstance(alt, dict) else alt, where)


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

    def known(self, tid: int) -> Optional[int]:
        """``tid`` when the student has such a token, else None (an id only the API's model has)."""
        return tid if 0 <= tid < len(self.bytes) else None


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
        alts = [(vocab.known(a_id) if a_id is not None else vocab.ids_of.get(a_raw), lp) for a_raw, a_id, lp in tok.top]
        row = topk_row(alts, (student_id, tok.logprob), k)
        ids.append(row[0])
        lps.append(row[1])
    return Alignment(ids, lps)


def api_spans(tokens: Sequence[ApiToken], data: bytes) -> list[Optional[tuple[int, int]]]:
    """The byte span of ``data`` each API token covers; None where it cannot be placed.

    Tokens are laid end to end. Two kinds of token get no span and let the walk pick up again
    at the next token found within a few bytes: a first token that is not the text's start (a
    BOS the API adds), and one whose bytes are unknown (a fragment the API could not spell).
    Any other token that does not match where it should means the API scored a different text
    than was sent (a proxy that rewrote it): from there on nothing is placed, so no row is read
    off it. A text that begins with its own BOS, echoed after one the API added, matches only
    from the second token, so that walk is tried too.
    """
    spans, whole = _walk(tokens, data)
    if not whole and len(tokens) > 1:
        later, later_whole = _walk(tokens[1:], data)
        if later_whole and later[0] is not None:  # the second token is the text's start: an added BOS
            return [None, *later]
    return spans


def _walk(tokens: Sequence[ApiToken], data: bytes) -> tuple[list[Optional[tuple[int, int]]], bool]:
    """(spans, whether every token with known bytes was placed or stepped over) of one walk."""
    spans: list[Optional[tuple[int, int]]] = []
    cursor, lost = 0, False
    for index, tok in enumerate(tokens):
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
        if raw and index > 0:  # known bytes where other bytes were sent
            return spans + [None] * (len(tokens) - index), False
        spans.append(None)
        lost = True
    return spans, True


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
