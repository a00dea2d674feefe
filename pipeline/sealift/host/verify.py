"""What install may trust of a bundle: the signature, then the two lists read once, then every file's place and size.

    trusted = read_trusted(medium, policy)   signature over SHA256SUMS, manifest.json parsed from the bytes whose
                                             sha256 SHA256SUMS names. UserError (exit 2) naming the problem
    check_files(trusted)                     the lists agreeing, every file a regular file of the listed size
    check_bundle(path)                       all of install's checks, every byte hashed, nothing written

Order matters: nothing unsigned is used as a path, a count or a decision before the signature check
passes (the SHA256SUMS bytes it covers are the ones parsed), and after it only what the signed lists
say is used. No weight is hashed here: sealift.host.unpack hashes each byte as install copies it.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sealift.bundle import signing
from sealift.bundle.format import MANIFEST_JSON, SUMS, BundleProblem
from sealift.bundle.lists import parse_manifest, parse_sums
from sealift.core import console, tarsafe
from sealift.core.errors import UserError
from sealift.host.medium import Medium, Volumes, open_medium
from sealift.host.unpack import Stream, member_rel, read_members

__all__ = ["Trusted", "archive_members", "check_archive", "check_bundle", "check_files", "check_layout", "check_member", "read_trusted"]

#: Where the data filter pretends to extract: a name only (nothing is there), so no link of this host matters.
_ROOT = "/sealift-extract-root"


@dataclass
class Trusted:
    """A bundle as far as its signature and its lists vouch for it."""

    medium: Medium
    doc: dict[str, Any]
    sums: dict[str, str]
    signature: signing.Signature | None
    manifest_size: int

    def logical(self) -> dict[str, list[str]]:
        """Every file as it was before splitting -> the files that hold it, in order (itself, or its parts)."""
        split = self.doc.get("parts") or {}
        in_parts = {p for s in split.values() for p in s["parts"]}
        out = {f["path"]: [f["path"]] for f in self.doc["files"] if f["path"] not in in_parts}
        out.update({rel: list(s["parts"]) for rel, s in split.items()})
        return out

    def sizes(self, rels: list[str]) -> list[int]:
        listed = {f["path"]: int(f["size"]) for f in self.doc["files"]}
        return [listed[r] for r in rels]

    def stream(self, rel: str) -> Stream:
        """The file rel (its parts in order) on the medium, opened for one hashed read."""
        files = self.logical()[rel]
        label = str(self.medium.where(files[0])) if len(files) == 1 else f"{self.medium.where(files[0])} " \
            f"({len(files)} parts)"
        return Stream(self.medium, files, self.sums, self.sizes(files), label=label)

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.doc["files"]) + self.manifest_size


def _fail(medium: Medium, problems: list[BundleProblem]) -> UserError:
    others = ", ".join(p.path for p in problems[1:4])
    more = f" (and {len(problems) - 1} more: {others})" if len(problems) > 1 else ""
    return UserError(f"bundle {medium.label} failed verification: {problems[0]}{more}; nothing was imported",
                     hint="copy the bundle from the source again, or run `sealift export` again")


def read_trusted(medium: Medium, pol: signing.Policy | None) -> Trusted:
    """The signature, then SHA256SUMS and manifest.json, each read once, manifest.json parsed from the bytes whose
    sha256 SHA256SUMS names. Then check_files (install holds the host against the manifest first)."""
    sums_bytes = medium.read_small(medium.sums_name)
    sig = None
    if isinstance(medium, Volumes):
        if pol is not None:
            raise UserError(f"a bundle spanning volumes is never signed, and the allowed signers {pol.describe()} "
                            "require a signature; nothing was imported",
                            hint="export it again as one signed bundle (`sealift export NAME DEST --sign KEY`)")
    elif medium.exists(signing.SIG_NAME):
        sig = medium.read_small(signing.SIG_NAME, 1 << 20)
    checked = signing.verify_sums(medium.label, pol, sums=sums_bytes, sig=sig)
    sums = parse_sums(sums_bytes, str(medium.where(medium.sums_name)))
    if medium.size(MANIFEST_JSON) is None:
        raise UserError(f"{medium.where(MANIFEST_JSON)} is missing; nothing was imported",
                        hint="copy the whole bundle directory again")
    data = medium.read_small(MANIFEST_JSON)
    if MANIFEST_JSON not in sums:
        raise _fail(medium, [BundleProblem(MANIFEST_JSON, f"not listed in {SUMS}")])
    if hashlib.sha256(data).hexdigest() != sums[MANIFEST_JSON]:
        raise _fail(medium, [BundleProblem(MANIFEST_JSON, f"corrupted: its sha256 is not the one {SUMS} names")])
    doc = parse_manifest(data, str(medium.where(MANIFEST_JSON)))
    if doc.get("signature") and checked.signature is None:
        raise UserError(f"{medium.where(MANIFEST_JSON)} says the bundle was signed, but {signing.SIG_NAME} is "
                        "missing or could not be checked; nothing was imported",
                        hint="copy the whole bundle again (with its .sig), and have ssh-keygen installed")
    return Trusted(medium, doc, sums, checked.signature, len(data))


def check_files(trusted: Trusted) -> None:
    """The lists agree, the archive is one of their files, and every file is a regular file of its listed size
    (lstat: no byte read). UserError naming the first problems."""
    medium, doc = trusted.medium, trusted.doc
    problems = _check_lists(doc, trusted.sums)
    if not problems:
        problems = _check_sizes(medium, doc, trusted.sums)
    if problems:
        raise _fail(medium, problems)
    if trusted.logical().get(doc["archive"]) is None:
        raise UserError(f"{medium.where(MANIFEST_JSON)}: archive {doc['archive']!r} is not one of the verified "
                        "files; nothing was imported", hint="this is not a bundle written by `sealift export`")


def _check_lists(doc: dict[str, Any], sums: dict[str, str]) -> list[BundleProblem]:
    """SHA256SUMS and manifest.json list the same files with the same sha256; parts are listed files."""
    problems: list[BundleProblem] = []
    listed = {f["path"]: f for f in doc["files"]}
    for path in sorted((set(sums) | set(listed)) - {MANIFEST_JSON}):
        if path not in sums:
            problems.append(BundleProblem(path, f"listed in {MANIFEST_JSON} but not in {SUMS}"))
        elif path not in listed:
            problems.append(BundleProblem(path, f"listed in {SUMS} but not in {MANIFEST_JSON}"))
        elif sums[path] != listed[path]["sha256"]:
            problems.append(BundleProblem(path, f"{SUMS} and {MANIFEST_JSON} disagree about its sha256"))
    for rel, split in (doc.get("parts") or {}).items():
        if sum(int(listed[n]["size"]) for n in split["parts"]) != int(split["size"]):
            problems.append(BundleProblem(rel, "its parts do not add up to its size"))
    return problems


def _check_sizes(medium: Medium, doc: dict[str, Any], sums: dict[str, str]) -> list[BundleProblem]:
    """Every listed file is a regular file of the listed size (lstat: no byte read)."""
    problems = []
    for f in doc["files"]:
        size = medium.size(f["path"])
        if size is None:
            problems.append(BundleProblem(f["path"], "missing"))
        elif size != int(f["size"]):
            what = "truncated" if size < int(f["size"]) else "too long"
            problems.append(BundleProblem(f["path"], f"{what}: {size} bytes, expected {f['size']}"))
    return problems


def check_member(m: tarfile.TarInfo) -> str | None:
    """Why member m may not be extracted (tarfile's `data` filter rules, sealift.core.tarsafe), or None."""
    return tarsafe.member_problem(m, _ROOT)


def archive_members(stream: Stream, doc: dict[str, Any], advance: Callable[[int], None]) -> list[tarfile.TarInfo]:
    """The archive's members, each safe, and the layout a sealift bundle's (bento.yaml, each model's model.yaml).

    They are read before the archive's bytes are hashed; when they fail, the bytes are hashed first, so that
    a damaged part is named as damaged ("corrupted") rather than as an odd archive.
    """
    try:
        members = read_members(stream, check_member)
        check_layout(stream.label, members, doc)
    except UserError:
        stream.copy(None, advance)  # raises the corruption, if that is what it is
        raise
    return members


def check_archive(path: Path) -> list[tarfile.TarInfo]:
    """The members of one tar file on this host, each checked as install checks them (UserError otherwise)."""
    with Stream.of_files([Path(path)]) as stream:
        return read_members(stream, check_member)


def check_layout(label: str, members: list[tarfile.TarInfo], doc: dict[str, Any]) -> None:
    """The archive holds a bento.yaml at its root and each model the manifest names."""
    names = {member_rel(m.name) for m in members if m.isreg()}
    missing = [] if "bento.yaml" in names else ["bento.yaml"]
    for model in doc.get("models", []):
        name, version = model["tag"].split(":")
        if f"models/{name}/{version}/model.yaml" not in names:
            missing.append(f"models/{name}/{version}/model.yaml")
    if missing:
        raise UserError(f"{label} lacks {', '.join(missing)}; nothing was imported",
                        hint="this is not a bundle written by `sealift export`")


def check_bundle(path: Path | list[Path], pol: signing.Policy | None = None,
                 advance: Callable[[int], None] | None = None) -> Trusted:
    """Everything install checks, every byte hashed once, nothing written (`sealift verify BUNDLE`)."""
    medium = open_medium(path if isinstance(path, list) else [path])
    trusted = read_trusted(medium, pol)
    check_files(trusted)
    files = trusted.logical()
    with console.byte_progress(trusted.total_bytes - trusted.manifest_size, "verifying") as adv:
        step = advance or adv
        with trusted.stream(trusted.doc["archive"]) as stream:
            members = archive_members(stream, trusted.doc, step)
            stream.unpack(members, Path("/nonexistent"), lambda rel: False, step)
        for rel in sorted(set(files) - {trusted.doc["archive"]}):
            with trusted.stream(rel) as stream:
                stream.copy(None, step)
    return trusted


