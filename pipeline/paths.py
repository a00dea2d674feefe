"""Where sealift keeps its own state (not the Bento store: that is BENTOML_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def sealift_home() -> Path:
    """$SEALIFT_HOME, default ~/.sealift: venvs, the openllm repo, env files."""
    return Path(os.environ.get("SEALIFT_HOME") or Path.home() / ".sealift")


def bentoml_home() -> Path:
    """The Bento store root, as bentoml resolves it."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def repo_root() -> Path:
    """The directory that holds service.py, bentofile.yaml and pipeline/."""
    return Path(__file__).resolve().parent.parent
