"""sealift's own record of what `sealift install` put on this host: the install registry, the env file and the kept wheels.

    record_install(bento_tag=, model_tags=, venv=, bundle=)   installed.json gains (or replaces) the entry
    read_installed() -> {name: entry}                         what `sealift start` and `doctor` read
    environment() -> dict                                     what the env file holds
    write_env_file(env) / read_env_file()                     $SEALIFT_HOME/env
    env_text(name) -> str                                     `export K=V` lines for `eval "$(sealift env)"`

The kept wheels ($SEALIFT_HOME/wheels, sealift.core.paths.kept_wheels_dir) are every
bundle's wheels, where uv and pip (and openllm's venv builder) find them offline.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shlex
from pathlib import Path
from typing import TypeVar

from sealift.core import paths
from sealift.core.atomic import write_atomic
from sealift.core.errors import UserError
from sealift.core.offline import OFFLINE_ENV

__all__ = [
    "with_signers",
    "ENV_FILENAME",
    "INSTALLED_FILENAME",
    "env_file",
    "env_text",
    "environment",
    "read_env_file",
    "read_installed",
    "record_install",
    "write_env_file",
]

ENV_FILENAME = "env"
INSTALLED_FILENAME = "installed.json"


def env_file() -> Path:
    return paths.sealift_home() / ENV_FILENAME


def environment() -> dict[str, str]:
    """The offline serving environment: openllm's repo, uv and pip with local wheels only, no telemetry."""
    wheels = str(paths.kept_wheels_dir())
    return {
        **OFFLINE_ENV,
        "BENTOML_HOME": str(paths.bentoml_home().absolute()),
        "OPENLLM_TEST_REPO": str(paths.openllm_repo()),
        "UV_OFFLINE": "1",
        "UV_NO_INDEX": "1",
        "UV_FIND_LINKS": wheels,
        "UV_PYTHON_DOWNLOADS": "never",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": wheels,
    }


def record_install(*, bento_tag: str, model_tags: list[str], venv: Path | None, bundle: Path | None,
                   signer: dict | None = None) -> None:
    """Record the install of bento_tag (one entry per bento name: the newest install wins)."""
    installed = read_installed()
    installed[bento_tag.split(":")[0]] = {
        "bento_tag": bento_tag,
        "model_tags": sorted(model_tags),
        "venv": str(venv) if venv else None,
        "bundle": str(bundle) if bundle else None,
        "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signer": signer,  # sealift.bundle.signing: who signed the bundle's SHA256SUMS (None: unsigned)
    }
    write_atomic(paths.sealift_home() / INSTALLED_FILENAME, (json.dumps(installed, indent=1) + "\n").encode())


def write_env_file(env: dict[str, str]) -> Path:
    """`KEY=value` lines (shell-quoted): `set -a; . FILE`, systemd's EnvironmentFile and `sealift env` read it."""
    lines = ["# written by `sealift install`: the offline serving environment (see `sealift env`)"]
    lines += [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    path = env_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path


def read_env_file(path: Path | None = None) -> dict[str, str]:
    path = path or env_file()
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        parsed = shlex.split(value)
        env[key.strip()] = parsed[0] if parsed else ""
    return env


def read_installed() -> dict[str, dict]:
    try:
        return json.loads((paths.sealift_home() / INSTALLED_FILENAME).read_text())
    except (OSError, ValueError):
        return {}


def env_text(name: str | None) -> str:
    """`export K=V` lines for eval; with NAME, also that install's runtime venv first on PATH."""
    path = env_file()
    if not path.is_file():
        raise UserError(f"no environment file at {path}", hint="run `sealift install BUNDLE` first")
    env = read_env_file(path)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    if name is not None:
        installed = read_installed()
        entry = installed.get(name.split(":")[0])
        if entry is None:
            known = ", ".join(sorted(installed)) or "none"
            raise UserError(f"{name!r} is not installed here (installed: {known})", hint="run `sealift install BUNDLE`")
        lines.append(f"export SEALIFT_BENTO={shlex.quote(entry['bento_tag'])}")
        if entry.get("venv"):
            venv = entry["venv"]
            lines.append(f"export VIRTUAL_ENV={shlex.quote(venv)}")
            lines.append(f'export PATH={shlex.quote(venv + "/bin")}:"$PATH"')
    return "\n".join(lines) + "\n"


_M = TypeVar("_M")


def with_signers(models: list[_M]) -> list[_M]:
    """Each model (a StoredModel) with `signed_by` set from the install registry: who signed its bundle."""
    by_tag: dict[str, str] = {}
    entries = sorted(read_installed().values(), key=lambda e: e.get("installed_at") or "")
    for entry in entries:  # the newest install of a model wins
        signer = entry.get("signer") or {}
        who = signer.get("identity") or (f"{signer['fingerprint']} (unchecked)" if signer.get("fingerprint") else None)
        for tag in entry.get("model_tags") or []:
            if who:
                by_tag[tag] = who
            else:
                by_tag.pop(tag, None)
    return [dataclasses.replace(m, signed_by=by_tag.get(m.tag)) for m in models]  # type: ignore[type-var]
