"""The OpenAI-compatible service end to end: real servers, the real `openai` client.

Servers (session-scoped, one model load each):
- `bentoml serve service:LLM` from the repo root, SEALIFT_MODEL=<tag>, an API key set:
  the development path, over the tiny Llama model put into a temporary Bento store;
- `bentoml serve service:LLM` from a build-like context (service.py, sealift/ and a
  sealift_bento.json saying trust_remote_code), over the tiny custom-code model;
- `python -m sealift.serving` (the same ASGI app under plain uvicorn) with an API key
  and max_concurrency=1, for the 429 path, and one over a broken model (never ready).

Greedy answers are compared with `model.generate(do_sample=False)` run here on the
source model directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from conftest import Env

from sealift.core.offline import guarded_env, offline_env, read_guard_log

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The quick brown fox"
API_KEY = "sk-test-sealift"


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A running server and what the tests need to know about it."""

    url: str
    name: str
    model_dir: Path
    trust_remote_code: bool
    api_key: str | None
    proc: subprocess.Popen
    log: Path
    ready_statuses: list[int] = field(default_factory=list)

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, timeout=120, **kwargs)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body: bytes | dict, **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **self.headers(), **headers}
        return httpx.post(f"{self.url}{path}", content=content, headers=h, timeout=120)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_ready(served: Served, timeout: float = 180) -> list[int]:
    """Poll /readyz until 200; returns the statuses seen. Fails with the server log if it dies or times out."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            pytest.fail(f"server exited with {served.proc.returncode}:\n{served.log_tail()}")
        try:
            status = httpx.get(f"{served.url}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            status = 0
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.25)
    pytest.fail(f"server not ready after {timeout}s (statuses {seen}):\n{served.log_tail()}")


def base_env(guard_log: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment without SEALIFT_* settings, offline; under the network guard if `guard_log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALIFT_")}
    env.update(PYTHONUNBUFFERED="1")
    env = guarded_env(env, log_path=guard_log) if guard_log else offline_env(env)
    env.update(extra)
    return env


def build_context(dest: Path, bento_config: dict) -> Path:
    """What `sealift build` hands to bentoml: service.py, the sealift package and sealift_bento.json."""
    dest.mkdir(parents=True)
    shutil.copy2(ROOT / "service.py", dest / "service.py")
    shutil.copytree(ROOT / "pipeline" / "sealift", dest / "sealift",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_bento"))
    (dest / "sealift_bento.json").write_text(json.dumps(bento_config, indent=2))
    return dest


@pytest.fixture(scope="module")
def bento_store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_custom: Path) -> dict:
    """A Bento store holding both tiny models, imported with the real `sealift import`."""
    host = Env(tmp_path_factory.mktemp("serving-host"))
    llama = host.sealift("import", tiny_llama, "--name", "tiny-llama", "--json", "--quiet", check=True).json()
    custom = host.sealift(
        "import", tiny_custom, "--name", "tiny-custom", "--trust-remote-code", "--json", "--quiet", check=True
    ).json()
    return {"home": host.bentoml_home, "llama": llama["tag"], "custom": custom["tag"]}


@contextlib.contextmanager
def serving(cmd: list[str], *, cwd: Path, env: dict[str, str], tmp: Path, **info) -> Iterator[Served]:
    """Run a server in its own process group; yield once /readyz is 200; stop it and its children after."""
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(proc=proc, log=log, **info)
    try:
        served.ready_statuses = wait_ready(served)
        yield served
    finally:
        _stop(proc)


def bentoml_serve(port: int) -> list[str]:
    return [str(BIN / "bentoml"), "serve", "service:LLM", "--host", "127.0.0.1", "--port", str(port)]


def assert_no_network(guard_log: Path) -> None:
    attempts = read_guard_log(guard_log)
    assert not attempts, f"the server tried to reach the network: {attempts[:3]}"


@pytest.fixture(scope="module")
def bento_llama(bento_store: dict, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`bentoml serve service:LLM` from the repo root with SEALIFT_MODEL and an API key, network guarded."""
    tmp = tmp_path_factory.mktemp("bento-llama")
    port = free_port()
    env = base_env(
        tmp / "net.log", BENTOML_HOME=str(bento_store["home"]), SEALIFT_MODEL=bento_store["llama"], SEALIFT_API_KEY=API_KEY
    )
    info = dict(url=f"http://127.0.0.1:{port}", name="tiny-llama", model_dir=tiny_llama, trust_remote_code=False)
    with serving(bentoml_serve(port), cwd=ROOT, env=env, tmp=tmp, api_key=API_KEY, **info) as served:
        yield served
    assert_no_network(tmp / "net.log")


@pytest.fixture(scope="module")
def bento_custom(bento_store: dict, tiny_custom: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`bentoml serve` from a build-like context whose sealift_bento.json trusts the model's code."""
    tmp = tmp_path_factory.mktemp("bento-custom")
    config = {
        "model_tag": bento_store["custom"],
        "served_model_name": "custom",
        "backend": "auto",
        "target": "cpu",
        "trust_remote_code": True,
        "manifest_digest": "test",
        "sealift_version": "test",
    }
    ctx = build_context(tmp / "ctx", config)
    port = free_port()
    env = base_env(tmp / "net.log", BENTOML_HOME=str(bento_store["home"]), HF_MODULES_CACHE=str(tmp / "hf-modules"))
    info = dict(url=f"http://127.0.0.1:{port}", name="custom", model_dir=tiny_custom, trust_remote_code=True)
    with serving(bentoml_serve(port), cwd=ctx, env=env, tmp=tmp, api_key=None, **info) as served:
        yield served
    assert_no_network(tmp / "net.log")


@pytest.fixture(scope="module", params=["bento_llama", "bento_custom"])
def served(request: pytest.FixtureRequest) -> Served:
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- the reference: plain generate


@functools.lru_cache(maxsize=None)
def _load(model_dir: Path, trust: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust).eval()
    return tok, model


def chat_prompt_ids(served: Served, messages: list[dict]) -> list[int]:
    tok, _ = _load(served.model_dir, served.trust_remote_code)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def completion_prompt_ids(served: Served, prompt: str) -> list[int]:
    tok, _ = _load(served.model_dir, served.trust_remote_code)
    return tok(prompt)["input_ids"]


@functools.lru_cache(maxsize=None)
def _greedy(model_dir: Path, trust: bool, prompt_ids: tuple[int, ...], max_new: int) -> tuple[str, int]:
    import torch

    tok, model = _load(model_dir, trust)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new)
    new = out[0, len(prompt_ids) :].tolist()
    return tok.decode(new, skip_special_tokens=True), len(new)


def greedy(served: Served, prompt_ids: list[int], max_new: int) -> tuple[str, int]:
    """(text, completion tokens) of plain `model.generate(do_sample=False)` on the source model."""
    return _greedy(served.model_dir, served.trust_remote_code, tuple(prompt_ids), max_new)


# --------------------------------------------------------------------------- the API


def test_models_list(served: Served) -> None:
    models = served.client().models.list()
    assert [m.id for m in models.data] == [served.name]
    assert models.data[0].object == "model"


def test_chat_greedy_equals_generate(served: Served) -> None:
    r = served.client().chat.completions.create(model=served.name, messages=MESSAGES, max_tokens=24, temperature=0)
    prompt_ids = chat_prompt_ids(served, MESSAGES)
    text, n_new = greedy(served, prompt_ids, 24)
    assert r.choices[0].message.content == text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("length" if n_new == 24 else "stop")
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == n_new
    assert r.usage.total_tokens == len(prompt_ids) + n_new
    assert r.object == "chat.completion" and r.model == served.name


def test_chat_stream_equals_generate(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model=served.name,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    prompt_ids = chat_prompt_ids(served, MESSAGES)
    text, n_new = greedy(served, prompt_ids, 24)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length" if n_new == 24 else "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_new
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_completion_greedy_equals_generate(served: Served) -> None:
    client = served.client()
    r = client.completions.create(model=served.name, prompt=PROMPT, max_tokens=20, temperature=0)
    prompt_ids = completion_prompt_ids(served, PROMPT)
    text, n_new = greedy(served, prompt_ids, 20)
    assert r.choices[0].text == text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt_ids), n_new)

    streamed = list(client.completions.create(model=served.name, prompt=PROMPT, max_tokens=20, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    assert streamed[-1].choices[0].finish_reason == ("length" if n_new == 20 else "stop")
    # token ids are a prompt too
    r = client.completions.create(model=served.name, prompt=prompt_ids, max_tokens=20, temperature=0)
    assert r.choices[0].text == text


def test_stop_strings_cut_the_output(served: Served) -> None:
    client = served.client()
    prompt_ids = completion_prompt_ids(served, PROMPT)
    text, _ = greedy(served, prompt_ids, 40)
    assert len(text) >= 8, f"the reference output is too short to cut: {text!r}"
    stop = text[4:7]
    expected = text[: text.find(stop)]
    r = client.completions.create(model=served.name, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "\x00never"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop")
    chunks = list(client.completions.create(model=served.name, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(served: Served) -> None:
    client = served.client()

    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model=served.name, messages=MESSAGES, max_tokens=24, temperature=1.5, top_p=1.0, seed=seed
        )
        return r.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(1), sample(2)}) > 1


def test_unknown_fields_are_ignored(served: Served) -> None:
    body = {
        "model": served.name,
        "messages": MESSAGES,
        "max_completion_tokens": 4,
        "temperature": 0,
        "frequency_penalty": 0,
        "some_vendor_field": {"x": 1},
        "user": "tester",
    }
    r = served.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 4


# --------------------------------------------------------------------------- errors


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_malformed_json_is_400(served: Served) -> None:
    _error(served.post("/v1/chat/completions", b'{"model": "x", "messages": ['), 400)
    _error(served.post("/v1/completions", b"\xff\xfe not json"), 400)
    _error(served.post("/v1/completions", b"[1, 2]"), 400)


def test_wrong_types_are_400(served: Served) -> None:
    err = _error(served.post("/v1/chat/completions", {"model": served.name, "messages": MESSAGES, "max_tokens": "ten"}), 400)
    assert err["param"] == "max_tokens"
    _error(served.post("/v1/chat/completions", {"model": served.name, "messages": "hello"}), 400)
    _error(served.post("/v1/chat/completions", {"model": served.name, "messages": []}), 400)
    _error(served.post("/v1/completions", {"model": served.name, "prompt": PROMPT, "temperature": "hot"}), 400)
    _error(served.post("/v1/completions", {"model": served.name, "prompt": PROMPT, "max_tokens": 0}), 400)
    _error(served.post("/v1/completions", {"model": served.name, "prompt": PROMPT, "max_tokens": -5}), 400)
    _error(served.post("/v1/completions", {"prompt": PROMPT}), 400)
    with pytest.raises(openai.BadRequestError):
        served.client().chat.completions.create(model=served.name, messages=MESSAGES, temperature=7)


def test_too_long_prompt_is_400(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": "fox " * 400}], max_tokens=8)
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):  # fits alone, not with the completion
        client.completions.create(model=served.name, prompt=PROMPT, max_tokens=100_000)


def test_unknown_model_is_404(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        served.client().chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4)
    assert exc.value.code == "model_not_found"
    _error(served.post("/v1/completions", {"model": "nope", "prompt": PROMPT}), 404)


def test_api_key_is_required_when_set(bento_llama: Served) -> None:
    body = {"model": bento_llama.name, "messages": MESSAGES, "max_tokens": 2}
    _error(httpx.post(f"{bento_llama.url}/v1/chat/completions", json=body, timeout=30), 401)
    _error(bento_llama.post("/v1/chat/completions", body, Authorization="Bearer wrong"), 401)
    _error(httpx.get(f"{bento_llama.url}/v1/models", timeout=30), 401)
    with pytest.raises(openai.AuthenticationError):
        bento_llama.client(api_key="sk-wrong").models.list()
    assert httpx.get(f"{bento_llama.url}/readyz", timeout=30).status_code == 200  # probes need no key


# --------------------------------------------------------------------------- concurrency


def test_eight_concurrent_clients_all_answered(served: Served) -> None:
    client = served.client()
    prompt_ids = chat_prompt_ids(served, MESSAGES)
    text, _ = greedy(served, prompt_ids, 24)

    def ask(i: int) -> str:
        if i % 2:
            stream = client.chat.completions.create(
                model=served.name, messages=MESSAGES, max_tokens=24, temperature=0, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        r = client.chat.completions.create(model=served.name, messages=MESSAGES, max_tokens=24, temperature=0)
        return r.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [text] * 8


# --------------------------------------------------------------------------- the app under plain uvicorn


@pytest.fixture(scope="module")
def guarded(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`python -m sealift.serving` with an API key and max_concurrency=1."""
    tmp = tmp_path_factory.mktemp("uvicorn-guarded")
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(tiny_llama), "--name", "tiny", "--port", str(port)]
    cmd += ["--api-key", API_KEY, "--max-concurrency", "1"]
    info = dict(url=f"http://127.0.0.1:{port}", name="tiny", model_dir=tiny_llama, trust_remote_code=False)
    with serving(cmd, cwd=ROOT, env=base_env(), tmp=tmp, api_key=API_KEY, **info) as served:
        yield served


def test_past_max_concurrency_is_429(guarded: Served) -> None:
    # ignore_eos (vLLM's extension): the first request runs its full 240 tokens. The tiny model makes
    # them in a fraction of a second, so a second request may come too late; a few tries settle it.
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 240, "ignore_eos": True, "temperature": 0, "stream": True}
    second = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2}
    client = guarded.client()
    with httpx.Client(headers=guarded.headers(), timeout=60) as http:
        refused = None
        for _ in range(10):
            with http.stream("POST", f"{guarded.url}/v1/completions", json=body) as first:
                assert first.status_code == 200
                lines = first.iter_lines()
                next(lines)  # its first token arrived: it is in flight
                try:
                    client.completions.create(**second)
                except openai.RateLimitError as exc:
                    refused = exc
                rest = list(lines)
            assert rest[-1] == "data: [DONE]" or rest[-2:] == ["data: [DONE]", ""]
            if refused is not None:
                break
        assert refused is not None, "never refused a second request while the first was streaming"
        assert refused.code == "rate_limit_exceeded" and refused.body["type"] == "requests"
        # once the stream is done, requests pass again
        assert http.post(f"{guarded.url}/v1/completions", json=second).status_code == 200


def test_model_routes_and_unknown_paths(guarded: Served) -> None:
    client = guarded.client()
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    _error(httpx.get(f"{guarded.url}/v1/nothing-here", headers=guarded.headers(), timeout=30), 404)
    _error(httpx.get(f"{guarded.url}/v1/chat/completions", headers=guarded.headers(), timeout=30), 405)
    _error(httpx.post(f"{guarded.url}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=30), 401)


def test_never_ready_when_the_model_cannot_load(tiny_llama: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(broken), "--name", "broken", "--port", str(port)]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=base_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", "broken", broken, False, None, proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, served.log_tail()
            assert time.monotonic() < deadline, f"no load error reported:\n{served.log_tail()}"
            try:
                r = served.post("/v1/completions", {"model": "broken", "prompt": "x", "max_tokens": 2})
            except httpx.HTTPError:
                time.sleep(0.25)
                continue
            err = _error(r, 503)
            if "failed to load" in err["message"]:
                break
            time.sleep(0.25)
        assert "model.safetensors" in err["message"] or "broken" in err["message"]
        assert httpx.get(f"{served.url}/readyz", timeout=10).status_code == 503
        assert httpx.get(f"{served.url}/livez", timeout=10).status_code == 200
    finally:
        _stop(proc)


# --------------------------------------------------------------------------- the vllm backend's route, vLLM stood in

STANDIN = """#!{python}
# Stands in for `vllm`: records its argv, then serves the model with sealift's transformers app.
import json, os, sys

args = sys.argv[1:]
with open(os.environ["STANDIN_ARGV"], "w") as f:
    json.dump(args, f)
assert args[0] == "serve", args


def opt(name):
    return args[args.index(name) + 1]


cmd = [sys.executable, "-m", "sealift.serving", args[1], "--host", opt("--host"), "--port", opt("--port"),
       "--name", opt("--served-model-name")]
if "--trust-remote-code" in args:
    cmd.append("--trust-remote-code")
if os.environ.get("VLLM_API_KEY"):
    cmd += ["--api-key", os.environ["VLLM_API_KEY"]]
os.execv(sys.executable, cmd)
"""


@pytest.fixture(scope="module")
def bento_vllm_standin(bento_store: dict, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`bentoml serve` with SEALIFT_BACKEND=vllm: BentoML's __command__ proxy in front of a stand-in `vllm`."""
    pytest.importorskip("fastapi", reason="BentoML's __command__ proxy needs fastapi")
    tmp = tmp_path_factory.mktemp("bento-vllm")
    script = tmp / "vllm"
    script.write_text(STANDIN.format(python=sys.executable))
    script.chmod(0o755)
    port = free_port()
    env = base_env(
        tmp / "net.log",
        BENTOML_HOME=str(bento_store["home"]),
        SEALIFT_MODEL=bento_store["llama"],
        SEALIFT_BACKEND="vllm",
        SEALIFT_VLLM_EXECUTABLE=str(script),
        SEALIFT_VLLM_PORT=str(free_port()),
        SEALIFT_API_KEY=API_KEY,
        STANDIN_ARGV=str(tmp / "argv.json"),
    )
    info = dict(url=f"http://127.0.0.1:{port}", name="tiny-llama", model_dir=tiny_llama, trust_remote_code=False)
    with serving(bentoml_serve(port), cwd=ROOT, env=env, tmp=tmp, api_key=API_KEY, **info) as served:
        served.argv = json.loads((tmp / "argv.json").read_text())
        yield served
    assert_no_network(tmp / "net.log")


def test_vllm_route_runs_the_command_behind_the_proxy(bento_vllm_standin: Served, bento_store: dict) -> None:
    served = bento_vllm_standin
    argv = served.argv
    model_path = Path(argv[1])
    assert argv[0] == "serve" and model_path.is_absolute()
    assert model_path.parent.parent == Path(bento_store["home"]) / "models" and (model_path / "config.json").is_file()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--served-model-name") + 1] == "tiny-llama"
    assert API_KEY not in argv and "--api-key" not in argv  # the key goes in VLLM_API_KEY, not the logged command
    assert "--trust-remote-code" not in argv

    client = served.client()
    prompt_ids = chat_prompt_ids(served, MESSAGES)
    text, _ = greedy(served, prompt_ids, 16)
    r = client.chat.completions.create(model=served.name, messages=MESSAGES, max_tokens=16, temperature=0)
    assert r.choices[0].message.content == text
    stream = client.chat.completions.create(model=served.name, messages=MESSAGES, max_tokens=16, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    with pytest.raises(openai.AuthenticationError):
        served.client(api_key="sk-wrong").models.list()
