"""Run by tests (possibly inside a loopback-only network namespace): start, chat, stop; print JSON.

    python serve_and_chat.py NAME PORT [--timeout S]

Starts `sealift start NAME --port PORT` with this process's environment (the
test makes it a guarded one), waits for /readyz, lists the models and sends one
chat completion with the real openai client over loopback, records every
process of the server tree (pid, argv) while it runs, then stops it with SIGINT
like Ctrl-C and waits for the whole tree to exit. The kernel's per-namespace
counters are read at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from net_probe import snmp  # noqa: E402

from sealift.host.start import descendants  # noqa: E402


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def ready(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("port", type=int)
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args()

    out: dict = {"snmp_before": snmp(), "ready": False}
    url = f"http://127.0.0.1:{args.port}"
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server must never block on it
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealift.cli", "start", args.name, "--port", str(args.port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out["sealift_pid"] = proc.pid
    tree: dict[int, list[str]] = {}
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready(url):
                out["ready"] = True
                break
            time.sleep(0.5)
        if out["ready"]:
            from openai import OpenAI

            client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
            models = [m.id for m in client.models.list().data]
            reply = client.chat.completions.create(
                model=models[0], messages=[{"role": "user", "content": "Hello"}], max_tokens=8
            )
            out["models"] = models
            out["reply"] = reply.choices[0].message.content
            out["finish_reason"] = reply.choices[0].finish_reason
        for pid in descendants(proc.pid):
            tree[pid] = cmdline(pid)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        text = log.read()
        for pid in tree:  # start.py kills its workers on exit; make sure of it here too
            try:
                os.kill(pid, signal.SIGKILL)
                out.setdefault("leftovers", []).append(pid)
            except ProcessLookupError:
                pass
    out["tree"] = {str(pid): argv for pid, argv in tree.items()}
    out["start_code"] = proc.returncode
    out["output_tail"] = text[-3000:]
    out["snmp_after"] = snmp()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
