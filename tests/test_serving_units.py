"""The serving pieces that need no server: config, backend choice, the vLLM command,
request validation, and incremental detokenising with stop strings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealift.core.errors import UserError
from sealift.serving.backend import OutputText
from sealift.serving.config import BentoConfig, ServeConfig, select_backend, service_name
from sealift.serving.errors import APIError
from sealift.serving.protocol import ChatCompletionRequest, CompletionRequest, parse_request
from sealift.serving.vllm_backend import vllm_command, vllm_environment

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- BentoConfig / ServeConfig

BENTO_JSON = {
    "model_tag": "qwen7b:abc123",
    "served_model_name": "qwen7b",
    "backend": "auto",
    "target": "gpu",
    "trust_remote_code": True,
    "manifest_digest": "d" * 64,
    "sealift_version": "0.1.0",
}


def test_bento_config_reads_the_build_file(tmp_path: Path) -> None:
    (tmp_path / "sealift_bento.json").write_text(json.dumps(BENTO_JSON))
    cfg = BentoConfig.load(tmp_path, environ={"SEALIFT_MODEL": "ignored"})
    assert cfg.to_dict() == BENTO_JSON
    assert (cfg.model_name, cfg.development) == ("qwen7b", False)
    assert cfg.trust_for({"trust_remote_code": False}) is True  # the bento's word wins


def test_bento_config_without_the_file_takes_sealift_model(tmp_path: Path) -> None:
    cfg = BentoConfig.load(tmp_path, environ={"SEALIFT_MODEL": "tiny:v1"})
    assert (cfg.model_tag, cfg.served_model_name, cfg.backend, cfg.development) == ("tiny:v1", "tiny", "auto", True)
    assert cfg.trust_for({"trust_remote_code": True}) is True  # development: what `sealift import` recorded
    assert cfg.trust_for({}) is False
    with pytest.raises(UserError, match="SEALIFT_MODEL"):
        BentoConfig.load(tmp_path, environ={})


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not readable JSON"),
        ("[1]", "JSON object"),
        (json.dumps({**BENTO_JSON, "model_tag": ""}), "model_tag"),
        (json.dumps({**BENTO_JSON, "backend": "tgi"}), "backend"),
        (json.dumps({**BENTO_JSON, "target": "tpu"}), "target"),
        (json.dumps({**BENTO_JSON, "trust_remote_code": "yes"}), "trust_remote_code"),
    ],
)
def test_bento_config_refuses_a_bad_file(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "sealift_bento.json").write_text(content)
    with pytest.raises(UserError, match=match):
        BentoConfig.load(tmp_path)


def test_serve_config_from_env() -> None:
    bento = BentoConfig.from_dict(BENTO_JSON)
    env = {
        "SEALIFT_BACKEND": "vllm",
        "SEALIFT_API_KEY": "k",
        "SEALIFT_MAX_CONCURRENCY": "4",
        "SEALIFT_TENSOR_PARALLEL_SIZE": "2",
        "SEALIFT_MAX_MODEL_LEN": "8192",
        "SEALIFT_GPU_MEMORY_UTILIZATION": "0.85",
        "SEALIFT_DTYPE": "bfloat16",
        "SEALIFT_QUANTIZATION": "awq",
        "SEALIFT_SERVED_MODEL_NAME": "assistant",
    }
    cfg = ServeConfig.from_env(bento, env)
    assert (cfg.backend, cfg.api_key, cfg.max_concurrency, cfg.tensor_parallel_size) == ("vllm", "k", 4, 2)
    assert (cfg.max_model_len, cfg.gpu_memory_utilization, cfg.dtype, cfg.quantization) == (8192, 0.85, "bfloat16", "awq")
    assert cfg.served_model_name == "assistant" and cfg.trust_remote_code is True
    assert cfg.accepts_model("assistant") and cfg.accepts_model("qwen7b") and cfg.accepts_model("qwen7b:abc123")
    assert not cfg.accepts_model("gpt-4o")
    plain = ServeConfig.from_env(bento, {})
    assert (plain.backend, plain.api_key, plain.max_concurrency, plain.served_model_name) == ("auto", None, None, "qwen7b")


@pytest.mark.parametrize(
    "key, value",
    [
        ("SEALIFT_BACKEND", "tgi"),
        ("SEALIFT_MAX_CONCURRENCY", "many"),
        ("SEALIFT_MAX_CONCURRENCY", "0"),
        ("SEALIFT_TENSOR_PARALLEL_SIZE", "-1"),
        ("SEALIFT_GPU_MEMORY_UTILIZATION", "1.5"),
        ("SEALIFT_GPU_MEMORY_UTILIZATION", "x"),
        ("SEALIFT_DTYPE", "int3"),
        ("SEALIFT_SERVED_MODEL_NAME", "two words"),
    ],
)
def test_serve_config_refuses_bad_env(key: str, value: str) -> None:
    with pytest.raises(UserError, match=key if key != "SEALIFT_SERVED_MODEL_NAME" else "served model name"):
        ServeConfig.from_env(BentoConfig.from_dict(BENTO_JSON), {key: value})


def test_service_name_is_a_valid_bentoml_name() -> None:
    assert service_name(BentoConfig("Qwen2.5-7B.Instruct:v1", "x")) == "qwen2-5-7b-instruct"
    assert service_name(BentoConfig("...:v1", "x")) == "sealift"


# --------------------------------------------------------------------------- backend choice (the GPU is mocked)


@pytest.mark.parametrize(
    "vllm, cuda, expected",
    [(True, True, "vllm"), (True, False, "transformers"), (False, True, "transformers"), (False, False, "transformers")],
)
def test_auto_picks_vllm_only_with_cuda_and_vllm(vllm: bool, cuda: bool, expected: str) -> None:
    assert select_backend("auto", has_vllm=lambda: vllm, has_cuda=lambda: cuda) == expected


def test_auto_does_not_import_torch_without_vllm() -> None:
    def no_cuda_probe() -> bool:
        raise AssertionError("asked CUDA although vllm is absent")

    assert select_backend("auto", has_vllm=lambda: False, has_cuda=no_cuda_probe) == "transformers"


def test_explicit_backends() -> None:
    assert select_backend("transformers", has_vllm=lambda: True, has_cuda=lambda: True) == "transformers"
    assert select_backend("vllm", has_vllm=lambda: True, has_cuda=lambda: True) == "vllm"
    with pytest.raises(UserError, match="vllm is not installed"):
        select_backend("vllm", has_vllm=lambda: False, has_cuda=lambda: True)
    with pytest.raises(UserError, match="no CUDA"):
        select_backend("vllm", has_vllm=lambda: True, has_cuda=lambda: False)
    assert select_backend("vllm", check=False, has_vllm=lambda: False, has_cuda=lambda: False) == "vllm"
    with pytest.raises(UserError):
        select_backend("tgi")


# --------------------------------------------------------------------------- the vLLM command


def test_vllm_command_carries_the_engine_knobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bento = BentoConfig.from_dict({**BENTO_JSON, "trust_remote_code": False})
    env = {
        "SEALIFT_TENSOR_PARALLEL_SIZE": "2",
        "SEALIFT_MAX_MODEL_LEN": "4096",
        "SEALIFT_GPU_MEMORY_UTILIZATION": "0.8",
        "SEALIFT_DTYPE": "float16",
        "SEALIFT_QUANTIZATION": "awq",
        "SEALIFT_API_KEY": "secret",
        "SEALIFT_VLLM_PORT": "8123",
    }
    cfg = ServeConfig.from_env(bento, env)
    monkeypatch.chdir(tmp_path)
    cmd = vllm_command("relative/model", cfg, executable=["vllm"])
    assert cmd[:3] == ["vllm", "serve", str(tmp_path / "relative" / "model")]  # absolute: no hub lookup
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8123"
    assert cmd[cmd.index("--served-model-name") + 1 : cmd.index("--served-model-name") + 3] == ["qwen7b", "qwen7b:abc123"]
    for flag, value in [
        ("--tensor-parallel-size", "2"),
        ("--max-model-len", "4096"),
        ("--gpu-memory-utilization", "0.8"),
        ("--dtype", "float16"),
        ("--quantization", "awq"),
    ]:
        assert cmd[cmd.index(flag) + 1] == value
    assert "--trust-remote-code" not in cmd
    assert "secret" not in cmd and "--api-key" not in cmd
    venv = vllm_environment(cfg)
    assert venv["VLLM_API_KEY"] == "secret" and venv["VLLM_NO_USAGE_STATS"] == "1"


def test_vllm_command_minimal_and_trusted() -> None:
    cfg = ServeConfig.from_env(BentoConfig.from_dict(BENTO_JSON), {})
    cmd = vllm_command("/models/q", cfg, executable=["vllm"])
    assert "--trust-remote-code" in cmd
    assert cmd[cmd.index("--structured-outputs-config") + 1] == '{"backend":"xgrammar","disable_any_whitespace":true}'
    for flag in ("--enable-auto-tool-choice", "--tool-call-parser", "--reasoning-parser"):
        assert flag not in cmd  # the template renders no tools
    tools = ServeConfig.from_env(BentoConfig.from_dict({**BENTO_JSON, "tool_parser": "hermes",
                                                        "reasoning_parser": "qwen3"}), {})
    cmd = vllm_command("/models/q", tools, executable=["vllm"])
    assert cmd[cmd.index("--tool-call-parser") - 1:cmd.index("--tool-call-parser") + 2] == \
        ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert cmd[cmd.index("--reasoning-parser") + 1] == "qwen3"
    with pytest.raises(UserError, match="tool_parser"):
        BentoConfig.from_dict({**BENTO_JSON, "tool_parser": "bad name; rm"})
    for flag in ("--tensor-parallel-size", "--max-model-len", "--gpu-memory-utilization", "--dtype", "--quantization"):
        assert flag not in cmd
    assert "VLLM_API_KEY" not in vllm_environment(cfg)


def _import_service(tmp_path: Path, **env: str) -> dict:
    """Import service.py in a fresh Python (bentoml fixes its home at import) and describe LLM."""
    code = (
        "import json, service\n"
        "print(json.dumps({'backend': service.BACKEND, 'name': service.LLM.name,"
        " 'command': service.LLM.has_custom_command(), 'models': [str(m.tag) for m in service.LLM.models],"
        " 'envs': {e['name']: e['value'] for e in service.LLM.envs} if service.LLM.envs and isinstance(service.LLM.envs[0], dict)"
        " else {e.name: e.value for e in service.LLM.envs}}))\n"
    )
    full = {k: v for k, v in os.environ.items() if not k.startswith("SEALIFT_")}
    full.update(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="True", **env)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_service_binds_llm_to_the_selected_backend(tmp_path: Path) -> None:
    cpu = _import_service(tmp_path, SEALIFT_MODEL="tiny:v1")
    assert (cpu["backend"], cpu["name"], cpu["command"], cpu["models"]) == ("transformers", "tiny", False, ["tiny:v1"])
    assert cpu["envs"]["HF_HUB_OFFLINE"] == "1" and cpu["envs"]["VLLM_NO_USAGE_STATS"] == "1"
    gpu = _import_service(tmp_path, SEALIFT_MODEL="tiny:v1", SEALIFT_BACKEND="vllm")
    assert (gpu["backend"], gpu["name"], gpu["command"], gpu["models"]) == ("vllm", "tiny", True, ["tiny:v1"])


def test_service_without_a_model_says_what_to_do(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-c", "import service"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SEALIFT_")} | {"BENTOML_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0 and "SEALIFT_MODEL" in p.stderr


# --------------------------------------------------------------------------- request validation


def _status(model: type, raw: bytes) -> tuple[int, str | None]:
    try:
        parse_request(model, raw)
    except APIError as exc:
        return exc.status, exc.param
    return 200, None


@pytest.mark.parametrize(
    "raw, param",
    [
        (b"", None),
        (b"{", None),
        (b'"just a string"', None),
        (b'{"model": "m"}', "messages"),
        (b'{"model": 1, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": true}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999999}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}', "top_p"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3}', "stop"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    ],
)
def test_bad_chat_requests_are_400(raw: bytes, param: str | None) -> None:
    assert _status(ChatCompletionRequest, raw) == (400, param)


def test_good_requests_parse_and_ignore_unknown_fields() -> None:
    req = parse_request(
        ChatCompletionRequest,
        b'{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},'
        b' {"type": "text", "text": "b"}]}, {"role": "user", "content": "hi", "name": "x"}],'
        b' "stop": "END", "temperature": 1, "tools": [], "whatever": {"nested": true}}',
    )
    assert req.template_messages() == [{"role": "system", "content": "ab"}, {"role": "user", "content": "hi"}]
    assert req.stop_sequences() == ("END",) and req.temperature == 1.0
    comp = parse_request(CompletionRequest, b'{"model": "m", "prompt": [1, 2, 3]}')
    assert comp.single_prompt() == [1, 2, 3] and comp.max_tokens == 16
    assert parse_request(CompletionRequest, b'{"model": "m", "prompt": ["one"]}').single_prompt() == "one"
    with pytest.raises(APIError):
        parse_request(CompletionRequest, b'{"model": "m", "prompt": ["one", "two"]}').single_prompt()
    with pytest.raises(APIError):
        parse_request(CompletionRequest, b'{"model": "m", "prompt": "x", "n": 17}').check_supported()


# --------------------------------------------------------------------------- incremental detokenising


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)


def _stream(tokenizer, ids: list[int], stop: tuple[str, ...], step: int = 1) -> tuple[str, OutputText]:
    out = OutputText(lambda x: tokenizer.decode(x, skip_special_tokens=True), stop)
    pieces = []
    for i in range(0, len(ids), step):
        pieces.append(out.add(ids[i : i + step]))
        if out.stopped:
            break
    pieces.append(out.finish())
    return "".join(pieces), out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_streamed_text_equals_decoding_everything(tokenizer, data) -> None:
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    step = data.draw(st.integers(1, 3))
    full = tokenizer.decode(ids, skip_special_tokens=True)
    text, out = _stream(tokenizer, ids, (), step)
    assert text == full and not out.stopped


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_streamed_text_stops_before_the_stop_string(tokenizer, data) -> None:
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), min_size=1, max_size=40))
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if full:
        start = data.draw(st.integers(0, len(full) - 1))
        stop = full[start : start + data.draw(st.integers(1, 4))]
    else:
        stop = "zz"
    text, out = _stream(tokenizer, ids, (stop,), data.draw(st.integers(1, 3)))
    cut = full.find(stop)
    assert text == (full[:cut] if cut >= 0 else full)
    assert out.stopped == (cut >= 0)


def test_stop_strings_are_held_back_until_decided() -> None:
    chars = list("hello END world")
    out = OutputText(lambda ids: "".join(chars[i] for i in ids), ("END",))
    sent = [out.add([i]) for i in range(len(chars))]
    assert "".join(sent) + out.finish() == "hello "
    assert out.stopped
    assert all("E" not in s for s in sent)  # never sent the start of the stop string


def test_incomplete_characters_wait_for_the_next_token() -> None:
    pieces = {0: b"caf", 1: b"\xc3", 2: b"\xa9!"}
    out = OutputText(lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", "replace"))
    assert [out.add([0]), out.add([1]), out.add([2])] == ["caf", "", "\u00e9!"]
    assert out.finish() == ""
