"""Removable media: `--max-file-size` (numbered parts), FAT32 detection, `--volume-size` and several DEST.

The split writer and reader are tested in-process on plain files (no store); the commands through the
real CLI on the shared cpu bento (conftest `cpu_bento`, exported with --no-wheels: wheels are not the
subject), real tars, real `sha256sum -c`, a real kill -9 mid-export, and real installs on empty hosts.
"""

from __future__ import annotations

import hashlib
import io
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

from sealift.bundle import parts, tarstream, volumes
from sealift.core.units import parse_size
from sealift.host import unpack, verify

from conftest import Env, make_model

K = 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "odd.bin").write_bytes(os.urandom(70 * K + 3))
    (root / "sub" / "big.bin").write_bytes(os.urandom(2 * tarstream.CHUNK + 300 * K + 7))
    (root / "sub" / "small.json").write_text("{}")
    return root


def plan_for(root: Path) -> list[tarstream.Member]:
    st = root.stat()
    return [tarstream.Member("./", "dir", 0, st.st_mode, int(st.st_mtime)), *tarstream.walk(root, "./")]


def split_out(folder: Path, members: list[tarstream.Member], size: int) -> parts.SplitOut:
    pieces = parts.plan_pieces([("a.tar", tarstream.archive_size(members))], max_file=size)["a.tar"]
    return parts.SplitOut([folder / p.rel for p in pieces], [p.size for p in pieces], [p.rel for p in pieces])


def write_split(members, folder: Path, size: int, advance=lambda n: None, reread=lambda n: None):
    journal = tarstream.Journal.load(folder, "t:v", tarstream.plan_digest(members), tarstream.archive_size(members))
    return tarstream.write_archive(members, folder / "a.tar", journal, advance, reread,
                                   out=split_out(folder, members, size))


class Stop(Exception):
    pass


# --------------------------------------------------------------------------- units


def test_sizes_parse_with_binary_suffixes_and_bad_ones_are_refused():
    assert parse_size("64K") == 65536 and parse_size("1M") == 2**20 and parse_size("4G") == 4 * 2**30
    assert parse_size("120GB") == 120 * 2**30 and parse_size("1.5GiB") == 3 * 2**29 and parse_size("100") == 100
    for bad in ("", "12Q", "-1M", "0", "G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_fat32_is_told_from_the_mount_table(tmp_path):
    table = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 8:17 / /media/usb rw,relatime shared:9 - vfat /dev/sdb1 rw,fmask=0022\n"
        "41 40 8:33 / /media/usb/inner rw - exfat /dev/sdc1 rw\n"
        "42 22 8:49 / /media/my\\040stick rw - msdos /dev/sdd1 rw\n"
    )
    assert parts.fat_limit(Path("/media/usb/bundles/new"), table) == parts.FAT_LIMIT == 4 * 2**30 - 1
    assert parts.fat_limit(Path("/media/usb/inner/x"), table) is None  # the deeper mount wins
    assert parts.fat_limit(Path("/media/usbstick"), table) is None  # a prefix of the name is not the mount
    assert parts.fat_limit(Path("/media/my stick/x"), table) == parts.FAT_LIMIT
    assert parts.fat_limit(Path("/home/x"), table) is None
    point, fstype = parts.fs_type(tmp_path)  # the real table names tmp_path's filesystem
    assert fstype and str(tmp_path).startswith(point)


def test_a_mount_point_with_non_ascii_and_spaces_is_read_as_its_path():
    # `/media/jörg/MY USB`: ö as octal escapes of its UTF-8 bytes, as the raw bytes (what this kernel writes),
    # and a latin-1 ö (one byte, not UTF-8) on another stick: each is the path Python names (os.fsdecode)
    table = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 8:17 / /media/j\\303\\266rg/MY\\040USB rw,relatime shared:9 - vfat /dev/sdb1 rw,fmask=0022\n"
        "41 22 8:33 / /media/anna/\u00c5SA\\040\\134\\011x rw - vfat /dev/sdc1 rw\n"
        "42 22 8:49 / /media/old/j\\366rg rw - msdos /dev/sdd1 rw\n"
    )
    assert parts.fs_type(Path("/media/jörg/MY USB/bundles"), table) == ("/media/jörg/MY USB", "vfat")
    assert parts.fat_limit(Path("/media/jörg/MY USB/bundles/new"), table) == parts.FAT_LIMIT
    assert parts.fat_limit(Path("/media/jörg/MY"), table) is None
    assert parts.fs_type(Path("/media/anna/\u00c5SA \\\tx/b"), table)[0] == "/media/anna/\u00c5SA \\\tx"
    latin1 = os.fsdecode(b"/media/old/j\xf6rg")
    assert parts.fat_limit(Path(latin1) / "b", table) == parts.FAT_LIMIT
    # raw UTF-8 bytes in the table read from /proc (no escape at all) name the same path
    raw = os.fsdecode("40 22 8:17 / /media/jörg/MY\\040USB rw - vfat /dev/sdb1 rw\n".encode())
    assert parts.fs_type(Path("/media/jörg/MY USB/x"), raw) == ("/media/jörg/MY USB", "vfat")


def test_a_real_mount_with_a_non_ascii_name_is_found(tmp_path):
    """A tmpfs mounted on `.../jörg/MY USB` in a private mount namespace: fs_type reads /proc/self/mountinfo."""
    point = tmp_path / "jörg" / "MY USB"
    point.mkdir(parents=True)
    code = ("import sys; from pathlib import Path; from sealift.bundle import parts; "
            "print(parts.fs_type(Path(sys.argv[1]) / 'x'))")
    try:
        p = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$1" || exit 77; exec "$2" -c "$3" "$1"',
                            "sh", str(point), sys.executable, code], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if p.returncode == 77 or (p.returncode != 0 and p.stderr.startswith("unshare")):
        pytest.skip(f"no private mount namespace here: {p.stderr.strip()[:200]}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == repr((str(point), "tmpfs")), p.stdout


def test_pieces_fill_each_volume_and_respect_the_file_limit():
    files = [("a.tar", 1000), ("wheels/x.whl", 30), ("wheels/big.whl", 250)]
    flat = parts.plan_pieces(files, max_file=100)
    assert [p.size for p in flat["a.tar"]] == [100] * 10 and flat["a.tar"][0].rel == "a.tar.part-0001"
    assert flat["wheels/x.whl"] == [parts.Piece(0, "wheels/x.whl", 30)]
    assert [p.rel for p in flat["wheels/big.whl"]][-1] == "wheels/big.whl.part-0003"
    vols = parts.plan_pieces(files, max_file=300, capacity=lambda i: 400)
    assert [(p.volume, p.size) for p in vols["a.tar"]] == [(0, 300), (0, 100), (1, 300), (1, 100), (2, 200)]
    used = {}
    for ps in vols.values():
        for p in ps:
            assert p.size <= 300
            used[p.volume] = used.get(p.volume, 0) + p.size
    assert all(v <= 400 for v in used.values()) and sum(used.values()) == 1280
    assert parts.plan_pieces([("a.tar", 50)], max_file=100) == {"a.tar": [parts.Piece(0, "a.tar", 50)]}


# --------------------------------------------------------------------------- the split writer and reader


def test_split_archive_is_written_in_one_pass_and_reads_back_as_one(tmp_path):
    src = make_tree(tmp_path / "src")
    members = plan_for(src)
    total = tarstream.archive_size(members)
    (tmp_path / "one").mkdir()
    reference, _ = tarstream.write_archive(members, tmp_path / "one" / "a.tar", tarstream.Journal.load(
        tmp_path / "one", "t:v", tarstream.plan_digest(members), total), lambda n: None)
    (tmp_path / "split").mkdir()
    written, reread = [], []
    entries, start = write_split(members, tmp_path / "split", 64 * K, written.append, reread.append)
    assert start == 0 and sum(written) == total and sum(reread) == 0  # every byte written once, none re-read
    assert len(entries) == -(-total // (64 * K)) > 1
    joined = b""
    for e in entries:
        f = tmp_path / "split" / e.path
        assert f.stat().st_size == e.size <= 64 * K and sha256(f) == e.sha256
        joined += f.read_bytes()
    assert joined == (tmp_path / "one" / "a.tar").read_bytes() and hashlib.sha256(joined).hexdigest() == reference.sha256
    assert not list((tmp_path / "split").glob("a.tar")) # no whole copy

    out = tmp_path / "x"
    out.mkdir()
    read: list[int] = []
    with unpack.Stream.of_files([tmp_path / "split" / e.path for e in entries], label="a.tar") as stream:
        members_read = unpack.read_members(stream, verify.check_member)
        with tarfile.open(tmp_path / "one" / "a.tar") as tf:
            assert [(m.name, m.offset_data, m.size) for m in members_read] == \
                   [(m.name, m.offset_data, m.size) for m in tf.getmembers()]
        stream.unpack(members_read, out, lambda rel: True, read.append)  # members cross part boundaries
        assert stream.got == [e.sha256 for e in entries]  # each part hashed as it was read, once
    assert sum(read) == total
    for f in src.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(src)).read_bytes() == f.read_bytes(), f


def test_an_interrupted_split_archive_resumes_without_rewriting(tmp_path, monkeypatch):
    monkeypatch.setenv(tarstream.CHECKPOINT_ENV, str(tarfile.RECORDSIZE))
    src = make_tree(tmp_path / "src")
    members = plan_for(src)
    total = tarstream.archive_size(members)
    (tmp_path / "ref").mkdir()
    reference, _ = write_split(members, tmp_path / "ref", 1024 * K)
    out = tmp_path / "out"
    out.mkdir()
    done = 0

    def stop(n):
        nonlocal done
        done += n
        if done > total * 3 // 4:
            raise Stop()

    with pytest.raises(Stop):
        write_split(members, out, 1024 * K, stop)
    journal = json.loads((out / tarstream.JOURNAL).read_text())["archive"]
    assert 0 < journal["offset"] < total and journal["parts"]
    written, reread = [], []
    entries, start = write_split(members, out, 1024 * K, written.append, reread.append)
    assert start == journal["offset"] and sum(reread) == start and sum(written) == total - start
    assert entries == reference
    for e in entries:
        assert sha256(out / e.path) == e.sha256


# --------------------------------------------------------------------------- the commands


def export(host: Env, *args) -> dict:
    run = host.sealift("export", *args, "--no-wheels", "--json")
    assert run.code == 0, run.err
    return run.json()


def sums_check(folder: Path) -> str:
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return check.stdout


def installed(host: Env) -> list[str]:
    return sorted(p.name for p in (host.bentoml_home / "models").glob("*/*") if p.name != "latest")


@pytest.fixture(scope="module")
def split(cpu_bento, tmp_path_factory) -> dict:
    return export(cpu_bento.host, "tiny", tmp_path_factory.mktemp("usb"), "--max-file-size", "64K")


def test_no_file_exceeds_the_limit_and_sha256sum_checks_every_part(split):
    bundle = Path(split["bundle"])
    assert split["parts"] > 1
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in files) <= 64 * K
    assert not (bundle / split["archive"]).exists()
    out = sums_check(bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    names = doc["parts"][split["archive"]]["parts"]
    assert len(names) == split["parts"] and all(f"{n}: OK" in out for n in names)
    assert sum((bundle / n).stat().st_size for n in names) == doc["parts"][split["archive"]]["size"]
    # joined, the parts are the archive an unsplit export writes: what `bentoml import` reads
    joined = b"".join((bundle / n).read_bytes() for n in names)
    with tarfile.open(fileobj=io.BytesIO(joined)) as tf:
        assert "./bento.yaml" in tf.getnames()


def test_install_reads_the_parts_in_place(split, cpu_bento, tmp_path):
    host = Env(tmp_path / "airgap")
    run = host.sealift("install", split["bundle"], "--no-venv", "--json")
    assert run.code == 0, run.err
    assert installed(host) == [cpu_bento.build["model_tag"].split(":")[1]]
    assert host.sealift("verify", cpu_bento.build["model_tag"]).code == 0
    archive = split["archive_bytes"]
    big = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size >= archive]
    assert big == []  # nothing joined the parts into a copy of the archive


def test_a_missing_or_foreign_part_is_refused_and_nothing_imported(split, cpu_bento, tmp_path):
    other = export(cpu_bento.host, "tiny", tmp_path / "other", "--max-file-size", "48K")
    bundle = tmp_path / "bundle"
    shutil.copytree(split["bundle"], bundle)
    names = sorted(bundle.glob("*.part-*"))
    theirs = sorted(Path(other["bundle"]).glob("*.part-*"))  # another bundle's bytes, cut to this part's size
    names[1].write_bytes((theirs[1].read_bytes() + theirs[2].read_bytes())[: names[1].stat().st_size])
    host = Env(tmp_path / "airgap")
    run = host.sealift("install", bundle, "--no-venv")
    assert run.code == 2 and names[1].name in run.err and "corrupted" in run.err
    names[2].unlink()
    run = host.sealift("install", bundle, "--no-venv")
    assert run.code == 2 and names[2].name in run.err and "missing" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert not (host.bentoml_home / "models").exists() or installed(host) == []


def test_a_bad_size_exits_2(cpu_bento, tmp_path):
    run = cpu_bento.host.sealift("export", "tiny", tmp_path / "usb", "--no-wheels", "--max-file-size", "12Q")
    assert run.code == 2 and "--max-file-size" in run.err
    assert not (tmp_path / "usb").exists()


# --------------------------------------------------------------------------- volumes


@pytest.fixture(scope="module")
def spanned(cpu_bento, tmp_path_factory) -> dict:
    """The cpu bento on two 'USB disks' at once, 1.5 MiB each."""
    root = tmp_path_factory.mktemp("disks")
    return export(cpu_bento.host, "tiny", root / "usb1", root / "usb2", "--volume-size", "1536K")


def test_each_volume_describes_itself_and_checks_alone(spanned):
    vols = [Path(v) for v in spanned["volumes"]]
    assert len(vols) == 2 and vols[0].parent.parent.name == "usb1" and vols[1].parent.parent.name == "usb2"
    ids = set()
    for i, vol in enumerate(vols, 1):
        doc = json.loads((vol / volumes.VOLUME_JSON).read_text())
        assert (doc["volume"], doc["volumes"], doc["bento"]) == (i, 2, spanned["bento_tag"])
        ids.add(doc["bundle_id"])
        assert sum(p.stat().st_size for p in vol.iterdir()) <= 1536 * 1024
        out = sums_check(vol)
        assert all(f"{f}: OK" in out for f in doc["files"])
    assert len(ids) == 1


def test_install_takes_the_volumes_and_refuses_an_incomplete_or_mixed_set(spanned, cpu_bento, tmp_path):
    vol1, vol2 = (Path(v) for v in spanned["volumes"])
    host = Env(tmp_path / "airgap")
    run = host.sealift("install", vol1, "--no-venv")
    assert run.code == 2 and "vol-2" in run.err and "missing" in run.err and len(run.err.strip().splitlines()) == 1
    run = host.sealift("install", vol1, vol1, vol2, "--no-venv")
    assert run.code == 2 and "given twice" in run.err
    again = export(cpu_bento.host, "tiny", tmp_path / "again1", tmp_path / "again2", "--volume-size", "1536K")
    run = host.sealift("install", vol1, again["volumes"][1], "--no-venv")  # the same bento, another export
    assert run.code == 2 and "two different bundles" in run.err
    broken = tmp_path / "broken"
    shutil.copytree(vol2, broken)
    gone = next(broken.glob("*.part-*"))
    gone.unlink()
    run = host.sealift("install", vol1, broken, "--no-venv")
    assert run.code == 2 and gone.name in run.err and "missing" in run.err
    assert not (host.bentoml_home / "models").exists() or installed(host) == []
    run = host.sealift("install", vol2, vol1, "--no-venv", "--json")
    assert run.code == 0, run.err
    assert installed(host) == [cpu_bento.build["model_tag"].split(":")[1]]
    assert not list((host.sealift_home / "tmp").iterdir())  # the view over the volumes is gone


def test_one_dest_gets_vol_folders_installed_from_their_parent(cpu_bento, tmp_path):
    result = export(cpu_bento.host, "tiny", tmp_path / "usb", "--volume-size", "600K")
    bundle = Path(result["bundle"])
    assert [Path(v).name for v in result["volumes"]] == [f"vol-{i}" for i in range(1, len(result["volumes"]) + 1)]
    assert all(Path(v).parent == bundle for v in result["volumes"]) and len(result["volumes"]) > 2
    assert "sealift install" in (bundle / "vol-1" / "INSTALL.txt").read_text()
    again = cpu_bento.host.sealift("export", "tiny", tmp_path / "usb", "--volume-size", "600K", "--no-wheels", "--json")
    assert again.code == 0 and again.json()["already_complete"]
    host = Env(tmp_path / "airgap")
    assert host.sealift("install", bundle, "--no-venv").code == 0
    assert installed(host) == [cpu_bento.build["model_tag"].split(":")[1]]


def test_too_few_dest_for_the_volumes_writes_nothing(cpu_bento, tmp_path):
    run = cpu_bento.host.sealift("export", "tiny", tmp_path / "a", tmp_path / "b", "--volume-size", "600K",
                                 "--no-wheels")
    assert run.code == 2 and "2 DEST given" in run.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- kill -9 and resume


def test_a_killed_split_export_resumes(tmp_path):
    model = make_model(tmp_path / "model", hidden_size=512, layers=4)  # ~38 MB
    host = Env(tmp_path / "host")
    host.sealift("import", model, "--name", "mid", "--quiet", check=True)
    host.sealift("build", "mid", "--target", "cpu", "--no-golden", "--quiet", check=True)
    usb = tmp_path / "usb"
    env = host.environ(**{tarstream.CHECKPOINT_ENV: str(2**20)})
    args = ["export", "mid", str(usb), "--no-wheels", "--max-file-size", "4M"]
    proc = subprocess.Popen([sys.executable, "-m", "sealift.cli", *args, "-q"], env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    killed_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not killed_at:
        for journal in usb.glob(f"*.partial/{tarstream.JOURNAL}"):
            try:
                arch = json.loads(journal.read_text())["archive"]
            except (OSError, ValueError, KeyError):
                continue
            if arch.get("parts"):  # at least one part finished
                proc.send_signal(signal.SIGKILL)
                killed_at = arch["offset"]
        time.sleep(0.001)
    proc.wait(timeout=60)
    assert killed_at and proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    (partial,) = usb.glob("*.partial")
    assert [p for p in usb.iterdir() if p != partial] == [] and not (partial / "SHA256SUMS").exists()
    run = host.sealift("export", *args[1:], "--json")
    assert run.code == 0, run.err
    result = run.json()
    assert result["resumed_from_bytes"] >= killed_at and result["parts"] > 1
    sums_check(Path(result["bundle"]))
    clean = host.sealift("export", "mid", tmp_path / "clean", "--no-wheels", "--max-file-size", "4M", "--json",
                         check=True).json()
    for p in sorted(Path(clean["bundle"]).glob("*.part-*")):
        assert sha256(p) == sha256(Path(result["bundle"]) / p.name), p.name


def test_a_split_bundle_is_signed_and_installs_under_a_signing_policy(cpu_bento, tmp_path):
    key = tmp_path / "release"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'release@example.org namespaces="sealift" {(tmp_path / "release.pub").read_text()}')
    result = export(cpu_bento.host, "tiny", tmp_path / "usb", "--max-file-size", "256K", "--sign", key)
    bundle = Path(result["bundle"])
    assert result["parts"] > 1 and result["signature"] and (bundle / "SHA256SUMS.sig").is_file()
    host = Env(tmp_path / "airgap")
    run = host.sealift("install", bundle, "--no-venv", "--allowed-signers", allowed, "--json")
    assert run.code == 0, run.err
    assert run.json()["signature"]["fingerprint"] == result["signature"]["fingerprint"]
    run = cpu_bento.host.sealift("export", "tiny", tmp_path / "vols", "--volume-size", "1M", "--sign", key,
                                 "--no-wheels")
    assert run.code == 2 and "--sign" in run.err and not (tmp_path / "vols").exists()


def test_a_big_wheel_is_split_once_and_joined_once_into_the_kept_wheels(tmp_path, monkeypatch):
    import zipfile

    from sealift.host import wheelpool
    from sealift.host.medium import Folder

    monkeypatch.setenv("SEALIFT_HOME", str(tmp_path / "home"))
    wheel = tmp_path / "src" / "big_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("big_pkg/data.bin", os.urandom(300 * K))
        zf.writestr("big_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: big-pkg\nVersion: 1.0\n")
    rel = f"wheels/{wheel.name}"
    pieces = parts.plan_pieces([(rel, wheel.stat().st_size)], max_file=64 * K)[rel]
    bundle = tmp_path / "bundle"
    read = []
    entries, whole = parts.copy_split(wheel, [(bundle / p.rel, p.rel, p.size) for p in pieces], read.append)
    assert sum(read) == wheel.stat().st_size and whole == sha256(wheel) and len(entries) == len(pieces) > 1
    assert all((bundle / e.path).stat().st_size == e.size <= 64 * K and sha256(bundle / e.path) == e.sha256
               for e in entries)
    doc = {"parts": {rel: {"size": wheel.stat().st_size, "sha256": whole, "parts": [e.path for e in entries]}},
           "files": [e.to_dict() for e in entries]}
    assert parts.logical_files(doc) == {rel: wheel.stat().st_size}
    medium = Folder(label=str(bundle), root=bundle)
    sums = {e.path: e.sha256 for e in entries}
    w = wheelpool.Wheel(wheel.name, whole, wheel.stat().st_size, rel)
    taken: list[int] = []

    def stream_of(w):
        return unpack.Stream(medium, [e.path for e in entries], sums, [e.size for e in entries])

    staged = wheelpool.stage(stream_of, [w], tmp_path / "home" / "tmp" / "s", taken.append, whole=lambda w: True)
    assert sum(taken) == wheel.stat().st_size  # each part read once, into one joined copy
    wheelset = wheelpool.publish(staged, "big:v1")
    assert (wheelset / wheel.name).read_bytes() == wheel.read_bytes()
    kept = tmp_path / "home" / "wheels"
    assert os.path.samefile(kept / wheel.name, kept / ".sha256" / whole)
    with zipfile.ZipFile(kept / wheel.name) as zf:
        assert "big_pkg-1.0.dist-info/METADATA" in zf.namelist()