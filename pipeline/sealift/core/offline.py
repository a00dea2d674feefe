"""The offline environment every sealift runtime process runs under.

`OFFLINE_ENV` is what `sealift start`, the bento (its `envs`), the openllm env
file and the install step all set: Hugging Face, transformers, datasets, BentoML
analytics, vLLM usage stats and generic DO_NOT_TRACK all off.

The network guard (`install_network_guard`, `guarded_env`) refuses and counts
every connection or DNS lookup that is not to loopback, in a process and in
every Python it starts; `netns_prefix` runs a command where only loopback exists.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "UV_OFFLINE": "1",
}


def apply_offline_env(environ: dict[str, str] | None = None) -> None:
    """Set OFFLINE_ENV in this process (os.environ) or in the given mapping."""
    target = os.environ if environ is None else environ
    target.update(OFFLINE_ENV)


def offline_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """A copy of `base` (default os.environ) with OFFLINE_ENV and `extra` set: for subprocesses."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env


# --------------------------------------------------------------------------- the network guard
#
# The guard itself lives in pipeline/_guard/sealift_net_guard.py (standard library
# only) so that Pythons without sealift installed (the runtime venv, bentoml's
# workers, openllm's venv) can run it from sealift/_guard/sitecustomize.py.

NET_GUARD_ENV = "SEALIFT_NET_GUARD"
NET_GUARD_LOG_ENV = "SEALIFT_NET_GUARD_LOG"


def guard_dir() -> Path:
    """The directory that guarded processes get first on PYTHONPATH (holds sitecustomize.py)."""
    return Path(__file__).resolve().parent / "_guard"


def _guard_module() -> ModuleType:
    """The guard module, loaded once under its top-level name, the same one sitecustomize uses."""
    module = sys.modules.get("sealift_net_guard")
    if module is None:
        spec = importlib.util.spec_from_file_location("sealift_net_guard", guard_dir() / "sealift_net_guard.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["sealift_net_guard"] = module
        spec.loader.exec_module(module)
    return module


def install_network_guard(log_path: str | os.PathLike[str] | None = None, *, propagate: bool = True) -> None:
    """Refuse and count every non-loopback connection and DNS lookup in this process.

    Refused attempts raise ConnectionRefusedError (connects) or socket.gaierror
    (lookups) before anything reaches the kernel, and are appended as JSON lines
    to `log_path` (or $SEALIFT_NET_GUARD_LOG). With `propagate` (the default),
    os.environ is set so that every Python subprocess is guarded as well.
    Idempotent.
    """
    _guard_module().install(str(log_path) if log_path else None, propagate=propagate)


def network_guard_installed() -> bool:
    return "sealift_net_guard" in sys.modules and bool(sys.modules["sealift_net_guard"].installed())


def guarded_env(
    base: Mapping[str, str] | None = None, *, log_path: str | os.PathLike[str] | None = None, **extra: str
) -> dict[str, str]:
    """`offline_env(base)` plus the guard: for subprocesses that must never reach the network.

    Sets SEALIFT_NET_GUARD=1 and puts `guard_dir()` first on PYTHONPATH, so the
    child Python and every Python it starts (bentoml workers, uv/openllm venvs
    that inherit the environment) install the guard before running any code.
    `log_path` (default: whatever `base` already says) collects the attempts.
    """
    env = offline_env(base, **extra)
    env[NET_GUARD_ENV] = "1"
    if log_path is not None:
        env[NET_GUARD_LOG_ENV] = str(log_path)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    here = str(guard_dir())
    env["PYTHONPATH"] = os.pathsep.join([here, *(p for p in parts if p != here)])
    return env


def read_guard_log(path: str | os.PathLike[str], *, installs: bool = False) -> list[dict[str, Any]]:
    """The refused attempts recorded in a guard log (empty if the file does not exist).

    With `installs`, only the "installed" lines instead (written when
    SEALIFT_NET_GUARD_TRACE=1): one per process the guard was active in.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [e for e in entries if (e.get("op") == "installed") == installs]


@functools.lru_cache(maxsize=1)
def netns_prefix() -> list[str] | None:
    """A command prefix that runs a command in a fresh network namespace with only loopback up.

    `[*netns_prefix(), "python", ...]`: `unshare -n` as root, `unshare -rn` (a
    user namespace) otherwise. None where neither works (no unshare, no `ip`,
    namespaces disabled). Inside, 127.0.0.1 is a private loopback: run the
    server and its client in the same namespace.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        return None
    flags = ["-n"] if os.geteuid() == 0 else ["-rn"]
    for flag in dict.fromkeys([*flags, "-rn"]):
        prefix = [unshare, flag, "--", "sh", "-c", f'"{ip}" link set lo up && exec "$@"', "sealift-netns"]
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None
