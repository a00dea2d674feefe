"""What an air-gapped host already holds, by sha256: the far side's half of a delta update (sealift.bundle.delta).

    take_inventory() -> Inventory            model files, bento files and kept wheels of this host, with their tags

Model files are not re-hashed: their sha256 come from each model's own sealift
manifest (sealift-manifest.json, whose digest must match the one `sealift import`
recorded in the model's metadata; a model whose manifest disagrees is left out
with a warning). Wheels come from the kept wheel pool ($SEALIFT_HOME/wheels),
whose sha256 `sealift install` records in $SEALIFT_HOME/wheels.json as it keeps
them (checked against SHA256SUMS); a wheel with no record, or whose size or
mtime changed since, is hashed here and recorded. Bento files are small and are
hashed. Nothing here is trusted blindly later: install hashes every byte it
takes from the store while assembling (sealift.bundle.delta).

The store id is a random id written once into the Bento store's home; a delta
bundle names the store whose inventory it was made from, and install refuses it
on any other store (exit 2).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from sealift.model import _bentoml
from sealift.core import console, paths
from sealift.model.manifest import MANIFEST_NAME, Manifest, hash_file, walk_files
from sealift.bundle.inventory import Inventory
from sealift.host.wheelpool import read_index, record
from sealift.model.store import store_id

__all__ = ["take_inventory"]

_MODEL_YAML = "model.yaml"


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
    index = read_index()
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
        record(pool, fresh)
        wheels += [{"name": n, "size": (pool / n).stat().st_size, "sha256": d} for n, d in fresh.items()]
    return Inventory(
        store_id=sid, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        models=models, bentos=sorted(bentos, key=lambda b: b["tag"]), wheels=sorted(wheels, key=lambda w: w["name"]),
        warnings=warnings, hashed_bytes=total,
    )


