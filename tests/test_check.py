"""Acceptance after transfer: golden outputs in the bento, `sealift check` against real servers, `sealift golden`,
`sealift install --check`, and `sealift eval-config`.

The shared cpu bento (conftest `cpu_bento`) carries the golden outputs its build recorded. The
servers are real: `sealift start` of that bento (bentoml serve), and the same OpenAI app serving
another tiny model (other random weights) under the same name (`python -m sealift.serving`).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from make_tiny_model import make_model

from conftest import ROOT, SEALIFT
from test_start import free_port, ready  # noqa: E402

KEY = "sk-check-sealift"


class Served:
    """A server subprocess on a free loopback port, stopped (SIGINT, then killed) on close."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("w") as f:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not ready(self.url):
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)

    def close(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def golden_of(bento_dir: Path) -> dict:
    return json.loads((bento_dir / "src" / "sealift_golden.json").read_text())


# --------------------------------------------------------------------------- the recording


def test_build_records_golden_outputs_in_the_bento(cpu_bento):
    build = cpu_bento.build
    assert build["golden"]["status"] == "recorded" and build["golden"]["prompts"] == 5
    doc = golden_of(cpu_bento.bento_dir)
    assert doc["model_tag"] == build["model_tag"]
    assert (doc["backend"], doc["dtype"], doc["device"], doc["decoding"]) == ("transformers", "float32", "cpu", "greedy")
    assert {"python", "sealift", "torch", "transformers", "tokenizers"} <= set(doc["versions"])
    kinds = {p["id"]: p["kind"] for p in doc["prompts"]}
    assert set(kinds.values()) == {"chat", "raw"} and len(doc["prompts"]) == 5
    long = next(p for p in doc["prompts"] if p["id"] == "raw-long")
    assert long["near_context_limit"] and len(long["prompt_token_ids"]) + long["max_tokens"] == doc["context_length"]
    for p in doc["prompts"]:
        assert p["prompt"] and p["prompt_token_ids"] and len(p["output_token_ids"]) == len(p["steps"])
        assert p["steps"][-1]["text"] == p["text"]
        for step in p["steps"]:
            assert len(step["top"]) == doc["top_k"] == 5
            assert step["top"][0]["id"] == step["id"]  # greedy: the best candidate was taken
            assert step["margin"] >= 0
    chat = next(p for p in doc["prompts"] if p["id"] == "chat-short")
    assert chat["prompt"].startswith("<|im_start|>user\n") and chat["messages"][0]["role"] == "user"


def test_build_reports_what_the_recording_cost(cpu_bento):
    """The build's JSON carries the recording's seconds and its phases (the golden file does not)."""
    golden = cpu_bento.build["golden"]
    assert golden["seconds"] > 0
    assert {"start", "imports", "load", "short", "long"} <= set(golden["phases"])
    assert sum(golden["phases"].values()) <= golden["seconds"] + 0.5
    assert "seconds" not in golden_of(cpu_bento.bento_dir)
    # the long prompt's length and why: the tiny model's whole context fits this host
    assert golden["long_prompt"] == "240 tokens: the model's context of 256 less 16 to generate"


def test_golden_outputs_are_what_transformers_generates(cpu_bento, tiny_llama):
    """The recording is plain greedy `generate` of the source model (not something sealift made up)."""
    import torch
    from transformers import AutoModelForCausalLM

    doc = golden_of(cpu_bento.bento_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, local_files_only=True).eval()
    for p in doc["prompts"]:
        ids = torch.tensor([p["prompt_token_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=p["max_tokens"],
                                 do_sample=False)
        assert out[0, ids.shape[1]:].tolist()[: len(p["output_token_ids"])] == p["output_token_ids"], p["id"]


def test_plain_bentoml_export_carries_the_golden_outputs(cpu_bento, tmp_path):
    out = tmp_path / "tiny.tar"
    subprocess.run([sys.executable, "-m", "bentoml", "export", cpu_bento.build["bento_tag"], str(out)],
                   env=cpu_bento.host.environ(), check=True, capture_output=True, timeout=300)
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("src/sealift_golden.json"))
        assert json.load(tar.extractfile(member)) == golden_of(cpu_bento.bento_dir)


def test_no_golden_and_a_model_that_does_not_fit(host, tiny_llama):
    host.sealift("import", tiny_llama, "--name", "tiny", "--json", check=True)
    off = host.sealift("build", "tiny", "--target", "cpu", "--no-golden", "--json", check=True).json()
    assert off["golden"]["status"] == "off"
    assert not (Path(off["path"]) / "src" / "sealift_golden.json").exists()

    # the store says the model has 10^13 parameters: 40 TB in float32 fits nowhere; the build goes on
    (model_yaml,) = (host.bentoml_home / "models" / "tiny").glob("*/model.yaml")
    model_yaml.write_text(model_yaml.read_text().replace("params: 135104", "params: 10000000000000"))
    run = host.sealift("build", "tiny", "--target", "cpu")
    assert run.code == 0, run.err
    warning = [line for line in run.err.splitlines() if "golden outputs skipped" in line]
    assert len(warning) == 1 and "GiB available" in warning[0] and "sealift golden tiny" in warning[0]
    (bento,) = [p for p in (host.bentoml_home / "bentos" / "tiny").iterdir() if p.name not in ("latest", Path(off["path"]).name)]
    assert not (bento / "src" / "sealift_golden.json").exists()

    # no recording: check says so in one line, exit 2, and names the command that records one
    check = host.sealift("check", "tiny")
    assert check.code == 2 and len(check.err.strip().splitlines()) == 1
    assert "no golden outputs" in check.err and "sealift golden tiny" in check.err
    # where it does not fit, `sealift golden` says so too (exit 1); the bento stays without one
    later = host.sealift("golden", "tiny", "--json")
    assert later.code == 1 and later.json()["status"] == "skipped"
    assert not (bento / "src" / "sealift_golden.json").exists()


# --------------------------------------------------------------------------- check against real servers


@pytest.fixture(scope="module")
def started(cpu_bento, tmp_path_factory):
    """`sealift start tiny` (float32, with an API key), as a user would run it on the air-gapped host."""
    port = free_port()
    log = tmp_path_factory.mktemp("check-start") / "start.log"
    server = Served([*SEALIFT, "start", "tiny", "--port", str(port), "--api-key", KEY, "--dtype", "float32"],
                    cpu_bento.host.environ(), log, port)
    yield server
    server.close()


@pytest.fixture(scope="module")
def impostor(cpu_bento, tmp_path_factory):
    """Another tiny model (the same architecture and tokenizer, other random weights) served as "tiny"."""
    root = tmp_path_factory.mktemp("impostor")
    model = make_model(root / "model", seed=1)
    port = free_port()
    server = Served([sys.executable, "-m", "sealift.serving", str(model), "--name", "tiny", "--port", str(port)],
                    cpu_bento.host.environ(), root / "serve.log", port)
    yield server
    server.close()


def test_check_passes_against_sealift_start_of_the_same_bento(cpu_bento, started):
    for mode in ("exact", "tolerant"):
        run = cpu_bento.host.sealift("check", "tiny", "--url", started.url, "--api-key", KEY, "--mode", mode, "--json")
        assert run.code == 0, run.err + run.out
        report = run.json()
        assert report["ok"] and report["mode"] == mode and report["server"]["owned_by"] == "sealift"
        assert [r["verdict"] for r in report["results"]] == ["match"] * 5


def test_start_says_the_threads_batch_cap_and_memory_budget_it_chose_and_why(started):
    log = started.log.read_text(errors="replace")
    (line,) = [ln for ln in log.splitlines() if "transformers on CPU:" in ln]
    for words in ("torch threads", "batch cap", "memory budget", "prefill 512 prompt tokens a step", "Limits read:",
                  "CPUs"):
        assert words in line, line


def test_doctor_says_the_limits_it_reads(cpu_bento):
    report = cpu_bento.host.sealift("doctor", "--quick", "--json").json()
    (row,) = [c for c in report["checks"] if c["check"] == "limits"]
    assert row["status"] in ("ok", "warn") and "CPUs" in row["detail"] and "memory" in row["detail"]


def test_check_without_url_starts_a_server_and_stops_it(cpu_bento):
    run = cpu_bento.host.sealift("check", "tiny")
    assert run.code == 0, run.err + run.out
    assert "exact mode" in run.out and "PASS" in run.out and run.out.count("tokens as recorded") == 5
    url = next(word for word in run.out.split() if word.startswith("http://127.0.0.1:"))
    assert not ready(url)  # stopped afterwards


def test_check_fails_against_another_model_under_the_same_name(cpu_bento, impostor):
    run = cpu_bento.host.sealift("check", "tiny", "--url", impostor.url)
    assert run.code == 1, run.err + run.out
    lines = run.out.splitlines()
    assert "tolerant mode" in lines[0]
    for pid in ("chat-short", "chat-system", "raw-short", "raw-code", "raw-long"):
        (line,) = [ln for ln in lines if f" {pid} " in ln]
        assert line.lstrip().startswith("FAIL") and "expected" in line and "got" in line, line
    assert lines[-1].startswith("FAIL: the server does not answer like the recorded model (0/5")

    report = cpu_bento.host.sealift("check", "tiny", "--url", impostor.url, "--mode", "exact", "--json")
    assert report.code == 1
    assert [r["ok"] for r in report.json()["results"]] == [False] * 5
    assert all(r["divergence"] == 0 for r in report.json()["results"])


@pytest.mark.parametrize("args, code, words", [
    (["--url", "http://127.0.0.1:9"], 2, "no OpenAI server answers"),
    (["--url", "localhost:3000"], 2, "not an http(s) URL"),
    (["--mode", "loose"], 2, "--mode"),
    (["--margin", "0"], 2, "--margin"),
])
def test_check_bad_input_is_one_line_exit_2(cpu_bento, args, code, words):
    run = cpu_bento.host.sealift("check", "tiny", *args)
    assert run.code == code, run.err
    assert len(run.err.strip().splitlines()) == 1 and words in run.err and "Traceback" not in run.err


def test_check_names_another_served_model(cpu_bento, started):
    run = cpu_bento.host.sealift("check", "tiny", "--url", started.url, "--api-key", KEY, "--served-name", "qwen7b")
    assert run.code == 1 and "serves tiny, not 'qwen7b'" in run.err


def test_install_check_runs_the_check_after_installing(cpu_bento, tmp_path):
    from conftest import Env

    usb = tmp_path / "usb"
    export = cpu_bento.host.sealift("export", "tiny", usb, "--no-wheels", "--json", check=True).json()
    airgap = Env(tmp_path / "airgap")
    run = airgap.sealift("install", export["bundle"], "--no-venv", "--check", "--json")
    assert run.code == 0, run.err + run.out
    result = run.json()
    assert result["bento_tag"] == cpu_bento.build["bento_tag"]
    assert result["check"]["ok"] and result["check"]["mode"] == "exact"
    assert [r["verdict"] for r in result["check"]["results"]] == ["match"] * 5


def test_golden_outputs_recorded_later_reach_the_far_side(host, tiny_llama, tmp_path):
    """build --no-golden, export, install: check says what to do; do it (golden, export, install): check passes."""
    from conftest import Env

    host.sealift("import", tiny_llama, "--name", "tiny", "--json", check=True)
    first = host.sealift("build", "tiny", "--target", "cpu", "--no-golden", "--json", check=True).json()
    bundle = host.sealift("export", "tiny", tmp_path / "usb1", "--no-wheels", "--json", check=True).json()["bundle"]
    airgap = Env(tmp_path / "airgap")
    airgap.sealift("install", bundle, "--no-venv", "--json", check=True)
    advice = airgap.sealift("check", "tiny")
    assert advice.code == 2 and "no golden outputs" in advice.err, advice.err
    assert "`sealift golden tiny`" in advice.err and "`sealift export tiny DEST`" in advice.err
    assert "`sealift install`" in advice.err

    golden = host.sealift("golden", "tiny", "--json", check=True).json()  # what the advice says, on the build host
    assert golden["status"] == "recorded" and golden["bento_tag"] != first["bento_tag"]
    assert not (Path(first["path"]) / "src" / "sealift_golden.json").exists()  # the old version is left as it was
    bundle2 = host.sealift("export", "tiny", tmp_path / "usb2", "--no-wheels", "--json", check=True).json()
    assert bundle2["bento_tag"] == golden["bento_tag"]
    installed = airgap.sealift("install", bundle2["bundle"], "--no-venv", "--json", check=True).json()
    assert installed["bento_tag"] == golden["bento_tag"]
    run = airgap.sealift("check", "tiny", "--json")
    assert run.code == 0, run.err + run.out
    report = run.json()
    assert report["ok"] and [r["verdict"] for r in report["results"]] == ["match"] * 5


# --------------------------------------------------------------------------- evaluator configs


def stored_path(cpu_bento) -> str:
    (model,) = [m for m in cpu_bento.host.sealift("list", "--json", check=True).json()["models"]
                if m["tag"] == cpu_bento.build["model_tag"]]
    return model["path"]


def test_eval_config_opencompass_is_python_naming_the_stores_tokenizer(cpu_bento):
    run = cpu_bento.host.sealift("eval-config", "tiny", "--for", "opencompass", "--url", "http://10.1.2.3:3000")
    assert run.code == 0, run.err
    tree = ast.parse(run.out)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and any(k.arg == "tokenizer_path" for k in n.keywords))
    kw = {k.arg: k.value for k in call.keywords}
    assert ast.literal_eval(kw["tokenizer_path"]) == stored_path(cpu_bento)
    assert (Path(stored_path(cpu_bento)) / "tokenizer.json").is_file()
    assert ast.literal_eval(kw["path"]) == "tiny"
    assert ast.literal_eval(kw["openai_api_base"]) == "http://10.1.2.3:3000/v1"
    assert ast.unparse(kw["type"]) == "OpenAISDK"
    assert "SEALIFT_API_KEY" in ast.unparse(kw["key"]) and KEY not in run.out
    assert ast.literal_eval(kw["max_out_len"]) < ast.literal_eval(kw["max_seq_len"]) == 256


def test_eval_config_lm_eval_is_yaml_naming_the_stores_tokenizer(cpu_bento):
    run = cpu_bento.host.sealift("eval-config", "tiny", "--for", "lm-eval")
    assert run.code == 0, run.err
    doc = yaml.safe_load(run.out)
    path = stored_path(cpu_bento)
    assert doc["tokenizer"] == path and doc["served_model_name"] == "tiny"
    chat = doc["generate_until"]
    args = dict(item.split("=", 1) for item in chat["model_args"].split(","))
    assert args == {"model": "tiny", "base_url": "http://127.0.0.1:3000/v1/chat/completions",
                    "tokenizer_backend": "huggingface", "tokenizer": path, "tokenized_requests": "False",
                    "max_length": "256"}
    assert chat["model"] == "local-chat-completions" and "--apply_chat_template" in chat["command"]
    assert doc["env"]["HF_HUB_OFFLINE"] == "1"
    as_json = cpu_bento.host.sealift("eval-config", "tiny", "--for", "lm-eval", "--json", check=True).json()
    assert as_json["tokenizer_path"] == path and yaml.safe_load(as_json["text"]) == doc


@pytest.mark.parametrize("args, words", [(["tiny", "--for", "helm"], "--for"), (["nope", "--for", "lm-eval"], "nope")])
def test_eval_config_bad_input_is_one_line_exit_2(cpu_bento, args, words):
    run = cpu_bento.host.sealift("eval-config", *args)
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1 and words in run.err

