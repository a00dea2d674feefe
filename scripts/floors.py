#!/usr/bin/env python3
"""`make test-floors`: sealift at the lowest versions pyproject.toml allows, over the whole path on a tiny model.

    python scripts/floors.py [--venv DIR] [--work DIR] [--keep] [--no-wheels] [--tests TEST ...] [--no-path]
                             [--pin SPEC ...] [--lifted-ok]

1. a venv made with `uv pip install --resolution lowest-direct` of this checkout
   plus torch 2.13.0 (the CPU build: a wheel from pip's find-links where this
   host's pip configuration names one, else PyTorch's CPU index), each direct
   dependency also held `==` its floor: every one at the lowest version its
   bound allows, the packages they need at their newest that allow the floors.
   A floor that cannot be installed with the others fails here, with uv's
   reason (one quietly lifted by another package is a floor nobody tests).
   `--pin transformers==4.55.4` overrides one (how the floors were bisected);
   `--lifted-ok` is plain lowest-direct;
2. with that venv's `sealift`, from an empty folder, no PYTHONPATH: a tiny model
   (made by that venv's transformers), import, build (cpu, golden outputs),
   export with wheels (the floor uv locks them into pylock.toml, the proof
   builds the runtime venv from them), install into a second store with the
   runtime venv and `--check` (a server from the bundle's wheels answers the
   golden prompts exactly), then `sealift start` (continuous batching on) and
   one chat request;
3. `--tests`: those tests/ run with the venv's Python (its sealift at the floors).

Prints one line per step with its time; exits 1 at the first step that fails,
with its output. tests/test_floors.py runs it (`make test-floors`, and
`make test-full`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "2.13.0"

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """{distribution: the lowest version its requirement allows} for pyproject's dependencies on this Python."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        if len(lows) != 1:
            raise SystemExit(f"floors: {line!r} has no single lower bound (>=, ~= or ==)")
        out[canonicalize_name(req.name)] = lows[0]
    return out


def _uv() -> list[str]:
    return [sys.executable, "-m", "uv"]


def torch_source() -> list[str]:
    """uv arguments that give the CPU torch 2.13.0: its wheel from pip's find-links here, else PyTorch's CPU index."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    dirs: list[str] = []
    p = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        m = re.fullmatch(r"[^.]*\.find-links='(.*)'", line.strip())
        if m:
            dirs += m.group(1).split()
    dirs += os.environ.get("PIP_FIND_LINKS", "").split()
    for d in dict.fromkeys(dirs):
        for wheel in sorted(Path(d.removeprefix("file://")).glob(f"torch-{TORCH}+cpu-{tag}-{tag}-*.whl")):
            return [str(wheel)]
    # (not tried here: this host has no route to PyTorch's index) 2.13.0+cpu sorts above PyPI's CUDA 2.13.0
    return [f"torch=={TORCH}", "--index", "https://download.pytorch.org/whl/cpu", "--index-strategy",
            "unsafe-best-match"]


def _held(pins: list[str]) -> set[str]:
    from packaging.utils import canonicalize_name

    return {canonicalize_name(re.split(r"[=<>!~ ;\[]", p, maxsplit=1)[0]) for p in pins}


def make_venv(venv: Path, *, pins: list[str] = (), hold_floors: bool = True) -> dict[str, str]:
    """The lowest-direct venv at `venv` (made again); returns {distribution: installed version} of every package.

    `hold_floors`: every direct dependency is also constrained to `==` its floor, so a floor that cannot be
    installed with the others fails here (uv says why) instead of being lifted quietly; the packages they
    need come at their newest versions that allow the floors. `pins` override requirements (bisecting).
    """
    shutil.rmtree(venv, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "VIRTUAL_ENV"))}
    subprocess.run([*_uv(), "venv", "--quiet", "--seed", "--no-config", "--python", sys.executable, str(venv)],
                   check=True, env=env)
    held = _held(pins)
    at_floor = [f"{n}=={v}" for n, v in floors().items() if hold_floors and n not in held]
    with tempfile.TemporaryDirectory() as tmp:
        overrides, constraints = Path(tmp) / "overrides.txt", Path(tmp) / "constraints.txt"
        overrides.write_text("".join(f"{p}\n" for p in pins))
        constraints.write_text("".join(f"{p}\n" for p in at_floor))
        p = subprocess.run([*_uv(), "pip", "install", "--quiet", "--no-config", "--resolution", "lowest-direct",
                            "--python", str(venv / "bin" / "python"), "--overrides", str(overrides),
                            "-c", str(constraints), str(ROOT), *torch_source()],
                           env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise StepFailed("venv", p.stdout + p.stderr)
    return installed(venv)


#: What tests/ needs beside sealift (the dev extra without lm-eval and xdist), for `--tests`.
TEST_TOOLS = ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6", "openai>=1.40", "httpx>=0.27", "fastapi>=0.110",
              "pyyaml", "jsonschema"]


def run_tests(venv: Path, tests: list[str]) -> str:
    """pytest `tests` with `venv`'s Python (its sealift, at the floors): the test tools are added at their newest
    with every package already there held where it is; StepFailed with pytest's output if any fails."""
    held = installed(venv)
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "held.txt"
        pins.write_text("".join(f"{n}=={v}\n" for n, v in held.items() if n != "sealift"))
        p = subprocess.run([*_uv(), "pip", "install", "--quiet", "--no-config", "--python", str(venv / "bin" / "python"),
                            "-c", str(pins), *TEST_TOOLS], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))})
    if p.returncode != 0:
        raise StepFailed("test tools", p.stdout + p.stderr)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-m", "not slow", *tests], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise StepFailed("tests", p.stdout + p.stderr)
    return p.stdout.strip().splitlines()[-1]


def installed(venv: Path) -> dict[str, str]:
    p = subprocess.run([*_uv(), "pip", "list", "--no-config", "--format", "json", "--python",
                        str(venv / "bin" / "python")], check=True, capture_output=True, text=True)
    from packaging.utils import canonicalize_name

    return {canonicalize_name(d["name"]): d["version"] for d in json.loads(p.stdout)}


def off_floor(versions: dict[str, str], pins: list[str] = ()) -> list[str]:
    """'name: floor F, installed I' for each direct dependency not at its floor (pinned ones excepted)."""
    from packaging.version import Version

    held = _held(pins)
    return [f"{name}: floor {low}, installed {versions.get(name, 'nothing')}" for name, low in floors().items()
            if name not in held and (name not in versions or Version(versions[name]) != Version(low))]


class StepFailed(Exception):
    def __init__(self, step: str, output: str) -> None:
        super().__init__(f"{step} failed:\n{output[-6000:]}")
        self.step, self.output = step, output


@dataclass
class Path_:
    """One run of the path: the venv's sealift, two stores, the seconds each step took."""

    venv: Path
    work: Path
    wheel_cache: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def environ(self, host: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
               and not k.startswith("SEALIFT_")}
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), *(p for p in env.get("PATH", "").split(os.pathsep)
                                                                 if not p.startswith(sys.prefix))])
        root = self.work / host
        env.update(BENTOML_HOME=str(root / "bentoml"), SEALIFT_HOME=str(root / "sealift"), HF_HOME=str(root / "hf"),
                   BENTOML_DO_NOT_TRACK="True", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                   SEALIFT_WHEEL_CACHE=str(self.wheel_cache), **extra)
        return env

    def run(self, step: str, cmd: list[str], host: str, timeout: float = 1800, **extra: str) -> str:
        t = time.monotonic()
        p = subprocess.run([str(c) for c in cmd], env=self.environ(host, **extra), cwd=self.work, capture_output=True,
                           text=True, timeout=timeout)
        self.seconds[step] = round(time.monotonic() - t, 1)
        if p.returncode != 0:
            raise StepFailed(step, f"$ {' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}")
        return p.stdout

    def sealift(self, step: str, *args: str | Path, host: str = "online", **extra: str) -> dict:
        out = self.run(step, [self.venv / "bin" / "sealift", *args, "--json"], host, **extra)
        return json.loads(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat(run: Path_, name: str) -> str:
    """`sealift start NAME` on the air-gapped store, one chat request, Ctrl-C; the answer's text."""
    port = _free_port()
    log = run.work / "start.log"
    t = time.monotonic()
    with log.open("w") as out:
        server = subprocess.Popen([str(run.venv / "bin" / "sealift"), "start", name, "--port", str(port)],
                                  env=run.environ("airgap"), cwd=run.work, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise StepFailed("start", log.read_text())
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        if "continuous batching is off" in log.read_text():  # a tiny Llama batches on every version allowed
            raise StepFailed("start", log.read_text())
        body = json.dumps({"model": name, "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": "hello"}]}).encode()
        req = urllib.request.Request(f"{url}/v1/chat/completions", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            reply = json.loads(r.read())
        if not reply["usage"]["completion_tokens"]:
            raise StepFailed("chat", json.dumps(reply))
        return reply["choices"][0]["message"]["content"]
    finally:
        run.seconds["start + chat"] = round(time.monotonic() - t, 1)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def run_path(venv: Path, work: Path, *, wheel_cache: Path, wheels: bool = True) -> Path_:
    """The whole path with `venv`'s sealift in `work` (made empty); StepFailed at the first step that fails."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run = Path_(venv, work, wheel_cache)
    model = work / "tiny"
    run.run("tiny model", [venv / "bin" / "python", ROOT / "scripts" / "make_tiny_model.py", model], "online")
    imported = run.sealift("import", "import", model, "--name", "tiny")
    built = run.sealift("build", "build", "tiny", "--target", "cpu")
    if built["model_tag"] != imported["tag"] or built.get("golden", {}).get("status") != "recorded":
        raise StepFailed("build", json.dumps(built))
    exported = run.sealift("export", "export", "tiny", work / "usb", *([] if wheels else ["--no-wheels"]))
    if wheels and "imports torch" not in exported["proof"].get("summary", ""):
        raise StepFailed("export", json.dumps(exported["proof"]))
    run.sealift("install --check", "install", exported["bundle"], "--check", *([] if wheels else ["--no-venv"]),
                host="airgap")
    chat(run, "tiny")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-floors")
    ap.add_argument("--work", type=Path, default=None, help="where the path runs (default: a temporary folder)")
    ap.add_argument("--pin", action="append", default=[], help="hold a dependency at this requirement (bisecting)")
    ap.add_argument("--no-wheels", action="store_true", help="export --no-wheels, install --no-venv (quicker)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--tests", nargs="*", default=None, help="then run these tests/ with the venv's Python")
    ap.add_argument("--no-path", action="store_true", help="skip the path (with --tests)")
    ap.add_argument("--lifted-ok", action="store_true",
                    help="plain lowest-direct: do not hold each dependency at its floor, go on when one is above it")
    ap.add_argument("--wheel-cache", type=Path, default=Path.home() / ".cache" / "sealift" / "wheels")
    a = ap.parse_args()
    t = time.monotonic()
    try:
        versions = make_venv(a.venv, pins=a.pin, hold_floors=not a.lifted_ok)
    except StepFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"venv {time.monotonic() - t:.1f} s: "
          + ", ".join(f"{n} {versions.get(n, '-')}" for n in [*floors(), "torch", "click", "markupsafe"]))
    wrong = off_floor(versions, a.pin)
    if wrong and not a.lifted_ok:
        print("not at the floor pyproject.toml declares: " + "; ".join(wrong), file=sys.stderr)
        return 1
    work = a.work or Path(tempfile.mkdtemp(prefix="sealift-floors-"))
    try:
        if not a.no_path:
            run = run_path(a.venv, work, wheel_cache=a.wheel_cache, wheels=not a.no_wheels)
            print("path " + ", ".join(f"{k} {v} s" for k, v in run.seconds.items()))
        if a.tests:
            t = time.monotonic()
            summary = run_tests(a.venv, a.tests)
            print(f"tests in {time.monotonic() - t:.1f} s: {summary}")
    except StepFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
