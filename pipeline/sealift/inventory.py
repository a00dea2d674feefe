"""What an air-gapped host already holds, by sha256: the far side's half of a delta update (sealift.delta).

    take_inventory() -> Inventory            model files, bento files and kept wheels of this host, with their tags
    read_inventory(path) -> Inventory        an inventory carried back to the online host; UserError if malformed
    store_id(create=True) -> str             this Bento store's id ($BENTOML_HOME/sealift-store-id)

Model files are not re-hashed: their sha256 come from each model's own sealift
manifest (sealift-manifest.json, whose digest must match the one `sealift import`
recorded in the model's metadata; a model whose manifest disagrees is left out
with a warning). Wheels come from the kept wheel pool ($SEALIFT_HOME/wheels),
whose sha256 `sealift install` records in $SEALIFT_HOME/wheels.json as it keeps
them (checked against SHA256SUMS); a wheel with no record, or whose size or
mtime changed since, is hashed here and recorded. Bento files are small and are
hashed. Nothing here is trusted blindly later: install hashes every byte it
takes from the store while assembling (sealift.delta).

The store id is a random id written once into the Bento store's home; a delta
bundle names the store whose inventory it was made from, and install refuses it
on any other store (exit 2).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealift import __version__, _bentoml, console, paths
from sealift.atomic import write_atomic
from sealift.bundle import BUNDLE_FORMAT
from sealift.errors import UserError
from sealift.manifest import MANIFEST_NAME, Manifest, hash_file, walk_files
from sealift.units import fmt_bytes

__all__ = ["INVENTORY_FORMAT", "STORE_ID_FILE", "WHEEL_INDEX", "Inventory", "read_inventory", "record_wheels",
           "store_id", "take_inventory", "write_inventory"]

INVENTORY_FORMAT = "sealift-inventory/1"
#: In the Bento store's home: the store's id (one line).
STORE_ID_FILE = "sealift-store-id"
#: In SEALIFT_HOME: {wheel name: {size, mtime_ns, sha256}} for the kept wheel pool.
WHEEL_INDEX = "wheels.json"
_MODEL_YAML = "model.yaml"


def store_id(*, create: bool = True) -> str | None:
    """This Bento store's id; made (once, atomically) when `create` and there is none yet."""
    path = paths.bentoml_home() / STORE_ID_FILE
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    write_atomic(tmp, (uuid.uuid4().hex + "\n").encode())
    try:
        os.link(tmp, path)  # exclusive: two first inventories at once agree on one id
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def _wheel_index_path() -> Path:
    return paths.sealift_home() / WHEEL_INDEX


def _read_wheel_index() -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(_wheel_index_path().read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def record_wheels(pool: Path, digests: dict[str, str]) -> None:
    """Record the sha256 of wheels just kept in `pool` ({file name: sha256}, from a verified SHA256SUMS)."""
    index = _read_wheel_index()
    for name, digest in digests.items():
        try:
            st = (pool / name).stat()
        except OSError:
            continue
        index[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _wheel_index_path().parent.mkdir(parents=True, exist_ok=True)
    write_atomic(_wheel_index_path(), (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())


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


def _model_entries(warnings: list[str]) -> list[dict[str, Any]]:
    out = []
    for model in _bentoml.list_models():
        tag = str(model.tag)
        want = dict(model.info.metadata).get("manifest_digest")
        if not want:
            continue  # not imported by sealift: no manifest to trust
        try:
            manifest = Manifest.read(Path(model.path) / MANIFEST_NAME)
        except (OSError, ValueError) as exc:
            warnings.append(f"model {tag}: {MANIFEST_NAME} unreadable ({exc}); left out")
            continue
        if manifest.digest() != want:
            warnings.append(f"model {tag}: its manifest does not match the digest recorded at import; left out "
                            f"(run `sealift verify {tag}`)")
            continue
        out.append({"tag": tag, "manifest_digest": want, "files": [e.to_dict() for e in manifest.files]})
    return sorted(out, key=lambda m: m["tag"])


def _hashed_tree(root: Path, advance: Any, skip_top: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    files = []
    for rel in walk_files(root, skip_hidden=False):
        if rel.split("/")[0] in skip_top:
            continue
        p = root / rel
        files.append({"path": rel, "size": p.stat().st_size, "sha256": hash_file(p, advance)})
    return files


def take_inventory() -> Inventory:
    """This host's inventory (makes the store id if there is none yet; records newly hashed wheels)."""
    sid = store_id(create=True)
    assert sid is not None
    warnings: list[str] = []
    models = _model_entries(warnings)
    bentos_found = _bentoml.list_bentos()
    pool = paths.kept_wheels_dir()
    index = _read_wheel_index()
    wheels: list[dict[str, Any]] = []
    to_hash: list[Path] = []
    for w in sorted(pool.glob("*.whl")) if pool.is_dir() else []:
        st = w.stat()
        rec = index.get(w.name)
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            wheels.append({"name": w.name, "size": st.st_size, "sha256": rec["sha256"]})
        else:
            to_hash.append(w)
    bento_bytes = sum(f.stat().st_size for b in bentos_found for f in Path(b.path).rglob("*") if f.is_file())
    total = bento_bytes + sum(w.stat().st_size for w in to_hash)
    with console.byte_progress(total, "inventory") as adv:
        bentos = [{"tag": str(b.tag), "files": _hashed_tree(Path(b.path), adv, skip_top=("models",))}
                  for b in bentos_found]
        fresh = {w.name: hash_file(w, adv) for w in to_hash}
    if fresh:
        record_wheels(pool, fresh)
        wheels += [{"name": n, "size": (pool / n).stat().st_size, "sha256": d} for n, d in fresh.items()]
    return Inventory(
        store_id=sid, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        models=models, bentos=sorted(bentos, key=lambda b: b["tag"]), wheels=sorted(wheels, key=lambda w: w["name"]),
        warnings=warnings, hashed_bytes=total,
    )


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
