"""The Backend protocol the app serves through, and the backend-neutral pieces.

A Backend loads a model, turns chat messages or a prompt into token ids, and
generates: an async iterator of Chunks (new text, and on the last one the
finish reason and token count). `OutputText` is the incremental detokeniser
with stop strings: it turns token ids into text that is safe to send (never a
half UTF-8 character, never the start of a stop string), and says when a stop
string was hit so generation can end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sealift.serving.structured import Constraint


#: A temperature below this is greedy decoding.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How to generate: greedy when temperature is 0 (below GREEDY_BELOW); seed makes sampling repeatable."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # no end-of-sequence before this many tokens (vLLM's min_tokens / ignore_eos)
    #: logprobs of each generated token: None for none, k for the chosen token and the k most likely
    #: (log-softmax of the raw logits, before repetition penalty, temperature and top-p, as vLLM's default)
    logprobs: int | None = None
    #: OpenAI's penalties over the generated tokens: presence subtracts once per token seen, frequency per time
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: over prompt and generated tokens (as vLLM and transformers); None: the model's generation_config
    repetition_penalty: float | None = None
    #: keep tokens whose probability is at least min_p times the likeliest one's (0: off)
    min_p: float = 0.0
    #: (token id, bias) added to the logits before anything else (OpenAI's logit_bias)
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: more tokens that end generation as end of sequence does (vLLM's stop_token_ids)
    stop_token_ids: tuple[int, ...] = ()
    #: only these tokens may be picked (vLLM's allowed_token_ids); empty: all
    allowed_token_ids: tuple[int, ...] = ()
    #: special tokens left out of the text (vLLM's skip_special_tokens; a tool parser may need them)
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        # as vLLM (_SAMPLING_EPS): dividing logits by a temperature this small overflows to inf/nan
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt and how to continue it; `prompt_logprobs` k scores the prompt too (echo with logprobs).

    `params.max_tokens` 0 (with prompt_logprobs) scores the prompt and generates nothing.
    """

    prompt_ids: list[int]
    params: SamplingParams
    prompt_logprobs: int | None = None
    #: a compiled grammar (the backend's own type, from `Backend.compile`) the output must follow; None: free text
    grammar: object | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there, its logprob, and the most likely tokens there, best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """New text; the last chunk of a generation has finish_reason ("stop" or "length") set.

    `logprobs` holds one entry per token generated since the previous chunk (when asked for);
    `prompt_logprobs`, on the first chunk only, one per prompt token (None for the first).
    """

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    def merged(self, later: Chunk) -> Chunk:
        """This chunk followed by `later`, as one."""
        return Chunk(
            self.text + later.text, later.finish_reason, later.completion_tokens, self.logprobs + later.logprobs,
            self.prompt_logprobs if self.prompt_logprobs is not None else later.prompt_logprobs,
        )


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that names no temperature/top_p gets: the model's generation_config.json."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


class BackendError(Exception):
    """Generation failed for a reason that is not the client's (out of memory, a crashed worker)."""


class PromptError(ValueError):
    """The prompt cannot be built (no chat template, the template refused the messages): a 400 naming `param`."""

    def __init__(self, message: str, *, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


class BudgetError(Exception):
    """A request needs more memory than the server's budget (`busy` False: a 400, it never fits) or than
    is left while other requests run (`busy` True: a 429, retry). The message names the limit."""

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


@dataclass
class Reservation:
    """Memory held for one request while it runs; `release()` (idempotent) gives it back."""

    release_fn: Callable[[int], None]
    size: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.release_fn(self.size)

    def __del__(self) -> None:  # a response that never started streaming still gives its memory back
        self.release()


@runtime_checkable
class Backend(Protocol):
    """What the app needs from an in-process engine."""

    name: str

    @property
    def ready(self) -> bool: ...

    @property
    def load_error(self) -> str | None: ...

    @property
    def context_length(self) -> int: ...

    @property
    def sampling_defaults(self) -> SamplingDefaults: ...

    def start(self) -> None:
        """Begin loading the model in the background; `ready` turns True when it can serve."""

    def encode_chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                    template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """Apply the model's chat template (add_generation_prompt, the tools) and tokenize. PromptError if impossible."""

    def compile(self, constraint: Constraint) -> object:
        """Compile a constraint into the grammar GenerationRequest.grammar carries. ConstraintError if impossible."""

    def encode_prompt(self, prompt: str) -> list[int]:
        """Tokenize a completion prompt as the model expects (its BOS token if it uses one)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids back to text, special tokens left out (an echoed prompt given as ids)."""

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (the `token` of a logprob entry)."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream the completion. Closing the iterator early cancels the generation."""

    def close(self) -> None:
        """Stop the worker; pending requests end with a BackendError."""


@dataclass
class OutputText:
    """Incremental detokenising with stop strings.

    `add(ids)` returns the text that became final; `finish()` the rest. Decoding
    uses a sliding window of already-seen tokens as context (as vLLM and TGI do),
    so tokenizers that drop a leading space or merge bytes across tokens still
    yield exactly the text of decoding everything at once.
    """

    decode: Callable[[Sequence[int]], str]
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    stopped: bool = False
    _prefix: int = 0
    _read: int = 0
    _sent: int = 0
    _checked: int = 0

    @property
    def _hold(self) -> int:
        return max((len(s) for s in self.stop), default=1) - 1

    def add(self, new_ids: Sequence[int]) -> str:
        """Feed generated token ids; returns the newly final text (may be empty)."""
        if self.stopped:
            return ""
        self.ids.extend(new_ids)
        prefix_text = self.decode(self.ids[self._prefix : self._read])
        new_text = self.decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
        self._check_stop()
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """Generation ended: flush whatever was held back (an incomplete character included)."""
        if not self.stopped and self._read < len(self.ids):
            prefix_text = self.decode(self.ids[self._prefix : self._read])
            new_text = self.decode(self.ids[self._prefix :])
            if len(new_text) > len(prefix_text):
                self.text += new_text[len(prefix_text) :]
            self._read = len(self.ids)
            self._check_stop()
        return self._release(final=True)

    def _check_stop(self) -> None:
        if not self.stop or self.stopped:
            return
        start = max(0, self._checked - self._hold)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
        self._checked = len(self.text)

    def _release(self, *, final: bool) -> str:
        limit = len(self.text) if final else max(self._sent, len(self.text) - self._hold)
        out = self.text[self._sent : limit]
        self._sent = limit
        return out
