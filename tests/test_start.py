"""`sealift start NAME`: serves the model's bento, answers the real openai client with what
`generate` gives on the source model, and stops cleanly on SIGINT leaving nothing behind.

One server (the shared cpu bento, with an API key) serves all the assertions.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from sealift.host.start import descendants

from conftest import SEALIFT, ROOT

KEY = "sk-test-sealift"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ready(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.seen: dict[int, str] = {}  # every process under `sealift start` while it ran

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(cpu_bento, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("start") / "start.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [*SEALIFT, "start", "tiny", "--port", str(port), "--api-key", KEY],
            env=cpu_bento.host.environ(), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
        )
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 300
        while not ("ready:" in srv.output() and ready(srv.url)):
            assert proc.poll() is None, f"sealift start exited {proc.returncode}:\n{srv.output()}"
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.5)
        srv.seen.update(descendants(proc.pid))
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
            for pid in descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait()


def test_start_prints_url_curl_and_client_line(server):
    out = server.output()
    assert f"{server.url}/v1" in out
    assert f"curl {server.url}/v1/chat/completions" in out
    assert "Authorization: Bearer $SEALIFT_API_KEY" in out and KEY not in out
    assert "from openai import OpenAI" in out


def test_chat_equals_generate_on_the_source_model(server, tiny_llama):
    import openai
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
    server.seen.update(descendants(server.proc.pid))

    tok = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:]
    expected = tok.decode(new, skip_special_tokens=True)
    assert expected.strip(), "the tiny model should say something for this to mean anything"
    assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens == len(new)
    assert reply.model == "tiny"


def test_api_key_option_reaches_the_service(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_second_start_on_a_busy_port_is_refused(server, cpu_bento):
    run = cpu_bento.host.sealift("start", "tiny", "--port", str(server.port), timeout=60)
    assert run.code == 2 and "already in use" in run.err
    assert len(run.err.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this Python has vLLM")
def test_vllm_asked_of_a_python_without_it_is_one_line_not_a_restart_loop(cpu_bento):
    """BentoML restarts a worker that fails to start, forever: start checks the server's Python first."""
    port = free_port()
    run = cpu_bento.host.sealift("start", "tiny", "--port", str(port), "--backend", "vllm", timeout=60)
    assert run.code == 2, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "serves with vLLM" in lines[0] and "has no vllm" in lines[0], run.err
    assert "--backend transformers" in lines[0] and port_is_free(port)


def test_sigint_stops_everything(server):
    server.seen.update(descendants(server.proc.pid))
    assert len(server.seen) >= 2, "bentoml serve and its worker should run under sealift start"
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=90) == 0, server.output()
    assert port_is_free(server.port)
    deadline = time.monotonic() + 10
    while (alive := [p for p in server.seen if _alive(p, server.seen[p])]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == [], f"left behind: {alive}"


def _alive(pid: int, started: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] == started and fields[0] not in ("Z", "X")


def test_unknown_name_and_model_without_bento(host, tiny_llama):
    run = host.sealift("start", "nope", "--port", str(free_port()))
    assert run.code == 2 and "nope" in run.err and len(run.err.strip().splitlines()) == 1
    host.sealift("import", tiny_llama, "--name", "lone", check=True)
    run = host.sealift("start", "lone", "--port", str(free_port()))
    assert run.code == 2 and "sealift build lone" in run.err


def test_the_runtime_venv_install_made_serves_its_bento(tmp_path, monkeypatch):
    """On the air-gapped host `sealift start` runs bentoml from the venv `sealift install` recorded."""
    import json
    import sys

    from sealift.host import registry
    from sealift.host.start import server_python

    monkeypatch.setenv("SEALIFT_HOME", str(tmp_path))
    venv = tmp_path / "venvs" / "tiny-v1"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (tmp_path / registry.INSTALLED_FILENAME).write_text(json.dumps({"tiny": {"bento_tag": "tiny:v1", "venv": str(venv)}}))
    assert server_python("tiny:v1") == str(venv / "bin" / "python")
    assert server_python("tiny:v2") == sys.executable  # built here, not installed: this Python
