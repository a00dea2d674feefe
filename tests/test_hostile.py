"""Hostile media: crafted bundles, each refused with one line and exit 2, and nothing changed on the host.

Every file install reads gets crafted variants: SHA256SUMS, SHA256SUMS.sig, manifest.json (its file
list, parts map, delta record, tags and versions), the archive's member names and types, the bundle
folder itself (symlinks), and for a bundle spanning volumes VOLUME.json and BUNDLE-SHA256SUMS. The
signed variants are re-sealed and re-signed by the key the host trusts: a valid signature over
hostile metadata. Before and after each install, every file under HOME, $SEALIFT_HOME, $BENTOML_HOME
and the medium is listed (type, size, mtime, link target): nothing may change but an emptied staging
folder. The host is not empty: it holds a kept wheel and an allowed_signers file an attack would aim at.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Env

WHEEL = "evil_pkg-1.0-py3-none-any.whl"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under roots: (kind, size, mtime_ns, link target) by path; links are not followed."""
    out: dict[str, tuple] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = os.lstat(p)
                kind = "link" if os.path.islink(p) else "dir" if p.is_dir() else "file"
                out[str(p)] = (kind, st.st_size if kind == "file" else 0,
                               st.st_mtime_ns if kind != "dir" else 0, os.readlink(p) if kind == "link" else "")
    return out


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> tuple[Path, Path]:
    """An ed25519 key and an allowed_signers file that trusts it for sealift."""
    d = tmp_path_factory.mktemp("key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "k")], check=True)
    signers = d / "allowed_signers"
    signers.write_text(f'release@example.org namespaces="sealift" {(d / "k.pub").read_text()}')
    return d / "k", signers


@pytest.fixture(scope="module")
def signed(cpu_bento, key, tmp_path_factory) -> Path:
    usb = tmp_path_factory.mktemp("usb-signed")
    run = cpu_bento.host.sealift("export", "tiny", usb, "--no-wheels", "--sign", key[0], "--json", check=True)
    return Path(run.json()["bundle"])


@pytest.fixture(scope="module")
def spanned(cpu_bento, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("usb-vols")
    run = cpu_bento.host.sealift("export", "tiny", root / "a", root / "b", "--no-wheels", "--volume-size", "1536K",
                                 "--json", check=True)
    return [Path(v) for v in run.json()["volumes"]]


def reseal(bundle: Path, key: Path, edit: Callable[[dict], None] | None = None) -> None:
    """Recompute manifest.json's list and SHA256SUMS over what the folder now holds, apply `edit` to the
    manifest, and sign SHA256SUMS with the trusted key: a valid signature over whatever the edit says."""
    doc = json.loads((bundle / "manifest.json").read_text())
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.name not in ("manifest.json", "SHA256SUMS", "SHA256SUMS.sig"))
    doc["files"] = [{"path": p.relative_to(bundle).as_posix(), "size": p.stat().st_size, "sha256": sha256(p)}
                    for p in files]
    if edit:
        edit(doc)
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    entries = {f["path"]: f["sha256"] for f in doc["files"] if isinstance(f, dict) and isinstance(f.get("path"), str)}
    entries["manifest.json"] = sha256(bundle / "manifest.json")
    (bundle / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sorted(entries.items())))
    sign(bundle, key)


def sign(bundle: Path, key: Path) -> None:
    (bundle / "SHA256SUMS.sig").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", "sealift", str(bundle / "SHA256SUMS")],
                   check=True, capture_output=True)


def archive(bundle: Path) -> Path:
    return bundle / json.loads((bundle / "manifest.json").read_text())["archive"]


def with_member(bundle: Path, name: str, *, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x",
                mode: int = 0o644) -> None:
    """The archive plus one member, rewritten in place."""
    arc = archive(bundle)
    out = arc.with_suffix(".new")
    with tarfile.open(arc) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = kind, link, mode
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        dst.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    os.replace(out, arc)


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *keys, last = path.split(".")
        node = doc
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def _add_file(entry: dict) -> Callable[[dict], None]:
    return lambda doc: doc["files"].append(entry)


Z = "0" * 64
# name -> (what to do to a copy of the signed bundle (folder, key), words the refusal must hold)
SIGNED: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "sums-dotdot": (lambda b, k: reseal(b, k, _add_file({"path": f"../../wheels/{WHEEL}", "size": 1, "sha256": Z})),
                    "unsafe"),
    "sums-absolute": (lambda b, k: reseal(b, k, _add_file({"path": "/etc/passwd", "size": 1, "sha256": Z})), "unsafe"),
    "sums-newline-name": (lambda b, k: reseal(b, k, _add_file({"path": "a\nb", "size": 1, "sha256": Z})), "SHA256SUMS"),
    "files-twice": (lambda b, k: reseal(b, k, lambda d: d["files"].append(dict(d["files"][0]))), "twice"),
    "files-not-a-list": (lambda b, k: reseal(b, k, _set("files", "x")), "files"),
    "size-a-string": (lambda b, k: reseal(b, k, _set("files.0.size", "12")), "size"),
    "size-negative": (lambda b, k: reseal(b, k, _set("files.0.size", -1)), "size"),
    "bento-tag-escapes": (lambda b, k: reseal(b, k, _set("bento.tag", "../../x:1")), "bento.tag"),
    "version-injects-a-line": (lambda b, k: reseal(b, k, _set("bento.bentoml_version", "1.4\n--index-url http://x")),
                               "bentoml_version"),
    "archive-dotdot": (lambda b, k: reseal(b, k, _set("archive", "../x.tar")), "archive"),
    "parts-outside": (lambda b, k: reseal(b, k, lambda d: d.__setitem__(
        "parts", {d["archive"]: {"size": 1, "sha256": None, "parts": ["../x.tar.part-0001"]}})), "parts"),
    "parts-huge-count": (lambda b, k: reseal(b, k, lambda d: d.__setitem__(
        "parts", {d["archive"]: {"size": 1, "sha256": None, "parts": ["p"] * 200_000}})), "parts"),
    "volumes-huge-count": (lambda b, k: reseal(b, k, _set("volumes", {"count": 10**12, "files": {}})), "volumes"),
    "delta-relies-dotdot": (lambda b, k: reseal(b, k, _set("delta", {"store_id": "s", "relies": [
        {"path": "../../../etc/passwd", "sha256": Z, "size": 1, "kind": "model", "from": "x:1",
         "from_path": "a"}]})), "delta"),
    "delta-wrong-types": (lambda b, k: reseal(b, k, _set("delta", {"store_id": 5, "relies": "all"})), "delta"),
    "manifest-not-an-object": (lambda b, k: ((b / "manifest.json").write_text("[1, 2]\n"),
                                             reseal_sums_only(b, k)), "manifest.json"),
    "member-dotdot": (lambda b, k: (with_member(b, "./../../../../escaped.txt"), reseal(b, k)), "refusing member"),
    "member-absolute": (lambda b, k: (with_member(b, "/tmp/sealift-hostile-absolute.txt"), reseal(b, k)),
                        "refusing member"),
    "member-symlink": (lambda b, k: (with_member(b, "./src/escape", kind=tarfile.SYMTYPE, link="/etc"),
                                     reseal(b, k)), "refusing member"),
    "member-symlink-inside": (lambda b, k: (with_member(b, "./src/inside", kind=tarfile.SYMTYPE, link="service.py"),
                                            reseal(b, k)), "refusing member"),
    "member-hardlink": (lambda b, k: (with_member(b, "./src/hard", kind=tarfile.LNKTYPE, link="./bento.yaml"),
                                      reseal(b, k)), "refusing member"),
    "member-device": (lambda b, k: (with_member(b, "./src/null", kind=tarfile.CHRTYPE), reseal(b, k)),
                      "refusing member"),
    "member-twice": (lambda b, k: (with_member(b, "./bento.yaml", data=b"name: other\n"), reseal(b, k)),
                     "refusing member"),
    "member-newline-name": (lambda b, k: (with_member(b, "./src/a\nb"), reseal(b, k)), "refusing member"),
    "member-setuid": (lambda b, k: (with_member(b, "./src/suid", mode=0o4755), reseal(b, k)), "refusing member"),
    "symlink-in-the-folder": (lambda b, k: _symlink_instead(b / "INSTALL.txt"), "symlink"),
    "symlinked-sums": (lambda b, k: _symlink_instead(b / "SHA256SUMS"), "symlink"),
    "signature-garbage": (lambda b, k: (b / "SHA256SUMS.sig").write_bytes(os.urandom(300)), "signature"),
    "signature-missing": (lambda b, k: (b / "SHA256SUMS.sig").unlink(), "not signed"),
    "sums-edited-after-signing": (lambda b, k: (b / "SHA256SUMS").write_text(
        (b / "SHA256SUMS").read_text() + f"{Z}  extra\n"), "signature"),
}


def reseal_sums_only(bundle: Path, key: Path) -> None:
    lines = [ln for ln in (bundle / "SHA256SUMS").read_text().splitlines() if not ln.endswith("  manifest.json")]
    lines.append(f"{sha256(bundle / 'manifest.json')}  manifest.json")
    (bundle / "SHA256SUMS").write_text("".join(f"{ln}\n" for ln in sorted(lines, key=lambda ln: ln[66:])))
    sign(bundle, key)


def _symlink_instead(path: Path) -> None:
    """The same bytes, from a file elsewhere on the medium, through a symlink where the file was."""
    real = path.parent.parent / f"real-{path.name}"
    shutil.copy2(path, real)
    path.unlink()
    path.symlink_to(real)


def _host(tmp_path: Path, signers: Path) -> Env:
    """A host that already holds things an attack would aim at: a kept wheel, an allowed_signers file."""
    host = Env(tmp_path / "airgap")
    for d in (host.root / "home" / ".sealift", host.sealift_home / "wheels", host.bentoml_home):
        d.mkdir(parents=True)
    (host.sealift_home / "wheels" / WHEEL).write_bytes(b"a kept wheel")
    shutil.copy(signers, host.sealift_home / "allowed_signers")
    return host


def _refused(host: Env, args: list, words: str, watched: list[Path]) -> None:
    before = snapshot(*watched)
    run = host.sealift("install", *args, "--no-venv", HOME=str(host.root / "home"))
    assert run.code == 2, (run.code, run.err, run.out)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert words.lower() in run.err.lower(), run.err
    after = snapshot(*watched)
    changed = {p: (before.get(p), after.get(p)) for p in set(before) | set(after) if before.get(p) != after.get(p)}
    # nothing but an (emptied) staging area, and the empty folders bentoml makes when its store is opened
    allowed = {str(host.sealift_home / "tmp"), *(str(host.bentoml_home / d) for d in ("models", "bentos", "envs", "tmp"))}
    assert set(changed) <= allowed, changed
    for p in allowed:
        assert not Path(p).exists() or not any(Path(p).iterdir()), p  # staging swept
    assert not Path("/tmp/sealift-hostile-absolute.txt").exists()


@pytest.mark.parametrize("case", sorted(SIGNED))
def test_a_hostile_signed_bundle_is_refused_and_changes_nothing(case, signed, key, tmp_path):
    bundle = tmp_path / "usb" / signed.name
    shutil.copytree(signed, bundle)
    mutate, words = SIGNED[case]
    mutate(bundle, key[0])
    host = _host(tmp_path, key[1])
    _refused(host, [bundle], words, [host.root, bundle.parent])


VOLUME: dict[str, tuple[Callable[[dict], None], str]] = {
    "files-dotdot": (lambda v: v["files"].append(f"../../wheels/{WHEEL}"), "VOLUME.json"),
    "files-absolute": (lambda v: v["files"].append("/root/.sealift/allowed_signers"), "VOLUME.json"),
    "files-newline": (lambda v: v["files"].append("a\nb"), "VOLUME.json"),
    "files-a-string": (lambda v: v.__setitem__("files", "all"), "VOLUME.json"),
    "volume-huge": (lambda v: v.__setitem__("volume", 10**12), "VOLUME.json"),
    "volume-a-string": (lambda v: v.__setitem__("volume", "1"), "VOLUME.json"),
    "volume-of-another-number": (lambda v: v.__setitem__("volume", 2), "VOLUME.json"),
    "files-one-more": (lambda v: v["files"].append("INSTALL.txt.extra"), "VOLUME.json"),
}


@pytest.mark.parametrize("case", sorted(VOLUME))
def test_a_hostile_volume_is_refused_and_plants_nothing(case, spanned, key, tmp_path):
    """Volumes are never signed: their lists are held against the hashed manifest.json, never used as paths."""
    vols = []
    for v in spanned:
        dst = tmp_path / "media" / v.parent.parent.name / v.parent.name / v.name
        shutil.copytree(v, dst)
        vols.append(dst)
    doc = json.loads((vols[0] / "VOLUME.json").read_text())
    VOLUME[case][0](doc)
    (vols[0] / "VOLUME.json").write_text(json.dumps(doc))
    host = _host(tmp_path, key[1])
    (host.sealift_home / "allowed_signers").unlink()  # no policy: volumes are unsigned
    _refused(host, vols, VOLUME[case][1], [host.root, tmp_path / "media"])


def test_bundle_sums_of_volumes_with_an_unsafe_path_is_refused(spanned, key, tmp_path):
    vols = []
    for v in spanned:
        dst = tmp_path / "media" / v.parent.parent.name / v.parent.name / v.name
        shutil.copytree(v, dst)
        vols.append(dst)
    for v in vols:
        with open(v / "BUNDLE-SHA256SUMS", "a") as f:
            f.write(f"{Z}  ../../../etc/passwd\n")
    host = _host(tmp_path, key[1])
    (host.sealift_home / "allowed_signers").unlink()
    _refused(host, vols, "unsafe", [host.root, tmp_path / "media"])


def test_the_untouched_signed_bundle_installs(signed, key, tmp_path):
    """The control: the same host and the same signed bundle, unchanged, install."""
    host = _host(tmp_path, key[1])
    run = host.sealift("install", signed, "--no-venv", "--json", HOME=str(host.root / "home"))
    assert run.code == 0, run.err
    assert run.json()["signature"]["identity"] == "release@example.org"
    assert (host.sealift_home / "wheels" / WHEEL).read_bytes() == b"a kept wheel"


def test_verify_checks_a_bundle_as_install_would_without_installing(signed, key, tmp_path):
    host = _host(tmp_path, key[1])
    run = host.sealift("verify", signed, "--json", HOME=str(host.root / "home"))
    assert run.code == 0, run.err
    assert run.json()["ok"] and run.json()["signature"]["identity"] == "release@example.org"
    assert not (host.bentoml_home / "bentos").exists() or not any((host.bentoml_home / "bentos").iterdir())
    bundle = tmp_path / "usb" / signed.name
    shutil.copytree(signed, bundle)
    with open(archive(bundle), "r+b") as f:  # one flipped byte deep in the archive
        f.seek(archive(bundle).stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    run = host.sealift("verify", bundle, HOME=str(host.root / "home"))
    assert run.code == 2 and "corrupted" in run.err and len(run.err.strip().splitlines()) == 1, run.err
