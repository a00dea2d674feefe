"""`sealift doctor [NAME]`: is this host ready to serve offline? One row per check, with a fix.

    run_doctor("qwen7b")          -> DoctorReport (rows: check, status, detail, fix)
    run_doctor(None, verify=False) every model in the store, without re-hashing

The checks, in the order a user would fix them:

- offline env: OFFLINE_ENV set in this shell (`sealift start` and the bento set
  them for themselves; `bentoml serve` run by hand and `openllm serve` need them
  from the shell, which is what `eval "$(sealift env)"` and the env file
  `sealift install` writes are for);
- model: in the store, imported by sealift, and re-hashed against its manifest
  (`store.verify_model`; `--quick` skips the hashing);
- bento: a bento carrying that model version (`store.find_bento`);
- venv: the offline venv `sealift install` made for the bento (recorded in
  `$SEALIFT_HOME/installed.json`) is complete (its marker), runs, and imports
  bentoml and the backend; runtime: the Python `sealift start` serves with
  imports what the bento's target needs (transformers + torch for cpu, vllm for gpu);
- openllm: the bento and model linked into `$SEALIFT_HOME/openllm-repo` (only
  `openllm serve` needs it, so absence is a warning; a broken link fails);
- GPU: visible devices (nvidia-smi, else torch.cuda when device nodes exist) and
  their free memory against the model's weights plus the KV cache of one
  sequence of its full context (SEALIFT_MAX_MODEL_LEN if set);
- target: each installed bundle's needs (glibc, Python, NVIDIA driver, GPU
  count, GPU memory; sealift.bundle.target) against this host;
- disk: free space where the store and sealift's home live.

A check never raises: an unexpected error becomes a failing row that says so.
Nothing here touches the network or writes anything.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.core import console, paths
from sealift.core.errors import SealiftError
from sealift.core.diskspace import free_space
from sealift.core.units import fmt_bytes
from sealift.core.offline import OFFLINE_ENV

OK, WARN, FAIL = "ok", "warn", "fail"

#: Free disk below this fails (logs, compile caches and temp files need room); below WARN_DISK warns.
FAIL_DISK = 256 * 2**20
WARN_DISK = 2 * 2**30

#: Packages the runtime Python needs per bento target, importable names.
RUNTIME_MODULES = {"cpu": ("bentoml", "transformers", "torch", "safetensors"), "gpu": ("bentoml", "vllm")}

_TRUE = {"1", "true", "yes", "on"}

#: vLLM's default --gpu-memory-utilization: the share of each GPU's total memory it must find free.
VLLM_DEFAULT_UTILIZATION = 0.9


@dataclass
class Check:
    """One row of the doctor's table."""

    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    """Every row, and whether the host can serve offline (no row failed)."""

    name: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, WARN, FAIL)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "counts": self.counts(), "checks": [asdict(c) for c in self.checks]}

    def print_human(self) -> None:
        from rich.table import Table

        colour = {OK: "green", WARN: "yellow", FAIL: "red"}
        table = Table(header_style="bold", show_lines=False)
        for col in ("CHECK", "STATUS", "DETAIL", "FIX"):
            table.add_column(col, overflow="fold")
        for c in self.checks:
            table.add_row(c.check, f"[{colour[c.status]}]{c.status}[/]", c.detail, c.fix, style=None)
        console.out.print(table)
        n = self.counts()
        verdict = "[green]ready to serve offline[/]" if self.ok else "[red]not ready[/]: fix the failing rows"
        console.out.print(f"{verdict} ({n[OK]} ok, {n[WARN]} warn, {n[FAIL]} fail)")


def _guarded(label: str, fn: Callable[[], list[Check]]) -> list[Check]:
    """Run one group of checks; an error becomes a failing row instead of ending the doctor."""
    try:
        return fn()
    except SealiftError as exc:
        return [Check(label, FAIL, exc.message, exc.hint or "")]
    except Exception as exc:  # a check must never take the whole report down
        return [Check(label, FAIL, f"check crashed: {type(exc).__name__}: {exc}", "run with SEALIFT_DEBUG=1 and report it")]


# --------------------------------------------------------------------------- entry point


def run_doctor(name: str | None = None, *, verify: bool = True) -> DoctorReport:
    """Check this host for serving `name` (default: every sealift model in the store) offline."""
    report = DoctorReport(name)
    report.checks += _guarded("offline env", lambda: [check_offline_env()])
    models: list[Any] = []

    def store_checks() -> list[Check]:
        found, rows = find_models(name)
        models.extend(found)
        return rows

    report.checks += _guarded("model", store_checks)
    targets: set[str] = set()
    for model in models:
        report.checks += _model_checks(model, verify=verify, targets=targets)
    report.checks += _guarded("runtime", lambda: [check_runtime(targets or {"cpu"})])
    report.checks += _guarded("gpu", lambda: check_gpu(models, targets))
    report.checks += _guarded("target", check_installed_targets)
    report.checks += _guarded("limits", lambda: [check_limits()])
    report.checks += _guarded("disk", check_disk)
    return report


def _model_checks(model: Any, *, verify: bool, targets: set[str]) -> list[Check]:
    """Rows for one stored model: verified, its bento, the installed venv, openllm; adds the bento's target."""
    rows: list[Check] = []
    if verify:
        rows += _guarded(f"verified {model.name}", lambda: [check_model_verified(model)])
    found: list[tuple[str, str]] = []

    def bento() -> list[Check]:
        row, tag, target = check_bento(model)
        found.append((tag, target or "cpu"))
        return [row]

    rows += _guarded(f"bento {model.name}", bento)
    if found:
        tag, target = found[0]
        targets.add(target)
        rows += _guarded(f"venv {model.name}", lambda: [check_installed_venv(tag, target)])
        rows += _guarded(f"openllm {model.name}", lambda: [check_openllm(model, tag)])
    return rows


# --------------------------------------------------------------------------- offline env


def _env_matches(value: str | None, wanted: str) -> bool:
    if value is None:
        return False
    if wanted.lower() in _TRUE:
        return value.strip().lower() in _TRUE
    return value == wanted


def check_offline_env(environ: dict[str, str] | None = None) -> Check:
    """OFFLINE_ENV in this shell; a warning (not a failure): sealift start and the bento set them too.

    The fix depends on the env file `sealift install` writes: `eval "$(sealift
    env)"` where it exists and holds every variable, re-install where it is stale.
    """
    from sealift.host import registry

    env = os.environ if environ is None else environ
    missing = [k for k, v in OFFLINE_ENV.items() if not _env_matches(env.get(k), v)]
    if not missing:
        return Check("offline env", OK, f"all {len(OFFLINE_ENV)} offline variables set in this shell")
    detail = (f"not set in this shell: {', '.join(missing)} (sealift start sets them itself; "
              "bentoml serve and openllm serve take them from the shell)")
    path = registry.env_file()
    if not path.is_file():
        exports = " ".join(f"{k}={v}" for k, v in OFFLINE_ENV.items() if k in missing)
        return Check("offline env", WARN, f"{detail}; no env file at {path}",
                     f"sealift install BUNDLE writes it; meanwhile: export {exports}")
    stale = [k for k, v in OFFLINE_ENV.items() if not _env_matches(registry.read_env_file(path).get(k), v)]
    if stale:
        return Check("offline env", WARN, f"{detail}; {path} lacks {', '.join(stale)}",
                     "sealift install BUNDLE again (it rewrites the env file)")
    return Check("offline env", WARN, detail, 'eval "$(sealift env)"')


# --------------------------------------------------------------------------- store


def find_models(name: str | None) -> tuple[list[Any], list[Check]]:
    """The models to check (the named one, or every sealift model) and the store's row."""
    from sealift.model import store

    where = paths.bentoml_home()
    if name is not None:
        model = store.describe(name)  # UserError (with a hint) if absent: a failing row
        return [model], [Check("model", OK, f"{model.tag} in {where} ({fmt_bytes(model.size)}, {model.files} files)")]
    models = store.list_models()
    if not models:
        return [], [
            Check(
                "model",
                FAIL,
                f"no model imported by sealift in {where}",
                "air-gapped host: sealift install BUNDLE; online host: sealift import SRC --name NAME",
            )
        ]
    tags = ", ".join(m.tag for m in models)
    return models, [Check("model", OK, f"{len(models)} in {where}: {tags}")]


def check_model_verified(model: Any) -> Check:
    """Re-hash every stored file against the model's manifest."""
    from sealift.model import store

    report = store.verify_model(model.tag)
    label = f"verified {model.name}"
    if report.ok:
        return Check(label, OK, f"{report.files} files, {fmt_bytes(report.bytes)} match sha256:{report.manifest_digest}")
    first = report.problems[0]
    more = f" and {len(report.problems) - 1} more" if len(report.problems) > 1 else ""
    return Check(
        label,
        FAIL,
        f"{model.tag}: {first}{more}",
        f"re-install the bundle (sealift install BUNDLE) or re-import: sealift import SRC --name {model.name}",
    )


def check_bento(model: Any) -> tuple[Check, str, str | None]:
    """The newest bento carrying this model version: (row, bento tag, target cpu/gpu)."""
    from sealift.model import _bentoml, store

    tag = store.find_bento(str(model.tag))  # UserError with a `sealift build` hint if none
    bento = _bentoml.get_bento(tag)
    target = bento.info.labels.get(store.LABEL_TARGET)
    service = Path(bento.path) / "src" / "service.py"
    if not service.is_file():
        return Check(f"bento {model.name}", FAIL, f"{tag} has no src/service.py", f"sealift build {model.name}"), tag, target
    return Check(f"bento {model.name}", OK, f"{tag} (target {target or '?'})"), tag, target


# --------------------------------------------------------------------------- runtime


def _missing_modules(python: str, modules: tuple[str, ...]) -> list[str] | None:
    """Modules `python` cannot find (find_spec, no import), or None if that Python does not run."""
    code = (
        "import importlib.util, json, sys; "
        f"print(json.dumps([m for m in {list(modules)!r} if importlib.util.find_spec(m) is None]))"
    )
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    try:
        return list(json.loads(p.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return None


def check_runtime(targets: set[str]) -> Check:
    """The Python `sealift start` serves with (this one) has what the bentos' targets need."""
    modules = tuple(dict.fromkeys(m for t in sorted(targets) for m in RUNTIME_MODULES.get(t, ())))
    missing = _missing_modules(sys.executable, modules)
    if missing is None:
        return Check("runtime", FAIL, f"{sys.executable} does not run", "reinstall sealift's venv")
    if missing:
        fix = "pip install 'sealift[vllm]'" if "vllm" in missing else "pip install torch==2.13.0 transformers"
        # without vllm a gpu bento still serves with --backend transformers
        status = WARN if missing == ["vllm"] else FAIL
        return Check("runtime", status, f"{sys.executable} lacks {', '.join(missing)}", fix)
    return Check("runtime", OK, f"{sys.executable} has {', '.join(modules)}")


def check_installed_venv(bento_tag: str, target: str) -> Check:
    """The offline venv `sealift install` made for this bento: complete, runs, has bentoml and the backend."""
    from sealift.host import registry
    from sealift.host.venv import VENV_MARKER

    name = bento_tag.split(":")[0]
    label = f"venv {name}"
    entry = registry.read_installed().get(name)
    if entry is None:
        return Check(label, OK, "not installed from a bundle here: sealift start serves with this Python")
    if entry.get("bento_tag") != bento_tag:
        return Check(label, WARN, f"the install record is for {entry.get('bento_tag')}, the newest bento is {bento_tag}",
                     "sealift install the bundle of this bento")
    if not entry.get("venv"):
        return Check(label, OK, "none made (installed with --no-venv or without wheels): sealift start uses this Python")
    venv = Path(entry["venv"])
    python = venv / "bin" / "python"
    fix = f"sealift install {entry.get('bundle') or 'BUNDLE'} (remakes the venv from the bundle's wheels)"
    if not (venv / VENV_MARKER).is_file():
        return Check(label, FAIL, f"{venv} is incomplete (no {VENV_MARKER}: its creation did not finish)", fix)
    modules = RUNTIME_MODULES.get(target, RUNTIME_MODULES["cpu"])
    missing = _missing_modules(str(python), modules)
    if missing is None:
        return Check(label, FAIL, f"{python} does not run", fix)
    if missing:
        return Check(label, FAIL, f"{python} lacks {', '.join(missing)}", fix)
    return Check(label, OK, f"{venv} has {', '.join(modules)}")


# --------------------------------------------------------------------------- openllm


def check_openllm(model: Any, bento_tag: str) -> Check:
    """The bento and its model linked into the repo layout openllm reads (OPENLLM_TEST_REPO)."""
    from sealift.host import openllm

    root = openllm.repo_dir() / "bentoml"
    name, version = bento_tag.split(":")
    label = f"openllm {model.name}"
    fix = "sealift install BUNDLE registers it for openllm"
    bento_link = root / "bentos" / name / version
    model_link = root / "models" / model.name / model.version
    if not bento_link.is_symlink() and not bento_link.exists():
        return Check(label, WARN, f"{bento_tag} is not registered in {openllm.repo_dir()} (only `openllm serve` needs it)",
                     fix)
    if not (bento_link / "bento.yaml").is_file():
        return Check(label, FAIL, f"{bento_link} is broken (no bento.yaml behind it)", fix)
    if not model_link.is_dir():
        return Check(label, FAIL, f"{model_link} is missing or broken: openllm serve would find no weights", fix)
    return Check(label, OK, f"{bento_tag} and {model.tag} in {openllm.repo_dir()}")


# --------------------------------------------------------------------------- GPU


@dataclass
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


def _nvidia_smi() -> list[Gpu] | None:
    """GPUs as nvidia-smi reports them; None if there is no nvidia-smi or it fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        p = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    gpus = []
    for row in csv.reader(io.StringIO(p.stdout)):
        if len(row) >= 4:
            index, name, total, free = (x.strip() for x in row[:4])
            gpus.append(Gpu(int(index), name, int(float(total)) * 2**20, int(float(free)) * 2**20))
    return gpus


def _torch_cuda() -> list[Gpu]:
    """GPUs as torch sees them (only tried where NVIDIA device nodes exist: importing torch is slow)."""
    code = (
        "import json, torch\n"
        "out = []\n"
        "if torch.cuda.is_available():\n"
        "    for i in range(torch.cuda.device_count()):\n"
        "        free, total = torch.cuda.mem_get_info(i)\n"
        "        out.append([i, torch.cuda.get_device_name(i), total, free])\n"
        "print(json.dumps(out))\n"
    )
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        rows = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        rows = []
    return [Gpu(int(i), str(n), int(t), int(f)) for i, n, t, f in rows]


def visible_gpus() -> list[Gpu]:
    """The GPUs this host can serve on, honouring CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return []
    gpus = _nvidia_smi()
    if gpus is None:
        gpus = _torch_cuda() if Path("/dev/nvidiactl").exists() else []
    elif visible:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if str(g.index) in wanted]
    return gpus


def check_gpu(models: list[Any], targets: set[str]) -> list[Check]:
    """GPU visibility, and each model's memory estimate against the free memory."""
    gpus = visible_gpus()
    if not gpus:
        if "gpu" in targets:
            return [Check("gpu", WARN, "no GPU visible; the gpu bento's vLLM backend cannot run here",
                          "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or serve with --backend transformers")]
        return [Check("gpu", OK, "no GPU visible; cpu bentos serve with transformers on CPU")]
    free = [g.free_bytes for g in gpus]
    desc = "; ".join(f"{g.index}: {g.name}, {fmt_bytes(g.free_bytes)} free of {fmt_bytes(g.total_bytes)}" for g in gpus)
    rows = [Check("gpu", OK, f"{len(gpus)} visible ({desc})")]
    if "gpu" in targets:
        rows.append(check_vllm_utilization(gpus))
    for m in models:
        need = _weights_and_kv(m)
        label = f"gpu memory {m.name}"
        if not need:
            rows.append(Check(label, WARN, f"{m.tag} has no memory estimate", ""))
        elif need <= max(free):
            rows.append(Check(label, OK, f"needs ~{fmt_bytes(need)}, {fmt_bytes(max(free))} free on one GPU"))
        elif need <= sum(free):
            n = _gpus_needed(need, free)
            rows.append(Check(label, WARN, f"needs ~{fmt_bytes(need)}: more than one GPU has free "
                              f"({fmt_bytes(max(free))}), {n} together have enough",
                              f"sealift start {m.name} --tensor-parallel-size {n}"))
        else:
            rows.append(Check(label, FAIL, f"needs ~{fmt_bytes(need)}, only {fmt_bytes(sum(free))} free on all GPUs",
                              "free GPU memory (nvidia-smi shows who holds it), add GPUs, or use a quantized model"))
    return rows


def check_installed_targets() -> list[Check]:
    """Each installed bundle's needs (manifest.json's `target`) against this host: sealift.bundle.target."""
    from sealift.bundle import target

    return [Check(r.check, r.status, r.detail, r.fix) for r in target.doctor_rows()]


def check_vllm_utilization(gpus: list[Gpu]) -> Check:
    """vLLM refuses to start unless free memory >= --gpu-memory-utilization (default 0.9) x total."""
    worst = min(gpus, key=lambda g: g.free_bytes / g.total_bytes if g.total_bytes else 0)
    share = worst.free_bytes / worst.total_bytes if worst.total_bytes else 0.0
    if share >= VLLM_DEFAULT_UTILIZATION:
        return Check("gpu free share", OK, f"at least {share:.0%} of each GPU free (vLLM reserves {VLLM_DEFAULT_UTILIZATION:.0%})")
    usable = int(share * 100 - 1) / 100
    fix = (f"sealift start NAME --gpu-memory-utilization {usable:.2f}, or free the GPU (nvidia-smi shows who holds it)"
           if usable >= 0.1 else "free the GPU (nvidia-smi shows who holds it)")
    return Check("gpu free share", WARN, f"GPU {worst.index} has {share:.0%} free; vLLM's default "
                 f"--gpu-memory-utilization {VLLM_DEFAULT_UTILIZATION} would refuse to start", fix)


def _weights_and_kv(model: Any) -> int | None:
    """The weights plus the KV cache of one sequence as long as the model's context (what vLLM needs to start)."""
    from sealift.bundle import target

    weights = model.gpu_memory_bytes
    where = getattr(model, "path", None)
    if not weights or where is None:
        return weights
    try:
        config = json.loads((Path(where) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return weights
    length = target.max_context(config)
    try:
        length = int(os.environ.get("SEALIFT_MAX_MODEL_LEN") or 0) or length
    except ValueError:
        pass
    kv = target.kv_cache_bytes(config, tokens=length) if length else None
    return weights + (kv or 0)


def _gpus_needed(need: int, free: list[int]) -> int:
    total, n = 0, 0
    for f in sorted(free, reverse=True):
        total += f
        n += 1
        if total >= need:
            break
    # vLLM's tensor parallel sizes are in practice powers of two (they must divide the attention heads).
    size = 1
    while size < n:
        size *= 2
    return size if size <= len(free) else n


# --------------------------------------------------------------------------- limits


def check_limits() -> Check:
    """The CPUs and memory this host (or container) lets the server use, as `sealift start` sizes it by."""
    from sealift.core.limits import read_limits

    limits = read_limits()
    if limits.memory_budget < 1 << 30:
        return Check("limits", WARN, limits.why,
                     "raise the container's memory limit (resources.limits.memory) or free memory: "
                     "under 1 GiB holds only the smallest models")
    return Check("limits", OK, limits.why)


# --------------------------------------------------------------------------- disk


def check_disk() -> list[Check]:
    """Free space on the filesystems of the store and sealift's home (one row per filesystem)."""
    rows: list[Check] = []
    seen: set[int] = set()
    for label, where in (("disk (store)", paths.bentoml_home()), ("disk (sealift home)", paths.sealift_home())):
        base, free = free_space(where)
        dev = base.stat().st_dev
        if dev in seen:
            continue
        seen.add(dev)
        detail = f"{fmt_bytes(free)} free at {base}"
        if free < FAIL_DISK:
            rows.append(Check(label, FAIL, detail, f"free space under {base}"))
        elif free < WARN_DISK:
            rows.append(Check(label, WARN, detail, f"free space under {base}: logs and caches need room"))
        else:
            rows.append(Check(label, OK, detail))
    return rows
