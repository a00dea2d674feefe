"""Make `openllm serve NAME` find and run an installed bundle with no network (openllm 0.6.30).

    register(bento_tag=, bento_path=, models=, venv=, bundle=) -> Registration
    environment() -> dict            what the env file holds
    env_text(name) -> str            `export K=V` lines for `eval "$(sealift env)"`
    serve_commands(bento_tag, venv)  the three ways to serve it

What openllm 0.6.30 does, and what sealift gives it (see DESIGN.md):
- `openllm serve` first runs `repo update`, which deletes its cached repo and
  clones it from GitHub; offline that leaves no model. With
  `OPENLLM_TEST_REPO=<dir>` it skips every update and reads
  `<dir>/bentoml/bentos/<name>/<version>/bento.yaml` as its only repo, then runs
  `bentoml serve NAME:VERSION` with `BENTOML_HOME=<dir>/bentoml`, so the models
  must be in `<dir>/bentoml/models/` too. sealift's repo is
  `$SEALIFT_HOME/openllm-repo/`, whose entries are symlinks into the real Bento
  store: no byte of the weights is copied.
- It makes one venv per bento (`~/.openllm/venv/<md5 of the requirements>`) with
  `uv venv -p <python>`, `uv pip install bentoml` and `uv pip install -r
  requirements.txt`; uv reads `UV_OFFLINE`, `UV_NO_INDEX` and `UV_FIND_LINKS`
  from the environment, so the env file points it at `$SEALIFT_HOME/wheels`,
  where install keeps the bundle's wheels.
- openllm itself pins bentoml==1.4.8 and openai==1.73.0, and crashes with
  click>=8.2 / typer>=0.16: install it in its own venv,
  `pip install openllm==0.6.30 'click<8.2' 'typer<0.16'`.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from sealift import paths
from sealift.errors import UserError
from sealift.manifest import write_atomic
from sealift.offline import OFFLINE_ENV

REPO_DIRNAME = "openllm-repo"
ENV_FILENAME = "env"
INSTALLED_FILENAME = "installed.json"
WHEELS_DIRNAME = "wheels"


def repo_dir() -> Path:
    """The directory OPENLLM_TEST_REPO names: `bentoml/bentos/...` and `bentoml/models/...` inside."""
    return paths.sealift_home() / REPO_DIRNAME


def env_file() -> Path:
    return paths.sealift_home() / ENV_FILENAME


def wheels_dir() -> Path:
    """Where install keeps the wheels of every bundle (uv's and pip's find-links)."""
    return paths.sealift_home() / WHEELS_DIRNAME


def environment() -> dict[str, str]:
    """The offline serving environment: openllm's repo, uv and pip with local wheels only, no telemetry."""
    wheels = str(wheels_dir())
    return {
        **OFFLINE_ENV,
        "BENTOML_HOME": str(paths.bentoml_home().absolute()),
        "OPENLLM_TEST_REPO": str(repo_dir()),
        "UV_OFFLINE": "1",
        "UV_NO_INDEX": "1",
        "UV_FIND_LINKS": wheels,
        "UV_PYTHON_DOWNLOADS": "never",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": wheels,
    }


def _link(target: Path, link: Path) -> None:
    """Make `link` a symlink to `target`, replacing whatever is there, atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        raise UserError(f"{link} is a real directory, not sealift's link", hint=f"remove {link} and install again")
    os.replace(tmp, link)


def _set_latest(name_dir: Path, version: str) -> None:
    write_atomic(name_dir / "latest", version.encode())


@dataclass
class Registration:
    repo: Path
    env_file: Path


def register(*, bento_tag: str, bento_path: Path, models: dict[str, Path], venv: Path | None,
             bundle: Path | None) -> Registration:
    """Link the bento and its models into openllm's repo layout, write the env file, record the install."""
    root = repo_dir() / "bentoml"
    name, version = bento_tag.split(":")
    _link(bento_path.resolve(), root / "bentos" / name / version)
    _set_latest(root / "bentos" / name, version)
    for tag, path in models.items():
        mname, mversion = tag.split(":")
        _link(path.resolve(), root / "models" / mname / mversion)
        _set_latest(root / "models" / mname, mversion)
    write_env_file(environment())
    installed = read_installed()
    installed[name] = {
        "bento_tag": bento_tag,
        "model_tags": sorted(models),
        "venv": str(venv) if venv else None,
        "bundle": str(bundle) if bundle else None,
        "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(paths.sealift_home() / INSTALLED_FILENAME, (json.dumps(installed, indent=1) + "\n").encode())
    return Registration(repo_dir(), env_file())


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


def serve_commands(bento_tag: str, venv: Path | None) -> list[str]:
    """The three ways to serve an installed bento, as shell lines."""
    name = bento_tag.split(":")[0]
    bentoml_line = (f'eval "$(sealift env {name})" && bentoml serve {bento_tag}    # the runtime venv {venv}'
                    if venv else f'eval "$(sealift env)" && bentoml serve {bento_tag}')
    return [
        f"sealift start {name}",
        f'eval "$(sealift env)" && openllm serve {name}    # openllm 0.6.30 in its own venv: click<8.2, typer<0.16',
        bentoml_line,
    ]
