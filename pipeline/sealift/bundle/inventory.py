"""The inventory format: what an air-gapped host holds, by sha256, carried back to the online host for a delta export.

    read_inventory(path) -> Inventory        UserError (exit 2) if malformed
    write_inventory(inv, path) -> Path

The host side that takes an inventory is sealift.host.inventory; the delta plan that reads one is
sealift.bundle.delta. The store id it names is sealift.model.store.store_id.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealift.bundle.format import BUNDLE_FORMAT
from sealift.core import console, paths
from sealift.core.atomic import write_atomic
from sealift.core.errors import UserError
from sealift.core.units import fmt_bytes
from sealift.core.version import __version__

__all__ = ["INVENTORY_FORMAT", "WHEEL_INDEX", "Inventory", "read_inventory", "write_inventory"]

INVENTORY_FORMAT = "sealift-inventory/1"
#: In SEALIFT_HOME: {wheel name: {size, mtime_ns, sha256}} for the kept wheel pool.
WHEEL_INDEX = "wheels.json"


@dataclass(frozen=True)
class Inventory:
    """What a store holds: `models`/`bentos` are [{tag, files: [{path, size, sha256}]}], `wheels` [{name, size, sha256}]."""

    store_id: str
    created: str
    models: list[dict[str, Any]]
    bentos: list[dict[str, Any]]
    wheels: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    sealift_version: str = __version__
    bundle_format: str = BUNDLE_FORMAT
    hashed_bytes: int = 0

    @property
    def model_bytes(self) -> int:
        return sum(f["size"] for m in self.models for f in m["files"])

    @property
    def wheel_bytes(self) -> int:
        return sum(w["size"] for w in self.wheels)

    def digest(self) -> str:
        """sha256 of the inventory's canonical JSON: which inventory a delta bundle was made from."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INVENTORY_FORMAT, "store_id": self.store_id, "created": self.created,
            "sealift_version": self.sealift_version, "bundle_format": self.bundle_format,
            "sources": {"models": "sha256 from each model's recorded sealift manifest (not re-hashed)",
                        "wheels": f"sha256 recorded by install in {WHEEL_INDEX} (hashed where unrecorded)",
                        "bentos": "hashed"},
            "models": self.models, "bentos": self.bentos, "wheels": self.wheels, "warnings": self.warnings,
        }

    def print_human(self, written: Path | None = None) -> None:
        p = console.out.print
        p(f"store {self.store_id} ({paths.bentoml_home()}), {self.created}", markup=False, soft_wrap=True)
        for m in self.models:
            size = sum(f["size"] for f in m["files"])
            p(f"  model {m['tag']}: {len(m['files'])} files, {fmt_bytes(size)} (from its manifest)", markup=False)
        for b in self.bentos:
            p(f"  bento {b['tag']}: {len(b['files'])} files", markup=False)
        p(f"  wheels: {len(self.wheels)} ({fmt_bytes(self.wheel_bytes)}) in {paths.kept_wheels_dir()}", markup=False,
          soft_wrap=True)
        p(f"  hashed now: {fmt_bytes(self.hashed_bytes)} (model files are taken from their manifests)", markup=False)
        for w in self.warnings:
            p(f"  warning: {w}", markup=False, soft_wrap=True)
        if written is not None:
            p(f"written to {written}: carry it to the online host and run "
              f"`sealift export NAME DEST --have {written.name}`", markup=False, soft_wrap=True)


def read_inventory(path: Path) -> Inventory:
    """An inventory file written by `sealift inventory -o`; UserError (exit 2) naming what is wrong."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--have {path}: no such file", hint="run `sealift inventory -o FILE` on the air-gapped host") \
            from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--have {path}: not a sealift inventory ({exc})",
                        hint="run `sealift inventory -o FILE` on the air-gapped host") from None
    try:
        if doc.get("format") != INVENTORY_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {INVENTORY_FORMAT}")
        if doc.get("bundle_format") != BUNDLE_FORMAT:
            raise ValueError(f"made for bundle format {doc.get('bundle_format')!r}, this sealift writes {BUNDLE_FORMAT}")
        sid = str(doc["store_id"])
        if not sid:
            raise ValueError("no store id")
        for m in doc["models"] + doc["bentos"]:
            _ = [(str(m["tag"]), str(f["path"]), int(f["size"]), _sha(f["sha256"])) for f in m["files"]]
        _ = [(str(w["name"]), int(w["size"]), _sha(w["sha256"])) for w in doc["wheels"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--have {path}: not a sealift inventory ({exc})",
                        hint="run `sealift inventory -o FILE` on the air-gapped host with this sealift") from None
    return Inventory(store_id=sid, created=str(doc.get("created", "")), models=doc["models"], bentos=doc["bentos"],
                     wheels=doc["wheels"], warnings=list(doc.get("warnings") or []),
                     sealift_version=str(doc.get("sealift_version", "")))


def _sha(value: Any) -> str:
    text = str(value)
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"bad sha256 {text[:20]!r}")
    return text


def write_inventory(inv: Inventory, path: Path) -> Path:
    """Write the inventory atomically to `path`; the path."""
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(inv.to_dict(), indent=1) + "\n").encode())
    os.chmod(path, 0o644)
    return path
