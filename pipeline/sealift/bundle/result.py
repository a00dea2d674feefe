"""What an export wrote (ExportResult) and the bundle's manifest.json document, shared by the plain and the volume writer."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.bundle.format import BUNDLE_FORMAT, OPENLLM_REQUIREMENTS, WHEELS_OPENLLM
from sealift.bundle.install_text import bootstrap_commands, install_commands
from sealift.bundle.source import BentoSource, bundle_requirements
from sealift.core import console
from sealift.core.units import fmt_bytes
from sealift.core.version import __version__
from sealift.model.manifest import FileEntry

__all__ = ["ExportResult", "bundle_manifest"]


@dataclass
class ExportResult:
    """What `sealift export` wrote."""

    bundle: str
    bento_tag: str
    model_tags: list[str]
    archive: str
    archive_bytes: int
    wheels: int
    wheel_bytes: int
    total_bytes: int
    seconds: float
    resumed_from_bytes: int = 0
    reused_files: int = 0
    already_complete: bool = False
    platform: str = ""
    python_version: str = ""
    #: The sealift wheel in wheels/ (the bundle installs sealift itself), "" without wheels.
    sealift_wheel: str = ""
    openllm_wheels: int = 0
    openllm_wheel_bytes: int = 0
    #: sbom.cdx.json when the bundle has one; the signature over SHA256SUMS (--sign), as signing.Signature.to_dict().
    sbom: str = ""
    signature: dict[str, Any] | None = None
    #: What the target host needs (manifest.json's `target`), and the proof's findings (sealift.bundle.proof), or
    #: {"skipped": why}.
    needs: dict[str, Any] = field(default_factory=dict)
    proof: dict[str, Any] = field(default_factory=dict)
    #: Wheels another bundle on the same medium already held: hard-linked, not written again.
    shared_wheels: int = 0
    shared_wheel_bytes: int = 0
    #: A delta bundle (--have): files left out because the far side holds them (manifest.json's delta.relies).
    relied_files: int = 0
    relied_bytes: int = 0
    #: Files written in numbered parts (--max-file-size, FAT32), and the volume folders (--volume-size): sealift.bundle.volumes.
    parts: int = 0
    volumes: list[str] = field(default_factory=list)
    #: How each wheel was held to the lock's sha256 (manifest.json's `wheel_hashes`, sealift.bundle.wheelcheck).
    wheel_hashes: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        written = self.total_bytes - self.resumed_from_bytes
        return written / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mb_per_s": round(self.mb_per_s, 1)}

    def print_human(self) -> None:
        p = console.out.print
        if self.already_complete:
            p(f"{self.bundle} is already a complete bundle of {self.bento_tag}; nothing to do", markup=False)
            return
        resumed = f", resumed after {fmt_bytes(self.resumed_from_bytes)}" if self.resumed_from_bytes else ""
        p(f"exported {self.bento_tag} to {self.bundle}", markup=False, soft_wrap=True)
        wheels = f"wheels: {self.wheels} ({fmt_bytes(self.wheel_bytes)})" if self.wheels else "no wheels"
        if self.openllm_wheels:
            wheels += f"; {WHEELS_OPENLLM}: {self.openllm_wheels} ({fmt_bytes(self.openllm_wheel_bytes)})"
        p(f"  {self.archive}: {fmt_bytes(self.archive_bytes)}; {wheels}", markup=False, soft_wrap=True)
        if self.wheel_hashes:
            h = self.wheel_hashes
            found = f"; {len(h['taken_as_found'])} local (file://) taken as found" if h.get("taken_as_found") else ""
            unchecked = f"; {len(h['unchecked'])} with no sha256 in the lock, unchecked" if h.get("unchecked") else ""
            again = f"; {len(h['downloaded_again'])} downloaded again" if h.get("downloaded_again") else ""
            p(f"  wheel hashes: {h.get('checked', 0)} match the lock ({h.get('from_index', 0)} the index's sha256)"
              f"{found}{unchecked}{again}", markup=False, soft_wrap=True)
        if self.shared_wheels:
            p(f"  {self.shared_wheels} wheels ({fmt_bytes(self.shared_wheel_bytes)}) were already on the medium in "
              "another bundle: hard-linked, not written again", markup=False, soft_wrap=True)
        if self.relied_files:
            p(f"  delta: {self.relied_files} files ({fmt_bytes(self.relied_bytes)}) left out, the far side holds them",
              markup=False, soft_wrap=True)
        p(f"  {fmt_bytes(self.total_bytes)} in {self.seconds:.1f} s ({self.mb_per_s:,.0f} MB/s{resumed})", markup=False)
        if self.parts:
            p(f"  {self.parts} numbered parts (files over the size limit)", markup=False)
        for i, vol in enumerate(self.volumes, 1):
            p(f"  volume {i} of {len(self.volumes)}: {vol}", markup=False, soft_wrap=True)
        if self.signature:
            p(f"  signed: SHA256SUMS.sig by {self.signature['key_type']} key {self.signature['fingerprint']}",
              markup=False, soft_wrap=True)
        from sealift.bundle.target import describe_needs

        for line in [describe_needs(self.needs)] if self.needs else []:
            p(f"  target: {line}", markup=False, soft_wrap=True)
        if self.proof:
            text = self.proof.get("summary") or f"skipped ({self.proof.get('skipped')})"
            p(f"  proof: {text}", markup=False, soft_wrap=True)
        p("on the air-gapped host (see INSTALL.txt):", markup=False)
        if self.volumes:  # sealift.bundle.volumes
            p(f"  sealift install {' '.join(self.volumes)}", markup=False, soft_wrap=True)
            return
        name = Path(self.bundle).name
        lines = [c for c, _ in bootstrap_commands(name, self.python_version, openllm=bool(self.openllm_wheels))
                 ] if self.sealift_wheel else []
        for line in [*lines, *install_commands(name, self.bento_tag.split(":")[0], signed=bool(self.signature))]:
            p(f"  {line}", markup=False, soft_wrap=True)



def bundle_manifest(bento: BentoSource, archive: str, entries: list[FileEntry], platform: str, python_version: str,
                     has_wheels: bool, *, sealift_wheel: str = "", openllm: bool = False,
                     needs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "sealift_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bento": {"tag": bento.tag, "name": bento.name, "version": bento.version,
                  "bentoml_version": bento.bentoml_version, "python_version": bento.python_version,
                  "labels": bento.labels},
        "models": [{"tag": m.tag, "manifest_digest": m.manifest.digest() if m.manifest else None,
                    "total_bytes": m.manifest.total_bytes if m.manifest else None} for m in bento.models],
        "archive": archive,
        "target": {"platform": platform, "python_version": python_version},
        # what the host must have: platform, glibc, Python, torch's CUDA, minimum driver, GPU memory (sealift.bundle.target)
        "needs": {**(needs or {}), "platform": platform, "python_version": python_version},
        "wheels": has_wheels,
        "requirements": bundle_requirements(bento),
        "sealift_wheel": sealift_wheel or None,
        "openllm_requirements": list(OPENLLM_REQUIREMENTS) if openllm else None,
        "files": [e.to_dict() for e in sorted(entries, key=lambda e: e.path)],
        "install": install_commands("<this directory>", bento.name),
    }
