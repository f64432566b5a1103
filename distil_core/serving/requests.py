"""Request bodies of ``distil serve``, validated, and the errors it answers in OpenAI's shape.

Each endpoint's body is a pydantic model, so a bad field is refused before any model work with
a 400 that names it (``param``), as OpenAI's API does. ``null`` means the field was not sent
(the OpenAI SDKs and vLLM's clients send nulls).

A completions or chat parameter this server does not implement (``tools``, ``response_format``,
``logit_bias``, a misspelt name) is refused with a 400 naming it, never ignored: an ignored
parameter answers a different question than the client asked, with status 200. Parameters
whose value asks for nothing (``frequency_penalty: 0``, ``best_of`` equal to ``n``, ``user``,
which only labels the request) are accepted. A chat message is text: content parts other than
text (images, audio) and a message's ``tool_calls`` are refused the same way, never dropped.

A message's ``role`` is one of OpenAI's chat roles, spelt as OpenAI spells them (lower case):
``system``, ``developer``, ``user`` or ``assistant`` (:data:`CHAT_ROLES`). Any other role
(``"wizard"``, ``""``, ``"System"``) is a 400 naming the message, the role sent and the roles
taken, as OpenAI answers it, never handed to the chat template: most templates print whatever
role they are given as text the model was never trained on (the tiny test models' template
writes ``<|wizard|>``, SmolLM2's ``<|im_start|>wizard``). ``tool`` and ``function`` messages
carry the result of a tool call, and tool calling is not supported (an assistant message's
``tool_calls`` are refused), so they are refused too, as OpenAI refuses a tool message that
answers no tool call. ``developer`` is OpenAI's newer name for ``system``: it reaches the
template as ``system`` unless the template names a developer role itself
(:func:`template_messages`; the tiny models' and SmolLM2's templates do not, and SmolLM2's
would otherwise add its default system prompt before the developer's). A message's ``name`` (a
participant's name, a string) reaches the template beside its role and content; most templates
do not render it, as most models were not trained with one.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Optional, TypeVar, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator,
                      model_validator)

from distil_core.config.rollout_sections import GREEDY_BELOW

__all__ = ["ApiError", "token_usage", "MAX_LOGPROBS", "GREEDY_BELOW", "UNSUPPORTED", "CHAT_ROLES", "StreamOptions",
           "CompletionRequest", "ChatRequest", "LoadAdapterRequest", "UnloadAdapterRequest", "ReloadRequest",
           "parse_body", "template_messages", "validated"]

MAX_LOGPROBS = 20

Count = Annotated[int, Field(strict=True, ge=0)]
TopK = Annotated[int, Field(strict=True, ge=0, le=MAX_LOGPROBS)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: Any = None  # checked against the served names before the body is validated

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


UNSUPPORTED = {
    **dict.fromkeys(("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"),
                    "tool and function calling is not supported by distil serve (answers are plain text)"),
    "response_format": "structured output (response_format) is not supported by distil serve",
}
"""Parameters known to be refused, with why; any other unknown field is refused by name."""

CHAT_ROLES = ("system", "developer", "user", "assistant")
"""The roles a chat message may have: OpenAI's, less ``tool`` and ``function`` (tool calling is not supported)."""
TOOL_ROLES = ("tool", "function")


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False
    include_obfuscation: StrictBool = Field(False, description="obfuscation padding is not implemented")

    @field_validator("include_obfuscation")
    @classmethod
    def _no_obfuscation(cls, value: bool) -> bool:
        if value:
            raise ValueError("'include_obfuscation': true is not supported; this server adds no padding "
                             "to its chunks. Leave it out or set it to false.")
        return value


def _neutral(name: str, value: Any, neutral: Any) -> Any:
    if value != neutral:
        raise ValueError(f"'{name}' other than {neutral!r} is not supported by distil serve; leave it out.")
    return value


class Sampling(_Body):
    """How to draw tokens, whether to stream, and the accepted no-op fields; shared by
    completions and chat. Any other field is refused (see :func:`validated`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[StrictStr] = None  # a label for the caller's own records; changes nothing
    frequency_penalty: Number = 0.0
    presence_penalty: Number = 0.0
    logit_bias: dict[str, Any] = Field(default_factory=dict)
    temperature: Number = Field(1.0, ge=0)
    top_p: Number = Field(1.0, gt=0, le=1)
    top_k: StrictInt = Field(-1, ge=-1, description="-1 or 0 turns it off")
    stop: list[str] = Field(default_factory=list)
    seed: Optional[StrictInt] = None
    skip_special_tokens: StrictBool = True

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, stop: Any) -> list[str]:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("'stop' must be a string or a list of strings.")
        return stops

    @field_validator("frequency_penalty", "presence_penalty", "logit_bias")
    @classmethod
    def _no_penalties(cls, value: Any, info: Any) -> Any:
        return _neutral(info.field_name, value, {} if info.field_name == "logit_bias" else 0)

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: Optional[StreamOptions], info: Any) -> Optional[StreamOptions]:
        if value is not None and not info.data.get("stream"):
            raise ValueError("'stream_options' is only allowed with 'stream': true.")
        return value

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters as the engine's batches key and use them."""
        temperature = float(self.temperature) if self.temperature >= GREEDY_BELOW else 0.0
        return {"temperature": temperature, "top_p": float(self.top_p), "top_k": max(self.top_k, 0),
                "stop": list(self.stop), "seed": self.seed, "skip_special": self.skip_special_tokens}


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


class CompletionRequest(Sampling):
    """``POST /v1/completions``. ``prompt`` comes out as a list of prompts (texts or token ids)."""

    prompt: list[Union[str, list[int]]] = Field(default=None, validate_default=True)
    max_tokens: Count = 16
    n: StrictInt = Field(1, ge=1, le=128)
    logprobs: Optional[TopK] = None
    prompt_logprobs: Optional[TopK] = None
    echo: StrictBool = False
    return_tokens_as_token_ids: StrictBool = False
    best_of: Optional[StrictInt] = None
    suffix: Optional[StrictStr] = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: Optional[str]) -> Optional[str]:
        return _neutral("suffix", value or "", "") or None

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: Optional[int], info: Any) -> Optional[int]:
        n = info.data.get("n", 1)
        if value is not None and value != n:
            raise ValueError(f"'best_of' other than 'n' ({n}) is not supported by distil serve; leave it out.")
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, prompt: Any) -> list[Any]:
        if isinstance(prompt, str) or _token_ids(prompt):
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) or _token_ids(p) for p in prompt):
            return list(prompt)
        raise ValueError("'prompt' must be a string, a list of token ids, or a list of those.")


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``. ``messages`` come out as {role, content} with text content,
    and the message's ``name`` where one is sent (a chat template that renders it gets it)."""

    messages: list[dict[str, Any]] = Field(default=None, validate_default=True)
    max_completion_tokens: Optional[Count] = None
    max_tokens: Optional[Count] = None
    n: StrictInt = Field(1, ge=1, le=128)
    logprobs: StrictBool = False
    top_logprobs: TopK = 0

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, messages: Any) -> list[dict[str, Any]]:
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list of {role, content} objects.")
        return [_text_message(m, f"messages[{i}]") for i, m in enumerate(messages)]


MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "function_call", "refusal")
"""The fields of a chat message read (the last three only as empty: there is no tool calling, and
a refusal is the model's to write); another one holding a value (not null, false, 0 or empty: a
previous answer's message sent back whole holds ``annotations: []``, ``audio: null``) is a 400
naming it."""


def _text_message(message: Any, where: str) -> dict[str, str]:
    """One chat message as {role, content} with its text (and ``name``); what is not text is refused by name
    (a ValueError, which pydantic turns into a 400), so that nothing the client sent is dropped."""
    if not isinstance(message, dict) or "role" not in message:
        raise ValueError(f"'{where}' needs a 'role' and 'content'.")
    role = message["role"]
    roles = ", ".join(repr(r) for r in CHAT_ROLES)
    if not isinstance(role, str):
        raise ValueError(f"'{where}.role' must be a string, one of {roles} (got {role!r}).")
    if role in TOOL_ROLES:
        raise ValueError(f"'{where}.role' is {role!r}: a {role} message answers a tool call, and "
                         f"{UNSUPPORTED['tools']}; send its text in a 'user' message. The roles taken: {roles}.")
    if role not in CHAT_ROLES:
        near = f" (did you mean {role.strip().lower()!r}?)" if role.strip().lower() in CHAT_ROLES else ""
        raise ValueError(f"'{where}.role' is {role!r}, which is not a chat role{near}; distil serve takes the "
                         f"roles {roles} (OpenAI's, in lower case).")
    unread = next((key for key, value in message.items() if key not in MESSAGE_FIELDS and value), None)
    if unread is not None:
        raise ValueError(f"'{where}.{str(unread)[:80]}' is not a field of a chat message that distil serve reads "
                         "(it reads role, content and name); leave it out.")
    if message.get("refusal"):
        raise ValueError(f"'{where}.refusal': a refusal is read as nothing here; send the assistant's words as its "
                         "content.")
    for key in ("tool_calls", "function_call"):
        if message.get(key):  # null or [] asks for nothing
            raise ValueError(f"'{where}.{key}': {UNSUPPORTED['tools']}; send the conversation without it.")
    named = {}
    if message.get("name") is not None:  # a participant's name: templates that render it get it
        if not isinstance(message["name"], str):
            raise ValueError(f"'{where}.name' must be a string (got {type(message['name']).__name__}).")
        named = {"name": message["name"]}
    content = message.get("content")
    if content is None or isinstance(content, str):
        return {"role": role, "content": content or "", **named}
    if not isinstance(content, list):
        raise ValueError(f"'{where}.content' must be a string or a list of text parts (got {type(content).__name__}).")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            got = f"type {kind!r}" if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"'{where}.content[{j}]': distil serve takes text parts only "
                             f'({{"type": "text", "text": ...}}); got {got}. Send the message as text.')
        if not isinstance(part.get("text"), str):
            raise ValueError(f"'{where}.content[{j}].text' must be a string (got {part.get('text')!r}).")
        texts.append(part["text"])
    return {"role": role, "content": "".join(texts), **named}


def template_messages(chat_template: Any, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` as a chat template is given them: a ``developer`` message becomes a
    ``system`` message unless the template names the developer role (as a quoted string)."""
    if re.search(r"""["']developer["']""", str(chat_template or "")):
        return messages
    return [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]


class LoadAdapterRequest(_Body):
    """``POST /v1/load_lora_adapter`` (vLLM's shape)."""

    lora_name: StrictStr
    lora_path: StrictStr
    load_inplace: bool = False


class UnloadAdapterRequest(_Body):
    """``POST /v1/unload_lora_adapter``."""

    lora_name: StrictStr


class ReloadKwargs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    weights_path: Optional[StrictStr] = None


class ReloadRequest(_Body):
    """``POST /collective_rpc``: vLLM's worker RPC; ``reload_weights`` is the one procedure here."""

    procedure: StrictStr = Field(alias="method")
    kwargs: ReloadKwargs = Field(default_factory=ReloadKwargs)

    @field_validator("procedure")
    @classmethod
    def _reload_only(cls, name: str) -> str:
        if name != "reload_weights":
            raise ValueError(f"Method {name!r} is not available here; this server runs 'reload_weights' "
                             "(kwargs: weights_path) only.")
        return name


def parse_body(raw: bytes, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}`` unless ``required``."""
    if not raw and not required:
        return {}
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, "The request body is not valid JSON.") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise ApiError(400, "The request body is nested too deeply to parse; send flatter JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


Request = TypeVar("Request", bound=BaseModel)


def validated(kind: type[Request], body: dict[str, Any]) -> Request:
    """``body`` as ``kind``, or a 400 naming the first field that is wrong and why."""
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = _unsupported(kind, field or "")
        elif error["type"] != "value_error":  # pydantic's wording: say which field and what was sent
            sent = f" (got {error['input']!r})" if error["type"] != "missing" else ""
            message = f"'{field}': {message}{sent}."
        param = field.split(".")[0] if field else None
        raise ApiError(400, message, param=param) from None


def _unsupported(kind: type[BaseModel], field: str) -> str:
    """The message for a field ``kind`` does not have: why, when it is a known feature, and the
    fields there are."""
    name = field.split(".")[0]
    if name in UNSUPPORTED:
        return f"Unsupported parameter '{name}': {UNSUPPORTED[name]}; send the request without it."
    if "." in field:  # inside an object such as stream_options
        return f"Unsupported parameter '{field}'; remove it."
    known = ", ".join(sorted(f.alias or n for n, f in kind.model_fields.items() if n != "model"))
    return (f"Unsupported parameter '{name}': distil serve does not implement it and does not ignore it; "
            f"remove it. The parameters it takes here: model, {known}.")


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """An answer's ``usage`` object, as OpenAI shapes it (whole answers and a stream's last chunk)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
