#!/usr/bin/env python3
"""Tokens/s of the served transformers backend at 1, 4, 8 and 16 concurrent clients, against raw `generate`.

    python scripts/bench_serve.py [--model DIR | --hidden-size 256 --layers 4] [--via bentoml|uvicorn]
                                  [--levels 1,4,8,16] [--prompts 8] [--max-tokens 128] [--rounds 3]
                                  [--max-batch N] [--json]

Without --model it writes a generated model (default hidden 256, 4 layers, context 512)
to a temporary directory. Every request asks for exactly --max-tokens tokens
(greedy, ignore_eos), so every side produces the same number of tokens:

  raw      model.generate(do_sample=False, min/max_new_tokens=N) on each prompt in turn, in this process
  level N  N client threads, each streaming requests back to back through the server (openai
           client), max(--prompts, 2N) requests in all; level 1 is the single stream

Rounds interleave raw and the levels. Other processes on the host only ever slow a run
down, so the best round of each (as timeit does) is the headline, with the median beside
it. Printed: aggregate tok/s per level and its ratio over the single stream (goal: >= 3x
at 8), time to first token p50/p95 per level (all rounds pooled), the single stream over
raw generate (goal: >= 0.9x), and the server's resident memory (all its processes) after
warm-up and at the end. --via bentoml (default) imports the model into a temporary Bento
store and runs `bentoml serve service:LLM`; --via uvicorn runs `python -m sealift.serving`.

--prefill-burst measures the prefill budget instead: 8 streams decode (--max-tokens each) while 8 new
prompts of --burst-tokens (1,024) token ids arrive at once (the streams ask --stream-tokens, 480, to outlast it); inter-token latency (the gap between one
stream's chunks) p50/p99/max of the running streams during the burst, and the new prompts' time to first
token, with SEALIFT_PREFILL_TOKENS=0 (no budget: every waiting prompt read before the next decode step)
against --prefill-tokens (default 512), same model and server, rounds interleaved; printed with ratios.

--structured also runs each level with every request grammar-constrained (structured_outputs regex
`[a-z ]+`, the same token count) and prints constrained over free tok/s per level (goal: the
per-token cost at most 1.15x at 1 and 8 clients), and the time xgrammar takes to compile a 50-field
JSON schema for the model's tokenizer (first compile, then the cached one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "An air-gapped server never reaches the internet.",
    "Every byte that arrives must be the byte that left.",
    "sealift carries a language model across the gap on a USB disk.",
    "Hello, how are you today?",
    "What is the capital of France?",
    "Banks, hospitals and factories run models on their own GPUs.",
    "0 1 2 3 4 5 6 7 8 9 10",
]


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr for a while: native code writes there too."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    from sealift.core.offline import offline_env

    env = offline_env({k: v for k, v in os.environ.items() if not k.startswith("SEALIFT_")})
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_server(model: Path, via: str, tmp: Path, extra: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    """Start the server (its own process group); returns (process, base url, model name)."""
    port = free_port()
    log = (tmp / "server.log").open("wb")
    if via == "uvicorn":
        cmd = [sys.executable, "-m", "sealift.serving", str(model), "--name", "bench", "--port", str(port)]
        env = server_env(**extra)
    else:
        home = tmp / "bentoml"
        imp = subprocess.run(
            [sys.executable, "-m", "sealift.cli", "import", str(model), "--name", "bench", "--json", "--quiet"],
            env=server_env(BENTOML_HOME=str(home), SEALIFT_HOME=str(tmp / "sealift")),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if imp.returncode != 0:
            raise SystemExit(f"sealift import failed:\n{imp.stderr}")
        tag = json.loads(imp.stdout)["tag"]
        cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "service:LLM", "--host", "127.0.0.1"]
        cmd += ["--port", str(port)]
        env = server_env(BENTOML_HOME=str(home), SEALIFT_MODEL=tag, **extra)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, tmp / "server.log")
    return proc, url, "bench"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit("server not ready in time")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Raw:
    """Plain transformers generate on the same model directory, in this process, with the
    server's thread count (all cores but one: sealift.serving.transformers_backend)."""

    def __init__(self, model: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model, local_files_only=True).eval()

    def run(self, prompts: list[str], max_tokens: int) -> tuple[int, float]:
        tokens = 0
        t0 = time.perf_counter()
        for prompt in prompts:
            ids = self.torch.tensor([self.tok(prompt)["input_ids"]])
            with self.torch.inference_mode():
                out = self.model.generate(
                    ids, attention_mask=self.torch.ones_like(ids), do_sample=False,
                    max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                )
            tokens += out.shape[1] - ids.shape[1]
        return tokens, time.perf_counter() - t0


CONSTRAINED = {"structured_outputs": {"regex": "[a-z ]+"}}


def one_request(client, name: str, prompt: str, max_tokens: int, extra: dict | None = None) -> tuple[int, float]:
    """Stream one completion; returns (completion tokens, seconds to first token)."""
    t0 = time.perf_counter()
    first = None
    usage = None
    stream = client.completions.create(
        model=name, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True, **(extra or {})},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None, "no usage chunk"
    return usage.completion_tokens, first if first is not None else time.perf_counter() - t0


def served(client, name: str, prompts: list[str], max_tokens: int, clients: int,
           extra: dict | None = None) -> tuple[int, float, list[float]]:
    """`clients` threads sending the prompts back to back; (tokens, seconds, time to first token of each)."""
    t0 = time.perf_counter()
    if clients == 1:
        results = [one_request(client, name, p, max_tokens, extra) for p in prompts]
    else:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda p: one_request(client, name, p, max_tokens, extra), prompts))
    return sum(r[0] for r in results), time.perf_counter() - t0, [r[1] for r in results]


def tree_rss(pid: int) -> int:
    """Resident bytes of the server and every process under it (BentoML runs circus and a worker)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: generate one, see --hidden-size)")
    ap.add_argument("--hidden-size", type=int, default=256, help="of the generated model")
    ap.add_argument("--layers", type=int, default=4, help="of the generated model")
    ap.add_argument("--via", choices=["bentoml", "uvicorn"], default="bentoml")
    ap.add_argument("--levels", default="1,4,8,16", help="concurrent clients to measure, comma-separated")
    ap.add_argument("--prompts", type=int, default=8, help="requests per level at least (2 per client at most)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch", type=int, help="SEALIFT_MAX_BATCH for the server (default: its own)")
    ap.add_argument("--structured", action="store_true", help="also measure grammar-constrained requests")
    ap.add_argument("--prefill-burst", action="store_true", help="measure ITL of running streams under a burst "
                    "of long prompts, with and without the prefill budget")
    ap.add_argument("--burst-tokens", type=int, default=1024, help="--prefill-burst: tokens of each new prompt")
    ap.add_argument("--prefill-tokens", type=int, default=512, help="--prefill-burst: the budget measured")
    ap.add_argument("--stream-tokens", type=int, default=480, help="--prefill-burst: tokens of each running stream "
                    "(enough to outlast the burst)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.prefill_burst:
        from sealift.core.offline import apply_offline_env

        apply_offline_env()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        with stdout_to_stderr():
            result = measure_burst(a)
        print(json.dumps(result, indent=2) if a.json else burst_table(result))
        return 0
    try:
        levels = sorted({int(x) for x in a.levels.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--levels {a.levels!r}: give numbers such as 1,4,8,16")
    if not levels or levels[0] < 1:
        ap.error("--levels must be numbers of at least 1")
    if 1 not in levels:
        levels = [1, *levels]  # the single stream is every ratio's baseline

    from sealift.core.offline import apply_offline_env

    apply_offline_env()
    # `timeout` and kill send SIGTERM: unwind through the finally that stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with stdout_to_stderr():  # library chatter (some of it from Rust) must not mix with --json
        rounds, threads, memory = measure(a, levels)
    result = summarise(a, levels, rounds, threads, memory)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(a, result)
    return 0


def summarise(a: argparse.Namespace, levels: list[int], rounds: list[dict], threads: int, memory: dict) -> dict:
    def best(key: str) -> float:
        return max(r[key] for r in rounds)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    single_best = best("tok_s_1")
    table = []
    for n in levels:
        ttft = [t for r in rounds for t in r[f"ttft_{n}"]]
        table.append({
            "clients": n,
            "best_tok_s": best(f"tok_s_{n}"),
            "median_tok_s": med(f"tok_s_{n}"),
            "best_over_single": best(f"tok_s_{n}") / single_best,
            "median_over_single": statistics.median(r[f"tok_s_{n}"] / r["tok_s_1"] for r in rounds),
            "ttft_p50_s": percentile(ttft, 0.5),
            "ttft_p95_s": percentile(ttft, 0.95),
        })
    return {
        "via": a.via,
        "model": str(a.model or f"generated hidden={a.hidden_size} layers={a.layers}"),
        "max_tokens": a.max_tokens,
        "max_batch": a.max_batch,
        "torch_threads": threads,
        "rounds": rounds,
        "levels": table,
        "raw_tok_s": {"best": best("raw_tok_s"), "median": med("raw_tok_s")},
        "single_over_raw": {
            "best": single_best / best("raw_tok_s"),
            "median": statistics.median(r["tok_s_1"] / r["raw_tok_s"] for r in rounds),
        },
        "server_rss_bytes": memory,
    }


def print_table(a: argparse.Namespace, result: dict) -> None:
    raw, sr = result["raw_tok_s"], result["single_over_raw"]
    print(f"served via {a.via}, {result['model']}; {a.max_tokens} tokens a request, torch threads "
          f"{result['torch_threads']}, max batch {a.max_batch or 'server default'}, {a.rounds} rounds: best (median)")
    print(f"  raw generate, one prompt at a time   {raw['best']:8.1f} ({raw['median']:8.1f}) tok/s")
    print(f"  {'clients':>7}  {'tok/s':>18}  {'x single':>13}  {'ttft p50':>9}  {'ttft p95':>9}")
    for row in result["levels"]:
        print(f"  {row['clients']:7d}  {row['best_tok_s']:8.1f} ({row['median_tok_s']:7.1f})  "
              f"{row['best_over_single']:5.2f} ({row['median_over_single']:5.2f})  "
              f"{row['ttft_p50_s'] * 1000:7.0f}ms  {row['ttft_p95_s'] * 1000:7.0f}ms")
    print(f"  single stream / raw generate: {sr['best']:.2f} ({sr['median']:.2f})  goal >= 0.9: "
          f"{'met' if sr['best'] >= 0.9 else 'NOT met'}")
    at8 = next((r for r in result["levels"] if r["clients"] == 8), None)
    if at8:
        print(f"  8 concurrent / single stream: {at8['best_over_single']:.2f} ({at8['median_over_single']:.2f})  "
              f"goal >= 3: {'met' if at8['best_over_single'] >= 3 else 'NOT met'}")
    if any("constrained_tok_s_1" in r for r in result["rounds"]):
        for n in [r["clients"] for r in result["levels"]]:
            free = max(r[f"tok_s_{n}"] for r in result["rounds"])
            constrained = max(r[f"constrained_tok_s_{n}"] for r in result["rounds"])
            print(f"  constrained, {n} clients: {constrained:8.1f} tok/s; per-token cost {free / constrained:.2f}x "
                  f"of free  goal <= 1.15: {'met' if free / constrained <= 1.15 else 'NOT met'}")
        first, cached, vocab = result["server_rss_bytes"]["compile_50_fields_s"]
        print(f"  50-field JSON schema compile: {first * 1000:.1f} ms first, {cached * 1000:.2f} ms cached "
              f"(vocab {vocab})")
    mem = result["server_rss_bytes"]
    print(f"  server memory: {mem['after_warmup'] / 2**20:.0f} MiB after warm-up, "
          f"{mem['after_first_round'] / 2**20:.0f} MiB after round 1, {mem['end'] / 2**20:.0f} MiB at the end")


def compile_time(model: Path) -> tuple[float, float, int]:
    """(first compile, cached compile) seconds of a 50-field JSON schema for the model's tokenizer; its vocab."""
    from transformers import AutoTokenizer

    from sealift.serving.grammar import Grammars
    from sealift.serving.structured import Constraint

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    kinds = [{"type": "string", "maxLength": 20}, {"type": "integer", "minimum": 0, "maximum": 999},
             {"type": "boolean"}, {"enum": ["a", "b", "c"]}, {"type": "number"}]
    schema = {"type": "object", "properties": {f"field_{i}": kinds[i % len(kinds)] for i in range(50)},
              "required": [f"field_{i}" for i in range(50)], "additionalProperties": False}
    grammars = Grammars(tok, len(tok), [tok.eos_token_id or 0])
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        grammars.compile(Constraint("json", json.dumps(schema), "bench"))
        times.append(time.perf_counter() - t0)
    return times[0], times[1], len(tok)


def measure(a: argparse.Namespace, levels: list[int]) -> tuple[list[dict], int, dict]:
    """Rounds of raw generate and each concurrency level, interleaved."""
    import openai

    from sealift.serving.transformers_backend import default_torch_threads

    threads = default_torch_threads()
    with tempfile.TemporaryDirectory(prefix="sealift-bench-serve-") as tmpdir:
        tmp = Path(tmpdir)
        model = a.model
        if model is None:
            from make_tiny_model import make_model

            model = make_model(tmp / "model", hidden_size=a.hidden_size, layers=a.layers, context=512)
        raw = Raw(model, threads)
        raw.run(PROMPTS[:1], 8)  # warm up
        extra = {"SEALIFT_MAX_BATCH": str(a.max_batch)} if a.max_batch else {}
        proc, url, name = start_server(model, a.via, tmp, extra)
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
            served(client, name, PROMPTS[:4], 8, 4)  # warm up, batched too
            memory = {"after_warmup": tree_rss(proc.pid)}
            rounds = []
            for i in range(a.rounds):
                prompts = [PROMPTS[k % len(PROMPTS)] for k in range(a.prompts)]
                rt, rs = raw.run(prompts, a.max_tokens)
                row: dict = {"raw_tok_s": rt / rs}
                for n in levels:
                    batch = [PROMPTS[k % len(PROMPTS)] for k in range(max(a.prompts, 2 * n))]
                    tokens, seconds, ttft = served(client, name, batch, a.max_tokens, n)
                    expected = len(batch) * a.max_tokens
                    if tokens != expected:
                        raise SystemExit(f"{n} clients: {tokens} tokens came back, {expected} asked for")
                    row[f"tok_s_{n}"] = tokens / seconds
                    row[f"ttft_{n}"] = ttft
                    if a.structured:
                        tokens, seconds, _ = served(client, name, batch, a.max_tokens, n, CONSTRAINED)
                        if tokens != expected:
                            raise SystemExit(f"{n} clients, constrained: {tokens} tokens came back, {expected} asked")
                        row[f"constrained_tok_s_{n}"] = tokens / seconds
                rounds.append(row)
                if i == 0:
                    memory["after_first_round"] = tree_rss(proc.pid)
            memory["end"] = tree_rss(proc.pid)
            if a.structured:
                memory["compile_50_fields_s"] = compile_time(model)
        finally:
            stop_server(proc)
    return rounds, threads, memory


# --------------------------------------------------------------------------- the prefill budget


STREAMS = 8


def steady_prompts(url: str, name: str, tokens: int) -> list[str]:
    """The STREAMS prompts whose greedy text streams most evenly: a random model's output holds bytes that
    are not yet whole characters, and text held back sends no chunk (it would read as a stall)."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    candidates = [f"{p} {k}" for k in range(3) for p in PROMPTS]

    def chunks(prompt: str) -> int:
        body = {"model": name, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
            return sum(1 for line in r.iter_lines() if line.startswith("data: {"))

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(chunks, candidates))
    ranked = sorted(zip(counts, candidates), key=lambda c: -c[0])
    return [p for _, p in ranked[:STREAMS]]


def burst_round(url: str, name: str, a: argparse.Namespace, seed: int, prompts: list[str]) -> dict:
    """8 streams decode (--stream-tokens each); once all are streaming, 8 long prompts arrive at once. The running streams'
    chunk gaps while the burst is being read (until every new prompt has its first token), and its TTFTs.

    One asyncio loop reads every stream (no client threads to be starved of the GIL, so a gap is the
    server's, not the client's)."""
    import asyncio
    import random

    import httpx

    rng = random.Random(seed)
    arrivals: list[list[float]] = [[] for _ in range(STREAMS)]
    ttft: list[float] = []

    async def stream(client: httpx.AsyncClient, i: int, warm: asyncio.Event, counter: list[int]) -> None:
        body = {"model": name, "prompt": prompts[i], "max_tokens": a.stream_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True}
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    arrivals[i].append(time.perf_counter())
                    if len(arrivals[i]) == 2:  # streaming: its role chunk and a token
                        counter[0] += 1
                        if counter[0] == STREAMS:
                            warm.set()

    async def newcomer(client: httpx.AsyncClient, ids: list[int]) -> None:
        t0 = time.perf_counter()
        body = {"model": name, "prompt": ids, "max_tokens": 4, "temperature": 0, "stream": True}
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            first = True
            async for line in r.aiter_lines():
                if first and line.startswith("data: {"):
                    ttft.append(time.perf_counter() - t0)
                    first = False

    async def main() -> float:
        limits = httpx.Limits(max_connections=4 * STREAMS)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            warm, counter = asyncio.Event(), [0]
            running = [asyncio.create_task(stream(client, i, warm, counter)) for i in range(STREAMS)]
            await asyncio.wait_for(warm.wait(), timeout=600)
            await asyncio.sleep(0.3)  # every stream decoding steadily
            burst = [[rng.randrange(3, 400) for _ in range(a.burst_tokens)] for _ in range(STREAMS)]
            start = time.perf_counter()
            await asyncio.gather(*(newcomer(client, ids) for ids in burst))
            await asyncio.gather(*running)
            return start

    start = asyncio.run(main())
    end = start + max(ttft)
    gaps = []
    for times in arrivals:
        inside = [t for t in times if start <= t <= end]
        before = [t for t in times if t < start][-1:]
        after = [t for t in times if t > end][:1]
        seq = before + inside + after  # a gap that spans the burst's edge counts: it is the stall
        gaps += [b - a_ for a_, b in zip(seq, seq[1:])]
    return {"gaps": gaps, "ttft": ttft, "arrivals": [[t - start for t in times] for times in arrivals]}


def measure_burst(a: argparse.Namespace) -> dict:
    import statistics as st

    budgets = [0, a.prefill_tokens]
    with tempfile.TemporaryDirectory(prefix="sealift-bench-burst-") as tmpdir:
        tmp = Path(tmpdir)
        model = a.model
        if model is None:
            from make_tiny_model import make_model

            model = make_model(tmp / "model", hidden_size=a.hidden_size, layers=a.layers,
                               context=max(2048, a.burst_tokens + 64))
        pooled: dict[int, dict[str, list[float]]] = {b: {"gaps": [], "ttft": [], "p99": []} for b in budgets}
        servers = {}
        steady: list[str] | None = None
        try:
            for b in budgets:
                (tmp / str(b)).mkdir()
                extra = {"SEALIFT_PREFILL_TOKENS": str(b), "SEALIFT_MAX_BATCH": str(2 * STREAMS)}
                servers[b] = start_server(model, a.via, tmp / str(b), extra)
                if steady is None:
                    steady = steady_prompts(servers[b][1], servers[b][2], a.stream_tokens)
                burst_round(servers[b][1], servers[b][2], a, -1, steady)  # warm up
            for i in range(a.rounds):
                for b in budgets:
                    proc, url, name = servers[b]
                    got = burst_round(url, name, a, i, steady)
                    pooled[b]["gaps"] += got["gaps"]
                    pooled[b]["ttft"] += got["ttft"]
                    pooled[b]["p99"].append(percentile(got["gaps"], 99))
        finally:
            for proc, _, _ in servers.values():
                stop_server(proc)

    def stats(b: int) -> dict:
        g, t = pooled[b]["gaps"], pooled[b]["ttft"]
        return {"itl_p50_ms": 1000 * st.median(g), "itl_p99_ms": 1000 * percentile(g, 99), "itl_max_ms": 1000 * max(g),
                "itl_p99_best_round_ms": 1000 * min(pooled[b]["p99"]), "burst_ttft_p50_s": st.median(t),
                "burst_ttft_max_s": max(t), "gaps": len(g)}

    off, on = stats(0), stats(a.prefill_tokens)
    return {"streams": STREAMS, "burst_prompts": STREAMS, "burst_tokens": a.burst_tokens, "stream_tokens": a.stream_tokens,
            "rounds": a.rounds, "prefill_tokens": a.prefill_tokens, "no_budget": off, "budget": on,
            "itl_p99_ratio": off["itl_p99_ms"] / on["itl_p99_ms"],
            "burst_ttft_p50_ratio": on["burst_ttft_p50_s"] / off["burst_ttft_p50_s"]}


def burst_table(r: dict) -> str:
    rows = [f"{r['streams']} running streams ({r['stream_tokens']} tokens each) while {r['burst_prompts']} prompts of "
            f"{r['burst_tokens']} tokens arrive; {r['rounds']} rounds pooled",
            f"{'':28}{'no budget':>12}{'budget ' + str(r['prefill_tokens']):>14}"]
    for key, label in (("itl_p50_ms", "ITL p50 (ms)"), ("itl_p99_ms", "ITL p99 (ms)"), ("itl_max_ms", "ITL max (ms)"),
                       ("itl_p99_best_round_ms", "ITL p99, best round (ms)"),
                       ("burst_ttft_p50_s", "new prompts' TTFT p50 (s)"), ("burst_ttft_max_s", "new prompts' TTFT max (s)")):
        rows.append(f"{label:28}{r['no_budget'][key]:>12.3f}{r['budget'][key]:>14.3f}")
    rows.append(f"ITL p99 without / with the budget: {r['itl_p99_ratio']:.2f}x; the new prompts' TTFT p50 with / "
                f"without: {r['burst_ttft_p50_ratio']:.2f}x")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
