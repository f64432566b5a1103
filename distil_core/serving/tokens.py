"""The bytes each token id stands for, and OpenAI's spelling of a token.

Log-prob answers name tokens by their text, and a client that aligns an API's tokens with its
own (the api-expert plugin) needs the exact bytes behind each id, not ``decode``'s cleaned-up
text: a byte-level BPE token can be half of a UTF-8 character. Torch-free.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

__all__ = ["token_bytes_table", "token_string", "Vocabulary"]

_HEX_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:
        return False
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
    return "ByteLevel" in kinds


def token_bytes_table(tokenizer: Any) -> list[bytes]:
    """The bytes each token id contributes to decoded text, indexed by id.

    Byte-level BPE tokens map back through the byte table; SentencePiece pieces turn ``▁`` into
    a space and ``<0xNN>`` into that byte; added and special tokens are their content. Anything
    else falls back to decoding the id alone (a partial UTF-8 character then reads as U+FFFD).
    """
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    byte_level = _is_byte_level(tokenizer)
    table = _byte_decoder() if byte_level else {}
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        if i in added:
            out.append(added[i].encode("utf-8"))
        elif piece is None:
            out.append(b"")
        elif byte_level and all(c in table for c in piece):
            out.append(bytes(table[c] for c in piece))
        elif _HEX_BYTE.match(piece):
            out.append(bytes([int(_HEX_BYTE.match(piece).group(1), 16)]))
        elif "\u2581" in piece:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
        else:
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return out


def token_string(raw: bytes) -> str:
    """OpenAI's spelling of one token: its text, or ``bytes:\\xNN…`` when not valid UTF-8 alone."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class Vocabulary:
    """A tokenizer's token bytes, for text and token names that agree byte for byte with the ids."""

    def __init__(self, tokenizer: Any):
        self.bytes = token_bytes_table(tokenizer)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])

    def __len__(self) -> int:
        return len(self.bytes)

    def text(self, ids: Any, skip_special: bool = False) -> str:
        """The text of ``ids`` (``skip_special``: without special tokens); bytes that are not
        UTF-8 read as U+FFFD."""
        kept = (i for i in ids if not (skip_special and i in self.special_ids))
        return b"".join(self.bytes[i] for i in kept).decode("utf-8", errors="replace")

    def whole_text(self, ids: Any, skip_special: bool = False) -> str:
        """:meth:`text` up to its last whole character: an incomplete UTF-8 sequence at the end
        (a character whose other bytes are still to come) is left out, not read as U+FFFD."""
        raw = b"".join(self.bytes[i] for i in ids if not (skip_special and i in self.special_ids))
        return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(raw, final=False)

    def char_counts(self, ids: Any, skip_special: bool = False) -> list[int]:
        """``counts[k]``: the characters of ``whole_text(ids[:k])``, for k = 0 … len(ids).

        So ``counts[k]`` is where token ``k``'s text starts in the text of ``ids``: the tokens
        that hold the bytes of one character all start where it starts (it is counted once the
        token that completes it is in). Decoding each token alone instead would count every
        token holding part of a character as one U+FFFD."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        counts = [0]
        for i in ids:
            raw = b"" if skip_special and i in self.special_ids else self.bytes[i]
            counts.append(counts[-1] + len(decoder.decode(raw)))
        return counts

    def token(self, token_id: int, as_ids: bool = False) -> str:
        """A token as the legacy log-probs name it: its text, or vLLM's ``token_id:N``."""
        return f"token_id:{token_id}" if as_ids else token_string(self.bytes[token_id])
