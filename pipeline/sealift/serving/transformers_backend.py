"""The in-process backend: transformers on CPU or one GPU.

One worker thread owns the model and takes requests from a queue, so the event
loop never blocks on the model. It batches them continuously (sealift.serving.batching):
up to `max_batch` requests (SEALIFT_MAX_BATCH) share each forward pass, new ones join
between steps, finished ones leave, and the rest wait in the queue. A model whose code
cannot use that path (the load-time probe says why, in the log), or SEALIFT_BATCHING=off, is
served one request at a time by `generate`, which picks each token as the batcher does
(sampling.PickLogitsProcessor: the request's own generator, EOS held back until min_tokens);
`engine_info()` (the /v1/models card's `sealift` field) says which path serves. On CPU the
threads, batch cap, prefill budget and memory budget come from the container's limits
(sealift.serving.sizing); `reserve()` holds each request's memory while it runs. Either way tokens reach the client as they are made (text goes
to the request's asyncio queue; tokens made within STREAM_INTERVAL_S of the last
hand-over travel together), and a greedy request gets exactly what plain
`model.generate(do_sample=False)` returns, alone or in a batch.

torch and transformers are imported only when the model loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealift.core.hfconfig import CONTEXT_KEYS as _CONTEXT_KEYS
from sealift.serving.sizing import MemoryBudget
from sealift.serving.structured import Constraint
from sealift.serving.tools import template_renders_tools
from sealift.serving.backend import (
    BackendError,
    Chunk,
    GenerationRequest,
    OutputText,
    PromptError,
    Reservation,
    SamplingDefaults,
)

log = logging.getLogger("sealift.serving")

#: Streamed text is handed to the client at most this often (the first token at once); tokens
#: made in between travel together. 20 ms is below what a reader notices.
STREAM_INTERVAL_S = 0.02



@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)

    def post(self, item: Chunk | BaseException) -> None:
        """Hand an event to the request's coroutine (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            self.cancelled.set()


_STOP_WORKER = object()


def default_torch_threads() -> int:
    """Intra-op threads for generate on CPU: SEALIFT_TORCH_THREADS, else the usable CPUs but one.

    Usable CPUs are the affinity's cores cut to the container's CPU quota (sealift.core.limits): a
    pod limited to 2 CPUs on a 64-core node gets 1 thread, not 63. The spare core runs the event
    loop (HTTP, JSON, detokenising). With every core in torch's OpenMP pool, one thread that the OS
    preempts stalls each op for all of them: on a 2-core host that made generate 10-30x slower under load.
    """
    from sealift.serving.sizing import torch_threads

    return torch_threads()[0]


def context_length_of(config: dict[str, Any], tokenizer_max: int | None = None) -> int | None:
    """The context length a model config declares (text_config for multimodal wrappers)."""
    for source in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    if tokenizer_max and 0 < tokenizer_max < 10_000_000:
        return tokenizer_max
    return None


def sampling_defaults_of(generation_config: dict[str, Any]) -> SamplingDefaults:
    """Request defaults from generation_config.json, as vLLM uses them: greedy if it says do_sample false."""
    if generation_config.get("do_sample") is False:
        return SamplingDefaults(temperature=0.0)
    return SamplingDefaults(
        temperature=float(generation_config.get("temperature", 1.0)),
        top_p=float(generation_config.get("top_p", 1.0)),
        top_k=int(generation_config.get("top_k") or 0),
    )


class TransformersBackend:
    """AutoModelForCausalLM + AutoTokenizer from a local directory, offline."""

    name = "transformers"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        trust_remote_code: bool = False,
        dtype: str | None = None,
        max_model_len: int | None = None,
        device: str | None = None,
        max_batch: int | None = None,
        prefill_tokens: int | None = None,
        batching: bool | None = None,
    ) -> None:
        self.model_dir = Path(model_dir).resolve() if model_dir is not None else None
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.device = device
        #: requests per forward pass: None picks batching.default_max_batch() at load
        self.max_batch = max_batch
        #: prompt tokens read per scheduler step while streams run: None takes SEALIFT_PREFILL_TOKENS at load
        self.prefill_tokens = prefill_tokens
        #: why requests run one at a time with generate (None while batching)
        self.batching_off: str | None = None
        #: False serves one request at a time with generate; None: SEALIFT_BATCHING (off/0/false), else batch
        self.batching = batching
        self._sizing: Any = None  # sealift.serving.sizing.CpuSizing, at load on CPU
        self._budget = MemoryBudget(None, 0)  # what requests may hold: set at load on CPU
        self._batcher: Any = None
        self._encode_lock = threading.Lock()
        self.model: Any = None
        self.tokenizer: Any = None
        self._ready = threading.Event()
        self._load_error: str | None = None
        self._context_length = 0
        self._vocab_size = 0
        self._defaults = SamplingDefaults()
        self._eos_ids: set[int] = set()
        self._jobs: queue.Queue = queue.Queue()
        self._decode = self._python_decode
        self._thread: threading.Thread | None = None
        self._closed = False
        self._grammars: Any = None  # sealift.serving.grammar.Grammars, made at load

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._closed

    @property
    def load_error(self) -> str | None:
        return self._load_error

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: a token id must be below this."""
        return self._vocab_size

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        return self._defaults

    def engine_info(self) -> dict[str, Any]:
        """How requests are served (the /v1/models card's `sealift` field): the path, why, and the sizing."""
        info: dict[str, Any] = {"backend": self.name}
        if self.ready:
            info["path"] = "one-at-a-time" if self._batcher is None else "continuous-batching"
            if self.batching_off:
                info["why"] = self.batching_off
        if self._sizing is not None:
            info.update(threads=self._sizing.threads, max_batch=self._sizing.max_batch,
                        memory_budget=self._sizing.memory_budget, memory_held=self._budget.held,
                        prefill_tokens=self.prefill_tokens or 0)
        return info

    # ------------------------------------------------------------------ memory per request

    def reserve(self, prompt_tokens: int, max_tokens: int, *, n: int = 1, score_prompt: bool = False) -> Reservation:
        """Hold a request's memory while it runs (from the event loop): sealift.serving.sizing.MemoryBudget."""
        return self._budget.reserve(prompt_tokens, max_tokens, n=n, score_prompt=score_prompt)

    def start(self, model_dir: str | Path | None = None) -> None:
        """Load the model (from `model_dir` if given now) in the worker thread, then serve its queue."""
        if model_dir is not None:
            self.model_dir = Path(model_dir).resolve()
        if self.model_dir is None:
            raise ValueError("TransformersBackend.start: no model directory given")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sealift-generate", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    def close(self) -> None:
        self._closed = True
        self._jobs.put(_STOP_WORKER)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load tokenizer and model (blocking). Called by the worker thread; public for scripts."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        assert self.model_dir is not None, "start(model_dir) first"
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} has no config.json: not a model directory")
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            torch.set_num_threads(default_torch_threads())
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": self.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), dtype=self._torch_dtype(torch, config, device), **kwargs
        )
        self.model = model.to(device).eval()
        self.device = device
        self._vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self._decode = self._fast_decode_or_none() or self._python_decode

        declared = context_length_of(config, getattr(self.tokenizer, "model_max_length", None)) or 2048
        if self.max_model_len and self.max_model_len > declared:
            log.warning("max model len %d is above the model's %d; serving %d", self.max_model_len, declared, declared)
        self._context_length = min(self.max_model_len or declared, declared)

        gen_path = self.model_dir / "generation_config.json"
        gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
        self._defaults = sampling_defaults_of(gen)
        eos = self.model.generation_config.eos_token_id
        eos_list = list(eos) if isinstance(eos, list) else [eos]  # a copy: the model's own list stays as it is
        if self.tokenizer.eos_token_id is not None:
            eos_list.append(self.tokenizer.eos_token_id)
        self._eos_ids = {int(e) for e in eos_list if e is not None}
        from sealift.serving.grammar import Grammars

        text_config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        self._grammars = Grammars(self.tokenizer, int(getattr(text_config, "vocab_size", 0) or self._vocab_size),
                                  self._eos_ids)
        log.info(
            "loaded %s on %s (%s, context %d)", self.model_dir.name, device, self.model.dtype, self._context_length
        )
        if device == "cpu":  # threads, batch cap, memory budget from the container's limits (after the weights)
            from sealift.serving.batching import kv_bytes_per_token
            from sealift.serving.sizing import cpu_sizing

            self._sizing = cpu_sizing(self.model.config, self._context_length, self.model.dtype.itemsize,
                                      max_batch=self.max_batch)
            self._budget = MemoryBudget(self._sizing.memory_budget,
                                        kv_bytes_per_token(self.model.config, self.model.dtype.itemsize),
                                        self._vocab_size)
            if self.prefill_tokens is None:
                self.prefill_tokens = self._sizing.prefill_tokens
        self._setup_batching()

    def _setup_batching(self) -> None:
        """Batch continuously if the model passes batching.probe(); else say why and use generate."""
        from sealift.serving.batching import Batcher, probe

        from sealift.serving.sizing import batching_from_env

        wanted = batching_from_env() if self.batching is None else self.batching
        reason = probe(self.model) if wanted else "SEALIFT_BATCHING is off"
        if reason is not None:
            self.batching_off = reason
            log.warning("continuous batching is off for %s: %s; serving one request at a time with generate",
                        self.model_dir.name if self.model_dir else "this model", reason)
            return
        sizing = self._sizing
        if sizing is None:  # on a GPU: the batch cap from cores and memory as on CPU
            from sealift.serving.sizing import cpu_sizing

            sizing = cpu_sizing(self.model.config, self._context_length, self.model.dtype.itemsize,
                                max_batch=self.max_batch)
        self._batcher = Batcher(
            self.model, eos_ids=self._eos_ids, decode=self.decode, max_batch=sizing.max_batch,
            interval=STREAM_INTERVAL_S, decode_special=self.decode_special, prefill_tokens=self.prefill_tokens or 0,
        )
        log.info("continuous batching: up to %d requests share each forward pass%s; %s", sizing.max_batch,
                 "" if self.max_batch else " (SEALIFT_MAX_BATCH unset: from cores and memory)", sizing.why)

    def _torch_dtype(self, torch: Any, config: dict[str, Any], device: str) -> Any:
        names = {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16}
        names |= {"float32": torch.float32, "float": torch.float32}
        if self.dtype and self.dtype != "auto":
            return names[self.dtype]
        declared = config.get("torch_dtype") or config.get("dtype")
        if device == "cpu" and declared == "float16":
            return torch.float32  # half precision matmuls on CPU are slow or missing
        return "auto"

    # ------------------------------------------------------------------ prompts

    def chat_template(self) -> str | None:
        """The model's chat template (the default one where the tokenizer has several), or None."""
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default") or next(iter(template.values()), None)
        return template if isinstance(template, str) else None

    def encode_chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                    template_kwargs: dict[str, Any] | None = None) -> list[int]:
        template = self.chat_template()
        if not template:
            raise PromptError("this model has no chat template; use /v1/completions with a prompt")
        if tools and not template_renders_tools(template):
            raise PromptError("this model's chat template does not render tools (it never reads `tools`); "
                              "send the request without tools, or describe them in a message", param="tools")
        kwargs = {"add_generation_prompt": True, **(template_kwargs or {})}
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, **kwargs)
        except Exception as exc:  # jinja raise_exception() in templates: the messages are not acceptable
            raise PromptError(f"the model's chat template refused the messages: {exc}") from exc
        with self._encode_lock:  # called from worker threads (asyncio.to_thread): one encode at a time
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, prompt: str) -> list[int]:
        with self._encode_lock:
            return list(self.tokenizer(prompt)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self._decode(ids)

    def decode_special(self, ids: Sequence[int]) -> str:
        """Token ids to text with special tokens kept (a tool parser's markers, skip_special_tokens false)."""
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def compile(self, constraint: Constraint) -> Any:
        """A compiled xgrammar grammar for the constraint; ConstraintError (a 400) when it does not compile."""
        if self._grammars is None:
            raise BackendError("the model is still loading")
        return self._grammars.compile(constraint)

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (what vLLM's tokenizer.decode(token_id) gives)."""
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _python_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _fast_decode_or_none(self) -> Any:
        """The Rust tokenizer's decode when it gives exactly what tokenizer.decode gives (no
        clean-up of spaces), at half the cost per token; else None."""
        try:
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:  # transformers 4: keep the public path
            return None
        tok = self.tokenizer
        rust = getattr(tok, "_tokenizer", None)
        plain = type(tok)._decode is TokenizersBackend._decode and type(tok).decode is TokenizersBackend.decode
        if rust is None or not plain or getattr(tok, "clean_up_tokenization_spaces", False):
            return None
        return lambda ids: rust.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------------ generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if not self.ready:
            raise BackendError(self._load_error or "the model is still loading")
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                item = await job.events.get()
                # Whatever else is already waiting goes out in the same chunk: fewer events under load.
                while isinstance(item, Chunk) and item.finish_reason is None and not job.events.empty():
                    nxt = job.events.get_nowait()
                    if isinstance(nxt, BaseException):
                        yield item
                        item = nxt
                        break
                    item = item.merged(nxt)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled.set()  # a client that went away stops its generation at the next token

    def _run(self) -> None:
        try:
            self.load()
        except Exception as exc:
            self._load_error = f"the model failed to load from {self.model_dir}: {type(exc).__name__}: {exc}"
            log.error("%s", self._load_error, exc_info=True)
            self._fail_pending(self._load_error)
            return
        self._ready.set()
        if self._batcher is not None:
            self._serve_batched(self._batcher)
            return
        while True:
            job = self._jobs.get()
            if job is _STOP_WORKER:
                self._fail_pending("the server is shutting down")
                return
            if job.cancelled.is_set():
                continue
            try:
                self._generate(job)
            except Exception as exc:
                log.error("generation failed", exc_info=True)
                job.post(BackendError(f"generation failed: {type(exc).__name__}: {exc}"))

    def _serve_batched(self, batcher: Any) -> None:
        """Take queued requests while the batch has room (waiting only when it has no work), read prompts
        within the prefill budget, then one decode step; repeat."""
        while True:
            while batcher.free > 0:
                try:
                    job = self._jobs.get(block=not batcher.busy)
                except queue.Empty:
                    break
                if job is _STOP_WORKER:
                    batcher.fail_all("the server is shutting down")
                    self._fail_pending("the server is shutting down")
                    return
                if job.cancelled.is_set():
                    continue
                try:
                    batcher.queue(job)
                except Exception as exc:
                    log.error("generation failed", exc_info=True)
                    job.post(BackendError(f"generation failed: {type(exc).__name__}: {exc}"))
            if not batcher.busy:
                continue
            try:
                batcher.read_prompts()
                if batcher.rows:
                    batcher.step()
            except Exception as exc:  # out of memory, a model error: every request in the batch fails
                log.error("generation failed", exc_info=True)
                batcher.fail_all(f"generation failed: {type(exc).__name__}: {exc}")

    def _fail_pending(self, message: str) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP_WORKER:
                job.post(BackendError(message))

    def _generate(self, job: _Job) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from sealift.serving.logprobs import prompt_logprobs, token_logprobs

        from sealift.serving.sampling import PickLogitsProcessor, RowSampler

        params = job.request.params
        out = OutputText(self.decode if params.skip_special_tokens else self.decode_special, params.stop)
        eos_ids = self._eos_ids
        stop_ids = set(params.stop_token_ids)
        interval = STREAM_INTERVAL_S
        state: dict[str, Any] = {"prompt_seen": False, "tokens": 0, "eos": False, "pending": "", "posted": 0.0,
                                 "logits": None, "lps": [], "prompt_lps": None}
        device = self.model.device
        input_ids = torch.tensor([job.request.prompt_ids], dtype=torch.long, device=device)
        if job.request.prompt_logprobs is not None:  # echo with logprobs: one forward pass over the prompt
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, use_cache=False, return_dict=True).logits[0].float()
                state["prompt_lps"] = tuple(
                    prompt_logprobs(torch, logits, job.request.prompt_ids, job.request.prompt_logprobs))
        if params.max_tokens == 0:
            job.post(Chunk("", finish_reason="length", prompt_logprobs=state["prompt_lps"]))
            return
        want = params.logprobs

        class Streamer(BaseStreamer):
            """Gets each new token from generate: detokenises it and hands the text to the client.

            Text goes out at once when the previous chunk is `interval` old (so the first token
            and slow models stream token by token), else it waits for the next one: a fast small
            model would otherwise spend a good part of its time handing single tokens across threads.
            """

            def put(self, value: Any) -> None:
                if not state["prompt_seen"]:  # generate first puts the prompt
                    state["prompt_seen"] = True
                    return
                if out.stopped or state["eos"]:
                    return
                ids = value.reshape(-1).tolist()
                state["tokens"] += len(ids)
                if want is not None and state["logits"] is not None:  # the raw logits this token was picked from
                    state["lps"] += token_logprobs(torch, state["logits"], ids, want)
                if not eos_ids.isdisjoint(ids) or not stop_ids.isdisjoint(ids):
                    state["eos"] = True
                state["pending"] += out.add(ids)
                now = time.monotonic()
                if state["pending"] and now - state["posted"] >= interval:
                    job.post(Chunk(state["pending"], logprobs=tuple(state["lps"]),
                                   prompt_logprobs=state.pop("prompt_lps", None)))
                    state["pending"], state["posted"], state["lps"] = "", now, []

            def end(self) -> None:
                pass

        # made once, on the model's device: this runs after every token (one sequence per generate)
        go, halt = torch.zeros(1, dtype=torch.bool, device=device), torch.ones(1, dtype=torch.bool, device=device)

        class Cancelled(StoppingCriteria):
            """Ends generate when the client went away or a stop string was found."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return halt if (job.cancelled.is_set() or out.stopped or state["eos"]) else go

        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": params.max_tokens,
            "streamer": Streamer(),
            "stopping_criteria": StoppingCriteriaList([Cancelled()]),
        }
        # The batcher's own choice: its RowSampler (bias, penalties, the grammar, temperature, top_k/p, min_p, a
        # generator of the request's own seed) and its min_tokens mask over every EOS id, picked in a logits
        # processor that leaves generate only that token to take greedily: same seed, same text, either path.
        sampler = RowSampler(torch, params, job.request.prompt_ids, vocab=int(self.model.config.get_text_config().vocab_size),
                             device=device, model_repetition_penalty=float(
                                 getattr(self.model.generation_config, "repetition_penalty", None) or 1.0),
                             grammar=job.request.grammar, eos_ids=sorted(self._eos_ids))
        kwargs["logits_processor"] = LogitsProcessorList(
            [PickLogitsProcessor(torch, sampler, input_ids.shape[-1], sorted(self._eos_ids))])
        kwargs["repetition_penalty"] = 1.0  # applied by the sampler (the request's or the model's)
        kwargs["do_sample"] = False
        if self.model.generation_config.pad_token_id is None and self._eos_ids:
            kwargs["pad_token_id"] = min(self._eos_ids)
        hook = None
        if want is not None:  # logprobs come from the raw logits of each forward pass, before any processor

            def keep_logits(module: Any, args: Any, output: Any) -> None:
                state["logits"] = output.logits[:, -1].float()

            hook = self.model.register_forward_hook(keep_logits)
        try:
            with torch.inference_mode():
                self.model.generate(**kwargs)
        finally:
            if hook is not None:
                hook.remove()
        if job.cancelled.is_set():
            return
        tail = state["pending"] + out.finish()
        finish = "stop" if (out.stopped or state["eos"]) else "length"
        job.post(Chunk(tail, finish_reason=finish, completion_tokens=state["tokens"], logprobs=tuple(state["lps"]),
                       prompt_logprobs=state.pop("prompt_lps", None)))
