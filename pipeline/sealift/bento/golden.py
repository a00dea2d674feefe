"""Golden outputs: what the model answered on the build host, kept in the bento so the host it lands on
can prove that its server answers the same (`sealift check`).

    plan_recording(model)          -> GoldenPlan (does fp32 fit in this host's memory?)
    record_into(ctx, model)        -> GoldenOutcome (writes ctx/sealift_golden.json, or says why not)
    load_golden(bento_src)         -> the recording (dict) or None

A small fixed prompt set (PROMPTS: chat-templated and raw, short, and one
raw prompt of token ids near the context limit) runs greedily through
transformers on CPU in float32, in a child process (torch never loads in the
CLI's process). For each prompt the file holds the prompt, its token ids,
the output token ids and text, and for every generated step the top-k
(TOP_K) candidates with their log-probabilities and the text the output
would read with that candidate in place. `sealift check` compares text, so
it needs no tokenizer and no token ids from the server (see sealift.host.check).

The file is `src/sealift_golden.json` in the bento, so `sealift export` and a
plain `bentoml export` both carry it. A model whose float32 weights do not fit
in the memory available here is skipped with one line (a 70B model needs
280 GB): record it later, on a host where it fits, with `sealift golden NAME`,
which makes a new version of the model's newest bento holding the file (export and
install that version to carry it across; sealift.bento.build.record_golden_version).

Cost (what the build waits for). The recording reads every weight once per
generated token (decode is memory-bound) and does 2 x params x tokens FLOPs for
the long prompt's prefill: 4 prompts x MAX_NEW_TOKENS (8) + LONG_NEW_TOKENS
(16) = 48 passes over the float32 weights, a prefill of the long prompt
(long_prefill_seconds: 15 s a GB of checkpoint, 10 to 60 s), the load (bf16 on disk becomes float32), and the
child's start (importing torch and transformers). Torch uses every core
(recording_threads). The build prints the seconds and their split (start,
imports, load, short, long). Measured with scripts/bench_golden.py on a
complete 0.53B-parameter (1.07 GB bf16) Llama on a shared 2-core AVX2 host
under load 6-8 (noisy): recording 50 s in-process (load 10 s) plus 20-34 s of
child start, against 222 s with the old settings (16 new tokens a prompt, a
2,048-token long prompt): 4.7x less (measured with 4 long-prompt tokens; 16
add ~6 s). A 7B model, estimated: on a 16-core AVX-512 build host (~1 TFLOP/s
float32 GEMM, ~40 GB/s) about 60 s (prefill 7 s, 48 x 28 GB at ~0.7 s, load
~15 s, start ~3 s), against ~105 s before; on this 2-core host (6 GFLOP/s,
4.4 GB/s measured) about 25 minutes, which is why `--no-golden` and
`sealift golden NAME` (later, on a bigger host) exist. bfloat16 was not taken:
on a CPU without AVX512_BF16/AMX (this one) it was 2-2.5x slower than float32,
and a float32 recording is what the CPU server's exact mode compares against.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "GOLDEN_FILE",
    "GoldenOutcome",
    "GoldenPlan",
    "PROMPTS",
    "TOP_K",
    "available_memory",
    "long_prefill_seconds",
    "load_golden",
    "plan_recording",
    "record",
    "record_into",
    "recording_threads",
]

#: The recording, in the bento's src/ (beside service.py and sealift_bento.json).
GOLDEN_FILE = "sealift_golden.json"
FORMAT = 1
#: Candidates kept per generated step.
TOP_K = 5
#: Tokens generated per short prompt. Each is one decode step that reads every weight once (memory-bound:
#: 28 GB a token for a 7B model in float32), so this, times the prompts, is most of the recording's cost.
MAX_NEW_TOKENS = 8
#: Tokens generated after the long prompt (its prompt fills the context up to them).
LONG_NEW_TOKENS = 16
#: The long prompt fills the model's context up to LONG_NEW_TOKENS (so `check` exercises rope scaling,
#: sliding windows and a long KV cache), cut to what the build host affords: a prefill of at most
#: long_prefill_seconds() at the matmul speed measured in the recording child (2 x params FLOPs a token),
#: and keys, values and (eager attention) one layer's scores within the memory left after the weights.
#: Never cut below LONG_PROMPT_FLOOR tokens (what recordings held before) where the context allows.
#: The prefill's time grows with the weights, as the trip's own cost does (copying and hashing them):
#: LONG_PREFILL_S_PER_GB seconds a GB of checkpoint, between LONG_PREFILL_MIN_S and LONG_PREFILL_S. A 1 GB
#: model's long prompt took 57 of its recording's 75 s with a flat minute (4,080 tokens on 2 cores), 44% of
#: the whole trip (scripts/bench_e2e.py); a 15 GB 7B model keeps the minute. `sealift check` replays it.
LONG_PREFILL_S = 60.0
LONG_PREFILL_MIN_S = 10.0
LONG_PREFILL_S_PER_GB = 15.0
LONG_PROMPT_FLOOR = 512
#: Kept for callers that name it: the floor of the long prompt.
LONG_PROMPT_MAX = LONG_PROMPT_FLOOR
#: Memory the recording needs beyond the float32 weights: torch, transformers, activations.
OVERHEAD_BYTES = 768 * 1024**2
#: Seconds the child may take before the build gives up on it (and carries on without a recording).
TIMEOUT_S = 1800

#: The fixed prompts: (id, kind, content). chat: messages through the chat template; raw: a completion prompt.
PROMPTS: tuple[tuple[str, str, Any], ...] = (
    ("chat-short", "chat", [{"role": "user", "content": "What is the capital of France?"}]),
    ("chat-system", "chat", [
        {"role": "system", "content": "Answer briefly and truthfully."},
        {"role": "user", "content": "Name three colours of the rainbow."},
    ]),
    ("raw-short", "raw", "The quick brown fox"),
    ("raw-code", "raw", "def fibonacci(n):\n    "),
)
#: Text repeated to make the long prompt (cut to its length in tokens, sent as token ids).
LONG_FILLER = (
    "Every byte that arrives must be the byte that left. An air-gapped server never reaches the internet, "
    "so the model it runs is carried across on removable media and checked on arrival. "
)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class GoldenPlan:
    """Whether the recording fits here: float32 weights plus overhead against available memory."""

    needed_bytes: int
    available_bytes: int

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes


@dataclass
class GoldenOutcome:
    """What the build did about golden outputs: recorded, skipped (and why) or failed (and why)."""

    status: str  # "recorded", "skipped", "off", "failed"
    reason: str = ""
    seconds: float = 0.0
    prompts: int = 0
    path: str | None = None
    #: Seconds per phase in the child (start, load, generate), when recorded.
    phases: dict[str, float] = field(default_factory=dict)
    #: `sealift golden`: the new bento version that holds the recording
    bento_tag: str | None = None
    #: the long prompt's length and why (the model's context, or what this host afforded)
    long_prompt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_memory() -> int:
    """Bytes this process may still use: MemAvailable cut to the container's memory limit (sealift.core.limits)."""
    from sealift.core.limits import read_limits

    return read_limits().memory_budget


def plan_recording(*, params: int | None, size_bytes: int, available: int | None = None) -> GoldenPlan:
    """The memory a float32 recording needs (4 bytes a parameter; without a count, twice the stored
    bytes, as for 16-bit weights) against what is available."""
    weights = 4 * params if params else 2 * size_bytes
    return GoldenPlan(weights + OVERHEAD_BYTES, available_memory() if available is None else available)


def fmt_gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


# --------------------------------------------------------------------------- the build's hook


def record_into(ctx: Path, model: Any, *, timeout: float = TIMEOUT_S) -> GoldenOutcome:
    """Record golden outputs of the stored `model` (sealift.model.store.StoredModel) into ctx/GOLDEN_FILE.

    Never raises for the model's sake: a model that does not fit is "skipped", a
    recording that crashes is "failed"; the build goes on either way and the
    reason is one line. Runs the recording in a child process.
    """
    plan = plan_recording(params=model.params, size_bytes=model.size)
    if not plan.fits:
        return GoldenOutcome(
            "skipped",
            f"float32 weights need {fmt_gib(plan.needed_bytes)}, {fmt_gib(plan.available_bytes)} available; "
            f"record them later on a bigger host with `sealift golden {model.name}`",
        )
    started = time.monotonic()
    request = {
        "model_dir": str(model.path),
        "trust_remote_code": bool(model.trust_remote_code),
        "model_tag": str(model.tag),
        "manifest_digest": model.manifest_digest,
    }
    out = ctx / GOLDEN_FILE
    tmp = ctx / f".{GOLDEN_FILE}.partial"
    launched = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from sealift.bento.golden import _child_main; _child_main()",
             json.dumps(request), str(tmp)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=_child_env(), timeout=timeout, preexec_fn=_die_with_parent,
        )
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        _phases_path(tmp).unlink(missing_ok=True)
        return GoldenOutcome("failed", f"the recording took over {timeout:.0f} s", time.monotonic() - started)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        _phases_path(tmp).unlink(missing_ok=True)
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        return GoldenOutcome("failed", (lines or [f"exit code {proc.returncode}"])[-1][:300],
                             time.monotonic() - started)
    os.replace(tmp, out)
    doc = json.loads(out.read_text())
    phases = _read_phases(tmp, launched)
    long = str(phases.pop("long_why", ""))
    return GoldenOutcome("recorded", "", round(time.monotonic() - started, 2), len(doc["prompts"]), str(out),
                         phases, long_prompt=long)


def _phases_path(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".phases")


def _read_phases(tmp: Path, launched: float) -> dict[str, float]:
    """The child's phase timings (kept out of the golden file, which holds no clock); {} if it wrote none.

    "start" is the interpreter's start (launch to the child's first line, wall clock)."""
    path = _phases_path(tmp)
    try:
        raw = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return {}
    phases = {k: round(float(v), 2) for k, v in raw.items() if k not in ("t0", "long_why")}
    if raw.get("long_why"):
        phases["long_why"] = raw["long_why"]  # type: ignore[assignment]
    if "t0" in raw:
        phases = {"start": round(max(0.0, float(raw["t0"]) - launched), 2), **phases}
    return phases


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the build dies (kill -9 leaves no recording running). Linux only."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child_env() -> dict[str, str]:
    """Offline, quiet, able to import this package; the parent's network guard (if any) carries over."""
    from sealift.core.offline import offline_env

    env = offline_env(TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [env.get("PYTHONPATH")]), pkg_parent])
    return env


def _child_main() -> None:
    """The recording process: argv[-2] the request (JSON), argv[-1] where to write the recording."""
    t0 = time.time()
    request, out = json.loads(sys.argv[-2]), Path(sys.argv[-1])
    phases: dict[str, float] = {}
    doc = record(Path(request.pop("model_dir")), phases=phases, **request)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _phases_path(out).write_text(json.dumps({"t0": t0, **phases}))


def load_golden(bento_src: Path) -> dict[str, Any] | None:
    """The recording in a bento's src/ directory, or None if it has none."""
    path = Path(bento_src) / GOLDEN_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the recording (child process)


def long_prompt_length(*, context: int, params: int, gflops: float, memory: int, kv_bytes_per_token: int,
                       score_bytes_per_token: int = 0, new_tokens: int = LONG_NEW_TOKENS,
                       seconds: float = LONG_PREFILL_S) -> tuple[int, str]:
    """(prompt tokens, why) for the long golden prompt: the context less `new_tokens`, cut to a prefill of
    `seconds` at `gflops` and to `memory` at `kv_bytes_per_token` plus `score_bytes_per_token` x length
    (eager attention's scores of one layer grow with the square: the caller folds them in per token)."""
    full = max(1, context - new_tokens)
    by_time = int(seconds * gflops * 1e9 / max(1, 2 * params))
    by_memory = int(memory // max(1, kv_bytes_per_token + score_bytes_per_token))
    floor = min(full, LONG_PROMPT_FLOOR)
    tokens = min(full, by_time, by_memory)
    if tokens < full:  # cut: to a multiple of 256, so that hosts of about the same speed record the same prompt
        tokens = tokens // 256 * 256
    tokens = max(floor, tokens)
    if tokens == full:
        return tokens, f"{tokens} tokens: the model's context of {context} less {new_tokens} to generate"
    limit = "time" if by_time <= by_memory else "memory"
    reason = (f"a {seconds:.0f} s prefill at {gflops:.0f} GFLOP/s" if limit == "time"
              else f"{memory / 2**30:.1f} GiB left for keys and values")
    return tokens, (f"{tokens} of the model's {context} tokens of context: cut to what this host affords "
                    f"({reason}); `sealift golden NAME` on a bigger host records a longer one")


def long_prefill_seconds(weights_bytes: int) -> float:
    """Seconds of prefill the long prompt may take: LONG_PREFILL_S_PER_GB a GB of checkpoint, within
    [LONG_PREFILL_MIN_S, LONG_PREFILL_S]."""
    return max(LONG_PREFILL_MIN_S, min(LONG_PREFILL_S, LONG_PREFILL_S_PER_GB * weights_bytes / 1e9))


def _matmul_gflops(torch: Any) -> float:
    """float32 matmul speed here, GFLOP/s (about a third of a second)."""
    a, b = torch.randn(512, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.3:
        torch.mm(a, b)
        runs += 1
    return 2 * 512 * 1024 * 1024 * runs / (time.perf_counter() - started) / 1e9


def recording_threads() -> int:
    """Intra-op threads for the recording: SEALIFT_TORCH_THREADS, else every usable CPU (affinity and quota).

    Unlike the server (which keeps a core for its event loop), the recording is
    the only work the build does while it runs; on a 2-core host one thread
    would double every phase."""
    from sealift.core.limits import read_limits

    raw = os.environ.get("SEALIFT_TORCH_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return read_limits().cpus


def record(
    model_dir: Path, *, trust_remote_code: bool = False, model_tag: str = "", manifest_digest: str = "",
    max_new_tokens: int = MAX_NEW_TOKENS, long_new_tokens: int = LONG_NEW_TOKENS,
    long_prompt_max: int | None = None, phases: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run PROMPTS greedily in float32 on CPU and return the recording (see the module docstring).

    Prompts are built as sealift's transformers backend builds them (chat: the
    template's text, tokenized without special tokens; raw: tokenized with
    them) and generation stops where the server's would (the first of the
    model's and the tokenizer's end-of-sequence tokens). `phases`, if given,
    gets the seconds spent importing, loading, on the short prompts and on the
    long one (the benchmark and the build summary read it; the file holds no clock).
    """
    clock = time.monotonic()
    spent = phases if phases is not None else {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        spent[name] = round(spent.get(name, 0.0) + now - clock, 3)
        clock = now

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sealift.core.hfconfig import checkpoint_bytes
    from sealift.core.version import __version__
    from sealift.serving.transformers_backend import context_length_of

    lap("imports")
    torch.manual_seed(0)
    torch.set_num_threads(recording_threads())
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs).to("cpu").eval()
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    context = context_length_of(config, getattr(tokenizer, "model_max_length", None)) or 2048
    eos = model.generation_config.eos_token_id
    eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
    if tokenizer.eos_token_id is not None:
        eos_ids.add(int(tokenizer.eos_token_id))
    lap("load")

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    prompts: list[dict[str, Any]] = []
    skipped: list[str] = []
    for pid, kind, content in PROMPTS:
        if kind == "chat":
            if not getattr(tokenizer, "chat_template", None):
                skipped.append(f"{pid}: the model has no chat template")
                continue
            text = tokenizer.apply_chat_template(content, add_generation_prompt=True, tokenize=False)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            entry = {"id": pid, "kind": "chat", "messages": content, "prompt": text, "send": "messages"}
        else:
            ids = list(tokenizer(content)["input_ids"])
            entry = {"id": pid, "kind": "raw", "prompt": content, "send": "text"}
        prompts.append({**entry, **_generate(model, tokenizer, ids, max_new_tokens, eos_ids, decode)})
    lap("short")

    if long_prompt_max is not None:  # a fixed length (tests, the benchmark)
        long_len = min(context, long_prompt_max + long_new_tokens) - long_new_tokens
        long_why = f"{long_len} tokens (fixed at {long_prompt_max})"
    else:
        from sealift.serving.batching import kv_bytes_per_token

        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        eager = getattr(model.config, "_attn_implementation", "eager") == "eager"
        heads = int(getattr(text, "num_attention_heads", 1) or 1)
        long_len, long_why = long_prompt_length(
            context=context, params=sum(p.numel() for p in model.parameters()), gflops=_matmul_gflops(torch),
            memory=max(0, available_memory() - OVERHEAD_BYTES), kv_bytes_per_token=kv_bytes_per_token(model.config, 4),
            # eager attention holds one layer's [heads, L, L] scores: per token, heads x L x 4 bytes (L <= context)
            score_bytes_per_token=heads * context * 4 if eager else 0, new_tokens=long_new_tokens,
            seconds=long_prefill_seconds(checkpoint_bytes(model_dir)))
    filler = list(tokenizer(LONG_FILLER)["input_ids"])
    ids = filler
    while len(ids) < long_len:
        ids = ids + list(tokenizer(LONG_FILLER, add_special_tokens=False)["input_ids"])
    ids = ids[:long_len]
    prompts.append({
        "id": "raw-long", "kind": "raw", "prompt": decode(ids), "send": "token_ids",
        "near_context_limit": long_len + long_new_tokens >= context,
        **_generate(model, tokenizer, ids, long_new_tokens, eos_ids, decode),
    })
    lap("long")
    spent["long_why"] = long_why  # type: ignore[assignment]  # to the build summary, not into the file

    return {
        "format": FORMAT,
        "model_tag": model_tag,
        "manifest_digest": manifest_digest,
        # No clock in the file: the same model and libraries record the same bytes, so a rebuilt bento is
        # the same bento (the build reports how long the recording took).
        "backend": "transformers",
        "dtype": "float32",
        "device": "cpu",
        "decoding": "greedy",
        "top_k": TOP_K,
        "context_length": context,
        "versions": _versions(__version__),
        "skipped": skipped,
        "prompts": prompts,
    }


def _generate(model: Any, tokenizer: Any, prompt_ids: list[int], max_new: int, eos_ids: set[int],
              decode: Any) -> dict[str, Any]:
    """Greedy generate with the model's generation config (as the server calls it) and the top-k per step."""
    import torch

    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    kwargs: dict[str, Any] = {}
    if model.generation_config.pad_token_id is None and eos_ids:
        kwargs["pad_token_id"] = min(eos_ids)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
            do_sample=False, output_scores=True, return_dict_in_generate=True, **kwargs,
        )
    generated = out.sequences[0, len(prompt_ids):].tolist()
    steps: list[dict[str, Any]] = []
    output: list[int] = []
    finish = "length"
    for token, scores in zip(generated, out.scores):
        logprobs = torch.log_softmax(scores[0].float(), dim=-1)
        values, indices = torch.topk(logprobs, TOP_K)
        top = []
        for value, cand in zip(values.tolist(), indices.tolist()):
            top.append({"id": cand, "logprob": _finite(value), "text": decode([*output, cand])})
        output.append(int(token))
        chosen = float(logprobs[token])
        second = next((t["logprob"] for t in top if t["id"] != token), None)
        steps.append({
            "id": int(token),
            "logprob": _finite(chosen),
            "margin": None if second is None or not _is_finite(chosen) else round(chosen - second, 6),
            "text": decode(output),
            "top": top,
        })
        if token in eos_ids:
            finish = "stop"
            break
    return {
        "prompt_token_ids": list(prompt_ids),
        "max_tokens": max_new,
        "output_token_ids": output,
        "text": decode(output),
        "finish_reason": finish,
        "steps": steps,
    }


def _is_finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _finite(x: float) -> float | None:
    """JSON has no -Infinity: a masked-out candidate's logprob is null."""
    return round(x, 6) if _is_finite(x) else None


def _versions(sealift_version: str) -> dict[str, str]:
    import importlib.metadata

    found = {"python": platform.python_version(), "sealift": sealift_version}
    for dist in ("torch", "transformers", "tokenizers"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found
