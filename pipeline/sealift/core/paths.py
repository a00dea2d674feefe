"""Where sealift keeps its own state (not the Bento store: that is BENTOML_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def sealift_home() -> Path:
    """$SEALIFT_HOME, default ~/.sealift: venvs, the openllm repo, env files."""
    return Path(os.environ.get("SEALIFT_HOME") or Path.home() / ".sealift")


def openllm_repo() -> Path:
    """$SEALIFT_HOME/openllm-repo: what OPENLLM_TEST_REPO names (sealift.host.openllm links installed bentos there)."""
    return sealift_home() / "openllm-repo"


def kept_wheels_dir() -> Path:
    """$SEALIFT_HOME/wheels: where install keeps every bundle's wheels (uv's and pip's find-links offline)."""
    return sealift_home() / "wheels"


def bentoml_home() -> Path:
    """The Bento store root, as bentoml resolves it."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def package_dir() -> Path:
    """The installed `sealift` package (site-packages/sealift, or pipeline/sealift in a checkout)."""
    return Path(__file__).resolve().parent.parent


def bento_sources() -> Path:
    """The recipe every build starts from: `service.py` and `bentofile.yaml`, shipped inside the package.

    The checkout's top-level service.py and bentofile.yaml are links to these, so a bento
    built from the wheel and one built from the checkout are made from the same files.
    """
    return package_dir() / "bento" / "recipe"


def repo_root() -> Path:
    """The source checkout: the directory that holds pyproject.toml and pipeline/ (when there is one)."""
    return package_dir().parent.parent
