#!/usr/bin/env python3
"""Time split and spanned bundles against the plain one, in one run (goal: <= 1.05x each).

    python scripts/bench_media.py [--size-gb 1.2] [--part-mb 256] [--rounds 2] [--workdir /tmp] [--keep]

Makes a model of SIZE GB (bench_import's generator), imports it (--link) and builds a cpu bento
(--no-golden), then, with the data pushed out of the page cache before each run (sync +
POSIX_FADV_DONTNEED), times in alternating rounds:

  export   `sealift export NAME DEST --no-wheels`                      (baseline)
           ... `--max-file-size PART`                                 (numbered parts)
           ... DEST1 DEST2 `--volume-size HALF`                       (two volumes)
  install  `sealift install BUNDLE --no-venv` into an empty store for each of the three bundles

and prints the best time of each and its ratio to the baseline. Whole CLI processes. Temp data lives
under WORKDIR and is deleted at the end unless --keep. The machine may be shared: run it more than
once before believing a few per cent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_export import host_env, row, sealift, timed  # noqa: E402
from bench_import import evict, make_big_model  # noqa: E402


def prepare(work: Path, size_bytes: int, shards: int) -> tuple[dict[str, str], list[Path]]:
    src = work / "src"
    make_big_model(src, size_bytes, shards)
    env = host_env(work / "host")
    timed(sealift("import", src, "--name", "media", "--link", "--quiet"), env)
    _, out = timed(sealift("build", "media", "--target", "cpu", "--no-golden", "--json"), env)
    build = json.loads(out)
    home = Path(env["BENTOML_HOME"])
    name, version = build["model_tag"].split(":")
    return env, [Path(build["path"]), home / "models" / name / version]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="split/spanned sealift bundles vs the plain one")
    ap.add_argument("--size-gb", type=float, default=1.2, help="model size in GB")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--part-mb", type=int, default=256, help="--max-file-size in MiB")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sealift-bench-media-", dir=a.workdir))
    try:
        print(f"making a {a.size_gb:g} GB model, importing and building it under {work} ...", flush=True)
        env, sources = prepare(work, int(a.size_gb * 1e9), a.shards)
        half = int(a.size_gb * 1e9 * 0.55)
        kinds = {
            "plain": lambda d: [d],
            "parts": lambda d: [d, "--max-file-size", f"{a.part_mb}M"],
            "volumes": lambda d: [d / "usb1", d / "usb2", "--volume-size", str(half)],
        }
        best_exp: dict[str, float] = {}
        best_inst: dict[str, float] = {}
        mb = 0.0
        print(f"{os.cpu_count()} cores; {a.rounds} rounds, best of each", flush=True)
        for r in range(a.rounds):  # each bundle and install deleted right after use: disk may be tight
            for kind, dest in kinds.items():
                out_dir = work / f"usb-{kind}-{r}"
                evict(sources)
                t, out = timed(sealift("export", "media", *dest(out_dir), "--no-wheels", "--json"), env)
                res = json.loads(out)
                mb = res["archive_bytes"] / 1e6
                best_exp[kind] = min(t, best_exp.get(kind, t))
                dirs = res["volumes"] or [res["bundle"]]
                other = host_env(work / f"airgap-{kind}-{r}")
                evict([Path(d) for d in dirs])
                t, _ = timed(sealift("install", *dirs, "--no-venv", "--json"), other)
                best_inst[kind] = min(t, best_inst.get(kind, t))
                shutil.rmtree(work / f"airgap-{kind}-{r}", ignore_errors=True)
                shutil.rmtree(out_dir, ignore_errors=True)
        for label, best in (("export", best_exp), ("install --no-venv", best_inst)):
            print(f"\n{label} ({mb:,.0f} MB archive)")
            for kind, t in best.items():
                note = "(baseline)" if kind == "plain" else f"{t / best['plain']:.3f}x plain"
                row(f"sealift {label} {kind}", t, mb, note)
        ratios = ", ".join(f"{label} {kind} {best[kind] / best['plain']:.3f}x"
                           for label, best in (("export", best_exp), ("install", best_inst))
                           for kind in kinds if kind != "plain")
        print(f"\n{ratios} (goal <= 1.05x each)")
        print("(whole CLI processes; a shared machine is noisy: run it again before believing a few per cent)")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
