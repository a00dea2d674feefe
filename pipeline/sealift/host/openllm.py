"""Make `openllm serve NAME` find and run an installed bundle with no network (openllm 0.6.30).

    register(bento_tag=, bento_path=, models=) -> the repo directory
    serve_commands(bento_tag, venv)   the three ways to serve it

What openllm 0.6.30 does, and what sealift gives it (measured with 0.6.30):
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
  from the environment, so the env file (sealift.host.registry) points it at
  `$SEALIFT_HOME/wheels`, where install keeps the bundle's wheels.
- openllm itself pins bentoml==1.4.8 and openai==1.73.0, and crashes with
  click>=8.2 / typer>=0.16: install it in its own venv,
  `pip install openllm==0.6.30 'click<8.2' 'typer<0.16'`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sealift.bundle.format import OPENLLM_REQUIREMENTS
from sealift.core import paths
from sealift.core.atomic import write_atomic
from sealift.core.errors import UserError

__all__ = ["OPENLLM_REQUIREMENTS", "register", "repo_dir", "serve_commands"]



def repo_dir() -> Path:
    """The directory OPENLLM_TEST_REPO names: `bentoml/bentos/...` and `bentoml/models/...` inside."""
    return paths.openllm_repo()


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


def register(*, bento_tag: str, bento_path: Path, models: dict[str, Path]) -> Path:
    """Link the bento and its models into openllm's repo layout (no byte copied); the repo directory."""
    root = repo_dir() / "bentoml"
    name, version = bento_tag.split(":")
    _link(bento_path.resolve(), root / "bentos" / name / version)
    _set_latest(root / "bentos" / name, version)
    for tag, path in models.items():
        mname, mversion = tag.split(":")
        _link(path.resolve(), root / "models" / mname / mversion)
        _set_latest(root / "models" / mname, mversion)
    return repo_dir()


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
