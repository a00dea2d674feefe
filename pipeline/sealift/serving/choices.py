"""A request's choices: `n` generations side by side, and their text and logprobs shaped for the API.

    choice_requests(prompt_ids, params, n, score_prompt) -> [GenerationRequest]  one per choice
    merge_choices(backend, gens)   -> async (index, Chunk | BackendError), as the choices make them
    Choice                         -> one whole choice, gathered from its chunks
    ChoiceShaper                   -> text (echo) and logprobs of a choice, whole or chunk by chunk

With a seed, choice i samples with seed + i (as vLLM does for n > 1), so the n choices are
the same from one request to the next and differ from each other. Every choice is its own
sequence in the backend's batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sealift.serving.backend import Backend, BackendError, Chunk, GenerationRequest, SamplingParams, TokenLogprob
from sealift.serving.logprobs import chat_logprobs, completion_logprobs

__all__ = ["Choice", "ChoiceShaper", "choice_requests", "merge_choices"]

_SEED_SPAN = 1 << 64  # torch.manual_seed takes -2**63 .. 2**64 - 1


def choice_requests(
    prompt_ids: list[int], params: SamplingParams, n: int, *, score_prompt: bool = False, grammar: object = None
) -> list[GenerationRequest]:
    """One GenerationRequest per choice; with a seed, choice i gets seed + i. Each choice follows `grammar`
    (compiled once) with its own matcher."""
    gens = []
    for i in range(n):
        choice_params = params
        if params.seed is not None and i:
            seed = params.seed + i
            choice_params = replace(params, seed=seed - _SEED_SPAN if seed >= _SEED_SPAN else seed)
        prompt_k = (params.logprobs or 0) if score_prompt else None
        gens.append(GenerationRequest(list(prompt_ids), choice_params, prompt_logprobs=prompt_k, grammar=grammar))
    return gens


async def merge_choices(
    backend: Backend, gens: list[GenerationRequest]
) -> AsyncIterator[tuple[int, Chunk | BackendError]]:
    """The chunks of every choice as they come, with the choice's index; a failed choice yields its
    BackendError (the caller stops there). Closing the iterator cancels the choices still running."""
    if len(gens) == 1:  # the common case: no tasks, no queue
        try:
            async with contextlib.aclosing(backend.generate(gens[0])) as chunks:
                async for piece in chunks:
                    yield 0, piece
        except BackendError as exc:
            yield 0, exc
        return
    done = object()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, gen: GenerationRequest) -> None:
        try:
            async with contextlib.aclosing(backend.generate(gen)) as chunks:
                async for piece in chunks:
                    queue.put_nowait((i, piece))
        except BackendError as exc:
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, done))

    tasks = [asyncio.ensure_future(pump(i, gen)) for i, gen in enumerate(gens)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is done:
                running -= 1
                continue
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Choice:
    """One choice, gathered from its chunks."""

    pieces: list[str] = field(default_factory=list)
    finish: str = "length"
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()

    def add(self, chunk: Chunk) -> None:
        self.pieces.append(chunk.text)
        self.logprobs.extend(chunk.logprobs)
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        if chunk.finish_reason is not None:
            self.finish, self.completion_tokens = chunk.finish_reason, chunk.completion_tokens

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class ChoiceShaper:
    """Text and logprobs of a request's choices, as the API returns them.

    `k` is the request's logprobs (None: none); with `echo` a completion's text and logprobs
    start with the prompt's.
    """

    def __init__(self, token_text: Callable[[int], str], prompt_ids: list[int], k: int | None, *,
                 echo: bool = False, prompt_text: str = "") -> None:
        self.token_text = functools.lru_cache(maxsize=65536)(token_text)
        self.prompt_ids = prompt_ids
        self.k = k
        self.echo = echo
        self.prompt_text = prompt_text

    def text(self, choice: Choice) -> str:
        return self.prompt_text + choice.text if self.echo else choice.text

    def completion(self, choice: Choice) -> dict[str, Any] | None:
        if self.k is None:
            return None
        prompt = list(choice.prompt_logprobs) if self.echo else []
        return completion_logprobs([*prompt, *choice.logprobs], self.token_text, self.k, 0, ids=self.prompt_ids)

    def chat(self, choice: Choice) -> dict[str, Any] | None:
        return None if self.k is None else chat_logprobs(choice.logprobs, self.token_text, self.k)

    def chat_piece(self, chunk: Chunk) -> dict[str, Any] | None:
        return None if self.k is None else chat_logprobs(chunk.logprobs, self.token_text, self.k)

    def stream(self) -> _CompletionStream:
        return _CompletionStream(self)


@dataclass
class _CompletionStream:
    """One streamed completion choice: the prompt goes out with its first chunk (echo); text offsets run on."""

    shaper: ChoiceShaper
    echoed: bool = False
    offset: int = 0

    def piece(self, chunk: Chunk) -> tuple[str, dict[str, Any] | None]:
        s = self.shaper
        text, entries = chunk.text, list(chunk.logprobs)
        ids = None
        if s.echo and not self.echoed:
            self.echoed = True
            text = s.prompt_text + text
            entries = [*(chunk.prompt_logprobs or ()), *entries]
            ids = s.prompt_ids
        logprobs = None
        if s.k is not None and entries:
            logprobs = completion_logprobs(entries, s.token_text, s.k, self.offset, ids=ids)
        self.offset += len(text)
        return text, logprobs
