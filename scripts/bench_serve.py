#!/usr/bin/env python3
"""Tokens/s of the served transformers backend against raw `generate`, same model and prompts.

    python scripts/bench_serve.py [--model DIR | --hidden-size 256 --layers 4] [--via bentoml|uvicorn] [--prompts 8]
                                  [--max-tokens 128] [--rounds 5] [--concurrency 8] [--json]

Without --model it writes a generated model (default hidden 256, 4 layers, context 512)
to a temporary directory. Every request asks for exactly --max-tokens tokens
(greedy, ignore_eos), so both sides produce the same number of tokens:

  raw      model.generate(do_sample=False, min/max_new_tokens=N) on each prompt in turn, in this process
  single   the same prompts one after another through the server, streamed (openai client)
  N-conc   the same prompts all at once from N client threads, streamed

Rounds interleave the three. Other processes on the host only ever slow a run
down, so the best round of each (as timeit does) is the headline, with the
median beside it; ratios are served/raw (goal: >= 0.9 single stream).
--via bentoml (default) imports the model into a temporary Bento store and runs
`bentoml serve service:LLM`; --via uvicorn runs `python -m sealift.serving`.
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
    from sealift.offline import offline_env

    env = offline_env({k: v for k, v in os.environ.items() if not k.startswith("SEALIFT_")})
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_server(model: Path, via: str, tmp: Path) -> tuple[subprocess.Popen, str, str]:
    """Start the server (its own process group); returns (process, base url, model name)."""
    port = free_port()
    log = (tmp / "server.log").open("wb")
    if via == "uvicorn":
        cmd = [sys.executable, "-m", "sealift.serving", str(model), "--name", "bench", "--port", str(port)]
        env = server_env()
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
        env = server_env(BENTOML_HOME=str(home), SEALIFT_MODEL=tag)
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


def one_request(client, name: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    """Stream one completion; returns (completion tokens, seconds to first token)."""
    t0 = time.perf_counter()
    first = None
    usage = None
    stream = client.completions.create(
        model=name, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None, "no usage chunk"
    return usage.completion_tokens, first or 0.0


def served(client, name: str, prompts: list[str], max_tokens: int, concurrency: int) -> tuple[int, float, list[float]]:
    t0 = time.perf_counter()
    if concurrency == 1:
        results = [one_request(client, name, p, max_tokens) for p in prompts]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda p: one_request(client, name, p, max_tokens), prompts))
    return sum(r[0] for r in results), time.perf_counter() - t0, [r[1] for r in results]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: generate one, see --hidden-size)")
    ap.add_argument("--hidden-size", type=int, default=256, help="of the generated model")
    ap.add_argument("--layers", type=int, default=4, help="of the generated model")
    ap.add_argument("--via", choices=["bentoml", "uvicorn"], default="bentoml")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from sealift.offline import apply_offline_env

    apply_offline_env()
    # `timeout` and kill send SIGTERM: unwind through the finally that stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.prompts)]
    with stdout_to_stderr():  # library chatter (some of it from Rust) must not mix with --json
        rounds, threads = measure(a, prompts)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def best(key: str) -> float:
        return max(r[key] for r in rounds)

    result = {
        "via": a.via,
        "model": str(a.model or f"generated hidden={a.hidden_size} layers={a.layers}"),
        "prompts": a.prompts,
        "max_tokens": a.max_tokens,
        "concurrency": a.concurrency,
        "torch_threads": threads,
        "rounds": rounds,
        "best": {
            "raw_tok_s": best("raw_tok_s"),
            "single_tok_s": best("single_tok_s"),
            "concurrent_tok_s": best("concurrent_tok_s"),
            "single_over_raw": best("single_tok_s") / best("raw_tok_s"),
            "concurrent_over_raw": best("concurrent_tok_s") / best("raw_tok_s"),
        },
        "median": {
            "raw_tok_s": med("raw_tok_s"),
            "single_tok_s": med("single_tok_s"),
            "concurrent_tok_s": med("concurrent_tok_s"),
            "single_over_raw": med("single_over_raw"),
            "concurrent_over_raw": med("concurrent_over_raw"),
        },
        "single_ttft_s": med("single_ttft_s"),
        "concurrent_ttft_s": med("concurrent_ttft_s"),
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        b, m = result["best"], result["median"]
        print(f"served via {a.via}; {a.prompts} prompts x {a.max_tokens} tokens, torch threads {threads}, "
              f"{a.rounds} rounds: best (median)")
        print(f"  raw generate          {b['raw_tok_s']:7.1f} ({m['raw_tok_s']:7.1f}) tok/s")
        print(f"  served, single stream {b['single_tok_s']:7.1f} ({m['single_tok_s']:7.1f}) tok/s  "
              f"ratio {b['single_over_raw']:.2f} ({m['single_over_raw']:.2f})  "
              f"ttft {result['single_ttft_s'] * 1000:.0f} ms")
        print(f"  served, {a.concurrency} concurrent  "
              f"{b['concurrent_tok_s']:7.1f} ({m['concurrent_tok_s']:7.1f}) tok/s  "
              f"ratio {b['concurrent_over_raw']:.2f} ({m['concurrent_over_raw']:.2f})  "
              f"ttft {result['concurrent_ttft_s'] * 1000:.0f} ms")
        verdict = "met" if b["single_over_raw"] >= 0.9 else "NOT met"
        print(f"  goal single stream >= 0.9x raw (best rounds): {verdict}")
    return 0


def measure(a: argparse.Namespace, prompts: list[str]) -> tuple[list[dict], int]:
    """Rounds of raw, single-stream and concurrent runs, interleaved."""
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
        raw.run(prompts[:1], 8)  # warm up
        proc, url, name = start_server(model, a.via, tmp)
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
            one_request(client, name, prompts[0], 8)  # warm up
            rounds = []
            for _ in range(a.rounds):
                rt, rs = raw.run(prompts, a.max_tokens)
                st, ss, sttft = served(client, name, prompts, a.max_tokens, 1)
                ct, cs, cttft = served(client, name, prompts, a.max_tokens, a.concurrency)
                rounds.append({
                    "raw_tok_s": rt / rs,
                    "single_tok_s": st / ss,
                    "concurrent_tok_s": ct / cs,
                    "single_over_raw": (st / ss) / (rt / rs),
                    "concurrent_over_raw": (ct / cs) / (rt / rs),
                    "single_ttft_s": statistics.median(sttft),
                    "concurrent_ttft_s": statistics.median(cttft),
                    "tokens": [rt, st, ct],
                })
        finally:
            stop_server(proc)
    return rounds, threads


if __name__ == "__main__":
    raise SystemExit(main())
