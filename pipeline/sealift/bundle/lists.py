"""The bundle's two lists, SHA256SUMS and manifest.json, parsed strictly from the very bytes that were checked.

    sums = parse_sums(data, where)          {path: sha256}; UserError unless exactly as export writes it
    doc = parse_manifest(data, where)       the manifest, every field sealift reads of the expected type

Both sides read these: export writes them (sealift.bundle.export), install parses them from bytes
it has already hashed (SHA256SUMS: the bytes a signature covers; manifest.json: the bytes whose
sha256 SHA256SUMS names), so what is checked is what is used. A signed manifest is still held to
the schema: paths are plain relative paths (sealift.core.safepath), counts are bounded, tags and
versions are the characters a store path or a requirement line may hold. Anything else is a
UserError (exit 2) naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sealift.bundle.format import BUNDLE_FORMAT, MANIFEST_JSON
from sealift.core.errors import UserError
from sealift.core.safepath import checked_rel
from sealift.model.manifest import FileEntry, sha256sums_text

__all__ = ["MAX_FILES", "parse_manifest", "parse_sums"]

#: The most files one bundle may list (a 70B model in parts on FAT32 is a few hundred).
MAX_FILES = 1_000_000
_SHA = re.compile(r"[0-9a-f]{64}")
#: A bento or model tag: NAME:VERSION, each a single path part of BentoML's characters.
_TAG = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?:[A-Za-z0-9_.-]{1,128}")
#: A version or Python version as a requirement line or `uv venv -p` may hold it.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}")
_KINDS = ("model", "bento", "wheel")


def _refuse(where: str, what: str) -> UserError:
    return UserError(f"{where}: {what}; nothing was imported",
                     hint="this bundle was not written by `sealift export` as it is; do not install it")


def parse_sums(data: bytes, where: str) -> dict[str, str]:
    """{path: sha256} from SHA256SUMS bytes, which must be exactly what export writes for those entries."""
    try:
        text = data.decode("utf-8")
    except ValueError as exc:  # bytes that are not UTF-8
        raise _refuse(where, f"unreadable ({exc})") from None
    sums: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not m:
            raise _refuse(where, f"malformed line {line[:80]!r}")
        try:
            path = checked_rel(m.group(2))
        except ValueError as exc:
            raise _refuse(where, f"an unsafe path ({exc})") from None
        if path in sums:
            raise _refuse(where, f"{path} is listed twice")
        sums[path] = m.group(1)
        if len(sums) > MAX_FILES:
            raise _refuse(where, f"over {MAX_FILES} files")
    # Any byte that differs from what export writes for these entries (a `*` for a space, a lost
    # newline) is damage, even where `sha256sum -c` would read the same meaning.
    if text != sha256sums_text(FileEntry(path, 0, digest) for path, digest in sums.items()):
        raise _refuse(where, "not as `sealift export` wrote it (damaged or edited)")
    return sums


class _Check:
    """Type checks that name the field they refuse."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, what: str) -> UserError:
        return _refuse(self.where, f"{field} {what}")

    def typed(self, value: Any, kind: type | tuple[type, ...], field: str) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(field, f"is {type(value).__name__}, not {names}")
        return value

    def count(self, value: Any, field: str, *, low: int = 0, high: int = 1 << 50) -> int:
        value = self.typed(value, int, field)
        if not low <= value <= high:
            raise self.fail(field, f"is {value}, outside {low}..{high}")
        return value

    def sha(self, value: Any, field: str, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not _SHA.fullmatch(value):
            raise self.fail(field, "is not a sha256")
        return value

    def rel(self, value: Any, field: str) -> str:
        try:
            return checked_rel(value)
        except ValueError as exc:
            raise self.fail(field, f"is unsafe ({exc})") from None

    def match(self, value: Any, pattern: re.Pattern[str], field: str) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value.split(":")[-1].split("/"):
            raise self.fail(field, f"is not a valid value ({str(value)[:60]!r})")
        return value

    def items(self, value: Any, field: str, limit: int = MAX_FILES) -> list[Any]:
        value = self.typed(value, list, field)
        if len(value) > limit:
            raise self.fail(field, f"has {len(value)} entries (at most {limit})")
        return value


#: A distribution name as packaging canonicalises it (nothing a requirement line could smuggle in).
_DIST = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,98}[a-z0-9])?")


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """manifest.json from its (already hashed) bytes; every field install reads checked for type and range."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise _refuse(where, f"unreadable ({exc})") from None
    c = _Check(where)
    c.typed(doc, dict, MANIFEST_JSON)
    if doc.get("format") != BUNDLE_FORMAT:
        raise c.fail("format", f"is {str(doc.get('format'))[:40]!r}, expected {BUNDLE_FORMAT}")
    bento = c.typed(doc.get("bento"), dict, "bento")
    c.match(bento.get("tag"), _TAG, "bento.tag")
    name, version = bento["tag"].split(":")
    if bento.get("name", name) != name or bento.get("version", version) != version:
        raise c.fail("bento.name/version", "disagree with bento.tag")
    for key in ("bentoml_version", "python_version"):
        if bento.get(key) is not None:
            c.match(bento[key], _VERSION, f"bento.{key}")
    c.rel(doc.get("archive"), "archive")
    seen: set[str] = set()
    for i, f in enumerate(c.items(doc.get("files"), "files")):
        c.typed(f, dict, f"files[{i}]")
        path = c.rel(f.get("path"), f"files[{i}].path")
        if path in seen:
            raise c.fail(f"files[{i}].path", f"{path} is listed twice")
        seen.add(path)
        c.count(f.get("size"), f"files[{i}].size")
        c.sha(f.get("sha256"), f"files[{i}].sha256")
    for i, m in enumerate(c.items(doc.get("models", []), "models", 1000)):
        c.typed(m, dict, f"models[{i}]")
        c.match(m.get("tag"), _TAG, f"models[{i}].tag")
        c.sha(m.get("manifest_digest"), f"models[{i}].manifest_digest", optional=True)
    for rel, split in c.typed(doc.get("parts") or {}, dict, "parts").items():
        c.rel(rel, "parts")
        c.typed(split, dict, f"parts[{rel}]")
        c.count(split.get("size"), f"parts[{rel}].size")
        c.sha(split.get("sha256"), f"parts[{rel}].sha256", optional=True)
        names = c.items(split.get("parts"), f"parts[{rel}].parts", 100_000)
        if not names or any(c.rel(n, f"parts[{rel}].parts") not in seen for n in names):
            raise c.fail(f"parts[{rel}].parts", "names a file the bundle does not list")
    if doc.get("volumes") is not None:
        vols = c.typed(doc["volumes"], dict, "volumes")
        count = c.count(vols.get("count"), "volumes.count", low=1, high=1000)
        for rel, v in c.typed(vols.get("files"), dict, "volumes.files").items():
            c.rel(rel, "volumes.files")
            c.count(v, f"volumes.files[{rel}]", low=1, high=count)
    if doc.get("delta") is not None:
        delta = c.typed(doc["delta"], dict, "delta")
        c.typed(delta.get("store_id"), str, "delta.store_id")
        for i, r in enumerate(c.items(delta.get("relies"), "delta.relies")):
            c.typed(r, dict, f"delta.relies[{i}]")
            c.rel(r.get("path"), f"delta.relies[{i}].path")
            c.rel(r.get("from_path"), f"delta.relies[{i}].from_path")
            c.sha(r.get("sha256"), f"delta.relies[{i}].sha256")
            c.count(r.get("size"), f"delta.relies[{i}].size")
            if r.get("kind") not in _KINDS:
                raise c.fail(f"delta.relies[{i}].kind", f"is not one of {', '.join(_KINDS)}")
            c.typed(r.get("from"), str, f"delta.relies[{i}].from")
    for key in ("requirements",):
        for i, line in enumerate(c.items(doc.get(key) or [], key, 10_000)):
            if not isinstance(line, str) or "\n" in line or "\r" in line:
                raise c.fail(f"{key}[{i}]", "is not one requirement line")
    for key in ("needs", "target", "signature"):
        if doc.get(key) is not None:
            c.typed(doc[key], dict, key)
    left_out = (doc.get("needs") or {}).get("wheels_left_out")
    if left_out is not None:  # install hands these to uv as overrides: distribution names only
        for i, name in enumerate(c.items(left_out, "needs.wheels_left_out", 100)):
            c.match(name, _DIST, f"needs.wheels_left_out[{i}]")
    return doc
