"""Hostile and malformed input, fuzzing and load against ONE real server: `sealift start --max-concurrency 4`.

The server is the shared cpu bento of the tiny model (conftest's `cpu_bento`), started once for the
module with the real CLI (network guard, bentoml serve, the transformers backend). Three parts:

- hostile requests: each is a 4xx with an OpenAI-style error body, never a 5xx; a prompt exactly at
  the context limit is accepted, one token past it is refused;
- a hypothesis fuzz of the HTTP API (>= 1,000 generated requests: JSON bodies built from the
  OpenAI schema with every field possibly of the wrong type, raw bytes, content types, paths and
  methods): no 5xx, still ready after, the server's resident memory steady;
- a bounded load test on loopback (16 clients for ~10 s; the full one, 32 clients for 60 s, is
  `slow`): every request answered 200 or refused 429/503, none lost; p50/p99 printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from conftest import ROOT, SEALIFT
from sealift.host.start import descendants

MAX_CONCURRENCY = 4
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
FUZZ_EXAMPLES = {"chat": 420, "completion": 330, "raw": 170, "route": 100}  # 1,020 requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    name: str = "tiny"
    context: int = 0
    seen: dict[int, str] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def rss_bytes(self) -> int:
        """Resident memory of `sealift start` and every process under it (bentoml, circus, the worker)."""
        self.seen.update(descendants(self.proc.pid))
        total = 0
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


@pytest.fixture(scope="module")
def server(cpu_bento, tmp_path_factory) -> Server:
    port = free_port()
    log = tmp_path_factory.mktemp("http-api") / "start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SEALIFT, "start", "tiny", "--port", str(port), "--max-concurrency", str(MAX_CONCURRENCY)],
            env=cpu_bento.host.environ(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 300
        while not ("ready:" in srv.output() and srv.ready()):
            assert proc.poll() is None, f"sealift start exited {proc.returncode}:\n{srv.output()}"
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.5)
        srv.seen.update(descendants(proc.pid))
        srv.context = httpx.get(f"{srv.url}/v1/models", timeout=30).json()["data"][0]["max_model_len"]
        yield srv
    finally:
        srv.seen.update(descendants(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in srv.seen:  # nothing of ours outlives the module, whatever happened
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def post(server: Server, path: str, body: bytes | dict | list | None, *, ctype: str | None = "application/json",
         client: httpx.Client | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": ctype} if ctype is not None else {}
    return (client or httpx).post(f"{server.url}{path}", content=content, headers=headers, timeout=120)


def assert_openai_error(r: httpx.Response, status: int | tuple[int, ...] | None = None) -> dict:
    """A 4xx (or the given status) whose body is {"error": {"message": str, "type": str, "param", "code"}}."""
    statuses = (status,) if isinstance(status, int) else status
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if statuses:
        assert r.status_code in statuses, f"{r.status_code}: {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert "param" in error and "code" in error, error
    return error


def chat(**extra) -> dict:
    return {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, **extra}


# =========================================================================== hostile requests


@pytest.mark.parametrize("max_tokens", [0, -1, -(2**63), 2**40, 10**30, 10**6])
def test_max_tokens_zero_negative_and_huge_are_400(server: Server, max_tokens: int) -> None:
    for path, body in (("/v1/chat/completions", chat(max_tokens=max_tokens)),
                       ("/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": max_tokens})):
        error = assert_openai_error(post(server, path, body), 400)
        assert error["param"] in ("max_tokens", "messages", "prompt"), error
        if max_tokens == 10**6:  # a valid integer, but more than the context holds
            assert error["code"] == "context_length_exceeded", error


def test_prompt_exactly_at_the_context_limit_is_accepted_one_past_is_400(server: Server) -> None:
    ctx = server.context
    assert ctx > 8
    # completions with token ids: the count is exact
    ok = post(server, "/v1/completions", {"model": "tiny", "prompt": [5] * (ctx - 1), "max_tokens": 1})
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] == ctx - 1
    for prompt, max_tokens in (([5] * ctx, 1), ([5] * (ctx - 1), 2), ([5] * ctx, None)):
        body = {"model": "tiny", "prompt": prompt, **({"max_tokens": max_tokens} if max_tokens else {})}
        error = assert_openai_error(post(server, "/v1/completions", body), 400)
        assert error["code"] == "context_length_exceeded" and str(ctx) in error["message"], error
    # chat: the server says how long the templated prompt is; fill the context exactly, then one more
    n = post(server, "/v1/chat/completions", chat(max_tokens=1)).json()["usage"]["prompt_tokens"]
    at_limit = post(server, "/v1/chat/completions", chat(max_tokens=ctx - n))
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["usage"]["prompt_tokens"] + at_limit.json()["usage"]["completion_tokens"] <= ctx
    error = assert_openai_error(post(server, "/v1/chat/completions", chat(max_tokens=ctx - n + 1)), 400)
    assert error["code"] == "context_length_exceeded"
    long = [{"role": "user", "content": "hello " * (2 * ctx)}]
    error = assert_openai_error(post(server, "/v1/chat/completions", chat(messages=long, max_tokens=None)), 400)
    assert error["code"] == "context_length_exceeded"


def test_unknown_fields_are_ignored_not_an_error(server: Server) -> None:
    """A field neither OpenAI's nor vLLM's API defines (a vendor extension) is logged and answered, as vLLM does,
    never a 5xx; a field they define is honoured or refused with a 400 naming it (issue 21), never dropped."""
    body = chat(frobnicate={"a": [1, {"b": None}]}, logit_bias={"1": 5}, x=None)
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    nested = {"model": "tiny", "prompt": "Hi", "max_tokens": 1, "deep": json.loads("[" * 200 + "]" * 200)}
    assert post(server, "/v1/completions", nested).status_code == 200
    r = post(server, "/v1/chat/completions", chat(tools=[{"type": "function"}]))  # a tool without its function
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("tools"), r.text


WRONG_TYPES = [
    ("messages", chat(messages="hi")),
    ("messages", chat(messages=[])),
    ("messages", chat(messages=[{"role": "wizard", "content": "hi"}])),
    ("messages", chat(messages=[{"role": "user", "content": 5}])),
    ("messages", chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}])),
    ("model", chat(model=5)),
    ("max_tokens", chat(max_tokens="4")),
    ("max_tokens", chat(max_tokens=2.5)),
    ("temperature", chat(temperature="hot")),
    ("temperature", chat(temperature=3)),
    ("top_p", chat(top_p=0)),
    ("stream", chat(stream="yes")),
    ("stop", chat(stop=[1, 2])),
    ("stop", chat(stop=["a"] * 100)),
    ("n", chat(n=17)),
    ("n", chat(n=10**12)),
    ("seed", chat(seed=2**64, temperature=1.0)),
    ("seed", chat(seed=-(2**63) - 1, temperature=1.0)),
    ("stream_options", chat(stream=True, stream_options={"include_usage": "yes"})),
    ("prompt", {"model": "tiny", "prompt": [-1], "max_tokens": 1}),
    ("prompt", {"model": "tiny", "prompt": [10**9], "max_tokens": 1}),
    ("prompt", {"model": "tiny", "prompt": [2**70], "max_tokens": 1}),
    ("prompt", {"model": "tiny", "prompt": [], "max_tokens": 1}),
    ("prompt", {"model": "tiny", "prompt": ["a", "b"], "max_tokens": 1}),
    ("prompt", {"model": "tiny", "prompt": {"text": "hi"}, "max_tokens": 1}),
    ("prompt", {"model": "tiny", "prompt": "hi " * 300, "max_tokens": 0, "echo": True}),
    ("max_tokens", {"model": "tiny", "prompt": "hi", "max_tokens": 0}),
    ("top_logprobs", chat(top_logprobs=2)),
    ("logprobs", {"model": "tiny", "prompt": "hi", "max_tokens": 1, "logprobs": 21}),
    (None, [chat()]),
    (None, "just a string"),
    (None, None),
]


@pytest.mark.parametrize("param,body", WRONG_TYPES, ids=[f"{i}-{p}" for i, (p, _) in enumerate(WRONG_TYPES)])
def test_wrong_types_and_values_are_400(server: Server, param: str | None, body) -> None:
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else "/v1/chat/completions"
    error = assert_openai_error(post(server, path, body), 400)
    if param:
        assert error["param"] and error["param"].split(".")[0] == param, error


RAW_BODIES = {
    "empty": b"",
    "invalid-utf8": b'{"model":"tiny","messages":[{"role":"user","content":"\xff\xfe\xc3("}],"max_tokens":2}',
    "invalid-utf8-key": b'{"mod\xe9l":"tiny","messages":[{"role":"user","content":"hi"}]}',
    "lone-surrogate": b'{"model":"tiny","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":2}',
    "truncated": json.dumps(chat()).encode()[:-3],
    "nan": b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
    "infinity": b'{"model":"tiny","prompt":"hi","max_tokens":1,"temperature":Infinity}',
    "deep-nesting": b'{"model":"tiny","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nul": b"\x00" * 64,
    "trailing-garbage": json.dumps(chat()).encode() + b"}}",
}


@pytest.mark.parametrize("name", sorted(RAW_BODIES))
def test_malformed_bodies_are_400(server: Server, name: str) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert_openai_error(post(server, path, RAW_BODIES[name]), 400)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                   "application/xml", "image/png"])
def test_non_json_content_types_are_415(server: Server, ctype: str) -> None:
    error = assert_openai_error(post(server, "/v1/chat/completions", chat(), ctype=ctype), 415)
    assert "application/json" in error["message"]
    # JSON with a charset or a +json type is fine, and so is no Content-Type at all (raw clients)
    for ok in ("application/json; charset=utf-8", "application/vnd.api+json", None):
        assert post(server, "/v1/chat/completions", chat(), ctype=ok).status_code == 200


def test_ten_megabyte_bodies_are_413_at_once_and_the_server_stays_ready(server: Server) -> None:
    prompt = {"model": "tiny", "messages": [{"role": "user", "content": "word " * (2 * 1024 * 1024)}], "max_tokens": 2}
    bodies = {"valid-json": json.dumps(prompt).encode(), "garbage": os.urandom(10 * 1024 * 1024)}
    for name, body in bodies.items():
        assert len(body) >= 10 * 1024 * 1024
        t = time.monotonic()
        error = assert_openai_error(post(server, "/v1/chat/completions", body), 413)
        assert error["code"] == "request_too_large" and "at most" in error["message"], (name, error)
        assert time.monotonic() - t < 30  # refused before tokenizing (a generous bound: only "not stuck")
    assert server.ready()
    assert post(server, "/v1/chat/completions", chat()).status_code == 200


def test_routes_methods_and_streams(server: Server) -> None:
    assert_openai_error(httpx.get(f"{server.url}/v1/nothing-here", timeout=30), 404)
    assert_openai_error(httpx.get(f"{server.url}/v1/chat/completions", timeout=30), 405)
    assert_openai_error(httpx.get(f"{server.url}/v1/models/gpt-4o", timeout=30), 404)
    assert_openai_error(post(server, "/v1/chat/completions", chat(model="gpt-4o")), 404)
    # a stream that is refused is refused before it starts: a plain JSON 4xx, not an event stream
    assert_openai_error(post(server, "/v1/chat/completions", chat(stream=True, max_tokens=0)), 400)
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": "Hi", "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


# =========================================================================== fuzzing

JSON_LEAF = (st.none() | st.booleans() | st.integers() | st.integers(-3, 300) | st.floats(allow_nan=False)
             | st.text(max_size=20))
JSON = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)
TEXT = st.text(max_size=40) | st.sampled_from(["Hello", "<|im_start|>", "<|im_end|>\n", "\u0000", "é" * 30, " " * 50])
# A valid request (max_tokens 1-3, so generation stays fast), then 0-3 of its fields replaced by any JSON
# value (the wrong type, out of range, null) or deleted: most requests reach the model, all paths are tried.
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "user", "assistant"])},
    optional={"content": TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2),
              "name": st.text(max_size=8)},
)
COMMON = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "stop": TEXT | st.lists(TEXT, max_size=4),
    "seed": st.integers(-(2**63), 2**64 - 1), "n": st.just(1), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "ignore_eos": st.booleans(),
    "min_tokens": st.integers(0, 3), "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "user": TEXT, "unknown_field": JSON,
}
VALID_CHAT = st.fixed_dictionaries(
    {"model": st.just("tiny"), "messages": st.lists(MESSAGE, min_size=1, max_size=3), "max_tokens": st.integers(1, 3)},
    optional={**COMMON, "logprobs": st.just(False)},
)
VALID_COMPLETION = st.fixed_dictionaries(
    {"model": st.just("tiny"), "max_tokens": st.integers(1, 3),
     "prompt": TEXT.filter(bool) | st.lists(st.integers(0, 300), min_size=1, max_size=8)
     | st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=4), min_size=1, max_size=1)},
    optional={**COMMON, "echo": st.just(False), "best_of": st.just(1)},
)
CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", *COMMON, "logprobs", "top_logprobs",
               "messages.0", "messages.0.role", "messages.0.content", "messages.0.content.0"]
COMPLETION_FIELDS = ["model", "prompt", "max_tokens", *COMMON, "echo", "best_of", "suffix", "logprobs", "prompt.0"]
DELETE = object()


def mutated(valid: st.SearchStrategy, fields: list[str]) -> st.SearchStrategy:
    def apply(args) -> object:
        body, changes = args
        for path, value in changes:
            *parents, key = path.split(".")
            target = body
            for part in parents:
                try:
                    target = target[int(part)] if isinstance(target, list) else target[part]
                except (KeyError, IndexError, ValueError, TypeError):
                    target = None
                    break
            if isinstance(target, dict) or (isinstance(target, list) and key.isdigit() and int(key) < len(target)):
                k = int(key) if isinstance(target, list) else key
                if value is DELETE:
                    target.pop(k) if isinstance(target, list) else target.pop(k, None)
                else:
                    target[k] = value
        return body

    change = st.tuples(st.sampled_from(fields), JSON | st.just(DELETE))
    return st.tuples(valid, st.lists(change, max_size=3)).map(apply)


CHAT_BODY = mutated(VALID_CHAT, CHAT_FIELDS)
COMPLETION_BODY = mutated(VALID_COMPLETION, COMPLETION_FIELDS)
CONTENT_TYPES = st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"])


@st.composite
def raw_bodies(draw) -> bytes:
    """Bytes: random, or a valid body with a few bytes changed, cut or repeated."""
    kind = draw(st.sampled_from(["random", "mutated", "cut"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    body = bytearray(json.dumps(draw(CHAT_BODY if draw(st.booleans()) else COMPLETION_BODY)).encode())
    if kind == "cut":
        return bytes(body[: draw(st.integers(0, len(body)))])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(body) - 1))
        body[i] = draw(st.integers(0, 255))
    return bytes(body)


ROUTES = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    st.sampled_from(["/v1/models", "/v1/models/tiny", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/models/%00", "/v1/models/../../etc/passwd", "/v1//completions", "/readyz", "/livez"])
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-_.%~", max_size=30).map(lambda s: "/" + s),
)


@dataclass
class FuzzLog:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def _check_response(log: FuzzLog, what: str, r: httpx.Response) -> None:
    log.sent += 1
    log.statuses[r.status_code] += 1
    if r.status_code >= 500:
        log.failures.append(f"{what} -> {r.status_code}: {r.text[:300]}")
    elif r.status_code >= 400 and r.request.method != "HEAD" and r.request.url.path.startswith("/v1/"):
        # the OpenAI routes answer OpenAI errors; bentoml's own (/readyz, /metrics, /docs) answer in their own way
        try:
            assert_openai_error(r)
        except (AssertionError, ValueError, KeyError, TypeError) as exc:
            log.failures.append(f"{what} -> {r.status_code} not an OpenAI error ({exc}): {r.text[:300]}")
    elif r.status_code == 200 and r.headers.get("content-type", "").startswith("text/event-stream"):
        if '"server_error"' in r.text:
            log.failures.append(f"{what} -> error event in the stream: {r.text[:300]}")
    assert not log.failures, log.failures[0]


#: SEALIFT_FUZZ_SEED=N explores: a random run from seed N, SEALIFT_FUZZ_SCALE times as many requests.
FUZZ_SEED = os.environ.get("SEALIFT_FUZZ_SEED")
FUZZ_SCALE = int(os.environ.get("SEALIFT_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int):
    """Deterministic by default (the same requests every run), no example database, no per-example deadline."""
    s = settings(max_examples=examples * FUZZ_SCALE, deadline=None, derandomize=FUZZ_SEED is None, database=None,
                 print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                         HealthCheck.function_scoped_fixture])
    return s if FUZZ_SEED is None else (lambda f: seed(int(FUZZ_SEED))(s(f)))


def test_fuzz_http_api_1000_requests_no_5xx_ready_after_memory_steady(server: Server) -> None:
    log = FuzzLog()
    rss: list[int] = []
    client = httpx.Client(base_url=server.url, timeout=120)

    def send(method: str, path: str, body: bytes | None, ctype: str | None, what: str) -> None:
        headers = {"Content-Type": ctype} if ctype is not None else {}
        r = client.request(method, path, content=body, headers=headers)
        _check_response(log, what, r)
        if log.sent == 150:
            rss.append(server.rss_bytes())  # after warm-up: every code path has run a few times

    @fuzz_settings(FUZZ_EXAMPLES["chat"])
    @given(body=CHAT_BODY, ctype=CONTENT_TYPES)
    def fuzz_chat(body, ctype) -> None:
        send("POST", "/v1/chat/completions", json.dumps(body).encode(), ctype, f"chat {body!r:.300} ({ctype})")

    @fuzz_settings(FUZZ_EXAMPLES["completion"])
    @given(body=COMPLETION_BODY)
    def fuzz_completion(body) -> None:
        send("POST", "/v1/completions", json.dumps(body).encode(), "application/json", f"completion {body!r:.300}")

    @fuzz_settings(FUZZ_EXAMPLES["raw"])
    @given(body=raw_bodies(), path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), ctype=CONTENT_TYPES)
    def fuzz_raw(body, path, ctype) -> None:
        send("POST", path, body, ctype, f"raw {body!r:.300} to {path} ({ctype})")

    @fuzz_settings(FUZZ_EXAMPLES["route"])
    @given(route=ROUTES, body=st.none() | st.binary(max_size=64))
    def fuzz_route(route, body) -> None:
        method, path = route
        send(method, path, body if method not in ("GET", "HEAD", "OPTIONS") else None, None, f"{method} {path}")

    t0 = time.monotonic()
    try:
        fuzz_chat()
        fuzz_completion()
        fuzz_raw()
        fuzz_route()
    finally:
        client.close()
    rss.append(server.rss_bytes())
    seconds = time.monotonic() - t0
    print(f"\nfuzz: {log.sent} requests in {seconds:.1f} s, statuses {dict(sorted(log.statuses.items()))}, "
          f"server RSS {rss[0] / 2**20:.0f} MiB after warm-up -> {rss[-1] / 2**20:.0f} MiB after")
    assert log.sent >= 1000
    assert log.statuses[200] >= 50, log.statuses  # the fuzz reached generation, not only the validators
    assert not [s for s in log.statuses if s >= 500], log.statuses
    assert server.ready()
    ok = post(server, "/v1/chat/completions", chat())
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")
    # steady: growth after warm-up bounded (a leak of even 100 KB per request would show as ~90 MB)
    assert rss[-1] - rss[0] < 64 * 2**20, f"server memory grew {(rss[-1] - rss[0]) / 2**20:.0f} MiB"


# =========================================================================== load


@dataclass
class LoadResult:
    sent: int
    answered: int
    statuses: Counter
    errors: list[str]
    latencies_ok: list[float]
    latencies_all: list[float]
    seconds: float

    def percentile(self, values: list[float], q: float) -> float:
        s = sorted(values)
        return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")

    def summary(self, clients: int) -> str:
        ok, all_ = self.latencies_ok, self.latencies_all
        return (f"load: {clients} clients, {self.seconds:.1f} s, sent {self.sent}, answered {self.answered}, "
                f"statuses {dict(sorted(self.statuses.items()))}, "
                f"200s p50 {self.percentile(ok, .5) * 1000:.0f} ms p99 {self.percentile(ok, .99) * 1000:.0f} ms, "
                f"all p50 {self.percentile(all_, .5) * 1000:.0f} ms p99 {self.percentile(all_, .99) * 1000:.0f} ms, "
                f"{self.statuses[200] / self.seconds:.1f} answers/s")


def run_load(server: Server, clients: int, seconds: float) -> LoadResult:
    """`clients` threads, each with its own connection, sending chat requests (streamed and not) until
    the time is up; a 429/503 is followed by a short back-off, as real clients do."""
    lock = threading.Lock()
    res = LoadResult(0, 0, Counter(), [], [], [], seconds)
    stop_at = time.monotonic() + seconds
    bodies = [chat(max_tokens=8, temperature=0), chat(max_tokens=8, stream=True),
              {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0.7, "seed": 1}]

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(120, connect=30)) as http:
            k = i
            while time.monotonic() < stop_at:
                body = bodies[k % len(bodies)]
                k += 1
                path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
                with lock:
                    res.sent += 1
                t = time.monotonic()
                try:
                    r = http.post(path, json=body)
                    text = r.text  # a stream is read to its end
                except httpx.HTTPError as exc:
                    with lock:
                        res.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt = time.monotonic() - t
                with lock:
                    res.answered += 1
                    res.statuses[r.status_code] += 1
                    res.latencies_all.append(dt)
                    if r.status_code == 200:
                        res.latencies_ok.append(dt)
                        if body.get("stream") and not text.rstrip().endswith("data: [DONE]"):
                            res.errors.append(f"stream cut short: {text[-200:]!r}")
                    elif r.status_code in (429, 503):
                        err = r.json()["error"]
                        if not (err["message"] and "Retry-After" in r.headers):
                            res.errors.append(f"{r.status_code} without an OpenAI error and Retry-After: {r.text}")
                    else:
                        res.errors.append(f"{r.status_code}: {r.text[:200]}")
                if r.status_code in (429, 503):
                    time.sleep(0.05)

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    res.seconds = time.monotonic() - t0
    return res


def check_load(server: Server, res: LoadResult, clients: int) -> None:
    print("\n" + res.summary(clients))
    assert not res.errors, res.errors[:5]
    assert res.sent == res.answered  # none lost
    assert set(res.statuses) <= {200, 429, 503}, res.statuses
    assert res.statuses[200] > 0 and res.statuses[429] > 0, res.statuses  # served, and the limit refused the rest
    assert server.ready()


def test_load_16_clients_bounded(server: Server) -> None:
    check_load(server, run_load(server, 16, 10), 16)


@pytest.mark.slow
def test_load_32_clients_60_seconds(server: Server) -> None:
    check_load(server, run_load(server, 32, 60), 32)
