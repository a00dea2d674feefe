"""sealift on Debian 12's own Python (/usr/bin/python3.11, 3.11.2): no tarfile.data_filter, nothing newer than it.

The end-to-end test follows the shared bundle's INSTALL.txt (conftest's
`installed_bundle`: exported with wheels) as a user pastes it, with the system
interpreter as `python3.11`: sealift's venv and its wheels, `sha256sum -c`,
`sealift install` into a fresh HOME, SEALIFT_HOME and BENTOML_HOME (no index, no
pip config, under the network guard, in a loopback-only namespace where one can
be made), then `sealift start` on a free port, one chat with the openai client,
SIGINT, and no process of it left. It runs only where /usr/bin/python3.11 is
3.11.0-3.11.3 (older than tarfile's filters); elsewhere it says why it skipped.

The static test reads every stdlib name the package uses (module imports, module
attributes, keyword arguments) and asks Debian 12's python3.11 and any Python
3.10 found here whether each exists; the few uses newer than those Pythons sit
behind a fallback and are listed in ALLOWED.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sealift.core.offline import guarded_env, netns_prefix, read_guard_log

from conftest import ROOT, Run
from test_start import free_port, ready

pytestmark = pytest.mark.timeout(1200)

SYSTEM_PYTHON = Path("/usr/bin/python3.11")
PACKAGE = ROOT / "pipeline" / "sealift"


def _version(python: str | Path) -> tuple[int, int, int] | None:
    """The interpreter's version, or None if it is absent or does not run."""
    try:
        p = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:3])"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    major, minor, micro = map(int, p.stdout.split())
    return major, minor, micro


def _system_python_skip() -> str | None:
    """Why the end-to-end test cannot prove anything here, or None when it runs."""
    version = _version(SYSTEM_PYTHON) if SYSTEM_PYTHON.is_file() else None
    if version is None:
        return f"{SYSTEM_PYTHON} is absent or does not run (Debian 12's python3.11, 3.11.2, is the subject)"
    if not (3, 11, 0) <= version <= (3, 11, 3):
        return (f"{SYSTEM_PYTHON} is {'.'.join(map(str, version))}, not 3.11.0-3.11.3 "
                "(the Pythons without tarfile.data_filter that this test is about)")
    return None


SKIP = _system_python_skip()


# --------------------------------------------------------------------------- INSTALL.txt, as pasted


def install_txt_part(bundle: Path, part: int) -> list[str]:
    """The shell commands of INSTALL.txt's numbered part `part` (its indented lines, not its comments)."""
    lines = (bundle / "INSTALL.txt").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{part}. "))
    out = []
    for ln in lines[start + 1:]:
        if ln and not ln.startswith(" "):
            break
        if ln.startswith("  ") and ln[2:3] not in ("#", " ", ""):
            out.append(ln[2:])
    return out


def _user_env(root: Path, guard_log: Path, uv_cache: Path) -> dict[str, str]:
    """A bare host's shell: /usr/bin's python3.11 first, a fresh HOME and stores, no index, no pip config,
    nothing of this checkout or its venv; guarded (every Python it starts refuses and logs the network)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "SEALIFT_", "BENTOML_", "PYTHON", "CONDA", "PYENV"))
           and k not in ("VIRTUAL_ENV", "HF_HOME")}
    env.update(
        HOME=str(root / "home"), PATH="/usr/sbin:/usr/bin:/sbin:/bin",
        SEALIFT_HOME=str(root / "sealift"), BENTOML_HOME=str(root / "bentoml"), BENTOML_DO_NOT_TRACK="True",
        PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
        UV_CACHE_DIR=str(uv_cache),  # the run's own uv cache (conftest): the runtime venv unpacks torch into it
    )
    return guarded_env(env, log_path=guard_log)


def _ours(root: Path) -> list[psutil.Process]:
    """Live processes whose command line names a path under root (sealift, bentoml serve, its workers)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and str(root) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _stop(server: subprocess.Popen, root: Path) -> list[str]:
    """Ctrl-C to `sealift start` (as it says), then wait; the command lines of what was still alive 15 s
    later (killed, so that nothing outlives the test)."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    left = _ours(root)
    deadline = time.monotonic() + 15
    while left and time.monotonic() < deadline:  # bentoml's workers take a moment to go
        time.sleep(0.5)
        left = _ours(root)
    names = []
    for proc in left:
        try:
            names.append(" ".join(proc.cmdline()))
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    return names


@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_install_txt_on_debian_12s_python_installs_and_serves(installed_bundle, uv_cache, tmp_path):
    bundle = installed_bundle.bundle
    root = tmp_path / "debian"
    (root / "home").mkdir(parents=True)
    log = root / "net.jsonl"
    env = _user_env(root, log, uv_cache)

    first = [s for s in install_txt_part(bundle, 1) if "openllm" not in s]  # openllm: not the subject here
    second = install_txt_part(bundle, 2)
    start_line = next(s for s in second if s.startswith("sealift start "))
    assert any(s.startswith("python3.11 -m venv ") for s in first), first
    assert any(s.startswith("sealift install ") for s in second), second
    path_line = next(s for s in first if s.startswith("export PATH="))
    cli_python = root / "home" / ".sealift" / "cli" / "bin" / "python"
    script = "\n".join([
        "python3.11 -c 'import sys, tarfile; assert not hasattr(tarfile, \"data_filter\"); print(sys.executable)'",
        *first,
        *[s for s in second if s != start_line],
        f"{cli_python} -c 'import sys; print(*sys.version_info[:3])'",
    ])
    t0 = time.monotonic()
    p = subprocess.run([*(netns_prefix() or []), "bash", "-euo", "pipefail", "-c", script], env=env,
                       cwd=bundle.parent, capture_output=True, text=True, timeout=900)
    install_s = time.monotonic() - t0
    run = Run(p.returncode, p.stdout, p.stderr)
    assert run.code == 0, f"INSTALL.txt failed on {SYSTEM_PYTHON}:\n{script}\n{run.err[-4000:]}\n{run.out[-2000:]}"
    out = run.out.splitlines()
    assert out[0] == str(SYSTEM_PYTHON), out[0]  # `python3.11` was Debian's own
    assert out[-1] == " ".join(map(str, _version(SYSTEM_PYTHON) or ())), out[-1]  # and so is sealift's venv
    installed = json.loads((root / "sealift" / "installed.json").read_text())
    venvs = [Path(e["venv"]) for e in (installed.values() if isinstance(installed, dict) else installed)
             if isinstance(e, dict) and e.get("venv")]
    assert venvs and all((v / "bin" / "python").resolve() == SYSTEM_PYTHON.resolve() for v in venvs), venvs

    port = free_port()
    server_log = root / "start.log"
    t0 = time.monotonic()
    with server_log.open("w") as sink:
        server = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"{path_line}\nexec {start_line} --port {port}"],
                                  env=env, cwd=bundle.parent, stdin=subprocess.DEVNULL, stdout=sink,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not ready(url):
            assert server.poll() is None, server_log.read_text()[-4000:]
            assert time.monotonic() < deadline, server_log.read_text()[-4000:]
            time.sleep(0.5)
        ready_s = time.monotonic() - t0
        import openai

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(model="tiny", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    finally:
        left = _stop(server, root)  # also when the test failed: nothing of it outlives the test
    assert server.returncode in (0, 130, -signal.SIGINT), server_log.read_text()[-4000:]
    assert not left, left
    text = server_log.read_text()
    assert f"{SYSTEM_PYTHON}" in text or str(venvs[0]) in text, text[-2000:]
    assert str(ROOT / "pipeline") not in text  # served from the bundle's sealift, not this checkout
    assert read_guard_log(log) == []  # nothing reached for the network
    print(f"INSTALL.txt on {SYSTEM_PYTHON}: bootstrap + install {install_s:.1f} s, start until ready {ready_s:.1f} s")


# --------------------------------------------------------------------------- stdlib names, read statically

#: Uses newer than Python 3.10.0 / 3.11.2, each behind a fallback: (file under sealift/, module, attribute).
ALLOWED = {
    ("core/tarsafe.py", "tarfile", "data_filter"),  # only where hasattr(tarfile, "data_filter")
    ("core/tarsafe.py", "tarfile", "FilterError"),
    ("bundle/wheelhouse.py", "tomllib", ""),  # 3.11; tomli (bentoml's dependency on 3.10) otherwise
}

#: Added in a 3.10 or 3.11 bugfix release (3.10.12 / 3.11.4 and later): a Python 3.10 found here may be newer
#: than 3.10.0, so these are refused by name. (module, attribute or "name=" of a keyword argument).
BUGFIX_RELEASE_ADDITIONS = {
    ("tarfile", "data_filter"), ("tarfile", "tar_filter"), ("tarfile", "fully_trusted_filter"),
    ("tarfile", "FilterError"), ("tarfile", "AbsolutePathError"), ("tarfile", "OutsideDestinationError"),
    ("tarfile", "SpecialFileError"), ("tarfile", "AbsoluteLinkError"), ("tarfile", "LinkOutsideDestinationError"),
    ("tarfile", "TarInfo.replace"), ("tarfile", "TarFile.extraction_filter"), ("tarfile", "filter="),
    ("shutil", "filter="), ("sys", "set_int_max_str_digits"), ("sys", "get_int_max_str_digits"),
    ("os", "path.ALLOW_MISSING"),
}


def stdlib_uses(package: Path) -> list[tuple[str, str, list[str], str]]:
    """(module, dotted attribute or "", keyword names, "file:line") for every stdlib name the package uses."""
    std = set(sys.stdlib_module_names)
    uses: dict[tuple[str, str, str, tuple[str, ...]], int] = {}  # each use once per file, at its first line
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(package).as_posix()
        alias: dict[str, tuple[str, str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in std:
                        uses.setdefault((where, a.name, "", ()), node.lineno)
                        alias[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], "")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in std and node.module != "__future__":
                for a in node.names:
                    uses.setdefault((where, node.module, a.name, ()), node.lineno)
                    alias[a.asname or a.name] = (node.module, a.name)
        for node in ast.walk(tree):
            keywords: list[str] = []
            target = node
            if isinstance(node, ast.Call):
                keywords = [k.arg for k in node.keywords if k.arg]
                target = node.func
            chain = []
            while isinstance(target, ast.Attribute):
                chain.append(target.attr)
                target = target.value
            if isinstance(target, ast.Name) and target.id in alias and (chain or keywords):
                module, first = alias[target.id]
                attr = ".".join(p for p in [first, *reversed(chain)] if p)
                uses.setdefault((where, module, attr, tuple(keywords)), node.lineno)
    return [(module, attr, list(kw), f"{where}:{line}") for (where, module, attr, kw), line in sorted(uses.items())]


_CHECK = r"""
import importlib, inspect, json, sys
bad = []
for module, attr, keywords, where in json.load(sys.stdin):
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        bad.append([where, module, "", f"import {module}: {exc}"])
        continue
    parts = attr.split(".") if attr else []
    for i, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join([module, *parts[:i + 1]]))
            continue
        except ImportError:
            pass
        if i == 0 or inspect.ismodule(obj) or inspect.isclass(obj):  # not an instance's (unknowable here)
            bad.append([where, module, attr, f"{module}.{'.'.join(parts[:i + 1])} does not exist"])
        obj = None
        break
    if obj is None or not keywords or not callable(obj):
        continue
    try:
        params = dict(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        continue
    if module == "subprocess" and attr in ("run", "call", "check_call", "check_output"):  # **kwargs go to Popen
        params = {n: p for n, p in params.items() if p.kind != p.VAR_KEYWORD}
        params.update(inspect.signature(importlib.import_module("subprocess").Popen).parameters)
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        continue
    for k in keywords:
        if k not in params:
            bad.append([where, module, attr, f"{module}.{attr}() takes no {k}="])
print(json.dumps(bad))
"""


def test_nothing_from_a_bugfix_release_is_used_without_a_fallback():
    """3.10.0 is not installed here: what later 3.10.x/3.11.x releases added is looked for by name."""
    found = []
    for module, attr, keywords, where in stdlib_uses(PACKAGE):
        names = {attr, *(f"{k}=" for k in keywords)} | {attr.split(".", 1)[-1]}
        for name in names:
            if (module, name) in BUGFIX_RELEASE_ADDITIONS and (where.split(":")[0], module, name) not in ALLOWED:
                found.append(f"{where}: {module}.{name}")
    assert not found, "newer than Python 3.10.0 / 3.11.2, with no fallback:\n" + "\n".join(found)


def _older_pythons() -> list[str]:
    """Debian 12's python3.11 (3.11.2) and any Python 3.10 on this host (pyenv's included)."""
    found = [str(SYSTEM_PYTHON)] if SYSTEM_PYTHON.is_file() else []
    for candidate in [shutil.which("python3.10"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]:
        v = _version(candidate) if candidate else None
        if v and v[:2] == (3, 10):
            found.append(candidate)
            break
    return found


@pytest.mark.parametrize("python", _older_pythons() or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"neither {SYSTEM_PYTHON} nor a Python 3.10 is on this host"))])
def test_every_stdlib_name_sealift_uses_exists_on_older_pythons(python):
    uses = stdlib_uses(PACKAGE)
    assert len(uses) > 300  # the scan sees the package
    p = subprocess.run([python, "-I", "-c", _CHECK], input=json.dumps(uses), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    bad = [b for b in json.loads(p.stdout) if (b[0].split(":")[0], b[1], b[2]) not in ALLOWED]
    assert not bad, f"{python} ({'.'.join(map(str, _version(python) or ()))}) lacks:\n" + \
        "\n".join(f"  {where}: {why}" for where, _, _, why in bad)
