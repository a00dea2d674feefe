"""The OpenAI request schema (pydantic) and the response/chunk builders.

Requests are validated strictly (a string where a number belongs is a 400, as
OpenAI does). Every field OpenAI or vLLM defines is honoured or refused with a 400
(sealift.serving.fields); a field neither defines is logged and ignored, so clients
that send newer or vendor-specific fields keep working. Responses are plain dicts: they
are built once per token when streaming, and dicts are the cheapest to dump.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sealift.serving.errors import APIError, bad_request
from sealift.serving.logprobs import MAX_LOGPROBS

# Bigger than any real context; a max_tokens past the context is refused later with the exact numbers.
MAX_TOKENS_LIMIT = 1 << 24
MAX_STOP_SEQUENCES = 16
#: The most choices (`n`) one request may ask for: each is a sequence in the batch.
MAX_N = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _TopLevel(_Request):
    """A request body: fields it does not declare are kept (model_extra) to be refused or logged."""

    model_config = ConfigDict(extra="allow", strict=True)


class FunctionDef(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDef


class ToolCallFunction(_Request):
    name: str
    arguments: str


class AssistantToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class StreamOptions(_Request):
    include_usage: bool | None = None


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None  # an assistant's calls, sent back in a round trip
    tool_call_id: str | None = None  # a tool message: the call it answers

    def text(self, index: int) -> str:
        """The message's text; non-text parts (images, audio) are refused: the backends are text-only."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise bad_request(
                    f"messages[{index}].content[{j}]: only text parts are supported, got type {part.type!r}",
                    param=f"messages.{index}.content",
                )
            pieces.append(part.text)
        return "".join(pieces)


class _Sampling(_TopLevel):
    """Fields shared by chat and completion requests."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(1 << 63), le=(1 << 64) - 1)  # what torch.manual_seed takes
    n: int | None = Field(default=1, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM's extensions, for benchmarks and tests that need a fixed output length
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS_LIMIT)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's sampling extensions
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = True
    # structured outputs: OpenAI's response_format, vLLM's structured_outputs (sealift.serving.structured)
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    request_id: str | None = None

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias); a key that is not a token id or a bias past ±100 is a 400."""
        pairs = []
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise bad_request(f"logit_bias: key {key!r} is not a token id", param="logit_bias") from None
            if not -100 <= value <= 100:
                raise bad_request(f"logit_bias: bias {value} for token {key} is not between -100 and 100",
                                  param="logit_bias")
            pairs.append((token, float(value)))
        return tuple(pairs)

    def stop_sequences(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise bad_request(f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", param="stop")
        return tuple(dict.fromkeys(s for s in stops if s))

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check_supported(self) -> None:
        if (self.n or 1) > MAX_N:
            raise bad_request(f"n: at most {MAX_N} choices per request, got {self.n}", param="n")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    # vLLM's chat template extensions
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False

    def template_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.chat_template_kwargs or {})
        for key in ("tools", "messages", "tokenize", "conversation"):
            if key in kwargs:
                raise bad_request(f"chat_template_kwargs.{key}: set by the request itself, not here",
                                  param=f"chat_template_kwargs.{key}")
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise bad_request("continue_final_message: needs add_generation_prompt false",
                                  param="continue_final_message")
            if self.messages[-1].role != "assistant":
                raise bad_request("continue_final_message: the last message must be the assistant's",
                                  param="continue_final_message")
        kwargs["add_generation_prompt"] = bool(self.add_generation_prompt)
        kwargs["continue_final_message"] = bool(self.continue_final_message)
        return kwargs

    def tool_mode(self) -> tuple[str, int | None]:
        """(none | auto | required | named, the named tool's index) from tools and tool_choice."""
        choice = self.tool_choice
        if not self.tools:
            if choice not in (None, "none"):
                raise bad_request("tool_choice: needs tools", param="tool_choice")
            return "none", None
        if choice is None or choice == "auto":
            return "auto", None
        if choice in ("none", "required"):
            return str(choice), None
        if isinstance(choice, dict):
            fn = choice.get("function") if choice.get("type") == "function" else None
            name = fn.get("name") if isinstance(fn, dict) else None
            for i, tool in enumerate(self.tools):
                if tool.function.name == name:
                    return "named", i
            raise bad_request(f"tool_choice: no tool named {name!r} in tools", param="tool_choice")
        raise bad_request(f"tool_choice: {choice!r} is not none, auto, required or a named function",
                          param="tool_choice")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None:
            if not self.logprobs:
                raise bad_request("top_logprobs: when using `top_logprobs`, `logprobs` must be set to true",
                                  param="top_logprobs")
            if not 0 <= self.top_logprobs <= MAX_LOGPROBS:
                raise bad_request(f"top_logprobs: must be between 0 and {MAX_LOGPROBS}, got {self.top_logprobs}",
                                  param="top_logprobs")

    def logprobs_k(self) -> int | None:
        """Alternatives per generated token: None for no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as chat templates expect them: role and text content; an assistant's tool_calls with
        their arguments as objects (as vLLM hands them to templates), a tool message's tool_call_id."""
        out = []
        for i, m in enumerate(self.messages):
            role = "system" if m.role == "developer" else m.role
            msg: dict[str, Any] = {"role": role, "content": m.text(i)}
            if m.tool_calls:
                calls = []
                for j, call in enumerate(m.tool_calls):
                    try:
                        args = json.loads(call.function.arguments or "{}")
                    except ValueError:
                        raise bad_request(f"messages[{i}].tool_calls[{j}].function.arguments: not valid JSON",
                                          param=f"messages.{i}.tool_calls.{j}.function.arguments") from None
                    calls.append({"id": call.id, "type": "function",
                                  "function": {"name": call.function.name, "arguments": args}})
                msg["tool_calls"] = calls
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            out.append(msg)
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0, le=MAX_TOKENS_LIMIT)  # 0 with echo: score the prompt
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        return self.logprobs

    def check_supported(self) -> None:
        super().check_supported()
        if self.max_tokens == 0 and not self.echo:
            raise bad_request("max_tokens: 0 is allowed only with echo (to score the prompt)", param="max_tokens")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad_request(f"logprobs: must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}", param="logprobs")
        if self.best_of not in (None, 1):
            raise bad_request("best_of: only 1 is supported", param="best_of")
        if self.suffix:
            raise bad_request("suffix is not supported by this server", param="suffix")

    def single_prompt(self) -> str | list[int]:
        """The one prompt (text or token ids); a batch of prompts is refused like n > 1."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise bad_request("prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return list(p)  # type: ignore[arg-type]
        if len(p) != 1:
            raise bad_request(f"prompt: one prompt per request is supported, got {len(p)}", param="prompt")
        return p[0]  # type: ignore[return-value]


R = TypeVar("R", bound=_Request)


def parse_request(model: type[R], raw: bytes) -> R:
    """Validate a request body; malformed JSON, a non-object or a wrongly typed field is a 400."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    except ValueError as exc:  # e.g. undecodable bytes
        raise bad_request(f"request body is not valid JSON: {exc}") from None


def _validation_error(exc: ValidationError) -> APIError:
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"type": "", "loc": (), "msg": str(exc)}
    if first["type"] == "json_invalid":
        return bad_request(f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    if first["type"] == "model_type" and not first["loc"]:
        return bad_request("request body must be a JSON object")
    # union types report one error per branch; the location up to the branch name is what the user wrote
    loc = [str(p) for p in first["loc"] if not _is_union_branch(p)]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return bad_request(message, param=param)


def _is_union_branch(part: Any) -> bool:
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "list[str]", "list[int]", "list[list[int]]", "list[ContentPart]"}
        or part.startswith(("list[", "function-"))
    )


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_choice(index: int, text: str | None, finish: str, logprobs: dict[str, Any] | None = None,
                tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def completion_choice(index: int, text: str, finish: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def chat_response(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], use: dict[str, int]
) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": use}


def completion_response(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], use: dict[str, int]
) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": use}


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    *,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
    include_usage: bool = False,
    use: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One chat.completion.chunk; delta None means the usage-only final chunk (choices: [])."""
    choice = None if delta is None else {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return _stream_chunk(rid, created, model, "chat.completion.chunk", choice, include_usage, use)


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    text: str | None,
    finish: str | None = None,
    *,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
    include_usage: bool = False,
    use: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed text_completion; text None means the usage-only final chunk (choices: [])."""
    choice = None if text is None else {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    return _stream_chunk(rid, created, model, "text_completion", choice, include_usage, use)


def _stream_chunk(
    rid: str,
    created: int,
    model: str,
    obj: str,
    choice: dict[str, Any] | None,
    include_usage: bool,
    use: dict[str, int] | None,
) -> dict[str, Any]:
    """A streamed chunk holding one choice, or none (the usage-only final chunk); usage when asked for."""
    chunk: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [] if choice is None else [choice],
    }
    if include_usage:
        chunk["usage"] = use
    return chunk


def model_card(name: str, created: int, context_length: int | None) -> dict[str, Any]:
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "sealift"}
    if context_length:
        card["max_model_len"] = context_length
    return card


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
