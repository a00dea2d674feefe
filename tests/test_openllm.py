"""`openllm serve NAME` on a bundle that `sealift install` put on an air-gapped host: no index, no network.

openllm 0.6.30 comes from the bundle itself: conftest's `bare_host_openllm`
runs INSTALL.txt's openllm steps as written (its own venv, since it pins
bentoml==1.4.8 and openai==1.73.0 and needs click<8.2, typer<0.16; pip
--no-index from the bundle's wheels-openllm/, no network). The test then does
what the user does on the air-gapped host, in a network namespace with only
loopback where one can be made and under sealift's network guard:

    eval "$(sealift env)"; openllm serve tiny --port P

openllm finds the bento through OPENLLM_TEST_REPO (sealift's repo of links into
the store), builds its own venv with uv from the wheels install kept
(UV_OFFLINE, UV_NO_INDEX, UV_FIND_LINKS), runs `bentoml serve`, and the openai
client gets an answer from /v1/chat/completions.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sealift.core.offline import guarded_env, netns_prefix, read_guard_log

from conftest import ROOT

pytestmark = pytest.mark.openllm

@pytest.fixture(scope="module")
def openllm_bin(bare_host_openllm: Path) -> Path:
    """`openllm` as the bundle's INSTALL.txt makes it: openllm 0.6.30 in its own venv from wheels-openllm/, with
    pip --no-index and no network, its command linked beside sealift's (conftest `bare_host_openllm`)."""
    return bare_host_openllm


DRIVER = textwrap.dedent('''
    """Start `openllm serve`, ask one chat question with the openai client, stop it; print JSON."""
    import json, os, signal, subprocess, sys, time
    import openai

    port, log = int(sys.argv[1]), sys.argv[2]
    t0 = time.monotonic()
    proc = subprocess.Popen(["openllm", "serve", "tiny", "--port", str(port)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
    result = {}
    try:
        while True:
            try:
                reply = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "Hello, how are you?"}], max_tokens=8)
                result = {"answer": reply.choices[0].message.content, "model": reply.model,
                          "completion_tokens": reply.usage.completion_tokens, "seconds": time.monotonic() - t0}
                break
            except (openai.APIConnectionError, openai.APIStatusError):
                if proc.poll() is not None:
                    result = {"exited": proc.returncode}
                    break
                if time.monotonic() - t0 > 600:
                    result = {"timeout": True}
                    break
                time.sleep(1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    print(json.dumps(result))
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openllm_serve_answers_with_no_index_and_no_network(installed_bundle, openllm_bin, tmp_path):
    host = installed_bundle.host
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    log = tmp_path / "openllm.log"
    guard_log = tmp_path / "net.log"
    env = guarded_env(host.environ(), log_path=guard_log)
    env.update(
        PATH=f"{openllm_bin.parent}{os.pathsep}{env['PATH']}",
        OPENLLM_HOME=str(tmp_path / "openllm-home"),  # openllm's own venvs: a fresh one for this test
        PIP_NO_INDEX="1",
    )
    env.pop("VIRTUAL_ENV", None)
    sealift_env = shlex.join([sys.executable, "-m", "sealift.cli", "env"])
    port = free_port()
    script = f'eval "$({sealift_env})" && exec {shlex.join([sys.executable, str(driver), str(port), str(log)])}'
    p = subprocess.run([*(netns_prefix() or []), "bash", "-c", script], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    server_log = log.read_text(errors="replace") if log.exists() else ""
    assert p.returncode == 0, f"{p.stderr}\n{server_log[-4000:]}"
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert "answer" in result, f"openllm serve did not answer: {result}\n{server_log[-4000:]}"
    assert isinstance(result["answer"], str) and result["completion_tokens"] > 0
    assert result["model"] == "tiny"
    # openllm made its venv from sealift's wheels, offline, and served the installed bento
    assert "Successfully installed dependencies" in server_log
    assert f"bentoml serve {installed_bundle.install['bento_tag']}" in server_log
    assert str(host.sealift_home / "openllm-repo" / "bentoml") in server_log
    assert read_guard_log(guard_log) == []
    print(f"openllm serve answered after {result['seconds']:.1f} s (venv from wheels + bentoml start)")
