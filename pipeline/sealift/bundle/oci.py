"""`sealift export NAME DEST --oci`: the bundle as one OCI image layout, for sites that move everything through a
registry (Harbor, distribution, Zarf, Hauler) and run Kubernetes.

    export_layout(bento, dest, wheels=..., sign=..., sbom=...) -> OciExportResult   (DEST/<name>-<version>.oci/)
    verify_layout(root, policy) -> LayoutReport                                   (signature, then every blob)

DEST/<name>-<version>.oci/ holds `oci-layout`, `index.json`, `blobs/sha256/`, `SHA256SUMS` (every other file:
oci-layout, index.json and each blob) and, with --sign, `SHA256SUMS.sig` (SSHSIG, as the folder bundle). index.json
names each manifest by `org.opencontainers.image.ref.name`:

    modelcar  a KServe modelcar image (linux/<arch>): busybox-static as /bin/sh, the model's files under /models
    model     the CNCF ModelPack artifact of the same files: one layer per file, the SAME blobs as the modelcar's
    bento     the bento's own files and each model's store record (model.yaml, ...; application/vnd.sealift.bento.v1)
    wheels    every wheel as a raw layer titled with its file name (oras pulls them as files)
    sbom      sbom.cdx.json, its `subject` the model artifact (a referrer, where a registry knows them)

It is written instead of the folder bundle, not beside it: a site that loads a registry reads only the layout,
and both would put every weight on the medium twice. Each byte is read once: a file layer is written by
sealift.bundle.tarstream (its tar digest hashed as it is written, the file itself checked against the model's
sealift manifest on a helper thread); a wheel's blob digest is the sha256 its lock already holds
(sealift.bundle.wheelcheck). Layers are reproducible: the same model gives the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.bundle import modelpack as mp
from sealift.bundle import sbom as sbom_step
from sealift.bundle import signing
from sealift.bundle.source import BentoSource, plan_archive
from sealift.bundle.tarstream import JOURNAL, Journal, Member, archive_size, write_archive
from sealift.bundle.wheelcheck import WheelCheck
from sealift.core import console
from sealift.core.atomic import fsync_dir, write_atomic
from sealift.core.diskspace import check_free_space
from sealift.core.errors import Failure, UserError
from sealift.core.units import fmt_bytes
from sealift.model.manifest import FileEntry, copy_and_hash, hash_file, sha256sums_text

__all__ = ["BENTO_ARTIFACT", "LAYOUT_SUFFIX", "ROLES", "SHELL", "WHEELS_ARTIFACT", "LayoutReport", "OciExportResult",
           "export_layout", "read_index", "verify_layout"]

LAYOUT_SUFFIX = ".oci"
SHELL = Path("/bin/busybox")
BENTO_ARTIFACT = "application/vnd.sealift.bento.v1"
BENTO_TAR = "application/vnd.sealift.bento.v1.tar"
WHEELS_ARTIFACT = "application/vnd.sealift.wheels.v1"
WHEEL = "application/vnd.sealift.wheel.v1.zip"
SBOM_TYPE = "application/vnd.cyclonedx+json"
#: The manifests in index.json, in order (ref names; sealift.bundle.registry tags them TAG, TAG-model, ...).
ROLES = ("modelcar", "model", "bento", "wheels", "sbom")
#: A fixed mtime for every tar member: reproducible layers.
MTIME = 0
#: The applets the modelcar links to busybox (KServe's sidecar runs sh, ln, sleep; the init copy runs cp).
APPLETS = ("sh", "ln", "sleep", "cp", "ls", "cat", "mkdir", "true", "test", "du", "sha256sum")
SUMS = "SHA256SUMS"


@dataclass
class OciExportResult:
    """What `sealift export --oci` wrote."""

    layout: str
    bento_tag: str
    model_tag: str
    manifests: dict[str, str]  # role -> manifest digest
    layers: int
    weight_bytes: int
    wheels: int
    wheel_bytes: int
    total_bytes: int
    seconds: float
    shell: str
    architecture: str
    sbom: bool = False
    signature: dict[str, Any] | None = None
    already_complete: bool = False
    needs: dict[str, Any] = field(default_factory=dict)
    proof: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print_human(self) -> None:
        state = "already complete" if self.already_complete else f"written in {self.seconds:.1f}s"
        console.info(f"OCI layout {self.layout} ({fmt_bytes(self.total_bytes)}, {state})")
        for role, digest in self.manifests.items():
            console.info(f"  {role:9} {digest}")
        console.info(f"  {self.layers} file layers ({fmt_bytes(self.weight_bytes)}), shared by the modelcar and the "
                     f"ModelPack artifact; {self.wheels} wheels ({fmt_bytes(self.wheel_bytes)})")
        if self.signature:
            console.info(f"  signed: {self.signature.get('key_type')} {self.signature.get('fingerprint')}")
        console.info(f"next: sealift push {self.layout} REGISTRY/REPO:TAG, then sealift k8s "
                     f"{self.model_tag.split(':')[0]} --image REGISTRY/REPO:TAG")


class _Layout:
    """blobs/sha256/ being filled in `root`; each blob written to a temporary name and renamed to its digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.written: dict[str, int] = {}  # hex digest -> size
        self.n = 0

    def _tmp(self) -> Path:
        self.n += 1
        return self.blobs / f".partial-{os.getpid()}-{self.n}"

    def _place(self, tmp: Path, digest: str, size: int) -> None:
        os.replace(tmp, self.blobs / digest)
        self.written[digest] = size

    def data(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.written:
            write_atomic(self.blobs / digest, data)
            self.written[digest] = len(data)
        return _descriptor(media_type, digest, len(data), **extra)

    def json(self, doc: dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        return self.data(_canonical(doc), media_type, **extra)

    def tar(self, members: list[Member], media_type: str, advance: Any, **extra: Any) -> dict[str, Any]:
        """A tar layer from `members`, written and hashed in one pass (sealift.bundle.tarstream)."""
        tmp = self._tmp()
        (self.root / JOURNAL).unlink(missing_ok=True)  # each layer starts fresh: no resume inside a layer
        journal = Journal.load(self.root, "layer", tmp.name, archive_size(members))
        entry, _ = write_archive(members, tmp, journal, advance)
        self._place(tmp, entry.sha256, entry.size)
        return _descriptor(media_type, entry.sha256, entry.size, **extra)

    def file(self, src: Path, media_type: str, advance: Any, check: WheelCheck, **extra: Any) -> dict[str, Any]:
        """A raw blob copied from `src` and hashed as it is copied, held to its lock's sha256 (`check`)."""
        tmp = self._tmp()
        entry = check.copy(src, lambda: copy_and_hash(src, tmp, advance), lambda e: e.sha256,
                           lambda: tmp.unlink(missing_ok=True))
        if entry.sha256 in self.written:
            tmp.unlink()
        else:
            self._place(tmp, entry.sha256, entry.size)
        return _descriptor(media_type, entry.sha256, entry.size, **extra)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size, **{k: v for k, v in extra.items() if v}}


def _manifest(config: dict[str, Any], layers: list[dict[str, Any]], *, artifact_type: str | None = None,
              subject: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mp.IMAGE_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc.update(config=config, layers=layers)
    if subject:
        doc["subject"] = subject
    if annotations:
        doc["annotations"] = annotations
    return doc


def _file_members(rel: str, src: Path, size: int, sha256: str | None) -> list[Member]:
    """The tar of one model file: `models/`, its folders, the file (0644, uid 0, mtime 0: any uid reads it)."""
    parts = rel.split("/")
    dirs = [Member("/".join([mp.MODELS_DIR, *parts[:i]]) + "/", "dir", 0, 0o755, MTIME) for i in range(len(parts))]
    return [*dirs, Member(f"{mp.MODELS_DIR}/{rel}", "file", size, 0o644, MTIME, src=str(src), sha256=sha256)]


def _shell_layer(shell: bytes) -> bytes:
    """bin/busybox and its applet links, as a reproducible tar (small: built in memory)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, MTIME, len(data), link
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("bin/", tarfile.DIRTYPE, 0o755)
        add("bin/busybox", tarfile.REGTYPE, 0o755, shell)
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("tmp/", tarfile.DIRTYPE, 0o1777)
    return out.getvalue()


def read_index(root: Path) -> dict[str, dict[str, Any]]:
    """role (ref name) -> descriptor, from a layout's index.json; UserError when it is not an OCI layout."""
    try:
        layout = json.loads((root / "oci-layout").read_text())
        index = json.loads((root / "index.json").read_text())
        assert layout.get("imageLayoutVersion") == "1.0.0"
        found = {d["annotations"][mp.REF_NAME]: d for d in index["manifests"]
                 if mp.REF_NAME in (d.get("annotations") or {})}
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"{root} is not an OCI image layout (oci-layout, index.json)",
                        hint="give the folder `sealift export NAME DEST --oci` wrote") from None
    return found


def export_layout(bento: BentoSource, dest: Path, *, wheels: list[Path], check: WheelCheck, started: float,
                  sign: Path | None = None, sbom: bool = True, shell: Path | None = None,
                  needs: dict[str, Any] | None = None) -> OciExportResult:
    """Write DEST/<name>-<version>.oci/ (see the module doc): into a `.partial` sibling, fsynced, renamed."""
    shell_path = Path(shell or SHELL)
    shell_bytes, arch = mp.static_shell(shell_path)  # before a byte is written
    if len(bento.models) != 1:
        raise UserError(f"{bento.tag} holds {len(bento.models)} models; an OCI export carries one model",
                        hint="build a bento of one model")
    model = bento.models[0]
    if model.manifest is None:
        raise UserError(f"model {model.tag} has no sealift manifest; its layers could not be checked",
                        hint="re-import the model with `sealift import`")
    final = Path(dest) / f"{bento.name}-{bento.version}{LAYOUT_SUFFIX}"
    if final.exists():
        return _already(final, bento, started, sign)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    files = model.manifest.files
    check_free_space(Path(dest), model.manifest.total_bytes + wheel_bytes + len(shell_bytes), slack=16 << 20,
                     what="for the OCI layout", hint="free some space or choose another DEST")
    partial.mkdir(parents=True)
    out = _Layout(partial)
    write_atomic(partial / "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))

    # 1. a layer per model file, each byte read once (the same blobs serve the artifact and the modelcar)
    layers: list[dict[str, Any]] = []
    with console.byte_progress(model.manifest.total_bytes, f"{model.tag} as OCI layers") as adv:
        for e in files:
            kind = mp.layer_type(e.path)
            desc = out.tar(_file_members(e.path, model.path / e.path, e.size, e.sha256), kind, adv,
                           annotations={mp.FILEPATH: e.path, mp.TITLE: e.path, "io.sealift.file.sha256": e.sha256})
            layers.append(desc)
    diff_ids = [d["digest"] for d in layers]
    licenses, _ = sbom_step.model_license(model.path)
    config = mp.model_config(model.path, [(e.path, e.size) for e in files], name=model.name, version=model.version,
                             license_ids=licenses, diff_ids=diff_ids, extra=model.manifest.extra)
    tag_notes = {"io.sealift.model.tag": model.tag, "io.sealift.bento.tag": bento.tag,
                 "io.sealift.model.manifest-digest": model.manifest.digest()}
    manifests: dict[str, dict[str, Any]] = {}
    model_doc = _manifest(out.json(config, mp.MODEL_CONFIG), layers, artifact_type=mp.MODEL_ARTIFACT,
                          annotations={"org.opencontainers.image.title": model.name,
                                       "org.opencontainers.image.version": model.version, **tag_notes})
    manifests["model"] = out.json(model_doc, mp.IMAGE_MANIFEST, artifactType=mp.MODEL_ARTIFACT)

    # 2. the modelcar: busybox, then the very same file layers, as an image KServe's container runtime unpacks
    shell_desc = out.data(_shell_layer(shell_bytes), mp.LAYER_TAR)
    car_layers = [shell_desc, *({**d, "mediaType": mp.LAYER_TAR} for d in layers)]
    image_config = {"architecture": arch, "os": "linux",
                    "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/models",
                               "Labels": tag_notes},
                    "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in car_layers]}}
    car_doc = _manifest(out.json(image_config, mp.IMAGE_CONFIG), car_layers, annotations=tag_notes)
    manifests["modelcar"] = out.json(car_doc, mp.IMAGE_MANIFEST, platform={"architecture": arch, "os": "linux"})

    # 3. the bento: its files and the model's store record (everything the ModelPack layers do not carry)
    in_layers = {str(model.path / e.path) for e in files}
    bento_members = [m for m in plan_archive(bento) if m.src is None or m.src not in in_layers]
    with console.byte_progress(archive_size(bento_members), f"{bento.tag} (the bento)") as adv:
        bento_layer = out.tar(bento_members, BENTO_TAR, adv, annotations={mp.TITLE: f"{bento.name}-{bento.version}.tar"})
    empty = out.data(mp.EMPTY_JSON, mp.EMPTY_CONFIG)
    needs_note = {"io.sealift.needs": json.dumps(needs, sort_keys=True)} if needs else {}
    manifests["bento"] = out.json(_manifest(empty, [bento_layer], artifact_type=BENTO_ARTIFACT,
                                            annotations={**tag_notes, **needs_note}),
                                  mp.IMAGE_MANIFEST, artifactType=BENTO_ARTIFACT)

    # 4. the wheels, each a raw blob whose digest is its lock's sha256
    wheel_descs: list[dict[str, Any]] = []
    entries: list[FileEntry] = []
    if wheels:
        with console.byte_progress(wheel_bytes, "wheels") as adv:
            for w in sorted(wheels, key=lambda p: p.name):
                d = out.file(w, WHEEL, adv, check, annotations={mp.TITLE: w.name})
                wheel_descs.append(d)
                entries.append(FileEntry(f"wheels/{w.name}", d["size"], d["digest"].split(":", 1)[1]))
        manifests["wheels"] = out.json(_manifest(empty, wheel_descs, artifact_type=WHEELS_ARTIFACT,
                                                 annotations={"io.sealift.wheel-hashes": json.dumps(
                                                     check.record(wheels), sort_keys=True)}),
                                       mp.IMAGE_MANIFEST, artifactType=WHEELS_ARTIFACT)

    # 5. the SBOM, attached to the model artifact (its subject)
    if sbom:
        wheel_dir = partial / ".sbom-wheels"  # sbom reads each wheel's METADATA by its bundle path
        (wheel_dir / "wheels").mkdir(parents=True)
        for w in wheels:
            os.link(out.blobs / _hex(next(d for d in wheel_descs if d["annotations"][mp.TITLE] == w.name)),
                    wheel_dir / "wheels" / w.name)
        doc = sbom_step.bundle_sbom(bento, entries, wheel_dir)
        shutil.rmtree(wheel_dir)
        layer = out.data(doc, SBOM_TYPE, annotations={mp.TITLE: sbom_step.SBOM_NAME})
        subject = {k: manifests["model"][k] for k in ("mediaType", "digest", "size")}
        manifests["sbom"] = out.json(_manifest(empty, [layer], artifact_type=SBOM_TYPE, subject=subject),
                                     mp.IMAGE_MANIFEST, artifactType=SBOM_TYPE)

    index = {"schemaVersion": 2, "mediaType": mp.IMAGE_INDEX,
             "manifests": [{**manifests[r], "annotations": {mp.REF_NAME: r}} for r in ROLES if r in manifests]}
    index_bytes = json.dumps(index, indent=1).encode() + b"\n"
    write_atomic(partial / "index.json", index_bytes)
    sums = [FileEntry("oci-layout", len(_canonical({"imageLayoutVersion": "1.0.0"})),
                      hashlib.sha256(_canonical({"imageLayoutVersion": "1.0.0"})).hexdigest()),
            FileEntry("index.json", len(index_bytes), hashlib.sha256(index_bytes).hexdigest()),
            *(FileEntry(f"blobs/sha256/{d}", s, d) for d, s in out.written.items())]
    write_atomic(partial / SUMS, sha256sums_text(sums).encode())
    signature = signing.sign_sums(partial / SUMS, sign) if sign is not None else None
    (partial / JOURNAL).unlink(missing_ok=True)
    fsync_dir(out.blobs)
    fsync_dir(partial)
    os.rename(partial, final)
    fsync_dir(final.parent)
    return OciExportResult(
        layout=str(final), bento_tag=bento.tag, model_tag=model.tag,
        manifests={r: manifests[r]["digest"] for r in ROLES if r in manifests}, layers=len(layers),
        weight_bytes=model.manifest.total_bytes, wheels=len(wheels), wheel_bytes=wheel_bytes,
        total_bytes=sum(e.size for e in sums), seconds=time.monotonic() - started, shell=str(shell_path),
        architecture=arch, sbom=sbom, signature=signature.to_dict() if signature else None, needs=needs or {})


def _hex(desc: dict[str, Any]) -> str:
    return str(desc["digest"]).split(":", 1)[1]


def _already(final: Path, bento: BentoSource, started: float, sign: Path | None) -> OciExportResult:
    """The layout is there: the same export again is a no-op when it is this bento's (nothing is re-read)."""
    found = read_index(final)
    try:
        model_doc = json.loads((final / "blobs" / "sha256" / _hex(found["model"])).read_bytes())
        notes = model_doc.get("annotations") or {}
    except (OSError, ValueError, KeyError):
        notes = {}
    if notes.get("io.sealift.bento.tag") != bento.tag:
        raise UserError(f"{final} already exists and is not an OCI layout of {bento.tag}",
                        hint="remove it or choose another DEST")
    signature = signing.already_signed(final, sign, {"signature": {"fingerprint": signing.check_key(sign).fingerprint}}) \
        if sign is not None else None
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    return OciExportResult(
        layout=str(final), bento_tag=bento.tag, model_tag=str(notes.get("io.sealift.model.tag", "")),
        manifests={r: d["digest"] for r, d in found.items()}, layers=len(model_doc.get("layers", [])),
        weight_bytes=sum(d["size"] for d in model_doc.get("layers", [])), wheels=0, wheel_bytes=0, total_bytes=size,
        seconds=time.monotonic() - started, shell="", architecture="", sbom="sbom" in found,
        signature=signature.to_dict() if signature else None, already_complete=True)


# =========================================================================== checking a layout


@dataclass(frozen=True)
class LayoutReport:
    """A layout checked: its roles, every blob hashed, who signed it (None: unsigned or no policy vouched)."""

    layout: str
    roles: dict[str, str]
    blobs: int
    bytes: int
    signature: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_layout(root: Path, pol: signing.Policy | None, *, advance: Any = None) -> LayoutReport:
    """Check a layout as install checks a bundle: the signature over SHA256SUMS (under `pol`, refusing an unsigned
    layout), SHA256SUMS's line for index.json and oci-layout, then every blob an index entry reaches, each hashed
    once against its name and its SHA256SUMS line; UserError (exit 2) naming the first that does not hold."""
    root = Path(root)
    roles = read_index(root)
    try:
        sums_bytes = (root / SUMS).read_bytes()
    except OSError:
        raise UserError(f"{root} has no {SUMS}: not a layout sealift wrote, or damaged",
                        hint="export it again, or pull it again") from None
    sig = root / signing.SIG_NAME
    checked = signing.verify_sums(str(root), pol, sums=sums_bytes, sig=sig.read_bytes() if sig.is_file() else None)
    listed = {}
    for line in sums_bytes.decode(errors="replace").splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    for rel in ("oci-layout", "index.json"):
        if hash_file(root / rel) != listed.get(rel):
            raise UserError(f"{root / rel} does not match its {SUMS} line: changed after export",
                            hint="do not use this layout; export or pull it again")
    reached: dict[str, int] = {}

    def walk(desc: dict[str, Any]) -> None:
        digest = _hex(desc)
        if digest in reached:
            return
        reached[digest] = int(desc["size"])
        if desc["mediaType"] in (mp.IMAGE_MANIFEST, mp.IMAGE_INDEX):
            doc = json.loads(_read_blob(root, digest, reached[digest]))
            for d in [doc.get("config"), *doc.get("layers", []), *doc.get("manifests", [])]:
                if d:
                    walk(d)

    for desc in roles.values():
        walk(desc)
    total = 0
    for digest, size in sorted(reached.items()):
        rel = f"blobs/sha256/{digest}"
        if listed.get(rel) != digest:
            raise UserError(f"{root / rel} is reached from index.json but not listed in {SUMS}",
                            hint="do not use this layout; export or pull it again")
        path = root / rel
        if not path.is_file() or path.stat().st_size != size:
            raise UserError(f"{path} is missing or not {size} bytes", hint="pull or export it again")
        got = hash_file(path, advance)
        if got != digest:
            raise UserError(f"{path} hashes to sha256:{got}, not its name", hint="pull or export it again")
        total += size
    return LayoutReport(str(root), {r: d["digest"] for r, d in roles.items()}, len(reached), total,
                        checked.signature.to_dict() if checked.signature else None)


def _read_blob(root: Path, digest: str, size: int) -> bytes:
    path = root / "blobs" / "sha256" / digest
    try:
        data = path.read_bytes()
    except OSError:
        raise UserError(f"{path} is missing", hint="pull or export the layout again") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise UserError(f"{path} does not match its digest", hint="pull or export the layout again")
    if len(data) > 4 << 20:
        raise Failure(f"{path}: a manifest of {len(data)} bytes")
    return data
