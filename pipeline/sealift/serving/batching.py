"""Continuous batching for the transformers backend on CPU: concurrent requests share forward passes.

transformers' own continuous batching (`generate_batch`, paged attention) runs on CPU at
a tenth of one plain `generate` (DESIGN.md; 22 against 271 tok/s for 8 prompts here), so
this is the smallest scheduler that reaches the goal, in the worker thread that owns the model:

- a new request is prefilled alone (a batch of one with its own DynamicCache, as `generate`
  does it), picks its first token, and its cache then joins the running batch, left-padded
  to the batch's length;
- with a prefill budget (`prefill_tokens`, SEALIFT_PREFILL_TOKENS) and streams running, a
  step reads at most that many prompt tokens (a long prompt in chunks over several steps,
  continuing its own cache) before the running streams get their next token, so a burst of
  long prompts does not stall them; with nothing running, waiting prompts are read whole;
- echo with logprobs scores the prompt chunk by chunk (at most LOGIT_BYTES of float32
  logits at a time), never as one [prompt_len, vocab] tensor;
- each step is one decode forward over every active request: one new token each, the 2D
  attention mask hiding the padding, position ids per row;
- a request that is done (end of sequence, max_tokens, a stop string, the client gone)
  leaves after the step; cache columns that are padding for every remaining row are cut,
  so memory follows the live requests.

Requests join and leave only between steps. Each request keeps its own sampling (temperature,
top_p, top_k, min_p, penalties, logit_bias, a grammar: sealift.serving.sampling.RowSampler) and its
own random generator, so a seed gives the same text whatever else is in the batch. `probe()` checks at load that a
model's code fills and reads the cache this way; the backend falls back to one `generate`
at a time when it does not.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sealift.core.hfconfig import attention_shape
from sealift.serving.backend import BackendError, Chunk, OutputText, SamplingParams, TokenLogprob
from sealift.serving.logprobs import token_logprobs
from sealift.serving.sampling import RowSampler

__all__ = ["Batcher", "default_max_batch", "probe", "scoring_rows", "unsupported_generation_config"]

log = logging.getLogger("sealift.serving")

#: generation_config.json fields whose logits processors the batcher does not apply; a model
#: that sets one is served one request at a time by `generate`, which applies them all.
UNSUPPORTED_GENERATION_KEYS = (
    "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
    "forced_bos_token_id", "forced_eos_token_id", "encoder_repetition_penalty", "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h",
    "renormalize_logits", "watermarking_config", "guidance_scale", "low_memory", "num_beams",
)

#: Float32 logits one prompt-scoring chunk may hold (echo with logprobs): 64k rows of a 152k
#: vocabulary would be 40 GB at once; 128 MiB is ~220 rows of it.
LOGIT_BYTES = 128 << 20

#: Rows at most per core, before memory is considered: past a few rows per core a CPU
#: decode step turns from memory-bound (weights read once for all rows) to compute-bound.
ROWS_PER_CORE = 8
MAX_DEFAULT_BATCH = 64


def scoring_rows(vocab: int) -> int:
    """Prompt positions scored per chunk (echo with logprobs): LOGIT_BYTES of float32 logits."""
    return max(1, LOGIT_BYTES // (4 * max(1, vocab)))


def unsupported_generation_config(generation_config: Any) -> str | None:
    """The first generation_config setting the batcher cannot apply, as 'key=value', or None."""
    for key in UNSUPPORTED_GENERATION_KEYS:
        value = getattr(generation_config, key, None)
        if key == "num_beams" and value in (None, 1):
            continue
        if value not in (None, False, 0, 1.0, [], {}) or (key == "renormalize_logits" and value):
            return f"{key}={value!r}"
    return None


def kv_bytes_per_token(config: Any, element_size: int) -> int:
    """Bytes of keys and values one token takes in the cache, over all layers (where the config does not give its
    shape: one layer of one head as wide as hidden_size)."""
    shape = attention_shape(config)
    if shape is None:
        return 2 * int(getattr(config, "hidden_size", 1) or 1) * element_size
    return shape.kv_bytes_per_token(element_size)


def default_max_batch(
    config: Any, context_length: int, element_size: int = 4, *, cores: int | None = None, memory: int | None = None
) -> int:
    """SEALIFT_MAX_BATCH when unset: ROWS_PER_CORE per usable CPU, and no more rows than half the
    memory budget (sealift.core.limits: MemAvailable cut to the cgroup's limit) holds at the full context (left padding makes every row as long as the longest)."""
    if cores is None or memory is None:  # the container's limits, not the node's (sealift.core.limits)
        from sealift.core.limits import read_limits

        limits = read_limits()
        cores = limits.cpus if cores is None else cores
        memory = limits.memory_budget if memory is None else memory
    per_row = max(1, kv_bytes_per_token(config, element_size) * max(1, context_length))
    by_memory = int(memory * 0.5) // per_row
    return max(1, min(ROWS_PER_CORE * cores, MAX_DEFAULT_BATCH, by_memory))


@dataclass(eq=False)
class _Prefill:
    """A request whose prompt is being read: its own cache, and how far it got."""

    row: Any  # _Row
    cache: Any = None
    done: int = 0  # prompt tokens in the cache
    logits: Any = None  # the last position's logits [1, vocab] once the prompt is read
    scores: list[TokenLogprob | None] = field(default_factory=list)  # prompt logprobs so far (echo)


@dataclass(eq=False)
class _Row:
    """One request in the batch."""

    job: Any  # transformers_backend._Job: request, post(), cancelled
    out: OutputText
    ids: list[int]  # prompt and generated tokens; the last one is not in the cache yet
    length: int  # tokens in the cache
    sampler: RowSampler  # penalties, grammar, temperature...: `plain` for argmax alone
    generated: int = 0
    eos: bool = False
    pending: str = ""
    posted: float = 0.0
    finish: str | None = field(default=None)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens not handed out yet
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # until the first chunk carries them

    @property
    def params(self) -> SamplingParams:
        return self.job.request.params


class Batcher:
    """The running batch over one model: `admit(job)` between steps, `step()` for one token each.

    Only the worker thread that owns the model calls it. Jobs are the backend's `_Job`s:
    `request` (a GenerationRequest), `post(Chunk | exception)` and `cancelled` (an Event).
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: set[int],
        decode: Callable[[Sequence[int]], str],
        max_batch: int,
        interval: float,
        decode_special: Callable[[Sequence[int]], str] | None = None,
        prefill_tokens: int = 0,
    ) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.device = model.device
        self.eos_ids = eos_ids
        self.eos_list = sorted(eos_ids)
        self.decode = decode
        self.decode_special = decode_special or decode  # special tokens kept (skip_special_tokens false)
        self.max_batch = max_batch
        self.interval = interval
        self.rows: list[_Row] = []
        #: prompt tokens read per step while streams run (0: none, every waiting prompt is read whole)
        self.prefill_tokens = prefill_tokens
        #: requests queued with `queue()` whose prompts are being read, oldest first
        self.prefilling: list[_Prefill] = []
        #: the most rows one forward pass has carried (shows that requests did share passes)
        self.peak_rows = 0
        self.cache: Any = None
        self.mask: Any = None  # [rows, cache length + 1 after a step] of 0 (padding) and 1
        params = set(inspect.signature(model.forward).parameters)
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers 5 renamed past_key_values to cache; remote code may still take the old name
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._penalty = float(getattr(model.generation_config, "repetition_penalty", None) or 1.0)
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab = int(getattr(text, "vocab_size", 0) or model.get_input_embeddings().num_embeddings)

    @property
    def free(self) -> int:
        return self.max_batch - len(self.rows) - len(self.prefilling)

    @property
    def busy(self) -> bool:
        """Rows decoding or prompts being read: a step has work."""
        return bool(self.rows or self.prefilling)

    # ------------------------------------------------------------------ the model

    def prefill(self, prompt_ids: Sequence[int], *, every: bool = False, cache: Any = None) -> tuple[Any, Any]:
        """(logits as float32, a DynamicCache holding the prompt) for one prompt: the last position's
        [1, vocab], or with `every` all of them [len, vocab] (to score the prompt). With `cache` (holding
        the tokens before these), the prompt is read on from where it stopped (a chunk of a long prompt)."""
        from transformers import DynamicCache

        torch = self.torch
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        before = cache.get_seq_length()
        out = self.model(
            input_ids=ids, attention_mask=torch.ones(1, before + ids.shape[1], dtype=torch.long, device=self.device),
            use_cache=True, return_dict=True, **{self._cache_kw: cache}, **({} if every else self._keep),
        )
        logits = out.logits[0] if every else out.logits[:, -1]
        return logits.to(copy=True, dtype=torch.float32), cache  # the cache is filled in place

    def join(self, cache: Any, length: int) -> None:
        """Append a prefilled cache of `length` tokens to the batch as its last row, left-padding the shorter side."""
        torch = self.torch
        F = torch.nn.functional
        ones = torch.ones(1, length, dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask = cache, ones
            return
        width = self.mask.shape[1]
        n = max(width, length)
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([F.pad(old.keys, (0, 0, n - width, 0)), F.pad(new.keys, (0, 0, n - length, 0))])
            old.values = torch.cat(
                [F.pad(old.values, (0, 0, n - width, 0)), F.pad(new.values, (0, 0, n - length, 0))]
            )
        self.mask = torch.cat([F.pad(self.mask, (n - width, 0)), F.pad(ones, (n - length, 0))])

    def decode_step(self, last_ids: Sequence[int], positions: Sequence[int]) -> Any:
        """One forward over the batch, one token per row; the logits [rows, vocab] as float32."""
        torch = self.torch
        rows = len(last_ids)
        ids = torch.tensor(last_ids, dtype=torch.long, device=self.device).view(rows, 1)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device).view(rows, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(rows, 1)], dim=1)
        out = self.model(
            input_ids=ids, attention_mask=self.mask, position_ids=pos, use_cache=True, return_dict=True,
            **{self._cache_kw: self.cache}, **self._keep,
        )
        return out.logits[:, -1].to(copy=True, dtype=torch.float32)

    def keep(self, indices: list[int], lengths: list[int]) -> None:
        """Keep only these rows (with these cache lengths) and cut columns that are padding for all of them."""
        torch = self.torch
        if not indices:
            self.cache = self.mask = None
            return
        width = self.mask.shape[1]
        cut = width - max(lengths)
        if len(indices) != self.mask.shape[0]:
            index = torch.tensor(indices, dtype=torch.long, device=self.device)
            self.mask = self.mask[index]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
        if cut > 0:
            self.mask = self.mask[:, cut:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]

    # ------------------------------------------------------------------ requests

    def admit(self, job: Any) -> None:
        """Prefill a new request whole, send its first token, and add it to the batch unless it is already done."""
        pending = self._pending(job)
        with self.torch.inference_mode():
            while pending.logits is None:
                self._read(pending, len(pending.row.ids))
        self._start(pending)

    def queue(self, job: Any) -> None:
        """Take a new request; `step()` reads its prompt (within the prefill budget) and then decodes it."""
        self.prefilling.append(self._pending(job))

    def read_prompts(self) -> None:
        """Read queued prompts: at most `prefill_tokens` tokens while rows are decoding, else all of them."""
        left = self.prefill_tokens if (self.prefill_tokens and self.rows) else None
        with self.torch.inference_mode():
            while self.prefilling and (left is None or left > 0):
                pending = self.prefilling[0]
                if pending.row.job.cancelled.is_set():
                    self.prefilling.pop(0)
                    continue
                remaining = len(pending.row.ids) - pending.done
                before = pending.done
                try:
                    self._read(pending, remaining if left is None else min(left, remaining))
                    if pending.logits is not None:
                        self.prefilling.pop(0)
                        self._start(pending)
                except Exception as exc:  # this prompt failed (a model error): its request alone ends
                    log.error("generation failed", exc_info=True)
                    if self.prefilling and self.prefilling[0] is pending:
                        self.prefilling.pop(0)
                    pending.row.job.post(BackendError(f"generation failed: {type(exc).__name__}: {exc}"))
                    continue
                if left is not None:
                    left -= pending.done - before

    def _pending(self, job: Any) -> _Prefill:
        params: SamplingParams = job.request.params
        prompt = list(job.request.prompt_ids)
        decode = self.decode if params.skip_special_tokens else self.decode_special
        return _Prefill(_Row(job, OutputText(decode, params.stop), list(prompt), len(prompt), self._sampler(job)))

    def _read(self, pending: _Prefill, n: int) -> None:
        """Read up to `n` more prompt tokens into the request's cache (fewer when scoring: LOGIT_BYTES a chunk)."""
        prompt = pending.row.ids
        score = pending.row.job.request.prompt_logprobs
        if score is not None:
            n = min(n, scoring_rows(self.vocab))
        start, end = pending.done, min(len(prompt), pending.done + max(1, n))
        logits, pending.cache = self.prefill(prompt[start:end], every=score is not None, cache=pending.cache)
        pending.done = end
        if score is not None:  # logits at position i score token i + 1: this chunk scores start + 1 .. end
            if start == 0:
                pending.scores.append(None)
            following = prompt[start + 1 : end + 1]
            if following:
                pending.scores += token_logprobs(self.torch, logits[: len(following)], following, score)
            logits = logits[-1:]
        if end == len(prompt):
            pending.logits = logits

    def _start(self, pending: _Prefill) -> None:
        """The prompt is read: pick the first token, send it, and join the batch unless the request is done."""
        row, logits, cache = pending.row, pending.logits, pending.cache
        params = row.params
        if row.job.request.prompt_logprobs is not None:
            row.prompt_logprobs = tuple(pending.scores)
        if params.max_tokens == 0:  # scoring only
            row.finish = "length"
            self._end(row)
            return
        with self.torch.inference_mode():
            raw = logits.clone() if params.logprobs is not None else None
            if params.min_tokens and self.eos_list and row.sampler.matcher is None:  # a grammar decides its end
                logits[:, self.eos_list] = float("-inf")
            token = self._pick(row, logits, None)
            if raw is not None:
                row.logprobs += token_logprobs(self.torch, raw, [token], params.logprobs)
        self._advance(row, token)
        if row.finish is not None:
            self._end(row)
            return
        self.join(cache, row.length)
        self.rows.append(row)

    def step(self) -> None:
        """Drop cancelled rows, run one decode forward, hand each row its token, let finished rows leave."""
        live = [i for i, r in enumerate(self.rows) if not r.job.cancelled.is_set()]
        if len(live) != len(self.rows):
            self.rows = [self.rows[i] for i in live]
            self.keep(live, [r.length for r in self.rows])
            if not self.rows:
                return
        rows = self.rows
        self.peak_rows = max(self.peak_rows, len(rows))
        with self.torch.inference_mode():
            logits = self.decode_step([r.ids[-1] for r in rows], [r.length for r in rows])
            for r in rows:
                r.length += 1
            scored = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
            raw = logits[scored] if scored else None  # a copy: logprobs are of the raw logits, before any mask
            early = [i for i, r in enumerate(rows)
                     if r.generated < r.params.min_tokens and r.sampler.matcher is None]
            if early and self.eos_list:  # no end of sequence before min_tokens (generate's MinNewTokens...)
                torch = self.torch
                logits[torch.tensor(early).view(-1, 1), torch.tensor(self.eos_list)] = float("-inf")
            plain = logits.argmax(dim=-1).tolist() if any(r.sampler.plain for r in rows) else None
            picked = [self._pick(r, logits[i : i + 1], plain[i] if plain else None) for i, r in enumerate(rows)]
            if scored:
                k = max(rows[i].params.logprobs or 0 for i in scored)
                chosen = [picked[i] for i in scored]
                for i, lp in zip(scored, token_logprobs(self.torch, raw, chosen, k), strict=True):
                    rows[i].logprobs.append(lp)
            for r, token in zip(rows, picked, strict=True):
                self._advance(r, token)
        done = [r for r in rows if r.finish is not None]
        if done:
            for r in done:
                self._end(r)
            self.rows = [r for r in rows if r.finish is None]
            self.keep([i for i, r in enumerate(rows) if r.finish is None], [r.length for r in self.rows])

    def fail_all(self, message: str) -> None:
        """End every row with a BackendError (the worker is stopping, or a forward pass failed)."""
        for r in [*self.rows, *(p.row for p in self.prefilling)]:
            r.job.post(BackendError(message))
        self.rows, self.prefilling = [], []
        self.cache = self.mask = None

    # ------------------------------------------------------------------ per row

    def _sampler(self, job: Any) -> RowSampler:
        request = job.request
        return RowSampler(self.torch, request.params, request.prompt_ids, vocab=self.vocab, device=self.device,
                          model_repetition_penalty=self._penalty, grammar=request.grammar, eos_ids=self.eos_list)

    def _pick(self, row: _Row, logits: Any, plain: int | None) -> int:
        """The next token of `row` from its logits [1, vocab]."""
        return row.sampler.pick(logits, plain)

    def _advance(self, row: _Row, token: int) -> None:
        """Record `token` for `row`: detokenise, hand text out every `interval`, decide whether it is done."""
        row.ids.append(token)
        row.generated += 1
        row.pending += row.out.add([token])
        if not row.sampler.accept(token):  # cannot happen: the grammar's mask allowed only what it accepts
            log.error("the grammar refused token %d that its own mask allowed; ending the request", token)
            row.eos = True
        if token in self.eos_ids or token in row.params.stop_token_ids:  # -inf before min_tokens: not picked
            row.eos = True
        if row.out.stopped or row.eos:
            row.finish = "stop"
        elif row.generated >= row.params.max_tokens:
            row.finish = "length"
        elif row.pending:
            now = time.monotonic()
            if now - row.posted >= self.interval:
                row.job.post(self._chunk(row, row.pending))
                row.pending, row.posted = "", now

    @staticmethod
    def _chunk(row: _Row, text: str, **kwargs: Any) -> Chunk:
        """A chunk of `text` carrying the row's logprobs not handed out yet (and the prompt's, the first time)."""
        chunk = Chunk(text, logprobs=tuple(row.logprobs), prompt_logprobs=row.prompt_logprobs, **kwargs)
        row.logprobs, row.prompt_logprobs = [], None
        return chunk

    def _end(self, row: _Row) -> None:
        if row.job.cancelled.is_set():
            return
        tail = row.pending + row.out.finish()
        row.job.post(self._chunk(row, tail, finish_reason=row.finish, completion_tokens=row.generated))


def probe(model: Any) -> str | None:
    """Why this model cannot be batched here, or None when it can.

    Runs two short prompts through the batcher's own prefill, join and decode step and
    compares the batched logits with a plain full forward of each sequence: a model whose
    code does not fill transformers' DynamicCache, uses another cache layout (sliding
    windows, linear attention), or reads position ids or the mask its own way fails here.
    """
    import torch
    from transformers.cache_utils import DynamicLayer

    reason = unsupported_generation_config(model.generation_config)
    if reason:
        return f"generation_config sets {reason}, which only generate applies"
    vocab = int(model.get_input_embeddings().num_embeddings)
    prompts = [[(7 * i + 3) % vocab for i in range(n)] for n in (5, 2)]
    batcher = Batcher(model, eos_ids=set(), decode=lambda ids: "", max_batch=2, interval=0.0)
    tol = 1e-3 if model.dtype == torch.float32 else 5e-2  # half precision rounds differently per shape
    try:
        with torch.inference_mode():
            firsts = []
            for p in prompts:
                logits, cache = batcher.prefill(p)
                layers = getattr(cache, "layers", None)
                if not layers or any(type(layer) is not DynamicLayer for layer in layers):
                    return f"its cache is not a plain DynamicCache ({type(cache).__name__})"
                if cache.get_seq_length() != len(p):
                    return "its forward does not fill the DynamicCache it is given"
                firsts.append(int(logits.argmax(dim=-1)))
                batcher.join(cache, len(p))
            batched = batcher.decode_step(firsts, [len(p) for p in prompts])
            for i, p in enumerate(prompts):
                full = torch.tensor([p + [firsts[i]]], dtype=torch.long, device=model.device)
                ref = model(input_ids=full, use_cache=False, return_dict=True).logits[:, -1].float()
                if not torch.allclose(batched[i : i + 1], ref, rtol=tol, atol=tol * float(ref.abs().max()) + 1e-5):
                    return "a batched, cached decode step does not reproduce a full forward pass"
    except Exception as exc:  # the model's own code refused the batched call
        return f"a batched, cached forward failed: {type(exc).__name__}: {exc}"
    return None
