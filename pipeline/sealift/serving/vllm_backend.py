"""The vLLM backend: vLLM's own OpenAI server, run behind BentoML's `__command__` proxy.

BentoML 1.4 starts the command a service's `__command__` returns, waits until
`GET <proxy_port>/health` answers, then forwards every request to it (see
_bentoml_impl/server/proxy.py). vLLM's OpenAI server then owns /v1/models,
/v1/chat/completions and /v1/completions, their streaming, their errors
(OpenAI JSON: 400 for bad input and over-long prompts, 404 for an unknown
model) and the API key (401, from VLLM_API_KEY). Nothing here imports vllm: the command line is
vLLM's most stable interface, so vLLM upgrades do not break the bento.

Offline: the model is an absolute local path (a relative one would make vLLM
look it up on the hub), the server binds to loopback only, and the process
inherits OFFLINE_ENV (VLLM_NO_USAGE_STATS, HF_HUB_OFFLINE, ...).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from sealift.core.offline import OFFLINE_ENV
from sealift.serving.config import ServeConfig

VLLM_HOST = "127.0.0.1"
STRUCTURED_OUTPUTS_CONFIG = '{"backend":"xgrammar","disable_any_whitespace":true}'


def vllm_executable() -> list[str]:
    """How to run vLLM's CLI: the `vllm` script next to this Python, on PATH, or `python -m vllm...`."""
    override = os.environ.get("SEALIFT_VLLM_EXECUTABLE")
    if override:
        return [override]
    beside = Path(sys.executable).with_name("vllm")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("vllm")
    if found:
        return [found]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def vllm_command(model_path: str | Path, config: ServeConfig, *, executable: list[str] | None = None) -> list[str]:
    """The `vllm serve` command line for this model and the configured engine knobs."""
    path = Path(model_path).resolve()
    cmd = [
        *(executable or vllm_executable()),
        "serve",
        str(path),
        "--host",
        VLLM_HOST,
        "--port",
        str(config.vllm_port),
        "--served-model-name",
        config.served_model_name,
        *config.aliases,
        "--disable-uvicorn-access-log",
    ]
    if config.tensor_parallel_size:
        cmd += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    if config.max_model_len:
        cmd += ["--max-model-len", str(config.max_model_len)]
    if config.gpu_memory_utilization:
        cmd += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    if config.dtype:
        cmd += ["--dtype", config.dtype]
    if config.quantization:
        cmd += ["--quantization", config.quantization]
    if config.max_num_seqs:
        # vLLM's batch: it queues past --max-num-seqs. sealift's HTTP cap (max_concurrency, 429 past it)
        # is the bento's middleware and a separate setting.
        cmd += ["--max-num-seqs", str(config.max_num_seqs)]
    if config.trust_remote_code:
        cmd.append("--trust-remote-code")
    # structured outputs as the transformers backend compiles them (xgrammar, no free whitespace); tools parsed
    # by the parser the bento recorded from the chat template (sealift build --tool-parser)
    cmd += ["--structured-outputs-config", STRUCTURED_OUTPUTS_CONFIG]
    if config.tool_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_parser]
    if config.reasoning_parser:
        cmd += ["--reasoning-parser", config.reasoning_parser]
    return cmd


def vllm_environment(config: ServeConfig) -> dict[str, str]:
    """Environment for the vLLM process. The API key goes here, not on the command line,
    because BentoML logs the command and `ps` shows it; vLLM reads VLLM_API_KEY like `--api-key`."""
    env = {**OFFLINE_ENV,
           # vLLM's get_ip() otherwise probes a public address to find the host IP; tensor-parallel
           # workers rendezvous on it. On one host, loopback is the right answer.
           "VLLM_HOST_IP": VLLM_HOST}
    if config.api_key:
        env["VLLM_API_KEY"] = config.api_key
    return env
