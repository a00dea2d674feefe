"""kill -9 at random points of import, build, export and install: nothing half-made is ever visible, and
running the same command again finishes the job.

One ~155 MB model (big enough that kills land mid-copy). For each step the test picks its kill points
from a seeded generator (SEALIFT_KILL_SEED, printed): a byte threshold on the file the step is writing
(its staging directory, the `.partial` archive, the install's extraction directory), a moment just
after the step starts publishing, or a delay after start. The process is SIGKILLed (only it: its
helper processes are cleaned up afterwards, as an orphan would be). After every kill the store and
DEST are checked on disk: each model directory bentoml can see verifies against its sealift manifest,
each bento is whole, each bundle directory without `.partial` passes `sha256sum -c`. After the kills
of a step, `sealift list`, `bentoml models list` and `bentoml list` must work and show only complete
things, and the step run again must succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, SEALIFT, Env, make_model
from sealift.model.manifest import MANIFEST_NAME, Manifest, verify_dir

SEED = int(os.environ.get("SEALIFT_KILL_SEED", "20261122"))
CHECKPOINT = 16 * 1024 * 1024  # export checkpoints often, so kills also exercise resuming


@dataclass
class Kill:
    step: str
    point: str
    landed: str  # what the step had done when it died ("finished first" if it beat the trigger)
    killed: bool


def file_bytes(root: Path, pattern: str = "**/*") -> int:
    """Bytes of a file, or of every file under a directory (0 for what vanished meanwhile)."""
    try:
        if root.is_file():
            return root.stat().st_size
    except OSError:
        return 0
    total = 0
    for p in root.glob(pattern):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def kill_when(host: Env, args: list, trigger: Callable[[int, float], str | None], *, env_extra: dict | None = None,
              timeout: float = 120) -> tuple[bool, str]:
    """Run `sealift ARGS`; SIGKILL it as soon as trigger(pid, seconds since start) returns a description.

    Returns (killed, description). Only the sealift process is killed, as `kill -9 PID` would; what it
    started (the inspection child) is killed afterwards so nothing of the test lingers.
    """
    proc = subprocess.Popen([*SEALIFT, *map(str, args)], env=host.environ(**(env_extra or {})), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.monotonic()
    landed = None
    try:
        while proc.poll() is None:
            landed = trigger(proc.pid, time.monotonic() - t0)
            if landed is not None:
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() - t0 < timeout, f"sealift {args[0]} did not finish in {timeout}s"
            time.sleep(0.001)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode == -signal.SIGKILL:
        return True, landed or "?"
    assert proc.returncode == 0, f"sealift {' '.join(map(str, args))} exited {proc.returncode}: {err[-2000:]}"
    return False, "finished first"


def after(seconds: float) -> Callable[[int, float], str | None]:
    return lambda pid, t: f"{t:.2f}s after start" if t >= seconds else None


def bytes_in(root_of: Callable[[int], list[Path]], threshold: int, what: str) -> Callable[[int, float], str | None]:
    """Trigger once the files under the pid's own working directory hold >= threshold bytes."""
    def trigger(pid: int, t: float) -> str | None:
        n = sum(file_bytes(d) for d in root_of(pid))
        return f"{n / 2**20:.1f} MiB {what} ({t:.2f}s)" if n >= threshold else None
    return trigger


def appears(root_of: Callable[[int], list[Path]], delay: float, what: str) -> Callable[[int, float], str | None]:
    """Trigger `delay` seconds after the pid's directory first appears (a step starting to publish)."""
    seen: dict[str, float] = {}

    def trigger(pid: int, t: float) -> str | None:
        if "t" not in seen and root_of(pid):
            seen["t"] = t
        if "t" in seen and t - seen["t"] >= delay:
            return f"{delay * 1000:.0f} ms after {what} began ({t:.2f}s)"
        return None
    return trigger


# --------------------------------------------------------------------------- what may be visible


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def version_dirs(store: Path) -> list[Path]:
    """Every NAME/VERSION directory under a bentoml store folder (what `bentoml list` reads)."""
    return sorted(d for name in (store.iterdir() if store.is_dir() else []) if name.is_dir()
                  for d in name.iterdir() if d.is_dir())


def assert_models_complete(host: Env) -> list[str]:
    """Each model directory in the store has model.yaml and verifies against its sealift manifest."""
    tags = []
    for d in version_dirs(host.bentoml_home / "models"):
        assert (d / "model.yaml").is_file(), f"half-made model visible: {d} has no model.yaml"
        manifest = Manifest.read(d / MANIFEST_NAME)
        problems = verify_dir(d, manifest, ignore=(MANIFEST_NAME, "model.yaml"))
        assert not problems, f"half-made model visible: {d}: {problems[:3]}"
        tags.append(f"{d.parent.name}:{d.name}")
    return tags


def assert_bentos_complete(host: Env, reference: dict[str, str] | None) -> list[str]:
    """Each bento directory holds bento.yaml and exactly the files (and bytes) of a complete build."""
    tags = []
    for d in version_dirs(host.bentoml_home / "bentos"):
        assert (d / "bento.yaml").is_file(), f"half-made bento visible: {d} has no bento.yaml"
        if reference is not None:
            got = {k: v for k, v in tree(d).items() if k != "bento.yaml"}
            assert got == reference, f"half-made bento visible: {d}: {sorted(set(reference) ^ set(got))[:5]}"
        tags.append(f"{d.parent.name}:{d.name}")
    return tags


def assert_bundles_complete(dest: Path) -> list[Path]:
    """Every directory in DEST whose name does not end in .partial passes `sha256sum -c SHA256SUMS`."""
    done = []
    for d in sorted(dest.iterdir()) if dest.is_dir() else []:
        if d.name.endswith(".partial"):
            assert not (d / "SHA256SUMS").exists(), f"{d} is partial but holds SHA256SUMS"
            continue
        check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=d, capture_output=True, text=True)
        assert check.returncode == 0, f"{d} looks complete but fails sha256sum -c: {check.stdout}{check.stderr}"
        done.append(d)
    return done


def listed(host: Env) -> dict[str, list[str]]:
    """What `sealift list`, `bentoml models list` and `bentoml list` show (each must work)."""
    bentoml = str(Path(SEALIFT[0]).parent / "bentoml")
    cmds = {"sealift": [*SEALIFT, "list", "--json"], "models": [bentoml, "models", "list", "-o", "json"],
            "bentos": [bentoml, "list", "-o", "json"]}
    procs = {k: subprocess.Popen(c, env=host.environ(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, c in cmds.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, f"{' '.join(cmds[k][-4:])} failed after the kills: {stderr[-1500:]}"
        doc = json.loads(stdout)
        out[k] = sorted(m["tag"] for m in doc["models"]) if k == "sealift" else sorted(x["tag"] for x in doc)
    return out


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("kill9") / "model", hidden_size=1024, layers=4)


def timed(host: Env, *args, **env) -> tuple[float, dict]:
    """Run a step to completion (the reference for the time-based kill points); its seconds and JSON."""
    t = time.monotonic()
    doc = host.sealift(*args, "--json", "-q", check=True, **env).json()
    return time.monotonic() - t, doc


def written(pid: int) -> int:
    """Bytes this process has written (write syscalls, all threads): its own progress, not a leftover's."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_kill9_at_random_points_of_import_build_export_install(big_model: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    kills: list[Kill] = []
    size = file_bytes(big_model)
    a, b = Env(tmp_path / "build-host"), Env(tmp_path / "airgap-host")
    dest = tmp_path / "usb"

    def record(step: str, point: str, result: tuple[bool, str]) -> None:
        kills.append(Kill(step, point, result[1], result[0]))

    def moments(seconds: float, n: int) -> list[tuple[str, float]]:
        """n delays spread over a step that took `seconds` here, past the ~0.3 s of Python start-up."""
        return [("after", rng.uniform(min(0.3, seconds / 3), seconds * 0.95)) for _ in range(n)]

    # ------------------------------------------------------------------ import
    staging = a.bentoml_home / ".sealift-staging"

    def import_dir(pid: int) -> list[Path]:
        return list(staging.glob(f"{pid}-*")) if staging.is_dir() else []

    seconds, _ = timed(a, "import", big_model, "--name", "big")
    shutil.rmtree(a.bentoml_home / "models" / "big")
    points = [("staged", rng.uniform(0.02, 0.98)) for _ in range(5)] + moments(seconds, 2)
    for kind, x in points:
        trigger = bytes_in(import_dir, int(x * size), "staged") if kind == "staged" else after(x)
        result = kill_when(a, ["import", big_model, "--name", "big", "-q"], trigger)
        record("import", f"{kind} {x:.2f}", result)
        if assert_models_complete(a):  # it finished before the kill: start the next one from nothing again
            shutil.rmtree(a.bentoml_home / "models" / "big")
    seen = listed(a)
    assert seen["sealift"] == seen["models"] == [] and seen["bentos"] == []
    r = a.sealift("import", big_model, "--name", "big", "--json", "-q", check=True).json()
    assert not r["existed"]
    assert not list(staging.iterdir()), "the killed imports' staging directories were not swept"
    assert a.sealift("verify", "big", "--json", check=True).json()["ok"]
    model_tag = r["tag"]
    assert listed(a) == {"sealift": [model_tag], "models": [model_tag], "bentos": []}

    # ------------------------------------------------------------------ build
    builds = a.bentoml_home / "tmp"

    def build_store(pid: int) -> list[Path]:
        return list(builds.glob(f"sealift-build-{pid}-*/store/big/*")) if builds.is_dir() else []

    seconds, first = timed(a, "build", "big", "--target", "cpu")
    reference = {k: v for k, v in tree(Path(first["path"])).items() if k != "bento.yaml"}
    points = [("saving", rng.uniform(0, 0.03)) for _ in range(3)] + moments(seconds, 2)
    for kind, x in points:
        trigger = appears(build_store, x, "saving the bento") if kind == "saving" else after(x)
        record("build", f"{kind} {x:.3f}", kill_when(a, ["build", "big", "--target", "cpu", "-q"], trigger))
        assert_bentos_complete(a, reference)
    built = a.sealift("build", "big", "--target", "cpu", "--json", "-q", check=True).json()
    bentos = assert_bentos_complete(a, reference)  # those that finished before their kill are whole too
    seen = listed(a)
    assert seen["bentos"] == sorted(bentos) and built["bento_tag"] in bentos
    assert not [d for d in builds.glob("sealift-build-*") if d.is_dir()], "dead builds' directories not swept"

    # ------------------------------------------------------------------ export
    bento_tag = built["bento_tag"]

    def export_trigger(threshold: int) -> Callable[[int, float], str | None]:
        """Once this run has written something (a resumed export re-reads first) and the archive holds threshold bytes."""
        def trigger(pid: int, t: float) -> str | None:
            tars = list(dest.glob("*.partial/*.tar"))
            n = file_bytes(tars[0]) if tars else 0
            if written(pid) > (1 << 20) and n >= threshold:
                return f"{n / 2**20:.1f} MiB in the archive ({t:.2f}s)"
            return None
        return trigger

    env = {"SEALIFT_EXPORT_CHECKPOINT_BYTES": str(CHECKPOINT)}
    seconds, _ = timed(a, "export", bento_tag, dest, "--no-wheels", **env)
    shutil.rmtree(dest)
    points = [("written", rng.uniform(0.02, 0.98)) for _ in range(5)] + moments(seconds, 1)
    for kind, x in points:
        trigger = export_trigger(int(x * size)) if kind == "written" else after(x)
        result = kill_when(a, ["export", bento_tag, dest, "--no-wheels", "-q"], trigger, env_extra=env)
        record("export", f"{kind} {x:.2f}", result)
        if assert_bundles_complete(dest):
            shutil.rmtree(next(d for d in dest.iterdir() if not d.name.endswith(".partial")))
    ex = a.sealift("export", bento_tag, dest, "--no-wheels", "--json", "-q", check=True, **env).json()
    bundle = Path(ex["bundle"])
    assert assert_bundles_complete(dest) == [bundle] and not list(dest.glob("*.partial"))

    # ------------------------------------------------------------------ install
    def extracting(pid: int) -> list[Path]:
        return list(b.bentoml_home.glob(f".sealift-install-{pid}-*")) if b.bentoml_home.is_dir() else []

    source_bento = tree(Path(built["path"]))
    seconds, _ = timed(b, "install", bundle, "--no-venv")
    shutil.rmtree(b.root)
    points = [("extracted", rng.uniform(0.02, 0.98)) for _ in range(3)] + moments(seconds, 2)
    for kind, x in points:
        trigger = bytes_in(extracting, int(x * size), "extracted") if kind == "extracted" else after(x)
        record("install", f"{kind} {x:.2f}", kill_when(b, ["install", bundle, "--no-venv", "-q"], trigger))
        assert_models_complete(b)
        installed = assert_bentos_complete(b, None)
        for tag in installed:
            assert tree(b.bentoml_home / "bentos" / tag.replace(":", "/")) == source_bento
        if installed:  # it finished before the kill: the next one starts on an empty host again
            shutil.rmtree(b.root)
    inst = b.sealift("install", bundle, "--no-venv", "--json", "-q", check=True).json()
    assert inst["bento_tag"] == bento_tag and inst["model_tags"] == [model_tag]
    assert listed(b) == {"sealift": [model_tag], "models": [model_tag], "bentos": [bento_tag]}
    assert not list(b.bentoml_home.glob(".sealift-install-*")), "killed installs' staging not swept"
    assert b.sealift("verify", model_tag, "--json", check=True).json()["ok"]  # every byte arrived

    # ------------------------------------------------------------------ where the kills landed
    print(f"\nkill -9 points (seed {SEED}):")
    for k in kills:
        print(f"  {k.step:8} {k.point:16} -> {'killed at ' + k.landed if k.killed else k.landed}")
    assert len(kills) >= 20
    mid = [k for k in kills if k.killed and " MiB " in k.landed and not k.landed.startswith("0.0 MiB")]
    assert len(mid) >= 8, "too few kills landed mid-copy; the model is too small for this machine"
    assert sum(k.killed for k in kills) >= 16
