"""A full disk during import and export: one clear line, exit 2, nothing half-written left behind.

The store (BENTOML_HOME) or DEST is put on a small tmpfs (`mount -t tmpfs -o size=...`: needs root,
as CI has; skipped with the reason elsewhere). Two ways a disk is full:
- too small from the start: the step refuses before writing anything (it checks free space);
- filled by someone else while the step writes: the test freezes the step (SIGSTOP) once its first
  bytes are on the disk, takes every free byte with another file, and lets it go on (SIGCONT).
Then: exit code 2, a one-line error that says the disk is full and where, no model in the store, no
staging or temp files left (the filesystem holds nothing but the filler), no bundle that looks
complete. An export keeps its `.partial` directory on purpose (it says so): once there is room,
the same command resumes it and the bundle passes `sha256sum -c`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ROOT, SEALIFT, Env, make_model

CHECKPOINT = 4 * 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of size_mb MiB mounted at path; unmounted afterwards whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}); a full disk needs one")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, size_mb: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(path)], check=True, capture_output=True)


def fill(fs: Path) -> Path:
    """Take every free byte of the filesystem at fs with one file; returns it (delete it to free the space)."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        chunk = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
        while chunk >= 4096:  # reserve in big pieces, halving when a piece no longer fits
            try:
                os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, chunk)
            except OSError:
                chunk //= 2
        try:
            while True:
                os.write(f.fileno(), b"\0" * 512)
        except OSError:
            pass
    assert os.statvfs(fs).f_bavail == 0
    return filler


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def one_line_error(err: str) -> str:
    """The one `error:` line the CLI ends with (progress notes may come before it); no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err and "unexpected" not in err, err
    return errors[0]


def run_filling_midway(host: Env, args: list, fs: Path, progress: Callable[[], int | None], undo: Callable[[], None],
                       *, at: int = 1, env_extra: dict | None = None,
                       tries: int = 5) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `sealift ARGS`; once progress() reports `at` bytes written, freeze it, fill fs, let it go on.

    If the step was too quick to catch, undo() what it made and try again. Returns the finished
    process (returncode, stderr) and the filler.
    """
    for _ in range(tries):
        proc = subprocess.Popen([*SEALIFT, *map(str, args)], env=host.environ(**(env_extra or {})), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        filler = None
        while proc.poll() is None:
            done = progress()
            if done is not None and done >= at:
                proc.send_signal(signal.SIGSTOP)
                filler = fill(fs)
                proc.send_signal(signal.SIGCONT)
                break
            time.sleep(0.0005)
        out, err = proc.communicate(timeout=300)
        if filler is not None:
            return subprocess.CompletedProcess(args, proc.returncode, out, err), filler
        assert proc.returncode == 0, err
        undo()  # it finished before it could be caught
    pytest.fail(f"sealift {args[0]} always finished before its first bytes could be seen")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A ~38 MB model: bigger than the 20 MB disk."""
    return make_model(tmp_path_factory.mktemp("full-disk") / "model", hidden_size=512, layers=4)


@pytest.fixture(scope="module")
def built(model, tmp_path_factory) -> tuple[Env, str]:
    """The model imported and built on a host with room: the export tests' source."""
    host = Env(tmp_path_factory.mktemp("full-disk-src") / "host")
    host.sealift("import", model, "--name", "mid", "-q", check=True)
    tag = host.sealift("build", "mid", "--target", "cpu", "--no-golden", "--json", "-q", check=True).json()["bento_tag"]
    return host, tag


# --------------------------------------------------------------------------- import


def assert_store_empty(host: Env) -> None:
    assert files_under(host.bentoml_home) == [], f"left behind: {files_under(host.bentoml_home)[:5]}"
    models = host.bentoml_home / "models"
    assert not (models.exists() and any(models.iterdir()))


def test_import_onto_a_disk_too_small_is_refused_before_writing(model: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", 20) as fs:
        host = Env(fs / "host")
        r = host.sealift("import", model, "--name", "mid")
        assert r.code == 2, r.err
        line = one_line_error(r.err)
        assert "not enough free space" in line and str(host.bentoml_home) in line and "nothing was written" in line
        assert_store_empty(host)


def test_import_when_the_disk_fills_midway_leaves_nothing_and_works_once_there_is_room(model: Path, tmp_path: Path):
    with tmpfs(tmp_path / "fs", 80) as fs:
        host = Env(fs / "host")
        staging = host.bentoml_home / ".sealift-staging"

        def progress() -> int | None:
            return sum(p.stat().st_size for p in files_under(staging)) if staging.exists() else None

        def undo() -> None:
            shutil.rmtree(host.bentoml_home / "models" / "mid")

        r, filler = run_filling_midway(host, ["import", model, "--name", "mid"], fs, progress, undo)
        assert r.returncode == 2, r.stderr
        line = one_line_error(r.stderr)
        assert "filled up" in line and "nothing was written" in line, line
        assert_store_empty(host)  # the staged copy is gone: the disk holds the filler only
        assert host.sealift("list", "--json", check=True).json() == {"models": []}

        filler.unlink()  # room again: the same command works
        tag = host.sealift("import", model, "--name", "mid", "--json", "-q", check=True).json()["tag"]
        assert host.sealift("verify", tag, "--json", check=True).json()["ok"]


# --------------------------------------------------------------------------- export


def test_export_onto_a_disk_too_small_is_refused_before_writing(built, tmp_path: Path) -> None:
    host, tag = built
    with tmpfs(tmp_path / "usb", 20) as usb:
        r = host.sealift("export", tag, usb, "--no-wheels")
        assert r.code == 2, r.err
        line = one_line_error(r.err)
        assert "not enough free space" in line and "nothing was written" in line, line
        assert list(usb.iterdir()) == []


def test_export_when_the_disk_fills_midway_keeps_only_a_partial_and_resumes(built, tmp_path: Path) -> None:
    host, tag = built
    env = {"SEALIFT_EXPORT_CHECKPOINT_BYTES": str(CHECKPOINT)}
    with tmpfs(tmp_path / "usb", 80) as usb:
        dest = usb / "dest"

        def progress() -> int | None:
            tars = list(dest.glob("*.partial/*.tar"))
            return tars[0].stat().st_size if tars else None

        def undo() -> None:
            shutil.rmtree(dest)

        # past a few checkpoints, so that there is something to resume from
        r, filler = run_filling_midway(host, ["export", tag, dest, "--no-wheels"], usb, progress, undo,
                                       at=3 * CHECKPOINT, env_extra=env)
        assert r.returncode == 2, r.stderr
        line = one_line_error(r.stderr)
        assert "is full" in line and "resume" in line, line
        (partial,) = dest.iterdir()  # nothing but the partial directory, which does not look complete
        assert partial.name.endswith(".partial")
        assert not (partial / "SHA256SUMS").exists() and not (partial / "manifest.json").exists()

        filler.unlink()
        remount(usb, 120)
        ex = host.sealift("export", tag, dest, "--no-wheels", "--json", "-q", check=True, **env).json()
        assert ex["resumed_from_bytes"] > 0  # the bytes written before the disk filled were kept
        bundle = Path(ex["bundle"])
        assert [p.name for p in dest.iterdir()] == [bundle.name]
        check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
