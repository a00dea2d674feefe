"""The runtime venv an install makes: uv, local wheels only, no index, offline; reused when it is complete."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from sealift.bundle.target import override_lines
from sealift.core.atomic import write_atomic
from sealift.core.errors import UserError
from sealift.core.offline import offline_env

__all__ = ["VENV_MARKER", "create_venv"]

#: Written last into a finished venv: the sha256 of the requirements it was made from.
VENV_MARKER = ".sealift-venv.json"


def _tail(text: str, n: int = 4) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def create_venv(venv: Path, *, python_version: str, requirements: Path, wheels: Path,
                left_out: tuple[str, ...] | list[str] = ()) -> str:
    """The runtime venv from local wheels only (uv, no index, offline); "created" or "present".

    `left_out`: distributions the bundle leaves out on purpose (manifest.json's needs.wheels_left_out, signed):
    dropped from the install through a uv overrides file, as the export's resolution dropped them.

    A venv holding sealift's marker for these same requirements is reused; a
    half-made one is removed and made again.
    """
    reqs = requirements.read_text()
    overrides = override_lines(tuple(left_out))
    key = hashlib.sha256((reqs + "".join(f"\n{o}" for o in overrides)).encode()).hexdigest()
    marker = venv / VENV_MARKER
    try:
        if json.loads(marker.read_text()).get("requirements_sha256") == key:
            return "present"
    except (OSError, ValueError):
        pass
    if venv.exists():
        shutil.rmtree(venv)
    env = offline_env(UV_OFFLINE="1", UV_NO_INDEX="1", UV_PYTHON_DOWNLOADS="never", UV_FIND_LINKS=str(wheels))
    env.pop("VIRTUAL_ENV", None)
    uv = [sys.executable, "-m", "uv"]
    extra: list[str] = []
    if overrides:
        venv.parent.mkdir(parents=True, exist_ok=True)
        override_file = venv.parent / f".{venv.name}-overrides.txt"
        write_atomic(override_file, "".join(f"{o}\n" for o in overrides).encode())
        extra = ["--overrides", str(override_file)]
    steps = [
        [*uv, "venv", "--quiet", "--python", _python_for(python_version), str(venv)],
        [*uv, "pip", "install", "--quiet", "--offline", "--no-index", "--find-links", str(wheels),
         "--python", str(venv / "bin" / "python"), "-r", str(requirements), *extra],
    ]
    for cmd in steps:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise UserError(f"the runtime venv could not be made from {wheels}: {_tail(p.stderr)}",
                            hint="export the bundle with wheels for this host's platform and Python "
                                 "(--platform, --python-version), or install with --no-venv")
    write_atomic(marker, json.dumps({"requirements_sha256": key, "python": python_version}).encode())
    return "created"


def _python_for(version: str) -> str:
    """This interpreter if it is the version asked for (uv may not find it on PATH), else the version for uv."""
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return getattr(sys, "_base_executable", None) or sys.executable
    return version
