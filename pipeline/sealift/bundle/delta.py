"""Delta bundles: carry only what the far side lacks, assemble the rest there from what it holds.

    online host:   plan = plan_delta(read_inventory(path), members)      export --have inventory.json
                   members, relied = plan.members, plan.relies           the archive omits what the far side has
                   carry, relied_wheels = plan.split_wheels(wheels)      so do wheels/
                   manifest.json["delta"] = plan.record()
    air-gapped:    filler = prepare(doc, bundle)                         store id, every relied file located
                   import_archive(..., fill=filler)                      gaps filled into the staging dir, then
                                                                         each assembled model checked against its
                                                                         manifest, before anything is published

The anchors are rsync's batch mode (a batch made against a known copy of the
destination applies only there) and OCI's layer dedup (content addressed by
sha256: a blob the registry has is not sent). The far side's inventory
(sealift.host.inventory, in sealift.bundle.inventory's format) names every file it holds by sha256; each archive member or
wheel whose sha256 and size it lists is left out of the bundle and recorded in
manifest.json's `delta.relies`: path (in the archive, or wheels/NAME), sha256,
size, kind (model, bento, wheel), and where the far side holds it (`from`: a model
or bento tag, or the wheel pool; `from_path`). SHA256SUMS lists only what the
bundle carries, so `sha256sum -c SHA256SUMS` passes on the bundle alone.

bento.yaml and each model's model.yaml and sealift-manifest.json are always
carried (install checks the bundle's layout and the model's manifest digest with
them). The bento's files are hashed at export to be compared (they are small);
model files are compared by the sha256 of their own manifest, checked again while
the archive streams.

Install refuses (exit 2, nothing imported) a delta made from another store's
inventory (sealift.model.store.store_id) and one that relies on a file this host
no longer holds or that changed: a model or bento file is hashed while it is
hard-linked (or reflinked, or copied across filesystems) into the staging
directory, each byte read once; relied wheels are hashed before anything is
imported. The assembled model is then checked against its sealift manifest
(files carried in the bundle hashed, relied ones already hashed as they were
linked; nothing missing, nothing extra) before it is renamed into the store.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.model import _bentoml
from sealift.core import console, paths
from sealift.bundle.format import MANIFEST_JSON, WHEELS, member_path
from sealift.core.errors import UserError
from sealift.bundle.inventory import Inventory
from sealift.model.store import store_id
from sealift.model.manifest import MANIFEST_NAME, FileEntry, Manifest, copy_and_hash, hash_file, link_and_hash
from sealift.bundle.tarstream import Member

__all__ = ["DELTA_SUFFIX", "DeltaPlan", "Filler", "Relied", "check_same_inventory", "plan_delta", "prepare"]

#: A delta bundle is DEST/<name>-<version><DELTA_SUFFIX>: it never takes a full bundle's name.
DELTA_SUFFIX = "-delta"
#: Always carried, whatever the far side holds: what install reads to check the bundle and the models.
_ALWAYS = ("bento.yaml",)
_MODEL_ALWAYS = ("model.yaml", MANIFEST_NAME)
WHEEL_POOL = "wheel pool"


@dataclass(frozen=True)
class Relied:
    """A file the bundle leaves out because the far side holds it: at `from_path` of `from_tag` (or the pool)."""

    path: str
    sha256: str
    size: int
    kind: str  # "model" | "bento" | "wheel"
    from_tag: str
    from_path: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("from_tag")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Relied:
        return cls(str(d["path"]), str(d["sha256"]), int(d["size"]), str(d["kind"]), str(d["from"]),
                   str(d["from_path"]))


@dataclass
class DeltaPlan:
    inventory: Inventory
    members: list[Member]
    relies: list[Relied] = field(default_factory=list)

    def split_wheels(self, wheels: list[Path]) -> list[Path]:
        """The wheels to carry; those the far side's pool holds (same name, size and sha256) join `relies`."""
        pool = {(w["name"], int(w["size"])): w["sha256"] for w in self.inventory.wheels}
        carry = []
        for w in wheels:
            size = w.stat().st_size
            want = pool.get((w.name, size))
            if want is not None and hash_file(w) == want:
                self.relies.append(Relied(f"{WHEELS}/{w.name}", want, size, "wheel", WHEEL_POOL, w.name))
            else:
                carry.append(w)
        return carry

    @property
    def relied_bytes(self) -> int:
        return sum(r.size for r in self.relies)

    def record(self) -> dict[str, Any]:
        """manifest.json's `delta`: which store and inventory it was made for, and what it relies on."""
        return {"store_id": self.inventory.store_id, "inventory_digest": self.inventory.digest(),
                "inventory_created": self.inventory.created, "relied_files": len(self.relies),
                "relied_bytes": self.relied_bytes,
                "relies": [r.to_dict() for r in sorted(self.relies, key=lambda r: r.path)]}


def plan_delta(inv: Inventory, members: list[Member]) -> DeltaPlan:
    """The archive's members less every file the far side holds (see the module docstring)."""
    have: dict[tuple[str, int], tuple[str, str, str]] = {}
    for kind, items in (("bento", inv.bentos), ("model", inv.models)):  # models last: they win
        for item in items:
            for f in item["files"]:
                have[(f["sha256"], int(f["size"]))] = (kind, str(item["tag"]), str(f["path"]))
    kept: list[Member] = []
    relies: list[Relied] = []
    for m in members:
        rel = member_path(m.name)
        parts = rel.split("/")
        always = rel in _ALWAYS or (parts[0] == "models" and len(parts) == 4 and parts[3] in _MODEL_ALWAYS)
        if m.kind != "file" or m.data is not None or m.src is None or always:
            kept.append(m)
            continue
        sha = m.sha256 if parts[0] == "models" else hash_file(m.src)
        hit = have.get((sha, m.size)) if sha else None
        if hit is None:
            kept.append(m)
        else:
            relies.append(Relied(rel, sha, m.size, hit[0], hit[1], hit[2]))
    return DeltaPlan(inv, kept, relies)


def check_same_inventory(bundle: Path, plan: DeltaPlan) -> None:
    """An existing bundle at a delta's name is complete only if made from the same inventory; UserError if not."""
    try:
        have = (json.loads((bundle / MANIFEST_JSON).read_text()).get("delta") or {}).get("inventory_digest")
    except (OSError, ValueError, AttributeError):
        have = None
    if have != plan.inventory.digest():
        raise UserError(f"{bundle} already exists, made from {'another inventory' if have else 'no inventory'}",
                        hint="remove it or choose another DEST")


def install_note(record: dict[str, Any]) -> str:
    """The paragraph a delta bundle's INSTALL.txt gains."""
    return ("\nThis is a DELTA bundle: it carries only what the host lacked when its inventory was taken\n"
            f"(store {record['store_id']}, {record['inventory_created']}); {record['relied_files']} files "
            "it relies on\nare taken from that host's store and wheel pool. sealift must already be installed there.\n"
            "On any other host, or if those files changed, install refuses it: export a full bundle.\n")


# --------------------------------------------------------------------------- install


def _refuse(bundle: Path, r: Relied, what: str) -> UserError:
    return UserError(f"{bundle}: this delta bundle relies on {r.from_path} of {r.from_tag} ({r.path}), which is "
                     f"{what} on this host; nothing was imported",
                     hint="export a full bundle (sealift export without --have) and install that")


def _model_sources() -> dict[str, tuple[Path, dict[str, FileEntry]]]:
    """{tag: (path, {relpath: entry})} of every sealift model in this store, from its recorded manifest."""
    out = {}
    for model in _bentoml.list_models():
        want = dict(model.info.metadata).get("manifest_digest")
        try:
            man = Manifest.read(Path(model.path) / MANIFEST_NAME)
        except (OSError, ValueError):
            continue
        if want and man.digest() == want:
            out[str(model.tag)] = (Path(model.path), man.by_path())
    return out


@dataclass
class Filler:
    """Fills a staging directory's gaps from this host's store: import_archive's `fill` hook."""

    bundle: Path
    items: list[tuple[Relied, Path]]
    digests: dict[str, str]
    filled_bytes: int = 0
    linked: int = 0

    def __call__(self, staging: Path, wanted: Callable[[str], bool]) -> None:
        todo = [(r, src) for r, src in self.items if r.kind != "wheel" and wanted(r.path)]
        with console.byte_progress(sum(r.size for r, _ in todo), "taking from the store") as adv:
            for r, src in todo:
                self._place(staging, r, src, adv)
        models = sorted({"/".join(r.path.split("/")[:3]) for r, _ in todo if r.path.startswith("models/")})
        for rel in models:
            self._check_model(staging / rel, rel, {r.path[len(rel) + 1:] for r, _ in todo if
                                                   r.path.startswith(rel + "/")})

    def _place(self, staging: Path, r: Relied, src: Path, adv: Callable[[int], None]) -> None:
        dst = staging / r.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            if not src.is_file():
                raise FileNotFoundError(src)
            try:
                entry, _ = link_and_hash(src, dst, adv, relpath=r.path)
                self.linked += 1
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                    raise
                dst.unlink(missing_ok=True)
                entry = copy_and_hash(src, dst, adv, relpath=r.path, fsync=False)
        except FileNotFoundError:
            raise _refuse(self.bundle, r, "missing") from None
        if entry.sha256 != r.sha256 or entry.size != r.size:
            dst.unlink(missing_ok=True)
            raise _refuse(self.bundle, r, f"changed (sha256 {entry.sha256[:16]}..., expected {r.sha256[:16]}...)")
        self.filled_bytes += r.size

    def _check_model(self, root: Path, rel: str, relied: set[str]) -> None:
        """The assembled model against its own manifest (and the digest manifest.json names), before it is stored."""
        tag = ":".join(rel.split("/")[1:3])
        try:
            man = Manifest.read(root / MANIFEST_NAME)
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.bundle}: model {tag}: {MANIFEST_NAME} unreadable ({exc}); nothing was imported") \
                from None
        want = self.digests.get(tag)
        if want and man.digest() != want:
            raise UserError(f"{self.bundle}: model {tag} has manifest digest {man.digest()}, manifest.json says "
                            f"{want}; nothing was imported", hint="do not install this bundle; export it again")
        entries = man.by_path()
        taken = {r.path: r.sha256 for r, _ in self.items}
        wrong = [p for p in sorted(relied) if p not in entries or entries[p].sha256 != taken.get(f"{rel}/{p}")]
        # The carried files came out of the archive, every byte of which was hashed as it was written
        # (sealift.host.unpack): their names and sizes against the manifest suffice, no second read.
        problems = [p for p, e in entries.items() if p not in relied and
                    (not (root / p).is_file() or (root / p).stat().st_size != e.size)]
        if wrong or problems:
            what = f"{wrong[0]}: not the file its manifest lists" if wrong else f"{problems[0]}: missing or resized"
            raise UserError(f"{self.bundle}: the assembled model {tag} does not match its manifest ({what}); "
                            "nothing was imported", hint="export a full bundle and install that")


def prepare(doc: dict[str, Any], bundle: Path) -> Filler | None:
    """None for a full bundle. For a delta: this store must be the one it was made for, and every file it
    relies on must be here (sizes and recorded sha256; wheels hashed now); UserError (exit 2) otherwise."""
    record = doc.get("delta")
    if not record:
        return None
    here = store_id(create=False)
    if record.get("store_id") != here:
        raise UserError(f"{bundle} is a delta bundle made from the inventory of store {record.get('store_id')}; "
                        f"this host's store ({paths.bentoml_home()}) is "
                        f"{here or 'one that never took an inventory'}; nothing was imported",
                        hint="export a full bundle (without --have), or use an inventory taken on this host")
    try:
        relies = [Relied.from_dict(d) for d in record["relies"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{bundle}: manifest.json's delta record is unreadable ({exc}); nothing was imported") from None
    models = _model_sources() if any(r.kind == "model" for r in relies) else {}
    bentos = {str(b.tag): Path(b.path) for b in _bentoml.list_bentos()} if any(r.kind == "bento" for r in relies) else {}
    items: list[tuple[Relied, Path]] = []
    pool = paths.kept_wheels_dir()
    wheels = [r for r in relies if r.kind == "wheel"]
    with console.byte_progress(sum(r.size for r in wheels), "checking kept wheels") as adv:
        for r in wheels:  # the blob of that sha256 (sealift.host.wheelpool), else the named file; hashed now
            src = pool / ".sha256" / r.sha256
            src = src if src.is_file() else pool / r.from_path
            if not src.is_file() or src.stat().st_size != r.size:
                raise _refuse(bundle, r, "missing" if not src.is_file() else "changed (another size)")
            if hash_file(src, adv) != r.sha256:
                raise _refuse(bundle, r, "changed")
            items.append((r, src))
    for r in relies:
        if r.kind == "model":
            items.append((r, _model_file(bundle, r, models)))
        elif r.kind == "bento":
            if r.from_tag not in bentos:
                raise _refuse(bundle, r, "missing (the bento is gone)")
            src = bentos[r.from_tag] / r.from_path
            if not src.is_file() or src.stat().st_size != r.size:
                raise _refuse(bundle, r, "missing" if not src.is_file() else "changed (another size)")
            items.append((r, src))
    digests = {m["tag"]: m["manifest_digest"] for m in doc.get("models", []) if m.get("manifest_digest")}
    return Filler(bundle, items, digests)


def _model_file(bundle: Path, r: Relied, models: dict[str, tuple[Path, dict[str, FileEntry]]]) -> Path:
    """Where this store holds r: at its recorded place, else in any model whose manifest lists the same bytes."""
    def usable(root: Path, e: FileEntry | None) -> bool:
        return (e is not None and e.sha256 == r.sha256 and e.size == r.size and (root / e.path).is_file()
                and (root / e.path).stat().st_size == r.size)

    if r.from_tag in models:
        root, entries = models[r.from_tag]
        if usable(root, entries.get(r.from_path)):
            return root / r.from_path
    for root, entries in models.values():
        for e in entries.values():
            if usable(root, e):
                return root / e.path
    if r.from_tag not in models:
        raise _refuse(bundle, r, "missing (the model is gone, or its manifest no longer matches)")
    src = models[r.from_tag][0] / r.from_path
    raise _refuse(bundle, r, "missing" if not src.is_file() else "changed")


def relied_wheels(doc: dict[str, Any]) -> list[str]:
    """The wheels/ paths a delta bundle relies on (already in the kept wheel pool)."""
    return [d["path"] for d in (doc.get("delta") or {}).get("relies", []) if d.get("kind") == "wheel"]
