"""Bundles for media as they are: files over a size limit in numbered parts, and bundles spanning volumes.

    export_split(bento, members, wheels, ..., dests=, max_file=, volume_size=)  -> result.ExportResult

`--max-file-size SIZE` (or FAT32 at DEST: 4 GiB - 1) writes the archive and any wheel over SIZE as
numbered parts in the bundle directory itself (sealift.bundle.parts; the layout: sealift.bundle.format). The archive
is still written in one pass, each part hashed as it is written; the export journal records the parts
done, so a killed export resumes.

`--volume-size SIZE` and/or several DEST write volumes: DEST/<name>-<version>/vol-1/, vol-2/, ... (one
DEST: copy each vol-N folder to its own medium later), or vol-N on the N-th DEST (several DEST; without
--volume-size each volume fills its DEST's free space). Each volume holds its share of the files, the
bundle's manifest.json, INSTALL.txt (and sbom.cdx.json), BUNDLE-SHA256SUMS (the whole bundle's list),
VOLUME.json (bundle id, volume i of n, its files) and its own SHA256SUMS (plain `sha256sum -c` in that
folder). `sealift install VOL1 VOL2 ...` checks that the volumes are of one bundle, all there, each
once, then verifies every byte once and imports: through a directory of symlinks to the volumes' files
(no byte is copied), which install reads as one bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sealift.core import console
from sealift.bundle import sbom as sbom_step
from sealift.core.atomic import fsync_tree, write_atomic
from sealift.bundle.format import INSTALL_TXT, MANIFEST_JSON, PARTIAL, SUMS, WHEELS, WHEELS_OPENLLM
from sealift.core.diskspace import check_free_space
from sealift.core.errors import UserError
from sealift.model.manifest import FileEntry, hash_file, sha256sums_text
from sealift.bundle.parts import Piece, SplitOut, copy_split, fat_limit, logical_files, plan_pieces
from sealift.bundle.tarstream import JOURNAL, Journal, Member, archive_size, plan_digest, write_archive
from sealift.core.units import fmt_bytes
from sealift.bundle.result import ExportResult, bundle_manifest

__all__ = ["BUNDLE_SUMS", "VOLUME_FORMAT", "VOLUME_JSON", "export_split", "needs_split"]

VOLUME_JSON = "VOLUME.json"
VOLUME_FORMAT = "sealift-volume/1"
#: The whole bundle's SHA256SUMS, in each volume beside the volume's own.
BUNDLE_SUMS = "BUNDLE-SHA256SUMS"
#: Room kept in each volume for the small files (manifest.json, SHA256SUMS, INSTALL.txt, VOLUME.json, sbom).
RESERVE_BASE = 256 * 1024
RESERVE_PER_FILE = 2048
SLACK = 16 * 1024 * 1024


def file_limit(dest: Path, max_file: int | None) -> int | None:
    """--max-file-size, else 4 GiB - 1 when dest is on FAT32 (said in one line), else None."""
    if max_file is not None:
        return max_file
    limit = fat_limit(dest)
    if limit is not None:
        console.info(f"{dest} is on FAT32 (vfat): files over 4 GiB - 1 are written in numbered parts")
    return limit


def needs_split(members: list[Member], wheels: list[Path], limit: int | None) -> bool:
    """Whether any file of the bundle would exceed limit."""
    return limit is not None and (archive_size(members) > limit or any(w.stat().st_size > limit for w in wheels))


def _reserve(nfiles: int) -> int:
    return RESERVE_BASE + RESERVE_PER_FILE * nfiles


def export_split(bento: Any, members: list[Member], wheels: list[Path], openllm_wheels: list[Path], *,
                 dests: list[Path], max_file: int | None, volume_size: int | None, platform: str,
                 python_version: str, started: float, needs: dict[str, Any], proven: dict[str, Any],
                 sign: Path | None, sbom: bool, check: Any = None) -> Any:
    """Write the bundle as parts (and volumes); export.ExportResult. `check`: each wheel's bytes as copied
    against its lock (sealift.bundle.wheelcheck.WheelCheck)."""
    from sealift.bundle.wheelcheck import WheelCheck

    check = check or WheelCheck()
    stem = f"{bento.name}-{bento.version}"
    spanning = volume_size is not None or len(dests) > 1
    if spanning and sign is not None:
        raise UserError("--sign is not supported with volumes yet", hint="leave out --sign or --volume-size")
    archive_name = f"{stem}.tar"
    total = archive_size(members)
    sources = {f"{d}/{w.name}": w for d, ws in ((WHEELS, wheels), (WHEELS_OPENLLM, openllm_wheels)) for w in ws}
    files = [(archive_name, total), *((rel, w.stat().st_size) for rel, w in sources.items())]
    reserve = _reserve(len(files) * 2)
    if volume_size is not None and volume_size < 2 * reserve:
        raise UserError(f"--volume-size {fmt_bytes(volume_size)} is too small for a volume "
                        f"(at least {fmt_bytes(2 * reserve)})", hint="give a bigger --volume-size")

    def capacity(i: int) -> int | None:
        if volume_size is not None:
            return volume_size - reserve
        if i < len(dests):  # several DEST, no --volume-size: each volume fills its DEST
            from sealift.core.diskspace import free_space

            return max(0, free_space(dests[i])[1] - SLACK - reserve)
        return None

    first_root = dests[0] / stem
    if first_root.exists() and not first_root.with_name(stem + PARTIAL).exists() and spanning:
        return _already(bento, first_root, dests, stem, started)
    # the layout is planned once and kept in the journal: a resumed export writes the same pieces even where
    # it was planned from the DESTs' free space, which the first run changed
    key = hashlib.sha256(json.dumps([plan_digest(members), spanning, len(dests), volume_size, max_file,
                                     files]).encode()).hexdigest()
    journal = Journal.load(first_root.with_name(stem + PARTIAL), bento.tag, key, total)
    if "pieces" in journal.doc:
        pieces = {rel: [Piece(*p) for p in ps] for rel, ps in journal.doc["pieces"].items()}
    else:
        pieces = plan_pieces(files, max_file=max_file, capacity=capacity if spanning else None)
        journal.doc["pieces"] = {rel: [[p.volume, p.rel, p.size] for p in ps] for rel, ps in pieces.items()}
    count = 1 + max(p.volume for ps in pieces.values() for p in ps)
    if len(dests) > 1 and count > len(dests):
        size = fmt_bytes(volume_size) if volume_size else "their free space"
        raise UserError(f"the bundle ({fmt_bytes(sum(s for _, s in files))}) needs {count} volumes of {size}; "
                        f"{len(dests)} DEST given; nothing was written", hint="give more DEST or a bigger --volume-size")
    roots = [d / stem for d in (dests[:count] if len(dests) > 1 else dests[:1])]
    partials = [r.with_name(r.name + PARTIAL) for r in roots]

    def vol_dir(i: int, final: bool = False) -> Path:
        base = (roots if final else partials)[i if len(roots) > 1 else 0]
        return base / f"vol-{i + 1}" if spanning else base

    for i, (root, part) in enumerate(zip(roots, partials)):
        if i and root.exists() and not part.exists() and partials[0].exists():  # killed between the final renames
            if _volume_id(root / f"vol-{i + 1}") != journal.doc.get("bundle_id"):
                raise UserError(f"{root} already exists and is not a volume of this export",
                                hint="remove it or choose another DEST")
            os.rename(root, part)
        if root.exists():
            raise UserError(f"{root} already exists and is not a bundle of {bento.tag}",
                            hint="remove it or choose another DEST")
    if journal.archive["offset"] == 0 and not journal.doc["files"]:
        for part in partials:  # nothing in them is known to be complete
            shutil.rmtree(part, ignore_errors=True)
    journal.doc.setdefault("bundle_id", uuid.uuid4().hex)
    for d, part in zip(dests if len(dests) > 1 else dests[:1], partials):
        on_it = [p for ps in pieces.values() for p in ps if vol_dir(p.volume).is_relative_to(part)]
        there = sum(min(_size(vol_dir(p.volume) / p.rel), p.size) for p in on_it)
        check_free_space(d, sum(p.size for p in on_it) - there + reserve * count, slack=SLACK,
                         what="for the bundle", hint="free some space, choose another DEST or give --volume-size")
    for part in partials:
        part.mkdir(parents=True, exist_ok=True)
    journal.save()

    archive = pieces[archive_name]
    out = SplitOut([vol_dir(p.volume) / p.rel for p in archive], [p.size for p in archive], [p.rel for p in archive]) \
        if len(archive) > 1 else None
    vol_dir(archive[0].volume).mkdir(parents=True, exist_ok=True)
    console.info(f"writing {archive_name} ({fmt_bytes(total)}"
                 f"{f', {len(archive)} parts' if len(archive) > 1 else ''}"
                 f"{f', {count} volumes' if spanning else ''})")
    with console.byte_progress(total + int(journal.archive.get("offset", 0)), archive_name) as adv:
        written, resumed = write_archive(members, vol_dir(archive[0].volume) / archive_name, journal, adv, adv, out=out)
    entries: list[FileEntry] = written if isinstance(written, list) else [written]
    whole: dict[str, FileEntry] = {archive_name: FileEntry(archive_name, total, "")}

    with console.byte_progress(sum(s for r, s in files if r != archive_name), "wheels") as adv:
        for rel, src in sources.items():
            got, digest = _copy_wheel(src, pieces[rel], vol_dir, journal, adv, check)
            entries += got
            whole[rel] = FileEntry(rel, src.stat().st_size, digest)
    split = {rel: ps for rel, ps in pieces.items() if len(ps) > 1}
    return _finish(bento, entries, whole, split, pieces, sources, journal, roots, partials, vol_dir, spanning,
                   count, volume_size, platform=platform, python_version=python_version, needs=needs,
                   proven=proven, sbom=sbom, sign=sign, started=started, resumed=resumed, archive_name=archive_name,
                   wheel_hashes=check.record(list(sources.values())) if sources else {})


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _copy_wheel(src: Path, pieces: list[Piece], vol_dir: Any, journal: Journal, advance: Any, check: Any
                ) -> tuple[list[FileEntry], str]:
    """One wheel into its piece(s), or the pieces an earlier run wrote (re-read and checked); the whole's
    sha256 is the lock's (`check`: a cached wheel that does not match is fetched again once, or UserError)."""
    done = journal.doc["files"]
    whole = journal.doc.setdefault("whole", {})
    rel = pieces[0].rel.split(".part-")[0] if len(pieces) > 1 else pieces[0].rel
    paths = [vol_dir(p.volume) / p.rel for p in pieces]
    if rel in whole and check.matches(src, whole[rel]) and all(p.rel in done and _size(path) == p.size == done[p.rel]["size"]
                            for p, path in zip(pieces, paths)):
        if all(hash_file(path) == done[p.rel]["sha256"] for p, path in zip(pieces, paths)):
            advance(sum(p.size for p in pieces))
            return [FileEntry(p.rel, p.size, done[p.rel]["sha256"]) for p in pieces], whole[rel]
    got, digest = check.copy(src, lambda: copy_split(src, [(path, p.rel, p.size) for p, path in zip(pieces, paths)],
                                                     advance), lambda out: out[1],
                             lambda: [path.unlink(missing_ok=True) for path in paths])
    for e in got:
        done[e.path] = {"size": e.size, "sha256": e.sha256}
    whole[rel] = digest
    journal.save()
    return got, digest


def _finish(bento: Any, entries: list[FileEntry], whole: dict[str, FileEntry], split: dict[str, list[Piece]],
            pieces: dict[str, list[Piece]], sources: dict[str, Path], journal: Journal, roots: list[Path],
            partials: list[Path], vol_dir: Any, spanning: bool, count: int, volume_size: int | None, *,
            platform: str, python_version: str, needs: dict[str, Any], proven: dict[str, Any], sbom: bool,
            sign: Path | None, started: float, resumed: int, archive_name: str,
            wheel_hashes: dict[str, Any] | None = None) -> Any:
    """The small files (in every volume), the lists, then the renames that publish the bundle."""
    from sealift.bundle import signing
    from sealift.bundle.install_text import install_text

    signature = None

    stem = roots[0].name
    wheel_entries = [e for r, e in whole.items() if r.startswith(WHEELS + "/")]
    openllm_entries = [e for r, e in whole.items() if r.startswith(WHEELS_OPENLLM + "/")]
    own = next((e.path.split("/", 1)[1] for e in wheel_entries if e.path.startswith(f"{WHEELS}/sealift-")), "")
    small: dict[str, bytes] = {}
    if sbom:  # read from the wheels exported (the same bytes), whole even where the bundle holds parts
        with tempfile.TemporaryDirectory(prefix=".sealift-sbom-", dir=partials[0]) as view:
            for rel, src in sources.items():
                (Path(view) / rel).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(src, Path(view) / rel)
            small[sbom_step.SBOM_NAME] = sbom_step.bundle_sbom(bento, list(whole.values()), Path(view))
    key = signing.check_key(sign) if sign is not None else None
    text = install_text(bento, archive_name, stem, bool(wheel_entries), python_version=python_version,
                        sealift_wheel=own, openllm=bool(openllm_entries), signed=key is not None)
    small[INSTALL_TXT] = (text + _notes(split, spanning, count, stem)).encode()
    listed = [*entries, *(FileEntry(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in small.items())]
    manifest = bundle_manifest(bento, archive_name, listed, platform, python_version, bool(wheel_entries),
                                            sealift_wheel=own, openllm=bool(openllm_entries), needs=needs)
    manifest["parts"] = {rel: {"size": whole[rel].size, "sha256": whole[rel].sha256 or None,
                               "parts": [p.rel for p in ps]} for rel, ps in split.items()} or None
    if key is not None:  # as sealift.bundle.export signs a bundle (one volume only: refused with volumes)
        manifest["signature"] = {"file": signing.SIG_NAME, "format": "sshsig", "namespace": signing.NAMESPACE,
                                 "key_type": key.key_type, "fingerprint": key.fingerprint}
    if wheel_hashes:  # how each wheel was held to its lock (sealift.bundle.wheelcheck)
        manifest["wheel_hashes"] = wheel_hashes
    if spanning:
        manifest["volumes"] = {"id": journal.doc["bundle_id"], "count": count,
                               "files": {p.rel: p.volume + 1 for ps in pieces.values() for p in ps}}
    small[MANIFEST_JSON] = (json.dumps(manifest, indent=1) + "\n").encode()
    listed.append(FileEntry(MANIFEST_JSON, len(small[MANIFEST_JSON]), hashlib.sha256(small[MANIFEST_JSON]).hexdigest()))
    bundle_sums = sha256sums_text(listed).encode()
    by_vol: dict[int, list[FileEntry]] = {}
    volume_of = {p.rel: p.volume for ps in pieces.values() for p in ps}
    for e in entries:
        by_vol.setdefault(volume_of[e.path], []).append(e)
    for i in range(count):
        folder = vol_dir(i)
        folder.mkdir(parents=True, exist_ok=True)
        mine = list(by_vol.get(i, []))
        for name, data in small.items():
            write_atomic(folder / name, data)
            mine.append(FileEntry(name, len(data), hashlib.sha256(data).hexdigest()))
        if spanning:
            vol = {"format": VOLUME_FORMAT, "bundle_id": journal.doc["bundle_id"], "bento": bento.tag,
                   "bundle": stem, "volume": i + 1, "volumes": count,
                   "files": sorted([*(e.path for e in mine), BUNDLE_SUMS])}
            extra = {BUNDLE_SUMS: bundle_sums, VOLUME_JSON: (json.dumps(vol, indent=1) + "\n").encode()}
            for name, data in extra.items():
                write_atomic(folder / name, data)
                mine.append(FileEntry(name, len(data), hashlib.sha256(data).hexdigest()))
            write_atomic(folder / SUMS, sha256sums_text(mine).encode())
            used = sum(e.size for e in mine) + len(sha256sums_text(mine))
            if volume_size is not None and used > volume_size:
                raise UserError(f"volume {i + 1} came to {fmt_bytes(used)}, over --volume-size; the export can be "
                                "resumed with a bigger --volume-size", hint="give a bigger --volume-size")
        else:
            write_atomic(folder / SUMS, bundle_sums)
            signature = signing.sign_sums(folder / SUMS, sign) if sign is not None else None
    (partials[0] / JOURNAL).unlink(missing_ok=True)
    for part in partials:
        fsync_tree(part, files=False)
    for part, root in reversed(list(zip(partials, roots))):  # the journal's folder last: a kill in between resumes
        os.rename(part, root)
    from sealift.core.atomic import fsync_dir

    for root in roots:
        fsync_dir(root.parent)
    volumes = [str(vol_dir(i, final=True)) for i in range(count)] if spanning else []
    result = ExportResult(
        bundle=str(roots[0]), bento_tag=bento.tag, model_tags=[m.tag for m in bento.models], archive=archive_name,
        archive_bytes=whole[archive_name].size, wheels=len(wheel_entries),
        wheel_bytes=sum(e.size for e in wheel_entries), total_bytes=sum(e.size for e in listed),
        seconds=time.monotonic() - started, resumed_from_bytes=resumed, platform=platform,
        python_version=python_version, sealift_wheel=own, openllm_wheels=len(openllm_entries),
        openllm_wheel_bytes=sum(e.size for e in openllm_entries), needs=manifest["needs"],
        sbom=sbom_step.SBOM_NAME if sbom else "", parts=sum(len(ps) for ps in split.values()), volumes=volumes,
        signature=signature.to_dict() if signature else None, wheel_hashes=wheel_hashes or {})
    result.proof = proven
    return result


def _notes(split: dict[str, list[Piece]], spanning: bool, count: int, stem: str) -> str:
    lines = []
    if split:
        lines += ["", "Files over the size limit are in numbered parts (NAME.part-0001, ...); `sealift install`",
                  "reads them as they are. For tools that need the whole file, join them first:",
                  *(f"  cat {rel}.part-* > {rel}" for rel in sorted(split))]
        if any(r.startswith(WHEELS) for r in split):
            lines += ["(step 1's pip needs the joined wheels)"]
    if spanning:
        vols = " ".join(f"{stem}/vol-{i + 1}" for i in range(count))
        lines += ["", f"This bundle spans {count} volumes (vol-1 ... vol-{count}; VOLUME.json says which is which).",
                  f"Mount or copy them all, then: sealift install {vols}",
                  "(or give the folder that holds the vol-N folders). Each volume checks alone with",
                  "`sha256sum -c SHA256SUMS` in its folder."]
    return "\n".join(lines) + ("\n" if lines else "")


def _volume_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / VOLUME_JSON).read_text()).get("bundle_id")
    except (OSError, ValueError, AttributeError):
        return None


def _already(bento: Any, first_root: Path, dests: list[Path], stem: str, started: float) -> Any:
    """The result for volumes that a finished run of this export already wrote."""
    try:
        doc = json.loads((first_root / "vol-1" / MANIFEST_JSON).read_text())
    except (OSError, ValueError):
        doc = {}
    if doc.get("bento", {}).get("tag") != bento.tag:
        raise UserError(f"{first_root} already exists and is not a bundle of {bento.tag}",
                        hint="remove it or choose another DEST")
    count = int((doc.get("volumes") or {}).get("count", 1))
    vols = [str((dests[i] if len(dests) > 1 else dests[0]) / stem / f"vol-{i + 1}") for i in range(count)]
    sizes = logical_files(doc)
    wheels = [r for r in sizes if r.startswith(WHEELS + "/")]
    return ExportResult(
        bundle=str(first_root), bento_tag=bento.tag, model_tags=[m.tag for m in bento.models],
        archive=doc.get("archive", ""), archive_bytes=sizes.get(doc.get("archive"), 0), wheels=len(wheels),
        wheel_bytes=sum(sizes[w] for w in wheels), total_bytes=sum(int(f["size"]) for f in doc.get("files", [])),
        seconds=time.monotonic() - started, already_complete=True, volumes=vols)
