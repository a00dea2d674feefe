#!/usr/bin/env python3
"""`make demo`: the whole sealift path on a tiny model, end to end, offline.

  1. make a tiny model (random Llama weights, a trained tokenizer)
  2. sealift import      -> the online host's Bento store
  3. sealift build       -> a Bento (target cpu)
  4. sealift export      -> a bundle on a "USB" directory
  5. sealift install     -> a second, empty Bento store: the air-gapped host
  6. sealift start       -> an OpenAI-compatible server on 127.0.0.1
  7. one chat question with the `openai` client, then stop

Each step's time and size is printed. Everything lives under demo-out/
(deleted first). The bundle carries the Python wheels (~280 MB, downloaded
once into a cache) and install makes the offline venv from them, as on a real
air-gapped host; DEMO_WHEELS=0 skips both for a quicker run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
NAME = "tiny-chat"
sys.path.insert(0, str(ROOT / "scripts"))


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def host_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BENTOML_HOME=str(OUT / name / "bentoml"),
        SEALIFT_HOME=str(OUT / name / "sealift"),
        HF_HOME=str(OUT / name / "hf"),
        BENTOML_DO_NOT_TRACK="True",
        PYTHONUNBUFFERED="1",
    )
    # Wheels downloaded for the bundle outlive demo-out/, so a second demo needs no download.
    env.setdefault("SEALIFT_WHEEL_CACHE", str(Path.home() / ".cache" / "sealift" / "wheels"))
    return env


ROWS: list[tuple[str, float, str]] = []


def step(title: str, args: list[str], env: dict[str, str], size_path: Path | None = None) -> str:
    print(f"\n\033[1m$ sealift {' '.join(args)}\033[0m", flush=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "sealift.cli", *args], env=env, cwd=ROOT, text=True,
                       stdout=subprocess.PIPE)
    dt = time.perf_counter() - t0
    print(p.stdout, end="")
    if p.returncode != 0:
        print(f"demo: `sealift {' '.join(args)}` exited {p.returncode}", file=sys.stderr)
        sys.exit(p.returncode)
    ROWS.append((title, dt, human(size_of(size_path)) if size_path and size_path.exists() else ""))
    return p.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    wheels = os.environ.get("DEMO_WHEELS", "1") != "0"

    from make_tiny_model import make_model

    t0 = time.perf_counter()
    model_dir = make_model(OUT / "downloads" / NAME)
    ROWS.append(("make tiny model", time.perf_counter() - t0, human(size_of(model_dir))))
    print(f"tiny model written to {model_dir}")

    online, airgap = host_env("online-host"), host_env("airgapped-host")
    step("import", ["import", str(model_dir), "--name", NAME], online, OUT / "online-host" / "bentoml" / "models")
    step("build", ["build", NAME, "--target", "cpu"], online, OUT / "online-host" / "bentoml" / "bentos")
    usb = OUT / "usb"
    export_args = ["export", NAME, str(usb)] + ([] if wheels else ["--no-wheels"])
    step("export", export_args, online, usb)
    bundles = sorted(p for p in usb.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
    bundle = bundles[-1]
    install_args = ["install", str(bundle)] + ([] if wheels else ["--no-venv"])
    step("install (air-gapped host)", install_args, airgap, OUT / "airgapped-host" / "bentoml")

    port = free_port()
    print(f"\n\033[1m$ sealift start {NAME} --port {port}\033[0m  (on the air-gapped host's store)", flush=True)
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "sealift.cli", "start", NAME, "--port", str(port)],
                              env=airgap, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            if server.poll() is not None:
                print(f"demo: the server exited with {server.returncode}", file=sys.stderr)
                return 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                print("demo: the server did not get ready in 300 s", file=sys.stderr)
                return 1
            time.sleep(0.5)
        ROWS.append(("start until ready", time.perf_counter() - t0, ""))

        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        question = "What is the capital of France?"
        t0 = time.perf_counter()
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0
        )
        ROWS.append(("one chat request", time.perf_counter() - t0, f"{reply.usage.completion_tokens} tokens"))
        print(f"\nQ: {question}\nA: {reply.choices[0].message.content!r}")
        print("(random weights: the answer is gibberish, but every byte of it came across the gap verified)")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

    print("\n\033[1mstep                         time      size\033[0m")
    for title, dt, size in ROWS:
        print(f"{title:<28} {dt:7.2f} s  {size}")
    print(f"\nbundle: {bundle}\nverify it by hand: (cd {bundle} && sha256sum -c SHA256SUMS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
