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

from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
