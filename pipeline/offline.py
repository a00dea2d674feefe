"""The offline environment every sealift runtime process runs under.

`OFFLINE_ENV` is what `sealift start`, the bento (its `envs`), the openllm env
file and the install step all set: Hugging Face, transformers, datasets, BentoML
analytics, vLLM usage stats and generic DO_NOT_TRACK all off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
