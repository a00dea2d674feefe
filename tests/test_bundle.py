"""`sealift export`: the bundle's layout, `sha256sum -c`, `bentoml import`, resume after a kill, free space.

The tar writer is tested in-process on plain files (it needs no store); the
command is tested through the real CLI on the shared cpu bento (conftest
`cpu_bento`) and, for the kill, on a bento whose model is big enough to kill
mid-write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from sealift.bundle import format as bundle, tarstream, wheelhouse
from sealift.bundle import export as export_step
from sealift.core.errors import Failure, UserError

from conftest import Env, make_model

# --------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_tree(root: Path) -> Path:
    """Files of every shape the writer meets: empty, odd sizes, > one chunk, nested, long and non-ASCII names."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "odd.bin").write_bytes(os.urandom(513))
    (root / "sub" / "big.bin").write_bytes(os.urandom(tarstream.CHUNK * 2 + 12345))
    (root / "sub" / "deeper" / ("long-" + "x" * 150 + ".json")).write_text("{}")
    (root / "sub" / "héllo wörld.txt").write_text("unicode\n")
    os.symlink(root / "odd.bin", root / "link-to-odd.bin")  # followed: archived as a file
    return root


def plan_for(root: Path) -> list[tarstream.Member]:
    st = root.stat()
    return [tarstream.Member("./", "dir", 0, st.st_mode, int(st.st_mtime)), *tarstream.walk(root, "./")]


def write(members: list[tarstream.Member], out: Path, advance=lambda n: None, reread=lambda n: None) -> tuple:
    """write_archive as export calls it: (FileEntry, offset it started writing at); `reread` counts re-read bytes."""
    journal = tarstream.Journal.load(out.parent, "t:v", tarstream.plan_digest(members), tarstream.archive_size(members))
    return tarstream.write_archive(members, out, journal, advance, reread)


class Stop(Exception):
    pass


def stop_after(limit: int):
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if done >= limit:
            raise Stop()

    return advance


# --------------------------------------------------------------------------- the tar writer


def test_archive_is_a_standard_tar_of_the_exact_planned_size(tmp_path):
    src = make_tree(tmp_path / "src")
    members = plan_for(src)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "a.tar"
    entry, start = write(members, out)
    assert start == 0
    assert out.stat().st_size == tarstream.archive_size(members) == entry.size
    assert out.stat().st_size % tarfile.RECORDSIZE == 0
    assert entry.sha256 == sha256(out)
    # GNU tar reads it back, byte for byte
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "xf", str(out), "-C", str(dest)], check=True)
    for f in src.rglob("*"):
        if f.is_file():
            assert (dest / f.relative_to(src)).read_bytes() == f.read_bytes(), f
    assert not (dest / "link-to-odd.bin").is_symlink()
    # Python's tarfile agrees on names and sizes
    with tarfile.open(out) as tf:
        names = {m.name: m.size for m in tf.getmembers() if m.isfile()}
    assert names["./sub/big.bin"] == tarstream.CHUNK * 2 + 12345
    assert "./sub/héllo wörld.txt" in names


def test_the_same_sources_give_the_same_bytes(tmp_path):
    src = make_tree(tmp_path / "src")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    first, _ = write(plan_for(src), tmp_path / "a" / "x.tar")
    second, _ = write(plan_for(src), tmp_path / "b" / "x.tar")
    assert first.sha256 == second.sha256


def test_an_interrupted_archive_resumes_after_its_checkpoint_without_rewriting(tmp_path, monkeypatch):
    monkeypatch.setenv(tarstream.CHECKPOINT_ENV, str(4 * 1024 * 1024))
    src = make_tree(tmp_path / "src")
    members = plan_for(src)
    total = tarstream.archive_size(members)
    (tmp_path / "ref").mkdir()
    reference, _ = write(members, tmp_path / "ref" / "x.tar")
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "x.tar"
    with pytest.raises(Stop):
        write(members, out, stop_after(total // 2))
    journal = json.loads((tmp_path / "out" / tarstream.JOURNAL).read_text())
    checkpoint = journal["archive"]["offset"]
    assert 0 < checkpoint < total and not journal["archive"]["done"]
    written, reread = [], []
    entry, start = write(members, out, written.append, reread.append)
    assert start == checkpoint
    assert sum(reread) == checkpoint  # what was there is read and checked,
    assert sum(written) == total - checkpoint  # only what was missing is written
    assert entry.sha256 == reference.sha256 == sha256(out)


def test_a_damaged_prefix_is_written_again(tmp_path, monkeypatch):
    monkeypatch.setenv(tarstream.CHECKPOINT_ENV, str(4 * 1024 * 1024))
    src = make_tree(tmp_path / "src")
    members = plan_for(src)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "x.tar"
    with pytest.raises(Stop):
        write(members, out, stop_after(tarstream.archive_size(members) // 2))
    with open(out, "r+b") as f:  # the medium lost a byte of what was fsynced
        f.seek(2048)
        byte = f.read(1)
        f.seek(2048)
        f.write(bytes([byte[0] ^ 0xFF]))
    entry, start = write(members, out)
    assert start == 0
    (tmp_path / "ref").mkdir()
    assert entry.sha256 == write(members, tmp_path / "ref" / "x.tar")[0].sha256 == sha256(out)


def test_a_model_file_that_no_longer_matches_its_manifest_is_refused(tmp_path):
    src = make_tree(tmp_path / "src")
    members = [m if not m.name.endswith("odd.bin") else tarstream.Member(**{**m.__dict__, "sha256": "0" * 64})
               for m in plan_for(src)]
    (tmp_path / "out").mkdir()
    with pytest.raises(Failure, match="does not match the model's manifest"):
        write(members, tmp_path / "out" / "x.tar")


def test_manylinux_platforms_expand_to_every_older_tag():
    tags = wheelhouse.expand_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert wheelhouse.expand_platforms("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_free_space_check_names_needed_and_available(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(UserError, match=r"not enough free space .* needs .* available"):
        export_step.check_free_space(tmp_path / "not" / "yet", free + 10**9)
    export_step.check_free_space(tmp_path, 1024)


# --------------------------------------------------------------------------- the command


def export(host: Env, *args, **env) -> dict:
    run = host.sealift("export", *args, "--json", **env)
    assert run.code == 0, run.err
    return run.json()


@pytest.fixture(scope="module")
def exported(cpu_bento, tmp_path_factory) -> dict:
    """The cpu bento exported without wheels (the shared source host is only read)."""
    usb = tmp_path_factory.mktemp("usb")
    return export(cpu_bento.host, "tiny", usb, "--no-wheels")


def test_bundle_layout_and_plain_sha256sum(exported, cpu_bento):
    path = Path(exported["bundle"])
    name, version = exported["bento_tag"].split(":")
    assert path.name == f"{name}-{version}"
    assert not list(path.parent.glob("*.partial"))
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [exported["archive"], "INSTALL.txt", "manifest.json", "SHA256SUMS"])
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 3  # the archive, INSTALL.txt, manifest.json

    doc = json.loads((path / "manifest.json").read_text())
    assert doc["bento"]["tag"] == exported["bento_tag"] == cpu_bento.build["bento_tag"]
    (model,) = doc["models"]
    assert model["tag"] == cpu_bento.build["model_tag"]
    listed = cpu_bento.host.sealift("list", "--json", check=True).json()["models"]
    assert model["manifest_digest"] == next(m["manifest_digest"] for m in listed if m["tag"] == model["tag"])
    assert doc["target"] == {"platform": "manylinux_2_28_x86_64", "python_version": "3.11"}
    assert doc["sealift_version"] and doc["install"]
    for f in doc["files"]:
        assert (path / f["path"]).stat().st_size == f["size"]
        assert sha256(path / f["path"]) == f["sha256"]
    install = (path / "INSTALL.txt").read_text()
    assert f"sealift install {path.name}" in install and "sealift start tiny" in install


def test_the_archive_is_what_bentoml_import_reads(exported, cpu_bento, tmp_path):
    archive = Path(exported["bundle"]) / exported["archive"]
    other = Env(tmp_path / "other")
    env = other.environ()
    bentoml = [sys.executable, "-m", "bentoml"]
    p = subprocess.run([*bentoml, "import", str(archive)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    model_name, model_version = cpu_bento.build["model_tag"].split(":")
    imported = other.bentoml_home / "models" / model_name / model_version
    original = Path(cpu_bento.host.bentoml_home) / "models" / model_name / model_version
    for f in original.rglob("*"):
        if f.is_file() and f.name != "model.yaml":
            assert sha256(imported / f.relative_to(original)) == sha256(f), f
    name, version = exported["bento_tag"].split(":")
    assert (other.bentoml_home / "bentos" / name / version / "bento.yaml").is_file()


def test_exporting_again_is_a_no_op_and_deterministic(exported, cpu_bento, tmp_path):
    again = export(cpu_bento.host, "tiny", Path(exported["bundle"]).parent, "--no-wheels")
    assert again["already_complete"] and again["bundle"] == exported["bundle"]
    fresh = export(cpu_bento.host, exported["bento_tag"], tmp_path / "usb2", "--no-wheels")
    first = Path(exported["bundle"]) / exported["archive"]
    assert sha256(Path(fresh["bundle"]) / fresh["archive"]) == sha256(first)


def test_unknown_name_and_contradicting_options_exit_2(cpu_bento, tmp_path):
    run = cpu_bento.host.sealift("export", "no-such-model", tmp_path / "usb")
    assert run.code == 2 and "no-such-model" in run.err
    run = cpu_bento.host.sealift("export", "tiny", tmp_path / "usb", "--no-wheels", "--wheels-from", tmp_path)
    assert run.code == 2
    assert not (tmp_path / "usb").exists()


# --------------------------------------------------------------------------- kill and resume


@pytest.fixture(scope="module")
def big_bento(tmp_path_factory) -> Env:
    """A cpu bento whose model is ~200 MB: big enough to kill its export mid-write."""
    root = tmp_path_factory.mktemp("big")
    model = make_model(root / "model", hidden_size=1024, layers=4)
    host = Env(root / "host")
    host.sealift("import", model, "--name", "big", "--quiet", check=True)
    host.sealift("build", "big", "--target", "cpu", "--no-golden", "--quiet", check=True)
    return host


def test_a_killed_export_leaves_nothing_complete_and_resumes(big_bento, tmp_path):
    usb = tmp_path / "usb"
    env = big_bento.environ(**{tarstream.CHECKPOINT_ENV: str(16 * 1024 * 1024)})
    proc = subprocess.Popen([sys.executable, "-m", "sealift.cli", "export", "big", str(usb), "--no-wheels", "-q"],
                            env=env, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        for journal in usb.glob(f"*{bundle.PARTIAL}/{tarstream.JOURNAL}"):
            try:
                offset = json.loads(journal.read_text())["archive"]["offset"]
            except (OSError, ValueError, KeyError):
                continue
            if offset > 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = offset
        if killed_at:
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert killed_at, "the export finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    (partial,) = usb.glob(f"*{bundle.PARTIAL}")
    assert [p for p in usb.iterdir() if p != partial] == []  # nothing looks complete
    assert not (partial / "SHA256SUMS").exists()

    run = big_bento.sealift("export", "big", usb, "--no-wheels", "--json")
    assert run.code == 0, run.err
    result = run.json()
    assert result["resumed_from_bytes"] >= killed_at
    bundle_dir = Path(result["bundle"])
    assert not partial.exists()
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle_dir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # the resumed archive is byte for byte the one an uninterrupted export writes
    clean = big_bento.sealift("export", "big", tmp_path / "clean", "--no-wheels", "--json", check=True).json()
    assert sha256(Path(clean["bundle"]) / clean["archive"]) == sha256(bundle_dir / result["archive"])


def test_not_enough_free_space_exits_2_before_writing_anything(cpu_bento, tmp_path):
    """A real statvfs, a real shortage: a copy of the shared host whose bento holds a sparse file bigger than
    the free space (export only stats it before the check); nothing may be written to DEST."""
    host = Env(tmp_path / "host")
    shutil.copytree(cpu_bento.host.bentoml_home, host.bentoml_home, symlinks=True)
    name, version = cpu_bento.build["bento_tag"].split(":")
    padding = host.bentoml_home / "bentos" / name / version / "src" / "padding.bin"
    with open(padding, "wb") as f:
        f.truncate(shutil.disk_usage(tmp_path).free + 2**30)  # a hole: takes no space
    usb = tmp_path / "usb"
    run = host.sealift("export", "tiny", usb, "--no-wheels", "--quiet")
    assert run.code == 2, run.err
    assert "not enough free space" in run.err and "needs" in run.err and "available" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert not usb.exists()


def test_copied_wheels_are_journaled_only_once_their_batch_is_fsynced(tmp_path: Path):
    """Issue 26: wheels are fsynced in batches (not one by one); the journal, what a resumed export trusts, names
    a wheel only after its batch was fsynced, so a kill in between makes the next run copy it again."""
    src = tmp_path / "cache" / "a-1.0-py3-none-any.whl"
    src.parent.mkdir()
    src.write_bytes(os.urandom(300_000))
    partial = tmp_path / "partial"
    (partial / "wheels").mkdir(parents=True)
    journal = tarstream.Journal.load(partial, "x:1", "plan", 0)
    unsynced: list = []
    entry, kept = export_step._copy_wheel(src, partial / "wheels" / src.name, f"wheels/{src.name}", journal,
                                          lambda n: None, unsynced=unsynced)
    assert kept == 0 and entry.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (partial / "wheels" / src.name).read_bytes() == src.read_bytes()
    assert journal.doc["files"] == {} and not (partial / tarstream.JOURNAL).exists()
    export_step._settle(unsynced, journal)
    assert unsynced == []
    on_disk = json.loads((partial / tarstream.JOURNAL).read_text())
    assert on_disk["files"] == {f"wheels/{src.name}": {"size": 300_000, "sha256": entry.sha256}}
