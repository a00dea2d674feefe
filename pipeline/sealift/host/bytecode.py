"""The runtime venv's bytecode, written once at install for the modules the server imports.

    warm_bytecode(python, model_dirs, bento_src) -> Warmed  (seconds, names imported, modules loaded, error)

uv installs without compiling (pip compiles by default). The server then compiles
every module it imports (~2,100 files for torch, transformers and bentoml) on one
core at each start where it cannot keep the result: a read-only venv (a pod's
image), or PYTHONDONTWRITEBYTECODE=1 (a common Dockerfile line; this build host
has it). Measured on a 2-core host, tiny model: `sealift start` until ready
18-19.5 s with no .pyc, 6.7-7.0 s with them.

`uv pip install --compile-bytecode` compiles every file of every wheel (10,800 for
the CPU stack: install 3.9 s -> 20.3 s on 2 cores). This imports what the server
imports instead, in a child of the venv's Python with bytecode writing on, so
exactly those modules are compiled: the cost the first start would pay, paid once
here. A module that fails to import is skipped (the server reports its own
errors); nothing here loads weights or opens a socket.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sealift.core.offline import offline_env

__all__ = ["SERVER_MODULES", "Warmed", "modules_for", "warm_bytecode"]

#: What the bento's worker imports, whichever engine: BentoML's worker and HTTP app, the service's
#: sealift modules, and the model stack the transformers backend loads (vLLM's own imports are left to its start).
SERVER_MODULES = (
    "bentoml", "_bentoml_impl.worker.service", "_bentoml_impl.server.app", "uvicorn", "starlette",
    "sealift.core.offline", "sealift.serving.app", "sealift.serving.transformers_backend", "sealift.serving.batching",
    "torch", "transformers", "transformers.models.auto.modeling_auto", "transformers.generation.utils",
    "safetensors.torch", "tokenizers",
)

SCRIPT = r"""
import importlib, json, sys
sys.dont_write_bytecode = False
done = []
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
        done.append(name)
    except Exception:
        pass
print(json.dumps({"imported": done, "modules": len(sys.modules)}))
"""


@dataclass
class Warmed:
    seconds: float
    imported: int  # of the names asked for
    modules: int  # in sys.modules at the end: what was compiled, at most
    error: str = ""


def modules_for(model_dirs: list[Path]) -> list[str]:
    """SERVER_MODULES and each model's modeling module (from its config.json's model_type)."""
    names = list(SERVER_MODULES)
    for d in model_dirs:
        try:
            kind = json.loads((Path(d) / "config.json").read_text()).get("model_type")
        except (OSError, ValueError):
            continue
        if isinstance(kind, str) and kind.replace("_", "").replace("-", "").isalnum():
            family = kind.replace("-", "_")
            names.append(f"transformers.models.{family}.modeling_{family}")
    return names


def warm_bytecode(python: Path, model_dirs: list[Path], bento_src: Path, *, timeout: float = 600) -> Warmed:
    """Import the server's modules with the venv's Python so that their .pyc files are written; never raises.

    From the bento's src/, as the server runs: its own copy of sealift.serving is the one imported.
    """
    env = offline_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for k in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPYCACHEPREFIX"):
        env.pop(k, None)
    t = time.monotonic()
    try:
        p = subprocess.run([str(python), "-c", SCRIPT, json.dumps(modules_for(model_dirs))], env=env, cwd=bento_src,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        found = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else {}
        error = "" if found else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:200]
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        found, error = {}, str(exc)[:200]
    return Warmed(seconds=round(time.monotonic() - t, 2), imported=len(found.get("imported", [])),
                  modules=int(found.get("modules", 0)), error=error)
