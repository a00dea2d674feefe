#!/usr/bin/env python3
"""Delta updates, measured in one run: bundle size against the changed bytes, install time against a full install.

    python scripts/bench_delta.py [--size-gb 1.0] [--shards 8] [--workdir /tmp] [--keep]

Makes a sharded model of SIZE GB (bench_import's generator), imports it (--link)
and builds a cpu bento on an online host; exports it in full (--no-wheels) and
installs that (--no-venv) on an empty air-gapped host; takes that host's
inventory. Revision 2 rewrites one shard with new bytes (same size; the other
files are hard links to revision 1's); it is imported and built, then exported
with `--have inventory.json` and installed on the same air-gapped host. The
data is pushed out of the page cache before each timed step (sync +
POSIX_FADV_DONTNEED). Prints:

  delta bundle bytes / changed bytes     and the overhead (goal: <= changed bytes + 1 MB)
  delta install / full install           seconds (the delta still hashes every byte it takes from the store)
  delta export / full export             seconds

The times are whole CLI processes on a shared machine: one run, noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_export import host_env, sealift, timed  # noqa: E402
from bench_import import evict, make_big_model  # noqa: E402

MB = 1024 * 1024


def change_one_shard(v1: Path, v2: Path, index: int) -> int:
    """v2 = v1 with the index-th shard's tensor bytes replaced (same header, same size); others hard-linked."""
    v2.mkdir()
    shards = sorted(p.name for p in v1.glob("model-*.safetensors"))
    changed = shards[index]
    for f in sorted(v1.iterdir()):
        if f.name != changed:
            os.link(f, v2 / f.name)
    with open(v1 / changed, "rb") as src, open(v2 / changed, "wb") as dst:
        (n,) = struct.unpack("<Q", src.read(8))
        dst.write(struct.pack("<Q", n) + src.read(n))
        left = (v1 / changed).stat().st_size - 8 - n
        while left:
            chunk = os.urandom(min(16 * MB, left))
            dst.write(chunk)
            left -= len(chunk)
    return (v2 / changed).stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="delta bundle size and install time against a full bundle")
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sealift-bench-delta-", dir=args.workdir))
    try:
        online = host_env(work / "online")
        airgap = host_env(work / "airgap")
        v1, v2 = work / "v1", work / "v2"
        size = make_big_model(v1, int(args.size_gb * 1e9), args.shards)
        print(f"model: {size / 1e9:.2f} GB in {args.shards} shards, under {work}", flush=True)
        timed(sealift("import", v1, "--name", "big", "--link", "--quiet"), online)
        timed(sealift("build", "big", "--target", "cpu", "--no-golden", "--quiet"), online)
        evict([v1])
        full_export_s, out = timed(sealift("export", "big", work / "usb1", "--no-wheels", "--no-proof", "--json"),
                                   online)
        full = json.loads(out)
        evict([Path(full["bundle"])])
        full_install_s, _ = timed(sealift("install", full["bundle"], "--no-venv", "--json"), airgap)
        inventory = work / "inventory.json"
        inventory_s, _ = timed(sealift("inventory", "-o", inventory, "--quiet"), airgap)

        changed = change_one_shard(v1, v2, index=min(2, args.shards - 1))
        timed(sealift("import", v2, "--name", "big", "--link", "--quiet"), online)
        timed(sealift("build", "big", "--target", "cpu", "--no-golden", "--quiet"), online)
        evict([v2])
        delta_export_s, out = timed(sealift("export", "big", work / "usb2", "--no-wheels", "--no-proof", "--have",
                                            inventory, "--json"), online)
        delta = json.loads(out)
        evict([Path(delta["bundle"]), Path(airgap["BENTOML_HOME"])])
        delta_install_s, out = timed(sealift("install", delta["bundle"], "--no-venv", "--json"), airgap)
        installed = json.loads(out)
        tag = installed["model_tags"][0]
        timed(sealift("verify", tag, "--quiet"), airgap)  # the assembled model against its manifest, once more

        overhead = delta["total_bytes"] - changed
        print(f"full bundle        {full['total_bytes'] / MB:10.1f} MiB", flush=True)
        print(f"changed bytes      {changed / MB:10.1f} MiB (one shard)")
        print(f"delta bundle       {delta['total_bytes'] / MB:10.1f} MiB   "
              f"ratio to changed bytes {delta['total_bytes'] / changed:.4f}x; overhead {overhead / 1024:.1f} KiB "
              f"(goal <= 1024 KiB: {'met' if overhead <= MB else 'MISSED'}); "
              f"{delta['relied_files']} files ({delta['relied_bytes'] / MB:.1f} MiB) left out")
        print(f"delta/full bundle  {delta['total_bytes'] / full['total_bytes']:.4f}x")
        print(f"export   full {full_export_s:6.2f} s   delta {delta_export_s:6.2f} s   "
              f"ratio {delta_export_s / full_export_s:.2f}x")
        print(f"install  full {full_install_s:6.2f} s   delta {delta_install_s:6.2f} s   "
              f"ratio {delta_install_s / full_install_s:.2f}x   "
              f"(taken from the store: {installed['delta']['taken_bytes'] / MB:.1f} MiB, "
              f"{installed['delta']['linked']} linked)")
        print(f"inventory {inventory_s:.2f} s (model files from their manifests: nothing re-hashed)")
        print("one run on a shared machine: times are noisy")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
