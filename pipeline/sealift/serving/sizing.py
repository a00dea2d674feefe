"""How the transformers backend sizes itself on CPU: torch threads, the batch cap, the prefill budget.

    cpu_sizing(config, context_length, element_size, weights_bytes=0) -> CpuSizing (threads, max_batch,
                                                                        memory_budget, prefill_tokens, why)

From the limits the container sets (sealift.core.limits: affinity and cgroup CPU quota, MemAvailable
and the cgroup memory limit), unless the environment says otherwise:

- threads: SEALIFT_TORCH_THREADS, else the usable CPUs less one (the event loop's core);
- batch cap: SEALIFT_MAX_BATCH, else ROWS_PER_CORE a CPU and no more rows than half the memory
  budget holds at the full context (sealift.serving.batching.default_max_batch);
- memory budget: what the limits leave (less the weights), or SEALIFT_MEMORY_BUDGET where smaller;
  a request whose KV cache cannot fit in it is refused (400; 429 while others hold it);
- prefill budget: SEALIFT_PREFILL_TOKENS (0: none), else PREFILL_TOKENS: the prompt tokens one
  scheduler step may prefill before running streams get their next token.

The server logs it at load; `sealift start` prints it before starting (with the weights not yet
loaded, `weights_bytes` is taken off the memory budget first).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sealift.core.limits import Limits, read_limits
from sealift.serving.backend import BudgetError, Reservation

__all__ = ["PREFILL_TOKENS", "CpuSizing", "MemoryBudget", "batching_from_env", "cpu_sizing", "memory_budget_from_env",
           "prefill_tokens_from_env", "torch_threads"]

#: Prompt tokens prefilled per scheduler step unless SEALIFT_PREFILL_TOKENS says otherwise: a 1k-token
#: prompt then takes a couple of steps, and running streams get a token between them.
PREFILL_TOKENS = 512


@dataclass(frozen=True)
class CpuSizing:
    """What the CPU server runs with, and why (one line)."""

    threads: int
    max_batch: int
    memory_budget: int
    #: prompt tokens per scheduler step; 0: no budget (a whole queue of prompts between two decode steps)
    prefill_tokens: int
    why: str


def _positive(environ: Mapping[str, str], key: str) -> int | None:
    raw = environ.get(key, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def torch_threads(limits: Limits | None = None, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(intra-op threads, why): SEALIFT_TORCH_THREADS, else the usable CPUs less one (at least 1)."""
    env = os.environ if environ is None else environ
    given = _positive(env, "SEALIFT_TORCH_THREADS")
    if given:
        return given, "SEALIFT_TORCH_THREADS"
    limits = limits or read_limits()
    if limits.cpus == 1:
        return 1, "1 usable CPU"
    return limits.cpus - 1, f"{limits.cpus} usable CPUs, one left to the event loop"


def prefill_tokens_from_env(environ: Mapping[str, str] | None = None) -> int:
    """SEALIFT_PREFILL_TOKENS: prompt tokens per scheduler step (0 turns the budget off); PREFILL_TOKENS unset."""
    raw = (os.environ if environ is None else environ).get("SEALIFT_PREFILL_TOKENS", "").strip()
    return int(raw) if raw.isdigit() else PREFILL_TOKENS


def batching_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """SEALIFT_BATCHING: off (0, false, no) serves one request at a time with generate; else continuous batching."""
    raw = (os.environ if environ is None else environ).get("SEALIFT_BATCHING", "").strip().lower()
    return raw not in ("off", "0", "false", "no")


def memory_budget_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """SEALIFT_MEMORY_BUDGET (512M, 4G, ...): a cap under the limits read; None when unset or not a size."""
    from sealift.core.units import parse_size

    raw = (os.environ if environ is None else environ).get("SEALIFT_MEMORY_BUDGET", "").strip()
    try:
        return parse_size(raw) if raw else None
    except ValueError:
        return None


def _namespace(config: Any) -> Any:
    """A config.json dict as attributes (text_config too), as transformers' config objects read."""
    if not isinstance(config, Mapping):
        return config
    return SimpleNamespace(**{k: _namespace(v) if isinstance(v, Mapping) else v for k, v in config.items()})


def cpu_sizing(
    config: Any, context_length: int, element_size: int, *, weights_bytes: int = 0, max_batch: int | None = None,
    limits: Limits | None = None, environ: Mapping[str, str] | None = None,
) -> CpuSizing:
    """Threads, batch cap and prefill budget for a model (`config`: its config object or config.json dict)."""
    from sealift.serving.batching import default_max_batch

    env = os.environ if environ is None else environ
    limits = limits or read_limits()
    threads, threads_why = torch_threads(limits, env)
    budget = max(0, limits.memory_budget - weights_bytes)
    capped = memory_budget_from_env(env)
    if capped is not None and capped < budget:
        budget, weights_bytes = capped, 0
    batch = max_batch or _positive(env, "SEALIFT_MAX_BATCH")
    if batch:
        batch_why = "SEALIFT_MAX_BATCH"
    else:
        batch = default_max_batch(_namespace(config), context_length, element_size, cores=limits.cpus, memory=budget)
        batch_why = f"from {limits.cpus} CPUs and half the memory budget at a context of {context_length}"
    prefill = prefill_tokens_from_env(env)
    weights = (" (SEALIFT_MEMORY_BUDGET)" if capped is not None and budget == capped
               else f" after {weights_bytes / 2**30:.2f} GiB of weights" if weights_bytes else "")
    why = (f"transformers on CPU: {threads} torch threads ({threads_why}); batch cap {batch} ({batch_why}); "
           f"memory budget {budget / 2**30:.1f} GiB{weights}; prefill "
           + (f"{prefill} prompt tokens a step" if prefill else "unbounded (SEALIFT_PREFILL_TOKENS=0)")
           + f". Limits read: {limits.why}")
    return CpuSizing(threads, batch, budget, prefill, why)


class MemoryBudget:
    """What running requests may hold: each reserves its KV cache at full length (prompt + max_tokens, per
    choice) and, when it scores its prompt, one scoring chunk of float32 logits twice (the logits and their
    log-softmax); refused past the budget.

    Left padding can make a batch hold more than the sum (a short row padded to the longest): the
    batch cap (half the budget at the full context) covers that; this keeps one request from
    taking more than there is. `budget` None: no accounting (a GPU).
    """

    def __init__(self, budget: int | None, kv_per_token: int, vocab: int = 0) -> None:
        self.budget = budget
        self.kv_per_token = kv_per_token
        self.vocab = vocab
        self.held = 0  # bytes held by running requests (changed on the event loop only)

    def need(self, prompt_tokens: int, max_tokens: int, *, n: int = 1, score_prompt: bool = False) -> int:
        from sealift.serving.batching import scoring_rows

        score = 2 * 4 * self.vocab * min(prompt_tokens, scoring_rows(self.vocab)) if score_prompt else 0
        return n * self.kv_per_token * (prompt_tokens + max_tokens) + score

    def reserve(self, prompt_tokens: int, max_tokens: int, *, n: int = 1, score_prompt: bool = False) -> Reservation:
        """The request's share, held until released; BudgetError (busy: only for now) when it does not fit."""
        need = self.need(prompt_tokens, max_tokens, n=n, score_prompt=score_prompt)
        if self.budget is not None and need > 0:
            what = (f"{prompt_tokens} prompt + {max_tokens} completion tokens" + (f" x {n} choices" if n > 1 else "")
                    + (" with prompt logprobs" if score_prompt else ""))
            if need > self.budget:
                raise BudgetError(f"This request needs {_gib(need)} of memory ({what}); the server's memory budget is "
                                  f"{_gib(self.budget)} (the container's memory limit or free memory, less the weights; "
                                  "SEALIFT_MEMORY_BUDGET). Send fewer tokens, or raise the limit.")
            if need > self.budget - self.held:
                raise BudgetError(f"This request needs {_gib(need)} of memory ({what}); {_gib(self.held)} of the "
                                  f"server's {_gib(self.budget)} memory budget is held by running requests. Retry "
                                  "shortly.", busy=True)
        self.held += need
        return Reservation(self._release, need)

    def _release(self, size: int) -> None:
        self.held = max(0, self.held - size)


def _gib(n: int) -> str:
    from sealift.core.units import fmt_bytes

    return fmt_bytes(n)
