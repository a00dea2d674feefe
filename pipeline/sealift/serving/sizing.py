"""How the transformers backend sizes itself on CPU: torch threads, the batch cap, the prefill budget.

    cpu_sizing(config, context_length, element_size, weights_bytes=0) -> CpuSizing (threads, max_batch,
                                                                        memory_budget, prefill_tokens, why)

From the limits the container sets (sealift.core.limits: affinity and cgroup CPU quota, MemAvailable
and the cgroup memory limit), unless the environment says otherwise:

- threads: SEALIFT_TORCH_THREADS, else the usable CPUs less one (the event loop's core);
- batch cap: SEALIFT_MAX_BATCH, else ROWS_PER_CORE a CPU and no more rows than half the memory
  budget holds at the full context (sealift.serving.batching.default_max_batch);
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

__all__ = ["PREFILL_TOKENS", "CpuSizing", "cpu_sizing", "prefill_tokens_from_env", "torch_threads"]

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
    batch = max_batch or _positive(env, "SEALIFT_MAX_BATCH")
    if batch:
        batch_why = "SEALIFT_MAX_BATCH"
    else:
        batch = default_max_batch(_namespace(config), context_length, element_size, cores=limits.cpus, memory=budget)
        batch_why = f"from {limits.cpus} CPUs and half the memory budget at a context of {context_length}"
    prefill = prefill_tokens_from_env(env)
    weights = f" after {weights_bytes / 2**30:.2f} GiB of weights" if weights_bytes else ""
    why = (f"transformers on CPU: {threads} torch threads ({threads_why}); batch cap {batch} ({batch_why}); "
           f"memory budget {budget / 2**30:.1f} GiB{weights}; prefill "
           + (f"{prefill} prompt tokens a step" if prefill else "unbounded (SEALIFT_PREFILL_TOKENS=0)")
           + f". Limits read: {limits.why}")
    return CpuSizing(threads, batch, budget, prefill, why)
