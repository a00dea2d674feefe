"""The bundle format: what a bundle directory holds, and reading its two lists.

    DEST/<name>-<version>/
      <name>-<version>.tar   the bento with its models inside, in the layout `bentoml export
                             TAG x.tar` writes and `bentoml import x.tar` reads (bento files at
                             the root, `models/<model>/{latest,<version>/...}`); uncompressed
      wheels/                every distribution the bento needs on the target (plus bentoml), and a
                             sealift wheel with sealift's own dependencies (one resolution), so
                             sealift itself installs on a host that has only Python
      wheels-openllm/        with --with-openllm: openllm 0.6.30, click<8.2, typer<0.16 and their
                             dependencies, for openllm's own venv (its pins clash with sealift's)
      INSTALL.txt            the commands to run on the other side (sealift.bundle.install_text)
      manifest.json          sealift version, bento and model tags, the model manifest digest,
                             target platform/python, every file above with size and sha256
      sbom.cdx.json          CycloneDX SBOM: every wheel, sealift, the model (sealift.bundle.sbom; default when
                             the bundle has wheels, `--sbom` for one without)
      SHA256SUMS             the same files plus manifest.json, for plain `sha256sum -c`
      SHA256SUMS.sig         with --sign: OpenSSH SSHSIG over SHA256SUMS, namespace sealift (sealift.bundle.signing);
                             install checks it first, before any byte is hashed

With `--max-file-size SIZE` (automatic on FAT32: 4 GiB - 1) a file over SIZE is written as numbered
parts instead, each a plain file listed in SHA256SUMS and manifest.json's `files` (sealift.bundle.parts):

      <name>-<version>.tar.part-0001, .part-0002, ...   the archive's bytes in order
      wheels/<wheel>.whl.part-0001, ...                 a wheel over SIZE
      manifest.json `parts`  {"<name>-<version>.tar": {"size": N, "sha256": null, "parts": [...]},
                              "wheels/<wheel>.whl": {"size": N, "sha256": "<the whole wheel's>", "parts": [...]}}

With `--volume-size SIZE` or several DEST the bundle spans volumes (sealift.bundle.volumes):

    DEST/<name>-<version>/vol-1/, vol-2/, ...    (or vol-N under the N-th DEST's <name>-<version>/)
      parts and wheels       this volume's share, at the paths they have in one bundle
      manifest.json, INSTALL.txt, sbom.cdx.json   the bundle's own, the same in every volume
      BUNDLE-SHA256SUMS      the whole bundle's SHA256SUMS
      VOLUME.json            format sealift-volume/1, bundle_id, bento, bundle, volume N, volumes M, files
      SHA256SUMS             this volume's files, for plain `sha256sum -c` in the folder
    manifest.json `volumes`  {"id": bundle_id, "count": M, "files": {path: volume}}

A delta bundle (`sealift export NAME DEST --have inventory.json`, sealift.bundle.delta) is named
`<name>-<version>-delta/` and has the same layout, less every file the far side's inventory
(`sealift inventory`, sealift.host.inventory) lists: the archive omits those model and bento files,
wheels/ omits those wheels. manifest.json's `delta` says what it relies on and where:

      "delta": {"store_id", "inventory_digest", "inventory_created", "relied_files", "relied_bytes",
                "relies": [{"path", "sha256", "size", "kind": model|bento|wheel,
                            "from": a model or bento tag, or "wheel pool", "from_path"}]}

SHA256SUMS and manifest.json's `files` list only what the bundle carries (`sha256sum -c` passes);
install fills the gaps from its store and wheel pool, hashing each byte it takes, and refuses a
delta made for another store.

sealift.bundle.export writes it, sealift.host.verify checks it, sealift.host.install installs it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealift.core.errors import UserError
from sealift.model.manifest import FileEntry, sha256sums_text

__all__ = [
    "BUNDLE_FORMAT",
    "INSTALL_TXT",
    "MANIFEST_JSON",
    "OPENLLM_REQUIREMENTS",
    "PARTIAL",
    "SUMS",
    "WHEELS",
    "WHEELS_OPENLLM",
    "BundleProblem",
    "bundle_bytes",
    "member_path",
    "read_bundle",
    "safe_relpath",
]

#: The bundle's format; manifest.json says it, and an export journal of another format is not resumed.
BUNDLE_FORMAT = "sealift-bundle/1"
MANIFEST_JSON = "manifest.json"
SUMS = "SHA256SUMS"
INSTALL_TXT = "INSTALL.txt"
WHEELS = "wheels"
#: openllm's own wheels (`--with-openllm`): apart from wheels/, whose typer and bentoml pins theirs conflict with.
WHEELS_OPENLLM = "wheels-openllm"
#: The suffix of a bundle (or a file) still being written.
PARTIAL = ".partial"
#: What `openllm serve` needs in its own venv (wheels-openllm/ carries them): openllm 0.6.30 crashes with
#: click>=8.2 and typer>=0.16.
OPENLLM_REQUIREMENTS = ("openllm==0.6.30", "click<8.2", "typer<0.16")


@dataclass
class BundleProblem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def read_bundle(bundle: Path, *, sums_bytes: bytes | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """manifest.json and SHA256SUMS of a bundle; UserError if either is missing or malformed."""
    if not bundle.is_dir():
        raise UserError(f"{bundle} is not a directory", hint="give the bundle directory that `sealift export` wrote")
    try:
        doc = json.loads((bundle / MANIFEST_JSON).read_text())
        if doc.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {BUNDLE_FORMAT}")
        files = doc["files"]
        for f in files:
            _ = (f["path"], int(f["size"]), f["sha256"])
        _ = (doc["bento"]["tag"], doc["archive"])
    except FileNotFoundError:
        raise UserError(f"{bundle / MANIFEST_JSON} is missing; nothing was imported",
                        hint="copy the whole bundle directory again") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{bundle / MANIFEST_JSON} is unreadable ({exc}); nothing was imported",
                        hint="copy the bundle again") from None
    try:
        text = (bundle / SUMS).read_text(encoding="utf-8") if sums_bytes is None else sums_bytes.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{bundle / SUMS} is missing; nothing was imported",
                        hint="copy the whole bundle again") from None
    except (OSError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
        raise UserError(f"{bundle / SUMS} is unreadable ({exc}); nothing was imported", hint="copy the bundle again") from None
    sums: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not m:
            raise UserError(f"{bundle / SUMS}: malformed line {line[:80]!r}; nothing was imported",
                            hint="copy the bundle again")
        sums[m.group(2)] = m.group(1)
    # Nothing hashes SHA256SUMS itself: any byte of it that differs from what export writes for these
    # entries (a `*` for a space, a repeated line, a lost newline) is damage, even where sha256sum -c
    # would read the same meaning.
    if text != sha256sums_text(FileEntry(path, 0, digest) for path, digest in sums.items()):
        raise UserError(f"{bundle / SUMS} is not as `sealift export` wrote it (damaged or edited); nothing was imported",
                        hint="copy the bundle again")
    return doc, sums


def safe_relpath(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts and "\0" not in path


def member_path(name: str) -> str:
    """A member name relative to the archive root ("" for the root), or ValueError if it would leave it."""
    if name.startswith("/") or "\0" in name:
        raise ValueError("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("`..` in the path")
    return "/".join(parts)


def bundle_bytes(bundle: Path, doc: dict[str, Any]) -> int:
    """Every byte of the bundle: the files manifest.json lists, and manifest.json itself."""
    return sum(int(f["size"]) for f in doc.get("files", [])) + (bundle / MANIFEST_JSON).stat().st_size
