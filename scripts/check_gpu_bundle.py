"""The real GPU bundle, end to end on a build host: export (default flags), proof, offline install.

    python scripts/check_gpu_bundle.py [--work DIR] [--cuda 13.0] [--keep]

Downloads the whole vLLM stack from the registry the first time (~3.7 GB for
vllm 0.32.0 + torch 2.13.0+cu130 + nvidia-*; kept in DIR/wheel-cache for the
next run). Not a test: CI cannot download that on every run. It makes a tiny
Llama, imports it, builds a gpu bento, exports it with the default flags (the
export runs the proof: offline venv from the bundle's wheels, imports,
torch.version.cuda, vLLM's serve parser over the bento's command lines), then
installs the bundle on a second empty host with no index (`--skip-host-check`
where this host has no NVIDIA driver), and prints the figures:

    size, wheels, export s (and the proof's s within it), install s

Exit 0 when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

SEALIFT = [sys.executable, "-m", "sealift.cli"]


def run(args: list[str], env: dict[str, str], what: str) -> tuple[dict, float]:
    t = time.monotonic()
    p = subprocess.run([*SEALIFT, *args, "--json"], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"{what} failed (exit {p.returncode})")
    return json.loads(p.stdout), seconds


def host(root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BENTOML_HOME=str(root / "bentoml"), SEALIFT_HOME=str(root / "sealift"), BENTOML_DO_NOT_TRACK="True",
               HF_HUB_OFFLINE="1", **extra)
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sealift-gpu-check")
    ap.add_argument("--cuda", default=None, help="passed to sealift export --cuda (default: export's default)")
    ap.add_argument("--keep", action="store_true", help="keep the bundle and hosts (the wheel cache is always kept)")
    args = ap.parse_args()
    from make_tiny_model import make_model

    work = args.work
    cache = work / "wheel-cache"
    for d in ("build-host", "airgap-host", "usb", "model"):
        shutil.rmtree(work / d, ignore_errors=True)
    make_model(work / "model")
    build = host(work / "build-host", SEALIFT_WHEEL_CACHE=str(cache))
    run(["import", str(work / "model"), "--name", "tiny"], build, "import")
    run(["build", "tiny", "--target", "gpu"], build, "build --target gpu")
    export_args = ["export", "tiny", str(work / "usb")] + (["--cuda", args.cuda] if args.cuda else [])
    exported, export_s = run(export_args, build, "export")
    proof = exported.get("proof", {})
    airgap = host(work / "airgap-host", PIP_NO_INDEX="1", UV_NO_INDEX="1", UV_OFFLINE="1")
    install_args = ["install", exported["bundle"]]
    if not shutil.which("nvidia-smi"):
        install_args.append("--skip-host-check")  # no driver here: the venv is still made and imports
    installed, install_s = run(install_args, airgap, "install")
    figures = {
        "bundle": exported["bundle"],
        "size_bytes": exported["total_bytes"],
        "wheels": exported["wheels"],
        "wheel_bytes": exported["wheel_bytes"],
        "export_s": round(export_s, 1),
        "proof_s": proof.get("total_seconds"),
        "proof_steps_s": proof.get("seconds"),
        "proof": proof.get("summary") or proof.get("skipped"),
        "vllm_lines": proof.get("vllm_lines"),
        "needs": exported.get("needs"),
        "install_s": round(install_s, 1),
        "install_timings": installed.get("timings"),
    }
    print(json.dumps(figures, indent=2))
    if not args.keep:
        for d in ("build-host", "airgap-host", "usb"):
            shutil.rmtree(work / d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
