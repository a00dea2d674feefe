"""What a bundle's target host must have, what this host has, and whether they meet.

    default_platform("gpu")                -> "manylinux_2_31_x86_64"
    CUDA_LINES["12.8"]                     -> CudaLine (torch index, minimum driver)
    read_wheel(path)                       -> WheelInfo (name, version, Requires-Dist, torch's CUDA)
    check_gpu_wheels(wheels, cuda=)        -> GpuStack, or UserError: a CPU torch, versions that do not belong
    target_needs(...)                      -> manifest.json's "needs" object
    host_facts()                           -> HostFacts (glibc, Pythons, driver, GPUs)
    check_host(needs, facts)               -> [HostCheck]: glibc, Python, driver, GPU count, GPU memory

Facts these rest on (measured 2026-11 unless said):
- vLLM 0.28-0.32 need llguidance >= 1.7, whose Linux x86_64 wheels are tagged
  manylinux_2_31 only: a GPU bundle's platform is at least manylinux_2_31
  (glibc 2.31: Ubuntu 20.04, Debian 11, RHEL 9 and newer). CPU bundles keep
  manylinux_2_28 (glibc 2.28: RHEL 8).
- The registry's (PyPI's) torch 2.13.0 Linux x86_64 wheel is a CUDA 13.0 build
  (it requires nvidia-cuda-runtime==13.0.96 and 23 more nvidia-* wheels), and
  vllm 0.32.0 on PyPI is built against it. CUDA 12.8/12.9 builds of torch live
  on PyTorch's own index (https://download.pytorch.org/whl/cu128, cu129),
  vLLM's matching builds are `vllm-X+cu128` wheels on its GitHub releases.
- NVIDIA's minimum drivers (docs.nvidia.com/deploy/cuda-compatibility, minor
  version compatibility): CUDA 12.x runs on >= 525.60.13, CUDA 13.x needs
  >= 580.65.06 (13.0's own driver). Some features (PTX JIT of newer kernels)
  need the toolkit's own driver; the minimum is what sealift checks.
"""

from __future__ import annotations

import csv
import io
import os
import platform as _platform
import re
import shutil
import subprocess
import zipfile
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from sealift.bundle.cpuvllm import CPU_VLLM_FLAGS, cpu_check, cpu_flags, left_out, override_lines  # noqa: F401
from sealift.core.errors import UserError
from sealift.core.hfconfig import attention_shape, text_config

__all__ = [
    "CUDA_LINES", "DEFAULT_CUDA", "CudaLine", "GpuStack", "HostCheck", "HostFacts", "WheelInfo",
    "check_gpu_wheels", "check_host", "default_platform", "glibc_of", "host_facts", "kv_cache_bytes",
    "read_wheel", "target_needs", "uv_platform",
]

#: The oldest manylinux the serving stack installs on, per bento target (see the module docstring).
DEFAULT_PLATFORMS = {"gpu": "manylinux_2_31_x86_64", "cpu": "manylinux_2_28_x86_64"}


@dataclass(frozen=True)
class CudaLine:
    """A CUDA line a GPU bundle can carry: where its torch comes from and the driver it needs."""

    version: str  # "12.8"
    #: An extra index holding torch/torchvision/nvidia-* of this line, or None: the registry's default build.
    torch_index: str | None
    min_driver: str

    @property
    def tag(self) -> str:
        """PyTorch's name for the line: cu128."""
        return "cu" + self.version.replace(".", "")


CUDA_LINES = {
    "12.8": CudaLine("12.8", "https://download.pytorch.org/whl/cu128", "525.60.13"),
    "12.9": CudaLine("12.9", "https://download.pytorch.org/whl/cu129", "525.60.13"),
    "13.0": CudaLine("13.0", None, "580.65.06"),
}
#: The line the registry's own torch 2.13.0 (what vllm 0.32.0 pins) is built for.
DEFAULT_CUDA = "13.0"


def default_platform(target: str, backend: str = "auto") -> str:
    """The platform tag a bundle's wheels are resolved for. vLLM on CPU needs llguidance too (manylinux_2_31)."""
    if target == "cpu" and backend == "vllm":
        return DEFAULT_PLATFORMS["gpu"]
    return DEFAULT_PLATFORMS.get(target, DEFAULT_PLATFORMS["cpu"])


def glibc_of(platform: str) -> str | None:
    """manylinux_2_31_x86_64 -> "2.31"; manylinux2014_x86_64 -> "2.17"; None for other tags."""
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", platform)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    legacy = {"manylinux2014": "2.17", "manylinux2010": "2.12", "manylinux1": "2.5"}
    return legacy.get(platform.split("_")[0])


def uv_platform(platform: str) -> str:
    """uv's --python-platform for a wheel platform tag: manylinux_2_31_x86_64 -> x86_64-manylinux_2_31."""
    glibc = glibc_of(platform)
    m = re.fullmatch(r"(?:manylinux_\d+_\d+|manylinux\d+)_(x86_64|aarch64)", platform)
    if not glibc or not m:
        raise UserError(f"--platform {platform}: sealift resolves for manylinux tags only",
                        hint="use e.g. manylinux_2_31_x86_64 (the GPU default) or manylinux_2_28_x86_64")
    return f"{m.group(1)}-manylinux_{glibc.replace('.', '_')}"


# =========================================================================== wheels


@dataclass(frozen=True)
class WheelInfo:
    """What a wheel says about itself (its METADATA, and torch's version.py)."""

    path: Path
    name: str  # canonical: torch, nvidia-cublas
    version: str
    requires: tuple[str, ...]
    #: torch only: `cuda` from torch/version.py ("13.0", or None for a CPU build).
    cuda: str | None = None

    @property
    def local(self) -> str:
        """The local version label: "cpu" for 2.13.0+cpu, "" for the registry's 2.13.0."""
        return self.version.split("+", 1)[1] if "+" in self.version else ""

    def pin_of(self, dist: str) -> str | None:
        """The `==X` this wheel requires of `dist` (no marker), or None."""
        for line in self.requires:
            req = _requirement(line)
            if req is not None and req[0] == dist and req[2] is None:
                m = re.fullmatch(r"===?\s*([^,\s]+)", req[1].strip())
                if m:
                    return m.group(1)
        return None


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(line: str) -> tuple[str, str, str | None] | None:
    """(name, specifier, marker or None) of a Requires-Dist line; specifiers in parentheses unwrapped."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*\(?([^;)]*)\)?\s*(?:;\s*(.*))?$", line)
    if not m:
        return None
    return _canon(m.group(1)), m.group(3).strip(), (m.group(4) or None)


def read_wheel(path: Path) -> WheelInfo:
    """Name, version and Requires-Dist from a wheel's METADATA; for torch, `cuda` from torch/version.py."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            meta_name = next((n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if meta_name is None:
                raise UserError(f"{path.name} has no .dist-info/METADATA: not a wheel")
            meta = HeaderParser().parsestr(zf.read(meta_name).decode("utf-8", "replace"))
            name = _canon(meta.get("Name", ""))
            cuda = None
            if name == "torch" and "torch/version.py" in names:
                text = zf.read("torch/version.py").decode("utf-8", "replace")
                m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
                cuda = m.group(1) if m else None
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path}: not a readable wheel ({exc})") from None
    return WheelInfo(path, name, str(meta.get("Version", "")), tuple(meta.get_all("Requires-Dist") or ()), cuda)


@dataclass(frozen=True)
class GpuStack:
    """The GPU serving stack a wheel set carries."""

    torch: str
    torch_cuda: str
    torchvision: str | None
    vllm: str
    nvidia_wheels: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def check_gpu_wheels(wheels: list[Path], *, cuda: str | None = None) -> GpuStack:
    """The GPU stack in `wheels`, or UserError (exit 2) when it cannot serve on a GPU.

    Refused: no torch or no vllm; a CPU torch (a `+cpu` local version, no CUDA in
    torch/version.py, or no nvidia-* requirement); torch of another CUDA line than
    `cuda`; vllm or torchvision pinning another torch than the one carried; a
    vllm built for another CUDA line (`+cuXYZ`) than torch's; a registry vllm
    (no local version, built for the registry's torch) beside a torch from
    another index.
    """
    by_name: dict[str, WheelInfo] = {}
    for w in wheels:
        if w.name.split("-")[0].lower() in ("torch", "torchvision", "vllm"):
            info = read_wheel(w)
            by_name[info.name] = info
    hint = "export with --cuda 12.8|12.9|13.0 (and the index or --wheels-from DIR holding that build)"
    torch, vllm, vision = by_name.get("torch"), by_name.get("vllm"), by_name.get("torchvision")
    if torch is None or vllm is None:
        missing = " and ".join(n for n in ("torch", "vllm") if n not in by_name)
        raise UserError(f"the wheels for this gpu bundle hold no {missing}", hint="build the bento with --target gpu")
    nvidia = sum(1 for w in wheels if w.name.lower().startswith("nvidia_") or w.name.lower().startswith("nvidia-"))
    cpu_reason = None
    if torch.local == "cpu" or torch.local.startswith("cpu"):
        cpu_reason = f"a CPU build (+{torch.local})"
    elif torch.cuda is None:
        cpu_reason = "a CPU build (torch/version.py names no CUDA)"
    elif not any(_canon(r).startswith("nvidia-") for r in torch.requires) and not torch.local.startswith("cu"):
        cpu_reason = "a CPU build (it requires no nvidia-* libraries)"
    if cpu_reason:
        raise UserError(f"the wheels for this gpu bundle hold torch {torch.version}, {cpu_reason}: "
                        f"{torch.path.name}; vLLM would die at import on the GPU host", hint=hint)
    if cuda is not None and torch.cuda != cuda:
        raise UserError(f"--cuda {cuda} asked for, but torch {torch.version} is built for CUDA {torch.cuda}",
                        hint=hint)
    for who in (vllm, vision):
        if who is None:
            continue
        pin = who.pin_of("torch")
        if pin is not None and _public(pin) != _public(torch.version):
            raise UserError(f"{who.name} {who.version} requires torch=={pin}, the wheels hold torch {torch.version}",
                            hint="let vllm's pins choose torch: no torch pin of your own, no constraints file")
    vision_pin = vllm.pin_of("torchvision")
    if vision is not None and vision_pin is not None and _public(vision_pin) != _public(vision.version):
        raise UserError(f"vllm {vllm.version} requires torchvision=={vision_pin}, the wheels hold {vision.version}")
    line = "cu" + torch.cuda.replace(".", "")
    if vllm.local.startswith("cu") and vllm.local != line:
        raise UserError(f"vllm {vllm.version} is built for {vllm.local}, torch {torch.version} for CUDA {torch.cuda}",
                        hint=hint)
    if not vllm.local and torch.local:
        raise UserError(f"vllm {vllm.version} is the registry's build (for the registry's torch), but torch is "
                        f"{torch.version}: vLLM's kernels would not load",
                        hint=f"add vLLM's +{line} wheel (--wheels-from DIR or --find-links), or use --cuda {DEFAULT_CUDA}")
    return GpuStack(torch.version, torch.cuda, vision.version if vision else None, vllm.version, nvidia)


# =========================================================================== what the target needs


def kv_cache_bytes(config: dict[str, Any], *, tokens: int, dtype_bytes: int = 2) -> int | None:
    """KV cache for `tokens` tokens of a transformers config: 2 (K, V) x layers x kv heads x head dim x dtype."""
    shape = attention_shape(config)
    return shape.kv_bytes_per_token(dtype_bytes) * tokens if shape else None


def max_context(config: dict[str, Any]) -> int | None:
    value = text_config(config).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def target_needs(*, target: str, platform: str, python_version: str, stack: GpuStack | None,
                 weights_bytes: int | None, model_config: dict[str, Any] | None,
                 vllm_cpu: dict[str, str] | None = None) -> dict[str, Any]:
    """manifest.json's `needs`: what the host must have (platform, glibc, Python, CUDA, driver, GPU memory;
    for vLLM on CPU (`vllm_cpu`: its distribution and version), the CPU flags its kernels need)."""
    needs: dict[str, Any] = {"kind": target, "platform": platform, "glibc": glibc_of(platform),
                             "python_version": python_version}
    if vllm_cpu:
        needs.update(engine="vllm-cpu", vllm=vllm_cpu.get("version"), vllm_build=vllm_cpu.get("dist"),
                     cpu_flags_any=list(CPU_VLLM_FLAGS))
    if stack is not None:
        line = CUDA_LINES.get(stack.torch_cuda)
        major = stack.torch_cuda.split(".")[0]
        min_driver = line.min_driver if line else ("580.65.06" if major == "13" else "525.60.13")
        needs.update(torch=stack.torch, torch_cuda=stack.torch_cuda, vllm=stack.vllm, min_driver=min_driver)
    context = max_context(model_config or {})
    kv = kv_cache_bytes(model_config or {}, tokens=context) if context else None
    needs.update(weights_bytes=weights_bytes, max_model_len=context, kv_cache_bytes=kv,
                 gpu_memory_bytes=(weights_bytes or 0) + (kv or 0) if weights_bytes else None)
    return needs


# =========================================================================== this host


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class HostFacts:
    glibc: str | None
    pythons: tuple[str, ...]  # X.Y versions found (this one, pythonX.Y on PATH)
    driver: str | None  # None: no nvidia-smi, or it failed
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    cpu_flags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_glibc() -> str | None:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (ValueError, OSError, AttributeError):
        value = None
    if value and value.startswith("glibc "):
        return value.split()[1]
    lib, version = _platform.libc_ver()
    return version if lib == "glibc" and version else None


def _uv_finds_python(version: str) -> bool:
    """Whether uv finds Python `version` here without downloading (PATH, uv-managed installs)."""
    import sys

    try:
        p = subprocess.run([sys.executable, "-m", "uv", "python", "find", "--no-config", version],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_OFFLINE": "1"})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def host_pythons(wanted: str | None = None) -> tuple[str, ...]:
    """X.Y of this Python, every pythonX.Y on PATH, and `wanted` if uv finds it (uv-managed)."""
    import sys

    found = {f"{sys.version_info[0]}.{sys.version_info[1]}"}
    for minor in range(8, 16):
        if shutil.which(f"python3.{minor}"):
            found.add(f"3.{minor}")
    if wanted and wanted not in found and _uv_finds_python(wanted):
        found.add(wanted)
    return tuple(sorted(found, key=lambda v: tuple(map(int, v.split(".")))))


def nvidia_smi() -> tuple[str | None, tuple[Gpu, ...]]:
    """(driver version, GPUs) from nvidia-smi, honouring CUDA_VISIBLE_DEVICES; (None, ()) without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None, ()
    try:
        p = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.free,driver_version",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None, ()
    if p.returncode != 0:
        return None, ()
    driver, gpus = None, []
    for row in csv.reader(io.StringIO(p.stdout)):
        if len(row) < 5:
            continue
        try:
            index, name, total, free, drv = (x.strip() for x in row[:5])
            gpus.append(Gpu(int(index), name, int(float(total)) * 2**20, int(float(free)) * 2**20))
            driver = driver or drv
        except ValueError:
            continue
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = {v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"}
        gpus = [g for g in gpus if str(g.index) in wanted]
    return driver, tuple(gpus)


def host_facts(python: str | None = None) -> HostFacts:
    """This host's facts; `python`: an X.Y to look for beyond PATH (uv-managed Pythons)."""
    driver, gpus = nvidia_smi()
    return HostFacts(host_glibc(), host_pythons(python), driver, gpus, cpu_flags())


# =========================================================================== needs against host


@dataclass(frozen=True)
class HostCheck:
    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def _gib(n: int) -> str:
    from sealift.core.units import fmt_bytes

    return fmt_bytes(n)


def check_host(needs: dict[str, Any], facts: HostFacts, *, tensor_parallel_size: int = 1,
               gpu_memory_utilization: float = 0.9) -> list[HostCheck]:
    """Each need of a bundle against this host: fail where it cannot run, warn where it may not."""
    rows: list[HostCheck] = []
    glibc = needs.get("glibc")
    if glibc:
        if facts.glibc is None:
            rows.append(HostCheck("glibc", "warn", f"the bundle's wheels need glibc >= {glibc}; this host's is unknown"))
        elif _vkey(facts.glibc) < _vkey(glibc):
            rows.append(HostCheck("glibc", "fail", f"the bundle's wheels ({needs.get('platform')}) need glibc >= "
                                  f"{glibc}, this host has {facts.glibc}",
                                  f"export again with --platform manylinux_{facts.glibc.replace('.', '_')}_x86_64 "
                                  "(if the serving stack has wheels for it) or serve on a newer OS"))
        else:
            rows.append(HostCheck("glibc", "ok", f"{facts.glibc} (the wheels need >= {glibc})"))
    python = needs.get("python_version")
    if python:
        if python in facts.pythons:
            rows.append(HostCheck("python", "ok", f"python{python} found"))
        else:
            rows.append(HostCheck("python", "fail", f"the bundle's wheels are for Python {python}; this host has "
                                  f"{', '.join(facts.pythons) or 'none'}",
                                  f"install python{python}, or export again with --python-version "
                                  f"{facts.pythons[-1] if facts.pythons else 'X.Y'}"))
    cpu_row = cpu_check(needs.get("cpu_flags_any"), facts.cpu_flags)
    if cpu_row:
        rows.append(HostCheck("cpu", *cpu_row))
    if needs.get("kind") != "gpu":
        return rows
    min_driver = needs.get("min_driver")
    cuda = needs.get("torch_cuda")
    if facts.driver is None:
        rows.append(HostCheck("driver", "fail", f"no NVIDIA driver answers (nvidia-smi); torch is built for CUDA {cuda}",
                              f"install an NVIDIA driver >= {min_driver}, or serve with --backend transformers"))
        return rows
    if min_driver and _vkey(facts.driver) < _vkey(min_driver):
        other = "12.8" if cuda and cuda.startswith("13") else None
        fix = (f"export again with --cuda {other} (needs >= {CUDA_LINES[other].min_driver})" if other else
               f"update the driver to >= {min_driver}")
        rows.append(HostCheck("driver", "fail", f"driver {facts.driver} is older than {min_driver}, which torch "
                              f"{needs.get('torch')} (CUDA {cuda}) needs", f"update the driver, or {fix}"))
    else:
        rows.append(HostCheck("driver", "ok", f"{facts.driver} (CUDA {cuda} needs >= {min_driver})"))
    tp = max(1, tensor_parallel_size)
    if len(facts.gpus) < tp:
        rows.append(HostCheck("gpu count", "fail", f"{len(facts.gpus)} GPU(s) visible, tensor parallel size is {tp}",
                              "check CUDA_VISIBLE_DEVICES, or start with a smaller --tensor-parallel-size"))
        return rows
    rows.append(HostCheck("gpu count", "ok", f"{len(facts.gpus)} visible, tensor parallel size {tp}"))
    need = needs.get("gpu_memory_bytes")
    if need:
        use = sorted(facts.gpus, key=lambda g: -g.free_bytes)[:tp]
        usable = sum(min(g.free_bytes, int(g.total_bytes * gpu_memory_utilization)) for g in use)
        what = (f"weights {_gib(needs.get('weights_bytes') or 0)} + KV cache for one {needs.get('max_model_len')}-token "
                f"sequence {_gib(needs.get('kv_cache_bytes') or 0)}")
        if need > usable:
            rows.append(HostCheck("gpu memory", "fail", f"needs {_gib(need)} ({what}), {_gib(usable)} usable on "
                                  f"{tp} GPU(s)", "use more GPUs (--tensor-parallel-size), a smaller "
                                  "--max-model-len, or free GPU memory (nvidia-smi shows who holds it)"))
        else:
            rows.append(HostCheck("gpu memory", "ok", f"needs {_gib(need)} ({what}), {_gib(usable)} usable"))
    return rows


# =========================================================================== export and install hooks


def bento_target(labels: dict[str, str]) -> str:
    """The bento's target (its `sealift-target` label): "gpu" or "cpu"."""
    return "gpu" if labels.get("sealift-target") == "gpu" else "cpu"


def describe_needs(needs: dict[str, Any]) -> str:
    """One line: what the target host needs."""
    parts = [f"{needs.get('platform')} (glibc >= {needs.get('glibc')}), Python {needs.get('python_version')}"]
    if needs.get("engine") == "vllm-cpu":
        parts.append(f"vLLM {needs.get('vllm')} for CPUs ({needs.get('vllm_build')}): a CPU with "
                     f"{' or '.join(needs.get('cpu_flags_any') or [])}")
    if needs.get("torch_cuda"):
        parts.append(f"torch {needs.get('torch')} for CUDA {needs['torch_cuda']}: NVIDIA driver >= "
                     f"{needs.get('min_driver')}")
    if needs.get("gpu_memory_bytes") and needs.get("kind") == "gpu":
        parts.append(f"GPU memory {_gib(needs['gpu_memory_bytes'])} (weights {_gib(needs.get('weights_bytes') or 0)}"
                     f" + KV cache of one {needs.get('max_model_len')}-token sequence)")
    return "; ".join(parts)


#: Rows that make a bundle impossible to install here (the venv could not be made, or torch could not load).
BLOCKING = ("glibc", "python", "driver", "cpu")


def engine_settings(environ: dict[str, str] | None = None) -> tuple[int, float]:
    """(tensor parallel size, gpu memory utilization) that `sealift start` would use from the environment."""
    env = os.environ if environ is None else environ
    try:
        tp = int(env.get("SEALIFT_TENSOR_PARALLEL_SIZE") or 1)
    except ValueError:
        tp = 1
    try:
        util = float(env.get("SEALIFT_GPU_MEMORY_UTILIZATION") or 0.9)
    except ValueError:
        util = 0.9
    return tp, util


def refuse_unfit_host(doc: dict[str, Any], bundle: Path, *, venv: bool = True) -> list[HostCheck]:
    """Install's check before anything is verified or imported: UserError (exit 2) naming the first blocking
    problem (glibc, Python, driver); GPU count and memory only warn (they depend on start options and load).
    Without a venv to make (`venv` False) glibc and Python only warn too."""
    from sealift.core import console

    needs = doc.get("needs") or doc.get("target") or {}  # bundles before `needs` have platform and Python
    if not needs.get("glibc") and needs.get("platform"):
        needs = {**needs, "glibc": glibc_of(str(needs["platform"]))}
    tp, util = engine_settings()
    rows = check_host(needs, host_facts(needs.get("python_version")), tensor_parallel_size=tp,
                      gpu_memory_utilization=util)
    blocking = BLOCKING if venv else ("driver",)
    for row in rows:
        if row.status == "fail" and row.check in blocking:
            raise UserError(f"{bundle} cannot run on this host: {row.detail}; nothing was imported",
                            hint=f"{row.fix} (or install anyway with --skip-host-check)")
    for row in rows:
        if row.status != "ok":
            console.warn(f"{row.check}: {row.detail}" + (f" ({row.fix})" if row.fix else ""))
    return rows


#: Where install keeps each installed bundle's needs for `sealift doctor` ($SEALIFT_HOME/targets/<name>.json).
TARGETS_DIR = "targets"


def record_needs(doc: dict[str, Any]) -> None:
    """Keep an installed bundle's needs (manifest.json's `needs`) where `sealift doctor` finds it."""
    from sealift.core import paths
    from sealift.core.atomic import write_atomic

    import json

    name = doc.get("bento", {}).get("name")
    needs = doc.get("needs") or doc.get("target")
    if not name or not needs:
        return
    where = paths.sealift_home() / TARGETS_DIR
    where.mkdir(parents=True, exist_ok=True)
    write_atomic(where / f"{name}.json", json.dumps({"bento": doc["bento"].get("tag"), **needs}).encode())


def doctor_rows() -> list[HostCheck]:
    """`sealift doctor`'s rows: each installed bundle's needs against this host (glibc, Python, driver, GPUs)."""
    import json

    from sealift.core import paths

    rows: list[HostCheck] = []
    where = paths.sealift_home() / TARGETS_DIR
    files = sorted(where.glob("*.json")) if where.is_dir() else []
    if not files:
        return rows
    tp, util = engine_settings()
    for f in files:
        try:
            needs = json.loads(f.read_text())
        except (OSError, ValueError):
            rows.append(HostCheck(f"target {f.stem}", "warn", f"{f} is unreadable", "sealift install the bundle again"))
            continue
        facts = host_facts(needs.get("python_version"))
        for row in check_host(needs, facts, tensor_parallel_size=tp, gpu_memory_utilization=util):
            rows.append(HostCheck(f"{row.check} ({f.stem})", row.status, row.detail, row.fix))
    return rows
