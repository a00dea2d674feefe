"""Shared fixtures: tiny models built on the fly, isolated stores, the real CLI.

bentoml fixes its store location (BENTOML_HOME) when it is first imported, so
tests drive sealift through its real CLI in subprocesses, each with its own
BENTOML_HOME and SEALIFT_HOME, never through in-process calls that touch a store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_model import make_model  # noqa: E402

SEALIFT = [sys.executable, "-m", "sealift.cli"]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@dataclass
class Env:
    """An isolated host: its own Bento store and sealift home."""

    root: Path

    @property
    def bentoml_home(self) -> Path:
        return self.root / "bentoml"

    @property
    def sealift_home(self) -> Path:
        return self.root / "sealift"

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BENTOML_HOME=str(self.bentoml_home),
            SEALIFT_HOME=str(self.sealift_home),
            HF_HOME=str(self.root / "hf"),
            MODELSCOPE_CACHE=str(self.root / "modelscope"),
            BENTOML_DO_NOT_TRACK="True",
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def sealift(self, *args: str, timeout: float = 600, check: bool = False, **extra: str) -> Run:
        """Run the real `sealift` CLI in a subprocess in this host's environment."""
        p = subprocess.run(
            [*SEALIFT, *map(str, args)],
            env=self.environ(**extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        run = Run(p.returncode, p.stdout, p.stderr)
        if check and run.code != 0:
            raise AssertionError(f"sealift {' '.join(map(str, args))} exited {run.code}:\n{run.err}\n{run.out}")
        return run


#: Folders under the worker's basetemp that conftest's session fixtures made: they outlive the module that first
#: asked for them. Every other folder a module made is removed when the module ends (see module_scratch).
SESSION_DIRS: set[str] = set()


def session_tmp(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder for a session fixture of this conftest: kept until the session ends."""
    path = tmp_path_factory.mktemp(name)
    SESSION_DIRS.add(path.name)
    return path


def _remove(paths: list[Path]) -> None:
    """rm -rf in the background: deleting GBs takes tens of seconds on a disk mounted with `discard`."""
    if paths:
        subprocess.Popen(["rm", "-rf", "--", *map(str, paths)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="session", autouse=True)
def session_uv_cache(tmp_path_factory: pytest.TempPathFactory):
    """uv's cache for what runs outside a module's own (conftest's session fixtures set up before it), removed
    at the session's end; never the user's ~/.cache/uv."""
    cache = session_tmp(tmp_path_factory, "uv-cache")
    saved = os.environ.get("UV_CACHE_DIR")
    os.environ["UV_CACHE_DIR"] = str(cache)
    yield cache
    if saved is None:
        os.environ.pop("UV_CACHE_DIR", None)
    else:
        os.environ["UV_CACHE_DIR"] = saved
    _remove([cache])


@pytest.fixture(scope="module", autouse=True)
def module_scratch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Each test module's disk is given back when the module ends, so that the suite's peak is one module's
    bundles, venvs and stores (plus the session's shared ones), not the sum of all (CI's disk filled up).

    - uv's cache is the module's own (UV_CACHE_DIR): every bundle install unpacks its wheels into uv's cache,
      keyed by the wheel's path, so a cache shared by the session held one unpacked torch per install (the venvs
      made from it keep their hard links when it goes);
    - the folders the module made under the basetemp (its tests' tmp_path, its fixtures' mktemp) are removed
      after its fixtures are torn down, except conftest's session ones (SESSION_DIRS) and, when a test of the
      module failed, all of them (to read).
    Test modules' own fixtures are module-scoped: a session-scoped one in a test module would outlive its only
    users, with its server running."""
    base = tmp_path_factory.getbasetemp()
    before = {p.name for p in base.iterdir()}
    failed = request.session.testsfailed
    cache = tmp_path_factory.mktemp("uv-cache-module")
    saved = os.environ["UV_CACHE_DIR"]  # session_uv_cache's
    os.environ["UV_CACHE_DIR"] = str(cache)
    yield cache
    os.environ["UV_CACHE_DIR"] = saved
    made = [p for p in base.iterdir() if p.name not in before and p.name not in SESSION_DIRS]
    if request.session.testsfailed > failed:
        made = [cache] if cache in made else []
    _remove(made)


@pytest.fixture
def uv_cache(module_scratch: Path) -> Path:
    """The uv cache the running module's sealift and uv processes use."""
    return module_scratch


@pytest.fixture
def host(tmp_path: Path) -> Env:
    """A fresh, empty host for one test."""
    return Env(tmp_path / "host")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_tmp(tmp_path_factory, "models")


def _cached_model(models_dir: Path, key: str, **kwargs) -> Path:
    out = models_dir / key
    if not (out / "config.json").exists():
        tmp = models_dir / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_model(tmp, **kwargs)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(models_dir: Path) -> Path:
    """A random Llama-style model, one safetensors file (do not modify: copy first)."""
    return _cached_model(models_dir, "llama")


@pytest.fixture(scope="session")
def tiny_qwen_sharded(models_dir: Path) -> Path:
    """A random Qwen2-style model in several shards with an index (do not modify)."""
    return _cached_model(models_dir, "qwen-sharded", arch="qwen2", shards=3)


@pytest.fixture(scope="session")
def tiny_qwen_tools(models_dir: Path) -> Path:
    """A random Qwen2-style model whose chat template renders tools (Qwen2.5's, trimmed; do not modify)."""
    return _cached_model(models_dir, "qwen-tools", arch="qwen2", tools=True, context=1024)


@pytest.fixture(scope="session")
def tiny_custom(models_dir: Path) -> Path:
    """A trust_remote_code model: auto_map + configuration/modeling/helper .py (do not modify)."""
    return _cached_model(models_dir, "custom", custom_code=True)


@pytest.fixture
def model_copy(tmp_path: Path):
    """copy(src) -> a private copy of a model directory that a test may break."""

    def copy(src: Path) -> Path:
        dst = tmp_path / f"copy-{src.name}"
        shutil.copytree(src, dst)
        return dst

    return copy


@dataclass
class BuiltBento:
    """A host holding tiny_llama imported as `tiny` and a cpu bento built for it."""

    host: Env
    build: dict  # `sealift build --json`
    guard_log: Path  # network attempts refused during the build (should stay empty)

    @property
    def bento_dir(self) -> Path:
        return Path(self.build["path"])


@pytest.fixture(scope="session")
def cpu_bento(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> BuiltBento:
    """One cpu bento shared by the build/start tests (do not modify). Built with no package
    index (UV_OFFLINE, PIP_NO_INDEX) and under the network guard, which logs any attempt."""
    from sealift.core.offline import guard_dir

    env = Env(session_tmp(tmp_path_factory, "bento-host"))
    env.sealift("import", tiny_llama, "--name", "tiny", "--json", check=True)
    log = env.root / "build-net.log"
    run = env.sealift(
        "build", "tiny", "--target", "cpu", "--json", check=True,
        UV_OFFLINE="1", PIP_NO_INDEX="1", SEALIFT_NET_GUARD="1",
        SEALIFT_NET_GUARD_LOG=str(log),
        # the guard first; then whatever PYTHONPATH the run has (a worktree's pipeline/ ahead of an editable install)
        PYTHONPATH=os.pathsep.join([str(guard_dir()), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    return BuiltBento(env, run.json(), log)


@pytest.fixture(scope="session")
def wheel_cache(request: pytest.FixtureRequest) -> Path:
    """Where `sealift export` keeps the wheels it downloads (SEALIFT_WHEEL_CACHE), kept across sessions."""
    return Path(request.config.cache.mkdir("sealift-wheel-cache"))


@dataclass
class InstalledBundle:
    """cpu_bento exported with its wheels (and --with-openllm), then installed on a second, empty host with no
    network."""

    export: dict  # `sealift export --json`
    host: Env  # the air-gapped host
    install: dict  # `sealift install --json`

    @property
    def bundle(self) -> Path:
        return Path(self.export["bundle"])

    @property
    def guard_log(self) -> Path:
        """The network guard's log of the install (read with sealift.core.offline.read_guard_log)."""
        return self.host.root / "install-net.jsonl"


@pytest.fixture(scope="session")
def installed_bundle(cpu_bento: BuiltBento, wheel_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> InstalledBundle:
    """Shared by test_install/test_openllm (do not modify). The install runs in a network namespace
    with only loopback where one can be made, else under the network guard, and never with an index."""
    from sealift.core.offline import guarded_env, netns_prefix

    usb = session_tmp(tmp_path_factory, "usb-with-wheels")
    export = cpu_bento.host.sealift("export", "tiny", usb, "--with-openllm", "--json", check=True, timeout=1800,
                                    SEALIFT_WHEEL_CACHE=str(wheel_cache)).json()
    host = Env(session_tmp(tmp_path_factory, "airgap-host"))
    env = guarded_env(host.environ(PIP_NO_INDEX="1", UV_NO_INDEX="1"), log_path=host.root / "install-net.jsonl",
                      SEALIFT_NET_GUARD_TRACE="1")  # every attempt, and every guarded process, logged
    p = subprocess.run([*(netns_prefix() or []), *SEALIFT, "install", export["bundle"], "--json"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, f"sealift install exited {p.returncode}:\n{p.stderr}\n{p.stdout}"
    return InstalledBundle(export, host, json.loads(p.stdout))


# --------------------------------------------------------------------------- a host that has only Python


def install_txt_steps(bundle: Path) -> list[str]:
    """The shell commands of the bundle's INSTALL.txt, part 1: sealift (and openllm) from its wheels alone."""
    lines = (bundle / "INSTALL.txt").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("1. "))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("2. "))
    return [ln[2:] for ln in lines[start + 1:end] if ln.startswith("  ") and ln[2:3] not in ("#", " ")]


@dataclass
class BareHost:
    """A HOME where INSTALL.txt's commands ran: no index, no pip config, no network, nothing from this checkout."""

    home: Path
    bundle: Path
    guard_log: Path

    def environ(self, **extra: str) -> dict[str, str]:
        from sealift.core.offline import guarded_env

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_")) and k != "VIRTUAL_ENV"}
        # python3.X on PATH is the interpreter running the tests (its venv makes venvs from the base Python)
        env.update(HOME=str(self.home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                   PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        return guarded_env(env, log_path=self.guard_log, **extra)

    def bash(self, script: str, *, timeout: float = 900, **extra: str) -> Run:
        """Run a bash script in the bundle's directory, in a loopback-only namespace where one can be made."""
        from sealift.core.offline import netns_prefix

        p = subprocess.run([*(netns_prefix() or []), "bash", "-euo", "pipefail", "-c", script],
                           env=self.environ(**extra), cwd=self.bundle.parent, capture_output=True, text=True,
                           timeout=timeout)
        return Run(p.returncode, p.stdout, p.stderr)

    @property
    def cli_bin(self) -> Path:
        return self.home / ".sealift" / "cli" / "bin"


@pytest.fixture(scope="session")
def bare_host(installed_bundle: InstalledBundle, tmp_path_factory: pytest.TempPathFactory) -> BareHost:
    """INSTALL.txt's commands for sealift itself, run as written on a host with only Python: pip, --no-index,
    the bundle's wheels/ (shared by test_bundle_bootstrap and test_openllm)."""
    root = session_tmp(tmp_path_factory, "bare-host")
    host = BareHost(root / "home", installed_bundle.bundle, root / "net.jsonl")
    host.home.mkdir()
    steps = [s for s in install_txt_steps(installed_bundle.bundle) if "openllm" not in s]
    run = host.bash("\n".join(steps))
    assert run.code == 0, f"INSTALL.txt's sealift steps failed:\n{steps}\n{run.err[-3000:]}"
    return host


@pytest.fixture(scope="session")
def bare_host_openllm(bare_host: BareHost) -> Path:
    """INSTALL.txt's openllm steps run on bare_host as written (openllm 0.6.30 from wheels-openllm/, no index):
    the `openllm` command they put beside sealift's."""
    steps = [s for s in install_txt_steps(bare_host.bundle) if "openllm" in s]
    assert steps, "INSTALL.txt has no openllm steps (was the bundle exported --with-openllm?)"
    run = bare_host.bash("\n".join(steps))
    assert run.code == 0, f"INSTALL.txt's openllm steps failed:\n{steps}\n{run.err[-3000:]}"
    return bare_host.cli_bin / "openllm"
