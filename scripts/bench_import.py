#!/usr/bin/env python3
"""Time `sealift import` against the careful administrator's two passes, on one model, in one run.

    python scripts/bench_import.py [--size-gb 4] [--shards 8] [--workdir /tmp] [--keep]

Makes a model of SIZE GB in SHARDS safetensors files (random bf16 tensors with
valid headers, a Llama config.json, a trained tokenizer and chat template:
enough for `sealift import` to inspect and accept it; not meant to generate),
then times, each with the model's files pushed out of the page cache first
(POSIX_FADV_DONTNEED after sync: cold data, warm tools, no root needed):

  admin   `cp -r SRC DST` then `sha256sum` of the copied files (one after the other)
  import  `sealift import SRC --name bench` (copy + sha256 in one pass, all cores, fsync)
  link    `sealift import SRC --name bench-link --link` (hardlink/reflink + sha256)

and prints seconds, MB/s and import/admin ratios (goal: import <= 0.8x admin),
best of --rounds runs each (interleaved, so load from other work hits both).
The `sealift` times are the whole CLI process (Python start, imports, inspect
with the tokenizer load in a child process, copy, fsync, publish); the time
inside import_model is shown too.
Temp data lives under WORKDIR and is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

HIDDEN = 4096
CHUNK = 64 * 1024 * 1024


def make_big_model(out: Path, size_bytes: int, shards: int) -> int:
    """Write a sharded bf16 Llama-shaped checkpoint of about size_bytes; returns bytes written."""
    from make_tiny_model import CHAT_TEMPLATE, train_tokenizer

    out.mkdir(parents=True)
    pool = [os.urandom(CHUNK) for _ in range(3)]  # distinct random chunks, reused: fast to write, same work to hash
    per_shard = size_bytes // shards
    rows_per_tensor = 2048  # 2048 x 4096 bf16 = 16 MiB per tensor
    tensor_bytes = rows_per_tensor * HIDDEN * 2
    n_per_shard = max(1, per_shard // tensor_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    layer = 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for _ in range(n_per_shard):
            name = f"model.layers.{layer}.mlp.up_proj.weight"
            header[name] = {"dtype": "BF16", "shape": [rows_per_tensor, HIDDEN], "data_offsets": [offset, offset + tensor_bytes]}
            weight_map[name] = fname
            offset += tensor_bytes
            layer += 1
        hbytes = json.dumps(header).encode()
        hbytes += b" " * (-len(hbytes) % 8)
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            left, i = offset, 0
            while left:
                chunk = pool[i % len(pool)][: min(CHUNK, left)]
                f.write(chunk)
                left -= len(chunk)
                i += 1
        total += offset + 8 + len(hbytes)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": rows_per_tensor,
        "num_hidden_layers": layer,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
        "vocab_size": 512,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok = train_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


def evict(paths: list[Path]) -> bool:
    """Push the model's files out of the page cache (sync, then POSIX_FADV_DONTNEED on each).

    Only the model's data goes cold, as on a real import of a fresh download;
    the tools (cp, sha256sum, python, torch) stay warm for every contender.
    No root needed; True if the kernel accepted every request.
    """
    subprocess.run(["sync"], check=False)
    ok = True
    for p in paths:
        for f in ([p] if p.is_file() else [x for x in p.rglob("*") if x.is_file()]):
            try:
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
            except (OSError, AttributeError):
                ok = False
    return ok


def cached_fraction(paths: list[Path]) -> float | None:
    """Share of the files' pages in the page cache (mincore), None if it cannot tell."""
    try:
        import ctypes
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)
        page = mmap.PAGESIZE
        total = resident = 0
        for f in paths:
            size = f.stat().st_size
            if size == 0:
                continue
            with open(f, "rb") as fh:
                # a private writable mapping (never written): ctypes needs a writable buffer; pages stay the cache's
                mm = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
                n = (size + page - 1) // page
                vec = (ctypes.c_ubyte * n)()
                anchor = ctypes.c_char.from_buffer(mm)  # type: ignore[arg-type]
                rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec)
                del anchor
                mm.close()
                if rc != 0:
                    return None
                total += n
                resident += sum(v & 1 for v in vec)
        return resident / total if total else None
    except Exception:
        return None


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}\n{p.stdout}")
    return dt, p.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="sealift import vs cp -r + sha256sum")
    ap.add_argument("--size-gb", type=float, default=4.0, help="model size in GB (>= 1; default 4)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--rounds", type=int, default=2, help="repeat and keep each contender's best (noisy machines)")
    ap.add_argument("--keep", action="store_true", help="keep the temp data")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sealift-bench-", dir=a.workdir))
    try:
        src = work / "model"
        print(f"making a {a.size_gb:g} GB model in {a.shards} shards under {work} ...", flush=True)
        size = make_big_model(src, int(a.size_gb * 1e9), a.shards)
        mb = size / 1e6
        files = sorted(p.name for p in src.iterdir() if p.is_file())
        print(f"model: {len(files)} files, {mb:,.0f} MB; {os.cpu_count()} cores", flush=True)

        model_files = [src / f for f in files]
        cold = evict([src])
        frac = cached_fraction(model_files)
        state = f"{frac:.0%} of the model cached after eviction" if frac is not None else "residency unknown"
        print(f"page cache: model files evicted before each run: {'yes' if cold else 'NO (warm reads)'} ({state}); "
              "tools stay warm")
        print(f"load average before: {os.getloadavg()[0]:.2f} (other work on the machine skews every number)")

        runs: dict[str, list[float]] = {k: [] for k in ("cp", "sum", "sync", "admin", "import", "import_inner", "link", "link_inner")}
        digests: set[str] = set()
        modes: set[str] = set()
        for r in range(a.rounds):
            # the administrator: copy, then checksum the copy, one after the other
            dst = work / "admin-copy"
            evict([src])
            t_cp, _ = timed(["cp", "-r", str(src), str(dst)])
            t_sum, _ = timed(["sha256sum", *[str(dst / f) for f in files]])
            t_sync, _ = timed(["sync"])
            shutil.rmtree(dst)
            runs["cp"].append(t_cp)
            runs["sum"].append(t_sum)
            runs["sync"].append(t_sync)
            runs["admin"].append(t_cp + t_sum)

            home = work / f"bentoml-{r}"  # a fresh store each round: otherwise the content is already there
            env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True", HF_HUB_OFFLINE="1")
            sealift = [sys.executable, "-m", "sealift.cli", "import", str(src), "--json"]
            evict([src])
            t_imp, out = timed([*sealift, "--name", "bench"], env)
            res = json.loads(out)
            evict([src, home])
            t_link, out = timed([*sealift, "--name", "bench-link", "--link"], env)
            res_link = json.loads(out)
            shutil.rmtree(home)
            runs["import"].append(t_imp)
            runs["import_inner"].append(res["seconds"])
            runs["link"].append(t_link)
            runs["link_inner"].append(res_link["seconds"])
            digests |= {res["manifest_digest"], res_link["manifest_digest"]}
            modes |= {res["mode"], res_link["mode"]}
            print(f"  round {r + 1}: admin {t_cp + t_sum:.2f} s, import {t_imp:.2f} s, import --link {t_link:.2f} s", flush=True)

        best = {k: min(v) for k, v in runs.items()}

        def row(label: str, key: str, note: str = "") -> None:
            sec = best[key]
            print(f"  {label:<36} {sec:7.2f} s  {mb / sec:8,.0f} MB/s  {note}")

        print(f"\nbest of {a.rounds} round(s)")
        row("cp -r", "cp")
        row("sha256sum (the copy)", "sum")
        row("admin: cp -r, then sha256sum", "admin", "(baseline; cp does not fsync, "
            f"a sync after it took {best['sync']:.2f} s more)")
        row("sealift import (whole CLI)", "import", f"{best['import'] / best['admin']:.2f}x admin (copy + sha256 + fsync)")
        row("  inside import_model", "import_inner", f"{best['import_inner'] / best['admin']:.2f}x admin")
        row("sealift import --link (whole CLI)", "link", f"{best['link'] / best['admin']:.2f}x admin (link + sha256)")
        row("  inside import_model", "link_inner")
        ratio = best["import"] / best["admin"]
        print(f"\nimport / admin = {ratio:.2f} (goal <= 0.80: {'met' if ratio <= 0.8 else 'NOT met'}); "
              f"modes: {', '.join(sorted(modes))}; one manifest digest for every run: {len(digests) == 1}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
