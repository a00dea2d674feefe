#!/usr/bin/env python3
"""Time `sealift export` and `sealift install` against the careful administrator's commands, in one run.

    python scripts/bench_export.py [--size-gb 1.2] [--slice-mb 100] [--workdir /tmp] [--keep] [--no-xz]

Makes a model of SIZE GB (bench_import's generator: random bf16 shards with
valid headers, a config and a tokenizer), imports it (--link) and builds a cpu
bento, then times, with the data pushed out of the page cache before each run
(sync + POSIX_FADV_DONTNEED; tools stay warm):

  export    admin: `tar cf X.tar` of the bento and model directories, then
            `sha256sum X.tar`; sealift: `sealift export NAME DEST --no-wheels`
            (one pass: read, sha256, write; fsync; SHA256SUMS, manifest.json)
  install   admin: `sha256sum -c SHA256SUMS`, then `tar xf X.tar`;
            sealift: `sealift install BUNDLE --no-venv` into an empty store
            (verify every byte, check members, extract, bentoml store
            registration, openllm registration)

and prints seconds, MB/s and sealift/admin ratios (goal: <= 1.0x each). Then,
on a model of SLICE MB, `bentoml export TAG x.bento` (its default: tar.xz)
against `sealift export` of the same bento. The sealift times are whole CLI
processes (Python start and imports included). Temp data lives under WORKDIR
and is deleted at the end unless --keep.
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

from bench_import import evict, make_big_model  # noqa: E402


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-3000:]}\n{p.stdout[-2000:]}")
    return dt, p.stdout


def host_env(root: Path) -> dict[str, str]:
    return dict(os.environ, BENTOML_HOME=str(root / "bentoml"), SEALIFT_HOME=str(root / "sealift"),
                BENTOML_DO_NOT_TRACK="True", HF_HUB_OFFLINE="1")


def sealift(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sealift.cli", *map(str, args)]


def prepare(work: Path, name: str, size_bytes: int, shards: int) -> tuple[dict[str, str], dict, Path, Path]:
    """A model of about size_bytes imported and built on a host under work: (env, build, bento dir, model dir)."""
    src = work / f"{name}-src"
    make_big_model(src, size_bytes, shards)
    env = host_env(work / f"{name}-host")
    timed(sealift("import", src, "--name", name, "--link", "--quiet"), env)
    _, out = timed(sealift("build", name, "--target", "cpu", "--json"), env)
    build = json.loads(out)
    home = Path(env["BENTOML_HOME"])
    mname, mversion = build["model_tag"].split(":")
    return env, build, Path(build["path"]), home / "models" / mname / mversion


def row(label: str, sec: float, mb: float, note: str = "") -> None:
    print(f"  {label:<44} {sec:7.2f} s  {mb / sec:8,.0f} MB/s  {note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="sealift export/install vs tar + sha256sum; bentoml's xz export")
    ap.add_argument("--size-gb", type=float, default=1.2, help="model size in GB (>= 1)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--slice-mb", type=float, default=100.0, help="model size for the xz comparison")
    ap.add_argument("--no-xz", action="store_true", help="skip the bentoml .bento (xz) comparison")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true", help="keep the temp data")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sealift-bench-export-", dir=a.workdir))
    try:
        print(f"making a {a.size_gb:g} GB model, importing and building it under {work} ...", flush=True)
        env, build, bento_dir, model_dir = prepare(work, "bench", int(a.size_gb * 1e9), a.shards)
        home = Path(env["BENTOML_HOME"])
        rel = [str(bento_dir.relative_to(home)), str(model_dir.relative_to(home))]
        print(f"bento {build['bento_tag']}, model {build['model_tag']}; {os.cpu_count()} cores", flush=True)

        # ---- export
        admin = work / "admin"
        admin.mkdir()
        evict([bento_dir, model_dir])
        t_tar, _ = timed(["tar", "cf", str(admin / "x.tar"), "-C", str(home), *rel])
        t_sum, _ = timed(["sha256sum", str(admin / "x.tar")])
        t_sync, _ = timed(["sync"])
        size = (admin / "x.tar").stat().st_size
        mb = size / 1e6
        shutil.rmtree(admin)
        evict([bento_dir, model_dir])
        t_exp, out = timed(sealift("export", "bench", work / "usb", "--no-wheels", "--json"), env)
        exp = json.loads(out)
        bundle = Path(exp["bundle"])
        t_admin_exp = t_tar + t_sum
        print(f"\nexport ({mb:,.0f} MB archive)")
        row("tar cf", t_tar, mb)
        row("sha256sum X.tar", t_sum, mb)
        row("admin: tar cf + sha256sum", t_admin_exp, mb, "(baseline)")
        row("  + sync (sealift fsyncs, tar does not)", t_admin_exp + t_sync, mb)
        row("sealift export (whole CLI)", t_exp, mb, f"{t_exp / t_admin_exp:.2f}x admin, "
            f"{t_exp / (t_admin_exp + t_sync):.2f}x admin+sync")
        row("  of which in export_bundle", exp["seconds"], mb)

        # ---- install
        archive = bundle / exp["archive"]
        out_dir = work / "admin-x"
        out_dir.mkdir()
        evict([bundle])
        t_check, _ = timed(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle)
        t_xf, _ = timed(["tar", "xf", str(archive), "-C", str(out_dir)])
        t_sync2, _ = timed(["sync"])
        shutil.rmtree(out_dir)
        other = host_env(work / "airgap")
        evict([bundle])
        t_inst, out = timed(sealift("install", bundle, "--no-venv", "--json"), other)
        inst = json.loads(out)
        t_admin_inst = t_check + t_xf
        print(f"\ninstall ({mb:,.0f} MB archive)")
        row("sha256sum -c SHA256SUMS", t_check, mb)
        row("tar xf", t_xf, mb)
        row("admin: sha256sum -c + tar xf", t_admin_inst, mb, "(baseline)")
        row("  + sync (sealift syncs the store)", t_admin_inst + t_sync2, mb)
        row("sealift install --no-venv (whole CLI)", t_inst, mb, f"{t_inst / t_admin_inst:.2f}x admin, "
            f"{t_inst / (t_admin_inst + t_sync2):.2f}x admin+sync")
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in inst["timings"].items())
        row("  of which in install_bundle", inst["seconds"], mb, f"({timings})")
        shutil.rmtree(work / "airgap", ignore_errors=True)

        # ---- bentoml's default export (tar.xz) on a slice
        if not a.no_xz:
            print(f"\nmaking a {a.slice_mb:g} MB model for bentoml's default export ...", flush=True)
            # the generator writes whole 16 MiB tensors: round up so the slice is at least SLICE MB
            tensor = 2048 * 4096 * 2
            slice_bytes = -(-int(a.slice_mb * 1e6) // tensor) * tensor + tensor // 2
            senv, sbuild, sbento, smodel = prepare(work, "slice", slice_bytes, 1)
            evict([sbento, smodel])
            t_ours, out = timed(sealift("export", "slice", work / "usb-slice", "--no-wheels", "--json"), senv)
            smb = json.loads(out)["archive_bytes"] / 1e6
            evict([sbento, smodel])
            t_xz, _ = timed([sys.executable, "-m", "bentoml", "export", sbuild["bento_tag"], str(work / "slice.bento")],
                            senv)
            xz_mb = (work / "slice.bento").stat().st_size / 1e6
            print(f"\nbentoml export default (.bento = tar.xz) vs sealift export, {smb:,.0f} MB")
            row("sealift export (whole CLI)", t_ours, smb)
            row("bentoml export TAG x.bento (whole CLI)", t_xz, smb,
                f"{t_xz / t_ours:.0f}x sealift; {xz_mb:,.0f} MB xz")
        print(f"\nexport / admin = {t_exp / t_admin_exp:.2f}, install / admin = {t_inst / t_admin_inst:.2f} "
              f"(goal <= 1.00 each)")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
