"""sealift as users install it: the wheel, installed with a fresh venv's own pip far from the
checkout, runs the whole path, and the bento it builds is the bento the checkout builds.

The wheel is built from a copy of the checkout (as `pip wheel .` would, without touching the
checkout), installed into an empty `python3 -m venv` with that venv's own pip (no upgrade first),
and every command runs from an empty folder with no PYTHONPATH: nothing from the source tree can
leak in. The path: import, build (cpu), export, install into a second store, `sealift start`, and
a chat request with the real openai client.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sealift.core.version import __version__

from conftest import ROOT, Env
from test_start import free_port, ready

pytestmark = pytest.mark.timeout(1800)


@dataclass
class WheelUser:
    """A user's machine: sealift installed from its wheel into a fresh venv, an empty working folder."""

    wheel: Path
    venv: Path
    cwd: Path

    @property
    def sealift_bin(self) -> Path:
        return self.venv / "bin" / "sealift"

    def run(self, env: Env, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.sealift_bin), *map(str, args)], env=_clean(env.environ(**extra)), cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout)


def _clean(environ: dict[str, str]) -> dict[str, str]:
    """No PYTHONPATH and no venv of the test run: the wheel's venv must stand on its own."""
    env = {k: v for k, v in environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(Path(sys.prefix))))
    return env


def _base_python() -> str:
    """The interpreter this test's venv was made from: what `python3 -m venv` on this host uses."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable


@pytest.fixture(scope="module")
def wheel_user(tmp_path_factory: pytest.TempPathFactory) -> WheelUser:
    root = tmp_path_factory.mktemp("wheel-user")
    src, dist = root / "src", root / "dist"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "pipeline", src / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(dist), str(src)], check=True, capture_output=True, text=True)
    wheel = dist / f"sealift-{__version__}-py3-none-any.whl"
    assert wheel.is_file(), list(dist.iterdir())

    venv, cwd = root / "venv", root / "work"
    cwd.mkdir()
    env = _clean(dict(os.environ))
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True, env=env, cwd=cwd)
    # The venv's own pip, as a newcomer has it; torch pinned to the CPU build (see README: Install).
    p = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel), "torch==2.13.0"],
                       env=env, cwd=cwd, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    return WheelUser(wheel=wheel, venv=venv, cwd=cwd)


def test_the_wheel_carries_the_bento_recipe_and_the_guard(wheel_user):
    with zipfile.ZipFile(wheel_user.wheel) as zf:
        names = set(zf.namelist())
    for name in ("sealift/bento/recipe/service.py", "sealift/bento/recipe/bentofile.yaml", "sealift/core/_guard/sitecustomize.py",
                 "sealift/serving/app.py", "sealift/py.typed"):
        assert name in names
    assert not any(n.startswith(("pipeline/", "tests/", "scripts/")) or n == "service.py" for n in names)
    # The recipe in the wheel is the checkout's own file, not a copy that can drift.
    assert (ROOT / "service.py").resolve() == (ROOT / "pipeline" / "sealift" / "bento" / "recipe" / "service.py")
    assert (ROOT / "bentofile.yaml").resolve() == (ROOT / "pipeline" / "sealift" / "bento" / "recipe" / "bentofile.yaml")


def test_version_verbose_names_the_stack(wheel_user):
    p = subprocess.run([str(wheel_user.sealift_bin), "--version", "--verbose"], capture_output=True, text=True,
                       cwd=wheel_user.cwd, env=_clean(dict(os.environ)))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"sealift {__version__}"
    versions = dict(line.split(" ", 1) for line in lines[1:])
    assert versions["torch"].startswith("2.13.0")
    assert versions["bentoml"] and versions["transformers"] != "not installed"
    p = subprocess.run([str(wheel_user.sealift_bin), "--version"], capture_output=True, text=True,
                       cwd=wheel_user.cwd, env=_clean(dict(os.environ)))
    assert p.stdout.strip() == f"sealift {__version__}"


def _src_digests(bento_dir: Path) -> dict[str, str]:
    src = bento_dir / "src"
    return {p.relative_to(src).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(src.rglob("*")) if p.is_file()}


def _without(value, key: str):
    """`value` with every `key` removed from its mappings, at any depth."""
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(v, key) for v in value]
    return value


def test_whole_path_from_the_wheel(wheel_user, tiny_llama, wheel_cache, tmp_path):
    online, airgap = Env(tmp_path / "online"), Env(tmp_path / "airgap")
    model = tmp_path / "tiny"
    shutil.copytree(tiny_llama, model)

    p = wheel_user.run(online, "import", model, "--name", "tiny", "--json")
    assert p.returncode == 0, p.stderr
    model_tag = json.loads(p.stdout)["tag"]
    p = wheel_user.run(online, "build", "tiny", "--target", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    built = json.loads(p.stdout)
    assert built["model_tag"] == model_tag

    # The same model built by the checkout's sealift: the same bento, file for file, label for label.
    checkout = Env(tmp_path / "checkout")
    checkout.sealift("import", model, "--name", "tiny", "--json", check=True)
    ref = checkout.sealift("build", "tiny", "--target", "cpu", "--json", check=True).json()
    bentofiles = [yaml.safe_load((Path(b["path"]) / "src" / "bentofile.yaml").read_text()) for b in (built, ref)]
    wheel_pkgs, checkout_pkgs = (set(b["python"]["packages"]) for b in bentofiles)
    assert wheel_pkgs == checkout_pkgs, (sorted(wheel_pkgs - checkout_pkgs), sorted(checkout_pkgs - wheel_pkgs))
    assert bentofiles[0] == bentofiles[1]  # (readable where it differs; the digests below say the rest)
    assert _src_digests(Path(built["path"])) == _src_digests(Path(ref["path"]))
    ours, theirs = (yaml.safe_load((Path(b["path"]) / "bento.yaml").read_text()) for b in (built, ref))
    assert ours["labels"] == theirs["labels"]
    assert ours["envs"] == theirs["envs"]
    # The model's creation_time differs (it was imported twice, into two stores); all else is the same.
    assert _without(ours["services"], "creation_time") == _without(theirs["services"], "creation_time")
    assert [m["tag"] for svc in ours["services"] for m in svc["models"]] == [model_tag]
    assert [r.split("==")[0] for r in built["requirements"]] == [r.split("==")[0] for r in ref["requirements"]]

    # Export with wheels, resolved from this venv: its pip is Python's own (23.2.1 for 3.11), which refuses
    # `--platform` without `--target`, so resolution must not need pip (uv does it). The bundle carries a
    # sealift wheel rebuilt from the installed files, and the proof builds an offline venv from its wheels.
    pip = subprocess.run([str(wheel_user.venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True,
                         text=True, cwd=wheel_user.cwd, env=_clean(dict(os.environ)))
    print(f"the wheel user's pip: {pip.stdout.split()[1]}")
    usb = tmp_path / "usb"
    p = wheel_user.run(online, "export", "tiny", usb, "--json", timeout=1800, SEALIFT_WHEEL_CACHE=str(wheel_cache))
    assert p.returncode == 0, p.stderr
    exported = json.loads(p.stdout)
    bundle = Path(exported["bundle"])
    assert exported["wheels"] > 50 and exported["platform"] == "manylinux_2_28_x86_64"
    assert "imports torch" in exported["proof"]["summary"]
    assert (bundle / "wheels" / wheel_user.wheel.name).is_file()
    p = wheel_user.run(airgap, "install", bundle, "--no-venv", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["model_tags"] == [model_tag]

    port = free_port()
    log = tmp_path / "start.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(wheel_user.sealift_bin), "start", "tiny", "--port", str(port)],
                                  env=_clean(airgap.environ()), cwd=wheel_user.cwd, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not ready(url):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        import openai

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(model="tiny", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content
        assert reply.usage.completion_tokens > 0
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    # Served from the bento's own copy of sealift, under the wheel's venv: nothing from the checkout.
    assert str(ROOT) not in log.read_text()


def test_an_installed_sealift_carries_its_own_wheel(wheel_user, tmp_path):
    """Export from a wheel install needs sealift's wheel for the bundle: rebuilt from the installed files."""
    code = ("from sealift.bundle.wheelhouse import sealift_wheel; print(sealift_wheel())")
    p = subprocess.run([str(wheel_user.venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                       cwd=wheel_user.cwd, env={**_clean(dict(os.environ)), "SEALIFT_WHEEL_CACHE": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    rebuilt = Path(p.stdout.strip())
    assert rebuilt.name == wheel_user.wheel.name
    with zipfile.ZipFile(rebuilt) as a, zipfile.ZipFile(wheel_user.wheel) as b:
        names = set(a.namelist())
        assert names == set(b.namelist())
        record = f"sealift-{__version__}.dist-info/RECORD"
        assert all(a.read(n) == b.read(n) for n in names if n != record)
        assert a.testzip() is None
