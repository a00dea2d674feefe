"""The OpenAI-compatible ASGI app over an in-process Backend.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions,
POST /v1/completions (each streamed as server-sent events or not), and
/readyz, /health (200 once the model is loaded, like vLLM's /health) and /livez
when run without BentoML. Under BentoML the app is
mounted at "/" and BentoML's own /readyz asks the service's __is_ready__.

Order of checks for a generation request: API key (401), concurrency (429),
model loaded (503), body (415 not JSON, 413 too big, 400 invalid), model name (404), prompt length (400),
memory (400 when the request's KV cache can never fit the server's memory budget, 429 while running
requests hold what it needs; held until its generation ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sealift.serving import fields
from sealift.serving import protocol as p
from sealift.serving.backend import (
    Backend,
    BackendError,
    BudgetError,
    GenerationRequest,
    PromptError,
    Reservation,
    SamplingParams,
)
from sealift.serving.choices import Choice, ChoiceShaper, choice_requests, merge_choices
from sealift.serving.config import ServeConfig
from sealift.serving.structured import Constraint, ConstraintError, from_response_format, from_structured_outputs
from sealift.serving.tools import ToolOutput, detect_tool_parser, named_constraint, required_constraint
from sealift.serving.errors import (
    APIError,
    bad_request,
    model_not_found,
    not_ready,
    server_error,
    too_many_requests,
    unauthorized,
)

log = logging.getLogger("sealift.serving")

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
UNKNOWN_V1 = "/v1/{rest:path}"

#: A request body may hold this many bytes per token of context (JSON escapes and
#: ignored fields included), and 1 MiB whatever the context; past that it is a 413,
#: answered before the prompt is tokenized (a 10 MB prompt would hold the event loop
#: for seconds only to be refused for its length).
BODY_BYTES_PER_TOKEN = 64
MIN_BODY_LIMIT = 1 << 20
#: Past the limit the rest of the body is read and dropped (so the client gets the
#: 413 rather than a reset connection), up to this many bytes.
MAX_BODY_DRAIN = 64 << 20


def _is_json(content_type: str) -> bool:
    """application/json or application/<anything>+json, parameters (charset) ignored."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` generation requests in flight (a stream counts until it ends); 429 past it."""

    def __init__(self, app: ASGIApp, limit: int, paths: Iterable[str] = GENERATION_PATHS) -> None:
        self.app = app
        self.limit = limit
        self.paths = frozenset(paths)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await too_many_requests(self.limit).response()(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class OpenAIServer:
    """Request handlers bound to one backend and one ServeConfig."""

    def __init__(self, config: ServeConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.created = p.now()

    # ------------------------------------------------------------------ checks

    def check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise unauthorized("Incorrect API key provided.")

    def check_ready(self) -> None:
        if not self.backend.ready:
            raise not_ready(self.backend.load_error or "The model is still loading; retry when /readyz answers 200.")

    def check_model(self, model: str) -> None:
        if not self.config.accepts_model(model):
            raise model_not_found(model)

    def body_limit(self) -> int:
        return max(MIN_BODY_LIMIT, self.backend.context_length * BODY_BYTES_PER_TOKEN)

    async def read_body(self, request: Request) -> bytes:
        """The JSON body: 415 if it says it is not JSON (no Content-Type is taken as JSON), 413 past body_limit()."""
        ctype = request.headers.get("content-type")
        if ctype is not None and not _is_json(ctype):
            raise APIError(
                415, f"Content-Type must be application/json, got {ctype!r}.", code="unsupported_media_type"
            )
        limit = self.body_limit()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > MAX_BODY_DRAIN:
                break
        if size > limit:
            raise APIError(
                413,
                f"The request body is {size:,}{'+' if size > MAX_BODY_DRAIN else ''} bytes; this server takes at most "
                f"{limit:,} for a model with a context of {self.backend.context_length} tokens.",
                code="request_too_large",
            )
        return b"".join(chunks)

    def check_token_ids(self, ids: list[int], param: str = "prompt") -> None:
        """400 for token ids (a prompt, stop_token_ids...) holding an id the model has no embedding for."""
        vocab = getattr(self.backend, "vocab_size", None)
        if not vocab:
            return
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"{param}: token id {bad} is out of the vocabulary (0 to {vocab - 1})", param=param)

    def sampling(self, req: p.ChatCompletionRequest | p.CompletionRequest, prompt_tokens: int) -> SamplingParams:
        """SamplingParams for a request, refusing one that does not fit the context (400)."""
        context = self.backend.context_length
        wanted = req.requested_max_tokens()
        # a prompt only scored (echo, max_tokens 0) may fill the context; one to continue must leave room
        too_long = prompt_tokens > context if wanted == 0 else prompt_tokens >= context
        if too_long or (wanted is not None and prompt_tokens + wanted > context):
            asked = f"{prompt_tokens + (wanted or 0)} tokens ({prompt_tokens} in the prompt, {wanted or 0} to complete)"
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested {asked}. "
                "Please reduce the length of the messages or the completion.",
                param="messages" if isinstance(req, p.ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        defaults = self.backend.sampling_defaults
        temperature = req.temperature if req.temperature is not None else defaults.temperature
        max_tokens = wanted if wanted is not None else context - prompt_tokens
        for name in ("stop_token_ids", "allowed_token_ids"):
            self.check_token_ids(getattr(req, name) or [], param=name)
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=max_tokens if req.ignore_eos else min(req.min_tokens or 0, max_tokens),
            temperature=temperature,
            top_p=req.top_p if req.top_p is not None else defaults.top_p,
            top_k=max(0, req.top_k) if req.top_k is not None else defaults.top_k,
            seed=req.seed,
            stop=req.stop_sequences(),
            logprobs=req.logprobs_k(),
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty,
            min_p=req.min_p or 0.0,
            logit_bias=req.logit_bias_pairs(),
            stop_token_ids=tuple(req.stop_token_ids or ()),
            allowed_token_ids=tuple(req.allowed_token_ids or ()),
            skip_special_tokens=req.skip_special_tokens is not False,
        )

    def check_fields(self, req: p.ChatCompletionRequest | p.CompletionRequest, endpoint: str) -> None:
        """400 for a field this backend cannot honour; fields no API defines are logged, as vLLM does."""
        extra = req.model_extra or {}
        fields.check_refused(extra, endpoint)
        unknown = fields.unknown_fields(extra, endpoint)
        if unknown:
            log.warning("The following fields were present in the request but ignored: %s", unknown)

    def tool_parser(self) -> str | None:
        """The bento's tool parser (sealift build), else the one the model's chat template points to."""
        if self.config.tool_parser:
            return self.config.tool_parser
        template = getattr(self.backend, "chat_template", None)
        return detect_tool_parser(template() if callable(template) else None)

    def constraint(self, req: p.ChatCompletionRequest | p.CompletionRequest, mode: str = "none",
                   named: int | None = None) -> Constraint | None:
        """The one constraint of a request: response_format, structured_outputs, or a forced tool call."""
        try:
            given = [c for c in (from_response_format(req.response_format),
                                 from_structured_outputs(req.structured_outputs)) if c is not None]
        except ConstraintError as exc:
            raise bad_request(str(exc), param=exc.param) from None
        tools = [t.model_dump(exclude_none=True) for t in getattr(req, "tools", None) or []]
        if mode == "named" and named is not None:
            given.append(named_constraint(tools[named], named))
        elif mode == "required":
            given.append(required_constraint(tools, getattr(req, "parallel_tool_calls", True) is not False))
        if len(given) > 1:
            raise bad_request(f"{given[0].param} and {given[1].param} both constrain the output; give one",
                              param=given[1].param)
        return given[0] if given else None

    async def compile(self, constraint: Constraint | None) -> object | None:
        """The compiled grammar, off the event loop; a constraint that does not compile is a 400 naming it."""
        if constraint is None:
            return None
        try:
            return await asyncio.to_thread(self.backend.compile, constraint)
        except ConstraintError as exc:
            raise bad_request(str(exc), param=exc.param) from None

    # ------------------------------------------------------------------ routes

    async def models(self, request: Request) -> Response:
        self.check_auth(request)
        return JSONResponse({"object": "list", "data": [self._card()]})

    async def model(self, request: Request) -> Response:
        self.check_auth(request)
        self.check_model(request.path_params["model"])
        return JSONResponse(self._card())

    def _card(self) -> dict[str, Any]:
        card = p.model_card(self.config.served_model_name, self.created, self.backend.context_length or None)
        info = getattr(self.backend, "engine_info", None)
        if callable(info):  # sealift's own field: which path serves (continuous batching or one at a time) and why
            card["sealift"] = info()
        return card

    def reserve(self, gens: list[GenerationRequest], prompt_tokens: int, chat: bool) -> Reservation | None:
        """The memory the request holds while it runs; 400 when it never fits the budget, 429 while others hold it."""
        reserve = getattr(self.backend, "reserve", None)
        if not callable(reserve):
            return None
        first = gens[0]
        try:
            return reserve(prompt_tokens, first.params.max_tokens, n=len(gens),
                           score_prompt=first.prompt_logprobs is not None)
        except BudgetError as exc:
            if exc.busy:
                raise APIError(429, str(exc), type="requests", code="memory_busy", headers={"Retry-After": "1"}) from None
            raise APIError(400, str(exc), param="messages" if chat else "prompt", code="memory_budget_exceeded") from None

    async def chat_completions(self, request: Request) -> Response:
        self.check_auth(request)
        self.check_ready()
        req = p.parse_request(p.ChatCompletionRequest, await self.read_body(request))
        self.check_model(req.model)
        self.check_fields(req, "chat")
        req.check_supported()
        mode, named = req.tool_mode()
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        try:  # templating and tokenizing a body of up to context x 64 bytes: off the event loop
            prompt_ids = await asyncio.to_thread(self.backend.encode_chat, req.template_messages(),
                                                 tools=tools or None, template_kwargs=req.template_kwargs())
        except PromptError as exc:
            raise bad_request(str(exc), param=exc.param) from None
        parser = self.tool_parser() if mode == "auto" else None
        name = tools[named]["function"]["name"] if named is not None else None
        grammar = await self.compile(self.constraint(req, mode, named))
        make_output = lambda: ToolOutput(mode, parser, name)  # noqa: E731  (one per choice)
        return await self._answer(request, req, prompt_ids, chat=True, grammar=grammar, tool_output=make_output,
                                  keep_special=parser == "mistral")

    async def completions(self, request: Request) -> Response:
        self.check_auth(request)
        self.check_ready()
        req = p.parse_request(p.CompletionRequest, await self.read_body(request))
        self.check_model(req.model)
        self.check_fields(req, "completions")
        req.check_supported()
        prompt = req.single_prompt()
        prompt_ids = await asyncio.to_thread(self.backend.encode_prompt, prompt) if isinstance(prompt, str) else prompt
        if not prompt_ids:
            raise bad_request("prompt must not be empty", param="prompt")
        if not isinstance(prompt, str):
            self.check_token_ids(prompt_ids)
        grammar = await self.compile(self.constraint(req))
        return await self._answer(request, req, prompt_ids, chat=False, grammar=grammar)

    async def _answer(self, request: Request, req: p.ChatCompletionRequest | p.CompletionRequest,
                      prompt_ids: list[int], *, chat: bool, grammar: object | None = None,
                      tool_output: Any = None, keep_special: bool = False) -> Response:
        """Generate for a checked request (its n choices side by side): a stream of events, or the whole response."""
        echo = not chat and bool(getattr(req, "echo", False))
        params = self.sampling(req, len(prompt_ids))
        if keep_special:  # the tool parser reads special tokens ([TOOL_CALLS])
            params = dataclasses.replace(params, skip_special_tokens=False)
        gens = choice_requests(prompt_ids, params, req.n or 1, score_prompt=echo and req.logprobs_k() is not None,
                               grammar=grammar)
        outputs = [tool_output() if tool_output else ToolOutput("none") for _ in gens]
        prefix = "chatcmpl" if chat else "cmpl"
        rid = f"{prefix}-{req.request_id}" if req.request_id else p.new_id(prefix)
        created, name = p.now(), self.config.served_model_name
        prompt_text = ""
        if echo:
            prompt = req.single_prompt()  # type: ignore[union-attr]
            prompt_text = prompt if isinstance(prompt, str) else self.backend.decode(prompt_ids)
        shaper = ChoiceShaper(self.backend.token_text, prompt_ids, req.logprobs_k(), echo=echo, prompt_text=prompt_text)
        held = self.reserve(gens, len(prompt_ids), chat)
        if req.stream:
            if chat:
                return _event_stream(_releasing(
                    self._chat_events(gens, shaper, rid, created, name, req.include_usage(), outputs), held))
            return _event_stream(_releasing(
                self._completion_events(gens, shaper, rid, created, name, req.include_usage()), held))
        try:
            results = await self._collect(gens, request)
        finally:
            if held is not None:
                held.release()
        use = p.usage(len(prompt_ids), sum(c.completion_tokens for c in results))
        if chat:
            single = getattr(req, "parallel_tool_calls", True) is False
            choices = []
            for i, c in enumerate(results):
                content, calls = outputs[i].whole(c.text)
                calls = calls[:1] if single else calls
                finish = "tool_calls" if calls and c.finish == "stop" else c.finish
                choices.append(p.chat_choice(i, content, finish, shaper.chat(c),
                                             [call.to_dict() for call in calls] or None))
            return JSONResponse(p.chat_response(rid, created, name, choices, use))
        choices = [p.completion_choice(i, shaper.text(c), c.finish, shaper.completion(c))
                   for i, c in enumerate(results)]
        return JSONResponse(p.completion_response(rid, created, name, choices, use))

    async def readyz(self, request: Request) -> Response:
        if self.backend.ready:
            return PlainTextResponse("ready\n")
        return PlainTextResponse((self.backend.load_error or "loading") + "\n", status_code=503)

    async def live(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def unknown_route(self, request: Request) -> Response:
        """Any other /v1 path: an OpenAI-style 404, or 405 where another method is served.

        Under BentoML the app is mounted passively (only paths one of its routes
        matches reach it); without this route BentoML answers a plain-text 404.
        """
        allowed = sorted({m for r in request.app.routes if isinstance(r, Route) and r.path != UNKNOWN_V1
                          and r.matches(request.scope)[0] is Match.PARTIAL for m in (r.methods or ())})
        if allowed:
            raise APIError(405, "Method Not Allowed", code="method_not_allowed", headers={"Allow": ", ".join(allowed)})
        raise APIError(404, f"Unknown path {request.url.path}; this server serves /v1/models, /v1/chat/completions "
                            "and /v1/completions.", code="not_found")

    # ------------------------------------------------------------------ generation

    async def _collect(self, gens: list[GenerationRequest], request: Request) -> list[Choice]:
        """Every choice, whole; a client that hangs up first cancels them (their places in the queue too)."""

        async def collect() -> list[Choice]:
            results = [Choice() for _ in gens]
            async with contextlib.aclosing(merge_choices(self.backend, gens)) as pieces:
                async for i, piece in pieces:
                    if isinstance(piece, BackendError):
                        raise piece
                    results[i].add(piece)
            return results

        work = asyncio.ensure_future(collect())
        hangup = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled():
            log.info("client went away; its generation was cancelled")
            raise APIError(499, "client closed the request", type="client_closed_request")
        try:
            return work.result()
        except BackendError as exc:
            raise server_error(str(exc)) from None

    async def _chat_events(
        self, gens: list[GenerationRequest], shaper: ChoiceShaper, rid: str, created: int, name: str,
        include_usage: bool, outputs: list[ToolOutput],
    ) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any] | None, finish: str | None = None, *, index: int = 0,
                  logprobs: dict[str, Any] | None = None, use: dict[str, int] | None = None) -> bytes:
            return p.sse(p.chat_chunk(rid, created, name, delta, finish, index=index, logprobs=logprobs,
                                      include_usage=include_usage, use=use))

        for i in range(len(gens)):
            yield chunk({"role": "assistant", "content": ""}, index=i)
        tokens = 0
        async with contextlib.aclosing(merge_choices(self.backend, gens)) as pieces:
            async for i, piece in pieces:
                if isinstance(piece, BackendError):  # a failure mid-stream: one OpenAI error event (the status is sent)
                    yield p.sse(server_error(str(piece)).body())
                    return
                deltas = outputs[i].feed(piece.text)
                if piece.finish_reason is not None:
                    deltas += outputs[i].finish()
                logprobs = shaper.chat_piece(piece) if piece.logprobs else None
                if logprobs and not deltas:
                    deltas = [{"content": ""}]
                for delta in deltas:  # the logprobs travel with the first delta of the piece
                    yield chunk(delta, index=i, logprobs=logprobs)
                    logprobs = None
                if piece.finish_reason is not None:
                    tokens += piece.completion_tokens
                    finish = "tool_calls" if outputs[i].calls and piece.finish_reason == "stop" else piece.finish_reason
                    yield chunk({}, finish, index=i)
        if include_usage:
            yield chunk(None, use=p.usage(len(shaper.prompt_ids), tokens))
        yield p.SSE_DONE

    async def _completion_events(
        self, gens: list[GenerationRequest], shaper: ChoiceShaper, rid: str, created: int, name: str,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        def chunk(text: str | None, finish: str | None = None, *, index: int = 0,
                  logprobs: dict[str, Any] | None = None, use: dict[str, int] | None = None) -> bytes:
            return p.sse(p.completion_chunk(rid, created, name, text, finish, index=index, logprobs=logprobs,
                                            include_usage=include_usage, use=use))

        tokens = 0
        streams = [shaper.stream() for _ in gens]
        async with contextlib.aclosing(merge_choices(self.backend, gens)) as pieces:
            async for i, piece in pieces:
                if isinstance(piece, BackendError):
                    yield p.sse(server_error(str(piece)).body())
                    return
                text, logprobs = streams[i].piece(piece)
                if text or logprobs or piece.finish_reason is not None:
                    yield chunk(text, piece.finish_reason, index=i, logprobs=logprobs)
                if piece.finish_reason is not None:
                    tokens += piece.completion_tokens
        if include_usage:
            yield chunk(None, use=p.usage(len(shaper.prompt_ids), tokens))
        yield p.SSE_DONE


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so receive() waits for that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _releasing(events: AsyncIterator[bytes], held: Reservation | None) -> AsyncIterator[bytes]:
    """The events, then the request's memory back (also when the client goes away mid-stream)."""
    try:
        async for event in events:
            yield event
    finally:
        if held is not None:
            held.release()


def _event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {})).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return server_error(f"internal error: {type(exc).__name__}").response()


def create_app(config: ServeConfig, backend: Backend, *, system_routes: bool = True) -> Starlette:
    """The ASGI app serving `backend` under `config` (API key, concurrency limit, model names)."""
    server = OpenAIServer(config, backend)
    routes = [
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
    ]
    if system_routes:
        routes += [
            Route("/readyz", server.readyz, methods=["GET"]),
            Route("/health", server.readyz, methods=["GET"]),  # as vLLM's /health: 200 once it can serve
            Route("/livez", server.live, methods=["GET"]),
        ]
    routes.append(Route(UNKNOWN_V1, server.unknown_route, methods=None))  # last: only what nothing else matched
    from starlette.middleware import Middleware

    middleware = [Middleware(ConcurrencyLimit, limit=config.max_concurrency)] if config.max_concurrency else []
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.server = server
    return app
