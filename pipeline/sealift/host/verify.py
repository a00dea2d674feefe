"""Bundle verification: every byte against SHA256SUMS and manifest.json, every archive member safe, before install touches anything.

    check_bundle(bundle) -> (manifest, sums, archive, members)   UserError (exit 2) naming the first problem

Archive members are checked with the rules of tarfile's `data` filter (PEP 706:
no absolute or escaping names, no links that leave the archive, no device files
or FIFOs; sealift.core.tarsafe applies them where Python lacks the filter, as
Debian 12's 3.11.2 does), plus the bundle's own: names relative to the root with
no `..`, a hardlink only to an earlier file, no data past the end of the file. bentoml
1.4.39 checks none of this. Extraction (sealift.host.install) stays sealift's own
range copy; these checks only decide what it may extract.
"""

from __future__ import annotations

import contextlib
import tarfile
from pathlib import Path
from typing import Any

from sealift.core import console
from sealift.bundle.format import MANIFEST_JSON, SUMS, BundleProblem, bundle_bytes, member_path, read_bundle, safe_relpath
from sealift.core.errors import UserError
from sealift.core.tarsafe import member_problem
from sealift.model.manifest import hash_file, map_parallel
from sealift.bundle.parts import Spans, archive_parts, spans_of
from sealift.bundle.tarstream import Advance

__all__ = ["check_archive", "check_bundle", "verify_bundle"]

#: Where the data filter pretends to extract: a name only, nothing is written there.
_FILTER_ROOT = "/sealift-extract-root"


def check_bundle(bundle: Path, *, sums_bytes: bytes | None = None
                 ) -> tuple[dict[str, Any], dict[str, str], Path | Spans, list[tarfile.TarInfo]]:
    """Everything install checks before it touches any store; needs no Bento store (tests call it directly).

    manifest.json and SHA256SUMS readable and agreeing, every file's size and
    sha256, then every archive member safe and the layout a sealift bundle's.
    UserError (exit 2) naming the first problem; else (manifest, sums, archive, members).
    """
    doc, sums = read_bundle(bundle, sums_bytes=sums_bytes)  # the SHA256SUMS a signature was checked over
    with console.byte_progress(bundle_bytes(bundle, doc), "verifying") as adv:
        problems = verify_bundle(bundle, doc, sums, adv)
    if problems:
        others = ", ".join(p.path for p in problems[1:4])
        more = f" (and {len(problems) - 1} more: {others})" if len(problems) > 1 else ""
        raise UserError(f"bundle {bundle} failed verification: {problems[0]}{more}; nothing was imported",
                        hint="copy the bundle from the source again, or run `sealift export` again")
    names = [doc["archive"], *archive_parts(doc)] if archive_parts(doc) else [doc["archive"]]
    if any(not safe_relpath(n) for n in names) or any(n not in sums for n in names[1 if len(names) > 1 else 0:]):
        raise UserError(f"{bundle / MANIFEST_JSON}: archive {doc['archive']!r} is not one of the verified files")
    archive: Path | Spans = spans_of(bundle, doc["archive"], doc) if len(names) > 1 else bundle / doc["archive"]
    members = check_archive(archive)
    _check_layout(archive, members, doc)
    return doc, sums, archive, members


def verify_bundle(bundle: Path, doc: dict[str, Any], sums: dict[str, str], advance: Advance) -> list[BundleProblem]:
    """Check every file against SHA256SUMS and manifest.json (sizes first, then every byte); [] when intact."""
    problems: list[BundleProblem] = []
    listed = {f["path"]: f for f in doc["files"]}
    for path in sorted(set(sums) | set(listed) | {MANIFEST_JSON}):
        if not safe_relpath(path):
            problems.append(BundleProblem(path, "unsafe path in the bundle's lists"))
        elif path == MANIFEST_JSON:
            if path not in sums:
                problems.append(BundleProblem(path, f"not listed in {SUMS}"))
        elif path not in sums:
            problems.append(BundleProblem(path, f"listed in {MANIFEST_JSON} but not in {SUMS}"))
        elif path not in listed:
            problems.append(BundleProblem(path, f"listed in {SUMS} but not in {MANIFEST_JSON}"))
        elif sums[path] != listed[path]["sha256"]:
            problems.append(BundleProblem(path, f"{SUMS} and {MANIFEST_JSON} disagree about its sha256"))
    for rel, split in (doc.get("parts") or {}).items():  # numbered parts (sealift.bundle.parts): each one verified
        names = list(split.get("parts") or [])
        if not safe_relpath(rel) or not names or any(n not in sums or n not in listed for n in names):
            problems.append(BundleProblem(rel, f"its parts are not all listed in {SUMS} and {MANIFEST_JSON}"))
        elif sum(int(listed[n]["size"]) for n in names) != int(split.get("size", -1)):
            problems.append(BundleProblem(rel, "its parts do not add up to its size"))
    if problems:
        return problems
    todo: list[tuple[str, int | None]] = []
    for path in sorted(sums):
        p = bundle / path
        size = listed[path]["size"] if path in listed else None
        if not p.is_file():
            problems.append(BundleProblem(path, "missing"))
        elif size is not None and p.stat().st_size != size:
            actual = p.stat().st_size
            what = "truncated" if actual < size else "too long"
            problems.append(BundleProblem(path, f"{what}: {actual} bytes, expected {size}"))
        else:
            todo.append((path, size))
    if problems:
        return problems

    def check(item: tuple[str, int | None]) -> BundleProblem | None:
        path, _ = item
        try:
            digest = hash_file(bundle / path, advance)
        except OSError as exc:
            return BundleProblem(path, f"unreadable ({exc.strerror})")
        if digest == sums[path]:
            return None
        return BundleProblem(path, f"corrupted: sha256 {digest[:16]}..., {SUMS} says {sums[path][:16]}...")

    todo.sort(key=lambda t: -(t[1] or 0))
    problems.extend(p for p in map_parallel(check, todo) if p is not None)
    return sorted(problems, key=lambda p: p.path)


def check_archive(path: Path | Spans) -> list[tarfile.TarInfo]:
    """Every member of an uncompressed tar, refusing any that could write outside the extraction root.

    Refused by tarfile.data_filter's rules (sealift.core.tarsafe: the same rules
    on a Python without the filter): names or links that leave the root,
    absolute link targets, device files and FIFOs. Refused by the bundle's own:
    absolute names and `..` anywhere, empty names, NUL or line breaks in names,
    setuid/setgid/sticky files, a hardlink to a member that is not an earlier
    regular file, anything but files, directories and links, and data past the
    end of the file (a truncated archive).
    """
    raw = path.open() if isinstance(path, Spans) else None  # numbered parts: read as one (sealift.bundle.parts)
    try:
        tf = tarfile.open(path, "r:") if raw is None else tarfile.open(fileobj=raw, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        if raw is not None:
            raw.close()
        raise UserError(f"{path} is not an uncompressed tar archive ({exc}); nothing was imported") from None
    with tf, raw or contextlib.nullcontext():
        try:
            members = tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"{path} is damaged ({exc}); nothing was imported", hint="copy the bundle again") from None
    size = path.size if isinstance(path, Spans) else path.stat().st_size
    files: set[str] = set()
    for m in members:
        try:
            problem = member_problem(m, _FILTER_ROOT)  # the data filter's rules, and ours, on any Python 3.10+
            if problem:
                raise ValueError(problem.replace(_FILTER_ROOT, "the extraction root"))
            rel = member_path(m.name)
            if m.islnk():
                target = member_path(m.linkname)
                if target not in files:
                    raise ValueError(f"a hardlink to {m.linkname}, not a file of the archive")
            elif m.isreg():
                if m.offset_data + m.size > size:
                    raise ValueError("data past the end of the archive (truncated)")
                files.add(rel)
            elif not (m.isdir() or m.issym()):
                raise ValueError(f"an unsupported member type {m.type!r}")
        except ValueError as exc:
            raise UserError(f"{path}: refusing member {m.name!r}: {exc}; nothing was imported",
                            hint="this archive was not written by `sealift export`; do not install it") from None
    return members


def _check_layout(archive: Path | Spans, members: list[tarfile.TarInfo], doc: dict[str, Any]) -> None:
    """The archive holds a bento.yaml at its root and each model the manifest names."""
    names = {member_path(m.name) for m in members if m.isreg()}
    missing = [] if "bento.yaml" in names else ["bento.yaml"]
    for model in doc.get("models", []):
        name, version = model["tag"].split(":")
        if f"models/{name}/{version}/model.yaml" not in names:
            missing.append(f"models/{name}/{version}/model.yaml")
    if missing:
        raise UserError(f"{archive} lacks {', '.join(missing)}; nothing was imported",
                        hint="this is not a bundle written by `sealift export`")
