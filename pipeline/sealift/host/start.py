"""Start step: serve a stored model's bento with an OpenAI-compatible API, offline.

    start("qwen7b", host="127.0.0.1", port=3000, options={"api_key": "..."}) -> exit code

NAME is looked up in the model store first (what `openllm start NAME` meant in
openllm 0.5), then its newest bento (the one built for this host's kind, cpu or
gpu, if there is one) is served with `bentoml serve`, run by the runtime venv
that `sealift install` made for it if any, else by this Python, in a
subprocess that leads its own session, under the offline environment and the
network guard (sealift.core.offline.guarded_env), with the SEALIFT_* settings the
service reads. Once /readyz answers, the URL, a curl line and an openai-client
line are printed. SIGINT/SIGTERM are forwarded to the server's process group; a
second one kills it; every descendant seen while it ran (circus starts workers
in their own sessions) is killed if still alive afterwards, so no worker
outlives `sealift start`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from sealift.model import _bentoml
from sealift.core import console
from sealift.host import registry
from sealift.core.errors import Failure, UserError
from sealift.core.hfconfig import checkpoint_bytes
from sealift.core.offline import apply_offline_env, guarded_env
from sealift.serving.config import BACKENDS, DTYPES, BentoConfig, ServeConfig
from sealift.model.store import find_bento

__all__ = ["background", "check_model_code", "check_port_free", "descendants", "host_target", "option_env", "server_python", "start"]

#: options key -> environment variable the service reads.
OPTION_ENV = {
    "backend": "SEALIFT_BACKEND",
    "api_key": "SEALIFT_API_KEY",
    "max_concurrency": "SEALIFT_MAX_CONCURRENCY",
    "tensor_parallel_size": "SEALIFT_TENSOR_PARALLEL_SIZE",
    "max_model_len": "SEALIFT_MAX_MODEL_LEN",
    "gpu_memory_utilization": "SEALIFT_GPU_MEMORY_UTILIZATION",
    "max_num_seqs": "SEALIFT_MAX_NUM_SEQS",
    "dtype": "SEALIFT_DTYPE",
    "quantization": "SEALIFT_QUANTIZATION",
    "kv_cache_gib": "SEALIFT_KV_CACHE_GIB",
    "prefill_tokens": "SEALIFT_PREFILL_TOKENS",
}

POLL_S = 0.5
STOP_TIMEOUT_S = 30.0


def start(ref: str, *, host: str, port: int, options: dict[str, Any]) -> int:
    """Serve `ref` (model NAME[:VERSION] or a bento tag) on host:port until SIGINT/SIGTERM; return the exit code."""
    tag, cmd, env, bento_src, served = _server_command(ref, host, port, options)
    console.info(f"starting {tag} on {host}:{port} with {cmd[0]} (Ctrl-C stops it)")
    plan = engine_plan(tag, bento_src, env)
    if plan:
        console.info(plan)
    with _Signals() as signals:
        proc = subprocess.Popen(cmd, env=env, cwd=bento_src, start_new_session=True)
        signals.attach(proc.pid)
        return _supervise(proc, signals, host, port, served, bool(options.get("api_key")))


def _server_command(ref: str, host: str, port: int, options: dict[str, Any]) -> tuple[str, list[str], dict[str, str], Path, str]:
    """(bento tag, `bentoml serve` command, its environment, its cwd, served model name), all checked."""
    env_extra = option_env(options)
    check_port_free(host, port)
    apply_offline_env()
    tag = find_bento(ref, prefer_target=host_target())
    bento_src = Path(_bentoml.get_bento(tag).path) / "src"
    config = _bento_config(bento_src, tag)
    check_model_code(config)
    python = server_python(tag)
    env = guarded_env(**env_extra)
    if python != sys.executable:  # the runtime venv: its bin (vllm, ...) first on PATH too
        env["VIRTUAL_ENV"] = str(Path(python).parent.parent)
        env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    check_engine_present(tag, config, python, env)
    # cwd = the bento's src: `python -m` puts cwd first on sys.path, so the
    # bento's own copy of service.py and sealift/ is what runs.
    cmd = [python, "-m", "bentoml", "serve", tag, "--host", host, "--port", str(port)]
    return tag, cmd, env, bento_src, config.served_model_name


#: Exit 3 from the server's Python when it cannot find vllm (a lookup: nothing is imported).
_FIND_VLLM = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"


def check_engine_present(tag: str, config: BentoConfig, python: str, env: dict[str, str]) -> None:
    """UserError (exit 2) before BentoML starts when the bento serves with vLLM and the server's Python has none.

    BentoML restarts a worker whose startup fails, forever: without this a vLLM bento started with a Python
    that lacks vLLM (no runtime venv here) printed the same traceback every few seconds and never exited.
    """
    try:
        backend = ServeConfig.from_env(config, env).backend
    except UserError:
        return  # a bad knob: the service says which, with its own error
    if backend != "vllm" or env.get("SEALIFT_VLLM_EXECUTABLE"):  # a wrapper the user named is trusted to run vLLM
        return
    found = subprocess.run([python, "-c", _FIND_VLLM], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if found.returncode == 3:
        raise UserError(f"{tag} serves with vLLM, and {python} has no vllm: nothing was started",
                        hint="install its bundle here (`sealift install`: the runtime venv carries vLLM), or start it "
                             "with --backend transformers")


@contextlib.contextmanager
def background(ref: str, *, options: dict[str, Any], log: Path, timeout: float = 900.0) -> Iterator[str]:
    """Serve `ref` on a free loopback port while the block runs (its output to `log`); yields the base URL.

    For `sealift check`: the same command, environment and guard as `start`;
    on exit the server gets SIGINT, then SIGKILL, and no worker outlives it.
    Failure if it exits or is not ready within `timeout` seconds.
    """
    host = "127.0.0.1"
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    tag, cmd, env, bento_src, _ = _server_command(ref, host, port, options)
    url = f"http://{host}:{port}"
    known: dict[int, str] = {}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=bento_src, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(url):
            known.update(descendants(proc.pid))
            if proc.poll() is not None:
                raise Failure(f"bentoml serve {tag} exited with code {proc.returncode} before it was ready (log: {log})")
            if time.monotonic() > deadline:
                raise Failure(f"bentoml serve {tag} was not ready within {timeout:.0f} s (log: {log})")
            time.sleep(POLL_S)
        known.update(descendants(proc.pid))
        yield url
    finally:
        known.update(descendants(proc.pid))
        _killpg(proc.pid, signal.SIGINT)
        _wait_stop(proc, known)
        _killpg(proc.pid, signal.SIGKILL)
        _kill_leftovers(known)


def engine_plan(tag: str, bento_src: Path, env: dict[str, str]) -> str | None:
    """What `start` gives vLLM on CPU (cores, KV cache) and why, when the bento serves with it; else None."""
    try:
        config = _bento_config(bento_src, tag)
        serve = ServeConfig.from_env(config, env)
    except UserError:
        return None
    try:
        model_path = _bentoml.get_model(config.model_tag).path
    except Exception:  # noqa: BLE001 - the plan is informative; the server reports a missing model itself
        model_path = None
    if serve.backend == "transformers" or (serve.backend == "auto" and host_target() == "cpu"
                                           and config.backend != "vllm"):
        return transformers_plan(serve, model_path, env) if host_target() == "cpu" else None
    if config.target != "cpu" or serve.backend != "vllm":
        return None
    from sealift.serving.vllm_backend import cpu_engine_plan

    plan = cpu_engine_plan(serve, model_path)
    env.setdefault("SEALIFT_KV_CACHE_GIB", str(plan.kv_cache_gib))  # the server uses the size said here
    return plan.why


def transformers_plan(serve: ServeConfig, model_path: str | Path | None, env: dict[str, str]) -> str | None:
    """What the transformers backend will size itself to on this CPU host (threads, batch cap, memory, prefill)."""
    from sealift.serving.sizing import cpu_sizing
    from sealift.serving.transformers_backend import context_length_of

    if model_path is None:
        return None
    root = Path(model_path)
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    declared = context_length_of(config) or 2048
    context = min(serve.max_model_len or declared, declared)
    dtype = serve.dtype or config.get("torch_dtype") or config.get("dtype") or "float32"
    element = 2 if dtype in ("bfloat16",) else 4  # float16 runs as float32 on CPU (transformers_backend)
    stored = checkpoint_bytes(root)
    declared_dtype = config.get("torch_dtype") or config.get("dtype")
    on_disk = 2 if declared_dtype in ("bfloat16", "float16") else 4
    return cpu_sizing(config, context, element, weights_bytes=stored * element // on_disk, environ=env).why


def server_python(bento_tag: str) -> str:
    """The Python that serves `bento_tag`: the runtime venv `sealift install` made for it
    (recorded in sealift.host.registry), else this one (a build host, or an install with --no-venv)."""
    for entry in registry.read_installed().values():
        if entry.get("bento_tag") == bento_tag and entry.get("venv"):
            python = Path(entry["venv"]) / "bin" / "python"
            if python.is_file():
                return str(python)
    return sys.executable


def host_target() -> str:
    """"gpu" where an NVIDIA device is present, else "cpu": which bento suits this host."""
    return "gpu" if any(Path("/dev").glob("nvidia[0-9]*")) else "cpu"


def option_env(options: dict[str, Any]) -> dict[str, str]:
    """SEALIFT_* variables for the given options (None values left out), validated."""
    unknown = set(options) - set(OPTION_ENV)
    if unknown:
        raise UserError(f"unknown start option(s): {', '.join(sorted(unknown))}")
    opts = {k: v for k, v in options.items() if v is not None}
    if opts.get("backend") not in (None, *BACKENDS):
        raise UserError(f"unknown --backend {opts['backend']!r}", hint="use auto, vllm or transformers")
    if opts.get("dtype") not in (None, *DTYPES):
        raise UserError(f"unknown --dtype {opts['dtype']!r}", hint="use " + ", ".join(DTYPES))
    for key in ("max_concurrency", "tensor_parallel_size", "max_model_len", "max_num_seqs", "kv_cache_gib"):
        if key in opts and int(opts[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {opts[key]}")
    if "prefill_tokens" in opts and int(opts["prefill_tokens"]) < 0:
        raise UserError(f"--prefill-tokens must be 0 (no budget) or more, got {opts['prefill_tokens']}")
    if "gpu_memory_utilization" in opts and not 0 < float(opts["gpu_memory_utilization"]) <= 1:
        raise UserError(f"--gpu-memory-utilization must be in (0, 1], got {opts['gpu_memory_utilization']}")
    return {OPTION_ENV[k]: str(v) for k, v in opts.items()}


def check_port_free(host: str, port: int) -> None:
    """UserError if host:port cannot be listened on (in use, or not an address of this host)."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port", hint="use 1-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r} is not an address of this host: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # The server sets SO_REUSEADDR too, so a port held only by TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use", hint="stop that server or pick --port") from None
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _bento_config(src: Path, tag: str) -> BentoConfig:
    """The bento's sealift_bento.json (model tag, served name, trust_remote_code), read by BentoConfig.load.

    A bento with none (not built by sealift) serves its own name and trusts no model code.
    """
    name = tag.split(":")[0]
    return BentoConfig.load(src, environ={"SEALIFT_MODEL": name})


def check_model_code(config: BentoConfig) -> None:
    """Failure (exit 1) if the bento trusts its model's code and that code is not what `sealift import` hashed.

    The same check runs in the service (service.py) for `bentoml serve` and
    `openllm serve`; here it refuses before a server starts.
    """
    if config.development or not config.trust_remote_code:
        return
    from sealift.model import store
    from sealift.model.manifest import code_problems

    model = store.describe(config.model_tag)
    problems = code_problems(model.path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise Failure(
            f"model {model.tag} runs its own code, and {problems[0]}{more} in {model.path}: "
            "not the code recorded at import; refusing to run it",
            hint=f"run `sealift verify {model.tag}`, then install or import the model again",
        )


# --------------------------------------------------------------------------- supervision


class _Signals:
    """Forward SIGINT/SIGTERM to the server's process group; the second one kills it."""

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.count = 0
        self._old: dict[int, Any] = {}

    def attach(self, pgid: int) -> None:
        """The server's group is known now; a signal that came while starting it is forwarded."""
        self.pgid = pgid
        if self.count:
            _killpg(pgid, signal.SIGINT)

    def __enter__(self) -> "_Signals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.pgid is not None:
            _killpg(self.pgid, signum if self.count == 1 else signal.SIGKILL)


def _supervise(proc: subprocess.Popen, signals: _Signals, host: str, port: int, served: str, with_key: bool) -> int:
    """Wait for readiness (print how to call it), then for a signal or the server's own exit."""
    url = f"http://{_client_host(host)}:{port}"
    ready = False
    known: dict[int, str] = {}  # every descendant seen, so none outlives us even once orphaned
    try:
        while proc.poll() is None:
            known.update(descendants(proc.pid))
            if signals.count:
                _wait_stop(proc, known)
                break
            if not ready and _ready(url):
                ready = True
                _print_ready(url, served, with_key)
            time.sleep(POLL_S)
    finally:
        _killpg(proc.pid, signal.SIGKILL)
        _kill_leftovers(known)
        if proc.poll() is None:
            proc.wait()
    if signals.count:
        console.info("stopped")
        return 0
    code = proc.returncode
    if not ready:
        raise Failure(f"bentoml serve exited with code {code} before {url}/readyz answered (its log is above)")
    if code != 0:
        raise Failure(f"bentoml serve exited with code {code} (its log is above)")
    return 0


def _wait_stop(proc: subprocess.Popen, known: dict[int, str]) -> None:
    """Wait for the server to exit after the forwarded signal; SIGKILL it and its workers after STOP_TIMEOUT_S."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        known.update(descendants(proc.pid))
        time.sleep(0.2)
    if proc.poll() is None:
        console.warn(f"server did not stop within {STOP_TIMEOUT_S:.0f}s; killing it")
        _killpg(proc.pid, signal.SIGKILL)
        _kill_leftovers(known)
        proc.wait()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start_ticks(pid: int) -> str | None:
    """The process's start time as /proc/PID/stat says it (clock ticks since boot): with the pid, its identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def descendants(root: int) -> dict[int, str]:
    """Live descendants of `root` as {pid: start time}: the server's workers, even in their own sessions.

    circus (bentoml's supervisor) starts each worker with setsid, so neither the
    process group nor the session of `bentoml serve` holds them; the parent
    links do (psutil follows them).
    """
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return {}
    found: dict[int, str] = {}
    for child in children:
        started = _start_ticks(child.pid)
        if started is not None and _live(child):
            found[child.pid] = started
    return found


def _kill_leftovers(known: dict[int, str]) -> None:
    """SIGKILL every remembered descendant still alive (same pid and same start time: not a reused pid)."""
    for pid, started in known.items():
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        if _start_ticks(pid) == started and _live(proc):
            try:
                proc.kill()
            except psutil.Error:
                pass


def _client_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def _ready(url: str) -> bool:
    try:
        with _OPENER.open(f"{url}/readyz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _print_ready(url: str, served: str, with_key: bool) -> None:
    key_header = " -H \"Authorization: Bearer $SEALIFT_API_KEY\"" if with_key else ""
    key_arg = 'os.environ["SEALIFT_API_KEY"]' if with_key else '"none"'
    body = json.dumps({"model": served, "messages": [{"role": "user", "content": "Hello"}]})
    python = (
        f"import os; from openai import OpenAI; c = OpenAI(base_url=\"{url}/v1\", api_key={key_arg}); "
        f"print(c.chat.completions.create(model=\"{served}\", "
        "messages=[{\"role\": \"user\", \"content\": \"Hello\"}]).choices[0].message.content)"
    )
    lines = [
        f"ready: {url}/v1  (model \"{served}\"; Ctrl-C stops it)",
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{key_header} -d {shlex.quote(body)}",
        f"  python -c {shlex.quote(python)}",
    ]
    for line in lines:
        console.out.print(line, markup=False, soft_wrap=True)
