#!/usr/bin/env python3
"""Time `sealift export` and `sealift install` against the careful administrator's commands, in one run.

    python scripts/bench_export.py [--size-gb 1.2] [--slice-mb 100] [--workdir /tmp] [--keep] [--no-xz]
    python scripts/bench_export.py --gpu [--wheel-cache DIR] [--workdir DIR] [--min-free-gb 8]
    python scripts/bench_export.py --oci [--size-gb 1.0] [--workdir DIR]

--oci times `sealift export NAME DEST --oci --no-wheels` against the folder export of the same bento (goal:
<= 1.05x: one tar layer per file, each byte read once, as the folder's one tar), then, into a docker-registry
started on 127.0.0.1 (Debian's distribution 2.8), `sealift push LAYOUT` against `skopeo copy` of each of the
same layout's manifests (what push wraps), each into a fresh repository.

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

--gpu times a GPU bundle instead (a tiny Llama built --target gpu: its wheels,
vllm + torch+cuXXX + nvidia-*, ~4 GB, are nearly all the bytes). The wheel
cache (--wheel-cache, default $SEALIFT_WHEEL_CACHE or WORKDIR/wheel-cache) is
warmed first by an untimed export (downloads once; kept), then:

  export    admin: `tar cf X.tar` of the bento and model directories and the
            bundle's wheels from the cache, then `sha256sum X.tar`;
            sealift: `sealift export NAME DEST --no-proof` (resolution, copy +
            hash of every wheel, fsync), and again with the proof (its seconds
            reported apart: offline venv, imports, vLLM's parser)
  install   admin: `sha256sum -c SHA256SUMS`, `tar xf X.tar`, then `uv venv` +
            `uv pip install --offline --no-index --find-links wheels/` of the
            bento's requirements into a fresh venv;
            sealift: `sealift install BUNDLE --venv V --skip-host-check`
            (verify, import, keep the wheels, the same uv install)

Each uv install gets its own empty uv cache (the air-gapped host's is cold).
Disk: the bundle's wheels are hard-linked back over the cache's copies once
measured (same bytes, checked), so the bundle costs no space of its own; free
space is checked before each big step (--min-free-gb) and every copy is deleted
as soon as it is measured.
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


# =========================================================================== --gpu


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


def need_space(path: Path, gb: float, min_free: float, what: str) -> None:
    """Stop (exit 1) unless `what`, about gb GB, leaves min_free GB free on path's filesystem."""
    free = free_gb(path)
    print(f"  [disk] {free:,.1f} GB free before {what} (needs ~{gb:,.1f} GB, floor {min_free:g} GB)", flush=True)
    if free - gb < min_free:
        raise SystemExit(f"not enough disk for {what}: {free:,.1f} GB free, ~{gb:,.1f} GB needed, "
                         f"{min_free:g} GB must stay free")


def bundle_wheels(bundle: Path) -> list[str]:
    """The wheels/ files a bundle's SHA256SUMS lists (names only)."""
    return sorted(line.split("  ", 1)[1].split("/", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()
                  if "  wheels/" in line)


def cache_files(cache: Path, names: list[str]) -> list[Path]:
    """Where each of the bundle's wheels lies in the wheel cache (the sealift wheel is in a subfolder)."""
    found = {p.name: p for p in cache.rglob("*.whl")}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"the wheel cache {cache} lacks {missing[:3]}")
    return [found[n] for n in names]


def dedupe(bundle: Path, cache: Path) -> int:
    """Hard-link each cache wheel to the bundle's copy of the same bytes (the bundle then costs no space)."""
    from sealift.model.manifest import hash_file

    sums = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
    names = bundle_wheels(bundle)
    saved = 0
    for name, src in zip(names, cache_files(cache, names)):
        dst = bundle / "wheels" / name
        if os.path.samefile(src, dst) or hash_file(src) != sums[f"wheels/{name}"]:
            continue
        tmp = src.with_name(src.name + ".relink")
        os.link(dst, tmp)
        os.replace(tmp, src)
        saved += dst.stat().st_size
    return saved


def uv() -> list[str]:
    return [str(Path(sys.executable).with_name("uv"))] if Path(sys.executable).with_name("uv").is_file() \
        else [sys.executable, "-m", "uv"]


def gpu_main(a: argparse.Namespace) -> int:
    """The --gpu comparisons (see the module docstring)."""
    from make_tiny_model import make_model

    a.workdir.mkdir(parents=True, exist_ok=True)
    cache = (a.wheel_cache or Path(os.environ.get("SEALIFT_WHEEL_CACHE") or a.workdir / "wheel-cache")).absolute()
    work = Path(tempfile.mkdtemp(prefix="sealift-bench-gpu-", dir=a.workdir))
    floor = a.min_free_gb
    try:
        make_model(work / "model")
        env = dict(host_env(work / "build-host"), SEALIFT_WHEEL_CACHE=str(cache), TMPDIR=str(work))
        timed(sealift("import", work / "model", "--name", "tiny", "--quiet"), env)
        _, out = timed(sealift("build", "tiny", "--target", "gpu", "--json"), env)
        build = json.loads(out)
        home = Path(env["BENTOML_HOME"])
        mname, mversion = build["model_tag"].split(":")
        bento_dir, model_dir = Path(build["path"]), home / "models" / mname / mversion
        rel = [str(bento_dir.relative_to(home)), str(model_dir.relative_to(home))]

        # ---- warm the wheel cache (untimed: downloads the first time)
        need_space(a.workdir, 2 * 4.2, floor, "warming the wheel cache (download + a bundle)")
        t_warm, out = timed(sealift("export", "tiny", work / "warm", "--no-proof", "--json"), env)
        warm = Path(json.loads(out)["bundle"])
        names = bundle_wheels(warm)
        shutil.rmtree(work / "warm")
        wheels = cache_files(cache, names)
        wheel_bytes = sum(w.stat().st_size for w in wheels)
        print(f"bento {build['bento_tag']}; {len(wheels)} wheels, {wheel_bytes / 1e9:.2f} GB in {cache} "
              f"(warm-up export {t_warm:.0f} s, untimed); {os.cpu_count()} cores", flush=True)

        # ---- export: admin
        need_space(a.workdir, wheel_bytes / 1e9, floor, "the admin's tar")
        admin = work / "admin"
        admin.mkdir()
        evict([bento_dir, model_dir, *wheels])
        t_tar, _ = timed(["tar", "cf", str(admin / "x.tar"), "-C", str(home), *rel,
                          *[x for w in wheels for x in ("-C", str(w.parent), w.name)]])
        t_sum, _ = timed(["sha256sum", str(admin / "x.tar")])
        t_sync, _ = timed(["sync"])
        mb = (admin / "x.tar").stat().st_size / 1e6
        shutil.rmtree(admin)

        # ---- export: sealift, without and with the proof
        need_space(a.workdir, wheel_bytes / 1e9, floor, "sealift export --no-proof")
        evict([bento_dir, model_dir, *wheels])
        t_np, out = timed(sealift("export", "tiny", work / "usb", "--no-proof", "--json"), env)
        exp = json.loads(out)
        bundle = Path(exp["bundle"])
        bundle_mb = exp["total_bytes"] / 1e6
        t_admin_exp = t_tar + t_sum
        print(f"\nGPU export ({mb:,.0f} MB: bento archive {exp['archive_bytes'] / 1e6:,.1f} MB + "
              f"{exp['wheels']} wheels {exp['wheel_bytes'] / 1e6:,.0f} MB)")
        row("tar cf (bento, model, wheels)", t_tar, mb)
        row("sha256sum X.tar", t_sum, mb)
        row("admin: tar cf + sha256sum", t_admin_exp, mb, "(baseline)")
        row("  + sync (sealift fsyncs, tar does not)", t_admin_exp + t_sync, mb)
        row("sealift export --no-proof (whole CLI)", t_np, mb, f"{t_np / t_admin_exp:.2f}x admin, "
            f"{t_np / (t_admin_exp + t_sync):.2f}x admin+sync")
        row("  of which in export_bundle", exp["seconds"], mb)
        print(f"  [disk] hard-linked {dedupe(bundle, cache) / 1e9:.2f} GB of cache wheels to the bundle's copies",
              flush=True)
        need_space(a.workdir, 9.0, floor, "sealift export with the proof (venv ~8.5 GB, removed before the bundle "
                   "is written)")
        evict([bento_dir, model_dir, *wheels])
        t_p, out = timed(sealift("export", "tiny", work / "usb-proof", "--json"), env)
        proof = json.loads(out)["proof"]
        shutil.rmtree(work / "usb-proof")
        proof_s = proof.get("total_seconds", 0.0)
        row("sealift export (default: with the proof)", t_p, mb, f"{t_p / t_admin_exp:.2f}x admin")
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in proof.get("seconds", {}).items())
        print(f"  {'  of which the proof':<44} {proof_s:7.2f} s  ({steps})")
        row("  export with the proof, less the proof", t_p - proof_s, mb, f"{(t_p - proof_s) / t_admin_exp:.2f}x admin")
        # the proof's steps leave out removing its ~8.5 GB temporary venv (slow where the filesystem discards online)
        print(f"  {'  proof, all in (with / without the proof)':<44} {t_p - t_np:7.2f} s", flush=True)

        # ---- install: admin
        archive = bundle / exp["archive"]
        need_space(a.workdir, 9.0, floor, "the admin's offline install (venv ~8.5 GB)")
        adm = work / "admin-x"
        (adm / "x").mkdir(parents=True)
        evict([bundle])
        uv_env = dict(os.environ, UV_CACHE_DIR=str(adm / "uv-cache"), UV_PYTHON_DOWNLOADS="never")
        uv_env.pop("VIRTUAL_ENV", None)
        t_check, _ = timed(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle)
        t_xf, _ = timed(["tar", "xf", str(archive), "-C", str(adm / "x")])
        reqs = adm / "x" / "env" / "python" / "requirements.txt"
        text = reqs.read_text()
        if "bentoml==" not in text and "bentoml @" not in text:  # as sealift install does (bundle's bentoml pin)
            doc = json.loads((bundle / "manifest.json").read_text())
            reqs = adm / "requirements.txt"
            reqs.write_text(text.rstrip("\n") + f"\nbentoml=={doc['bento']['bentoml_version']}\n")
        python = getattr(sys, "_base_executable", None) or sys.executable
        t_venv, _ = timed([*uv(), "venv", "--quiet", "--python", python, str(adm / "venv")], uv_env)
        t_uv, _ = timed([*uv(), "pip", "install", "--quiet", "--offline", "--no-index", "--find-links",
                         str(bundle / "wheels"), "--python", str(adm / "venv" / "bin" / "python"), "-r", str(reqs)],
                        uv_env)
        t_sync2, _ = timed(["sync"])
        shutil.rmtree(adm)

        # ---- install: sealift
        need_space(a.workdir, 9.0, floor, "sealift install (venv ~8.5 GB)")
        other = dict(host_env(work / "airgap"), UV_CACHE_DIR=str(work / "airgap-uv-cache"), TMPDIR=str(work))
        evict([bundle])
        t_inst, out = timed(sealift("install", bundle, "--venv", work / "airgap-venv", "--skip-host-check", "--json"),
                            other)
        inst = json.loads(out)
        for d in ("airgap", "airgap-venv", "airgap-uv-cache"):
            shutil.rmtree(work / d, ignore_errors=True)
        t_admin_inst = t_check + t_xf + t_venv + t_uv
        print(f"\nGPU offline install ({bundle_mb:,.0f} MB bundle)")
        row("sha256sum -c SHA256SUMS", t_check, bundle_mb)
        row("tar xf", t_xf, exp["archive_bytes"] / 1e6)
        row("uv venv", t_venv, bundle_mb)
        row("uv pip install --offline --no-index", t_uv, exp["wheel_bytes"] / 1e6)
        row("admin: sha256sum -c + tar xf + uv", t_admin_inst, bundle_mb, "(baseline)")
        row("  + sync (sealift syncs the store)", t_admin_inst + t_sync2, bundle_mb)
        row("sealift install, with its venv (whole CLI)", t_inst, bundle_mb, f"{t_inst / t_admin_inst:.2f}x admin, "
            f"{t_inst / (t_admin_inst + t_sync2):.2f}x admin+sync")
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in inst["timings"].items())
        row("  of which in install_bundle", inst["seconds"], bundle_mb, f"({timings})")
        print(f"\ngpu: export --no-proof / admin = {t_np / t_admin_exp:.2f}, export with proof less the proof / admin "
              f"= {(t_p - proof_s) / t_admin_exp:.2f} (proof {proof_s:.1f} s apart), install / admin = "
              f"{t_inst / t_admin_inst:.2f} (goal <= 1.00 each); one run on a shared machine: noisy")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(f"wheel cache kept: {cache}")
    return 0


def oci_main(a: argparse.Namespace) -> int:
    """--oci: export --oci vs the folder export; push vs skopeo copy into a registry on loopback."""
    import socket

    work = Path(tempfile.mkdtemp(prefix="sealift-bench-oci-", dir=a.workdir))
    procs: list[subprocess.Popen] = []
    try:
        print(f"making a {a.size_gb:g} GB model, importing and building it under {work} ...", flush=True)
        env, build, bento_dir, model_dir = prepare(work, "bench", int(a.size_gb * 1e9), a.shards)
        mb = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()) / 1e6
        times: dict[str, list[float]] = {"folder": [], "oci": []}
        for i in range(2):  # alternate, twice: the page cache and the disk see both the same way
            for kind, extra in (("folder", []), ("oci", ["--oci"])):
                out_dir = work / f"{kind}-{i}"
                evict([bento_dir, model_dir])
                t, _ = timed(sealift("export", "bench", out_dir, "--no-wheels", *extra, "--json"), env)
                times[kind].append(t)
                if i == 0 and kind == "oci":
                    layout = next(out_dir.glob("*.oci"))
                else:
                    shutil.rmtree(out_dir)
        t_folder, t_oci = min(times["folder"]), min(times["oci"])
        print(f"\nexport of {mb:,.0f} MB of model (best of 2 each, cache evicted before each)")
        row("sealift export (folder bundle)", t_folder, mb, "(baseline)")
        row("sealift export --oci", t_oci, mb, f"{t_oci / t_folder:.2f}x (goal <= 1.05x)")

        def registry(name: str) -> int:
            """A fresh docker-registry (its own storage: nothing to mount or skip) on a free loopback port."""
            nonlocal procs
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            (work / f"{name}.yml").write_text(
                f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {work / name}}}}}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n")
            procs.append(subprocess.Popen(["docker-registry", "serve", str(work / f"{name}.yml")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
            return port

        roles = [d["annotations"]["org.opencontainers.image.ref.name"]
                 for d in json.loads((layout / "index.json").read_text())["manifests"]]
        port = registry("reg-skopeo")
        evict([layout])
        t0 = time.perf_counter()
        for role in roles:
            timed(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                   f"oci:{layout}:{role}", f"docker://127.0.0.1:{port}/plain/bench:{role}"])
        t_skopeo = time.perf_counter() - t0
        port = registry("reg-sealift")
        evict([layout])
        t_push, _ = timed(sealift("push", layout, f"127.0.0.1:{port}/sealift/bench:v1", "--plain-http", "--json"), env)
        size = sum(p.stat().st_size for p in layout.rglob("*") if p.is_file()) / 1e6
        print(f"\npush of the layout ({size:,.0f} MB) into docker-registry on 127.0.0.1")
        row(f"skopeo copy x{len(roles)} (each manifest)", t_skopeo, size, "(baseline)")
        row("sealift push", t_push, size, f"{t_push / t_skopeo:.2f}x")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="sealift export/install vs tar + sha256sum; bentoml's xz export")
    ap.add_argument("--size-gb", type=float, default=1.2, help="model size in GB (>= 1)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--slice-mb", type=float, default=100.0, help="model size for the xz comparison")
    ap.add_argument("--no-xz", action="store_true", help="skip the bentoml .bento (xz) comparison")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true", help="keep the temp data")
    ap.add_argument("--gpu", action="store_true", help="time a GPU bundle (vllm + torch+cuda wheels, ~4 GB) instead")
    ap.add_argument("--wheel-cache", type=Path, default=None,
                    help="--gpu: the wheel cache (default $SEALIFT_WHEEL_CACHE, else WORKDIR/wheel-cache); kept")
    ap.add_argument("--min-free-gb", type=float, default=8.0, help="--gpu: stop before free disk would drop below")
    ap.add_argument("--oci", action="store_true", help="time export --oci against the folder export, and push")
    a = ap.parse_args(argv)
    if a.gpu:
        return gpu_main(a)
    if a.oci:
        return oci_main(a)

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
              f"(goals: export <= 1.00, install <= 0.55: one read of each byte against the admin's two)")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
