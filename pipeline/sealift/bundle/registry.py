"""`sealift push LAYOUT REGISTRY/REPO:TAG` and `sealift pull REGISTRY/REPO:TAG DIR`: an OCI layout in and out of a
site registry, with skopeo (Debian's `skopeo`; `apt-get install skopeo`).

    push(layout, "registry.site:5000/models/qwen7b:v1", auth=Auth(...)) -> Transfer
    pull("registry.site:5000/models/qwen7b:v1", Path("store/qwen7b.oci"), auth=..., policy=...) -> Transfer

Why skopeo: it copies an OCI layout's manifests byte for byte (`--preserve-digests` refuses any rewrite, so the
registry holds the very digests SHA256SUMS lists and KServe pulls), checks every blob's digest as it reads it,
speaks the registry token flow (Harbor), and takes a site CA as a certs folder; it is a Debian package that sites
already carry. oras-py pushes files and writes its own manifest: the digests would not be the signed ones.

Tags: each role of the layout (sealift.bundle.oci.ROLES) goes to REPO: the modelcar as TAG (what KServe's
`storageUri: oci://REGISTRY/REPO:TAG` names), the others as TAG-model, TAG-bento, TAG-wheels, TAG-sbom. TAG-sealift
is a small artifact with the layout's own index.json, SHA256SUMS and SHA256SUMS.sig: pull reads it first, checks
the signature (under the allowed signers policy, as install does), then pulls each manifest by the digest that
signed index.json names, puts that index.json back and hashes every blob (sealift.bundle.oci.verify_layout).

Credentials: `--username` with the password on stdin or in $SEALIFT_REGISTRY_PASSWORD (written to a 0600 auth
file skopeo reads, never on a command line); without them skopeo's own (REGISTRY_AUTH_FILE, ~/.docker/config.json,
containers-auth.json). `--ca FILE`: the site's CA for the registry's TLS; `--plain-http`: a registry without TLS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sealift.bundle import modelpack as mp
from sealift.bundle import signing
from sealift.bundle.oci import SUMS, read_index, verify_layout
from sealift.core import console
from sealift.core.atomic import fsync_dir, write_atomic
from sealift.core.errors import UserError

__all__ = ["LAYOUT_ARTIFACT", "PASSWORD_ENV", "Auth", "Transfer", "parse_ref", "pull", "push", "tag_for"]

LAYOUT_ARTIFACT = "application/vnd.sealift.layout.v1"
PASSWORD_ENV = "SEALIFT_REGISTRY_PASSWORD"
_REF = re.compile(r"^(?P<registry>[A-Za-z0-9.-]+(:[0-9]+)?)/(?P<repo>[a-z0-9]+([._/-][a-z0-9]+)*)"
                  r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,95})$")


@dataclass(frozen=True)
class Auth:
    """How to reach the registry: credentials (None: skopeo's own), a site CA file, or plain HTTP."""

    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    plain_http: bool = False


@dataclass(frozen=True)
class Transfer:
    """What push or pull moved: each role's reference with its digest."""

    layout: str
    ref: str
    images: dict[str, str]
    seconds: float
    verified_blobs: int = 0
    verified_bytes: int = 0
    signature: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print_human(self) -> None:
        for role, ref in self.images.items():
            console.info(f"{role:9} {ref}")
        if self.verified_blobs:
            console.info(f"verified {self.verified_blobs} blobs ({self.verified_bytes} bytes) into {self.layout}")
        if self.signature:
            who = self.signature.get("identity") or "no allowed signers policy"
            console.info(f"signed by {self.signature.get('key_type')} {self.signature.get('fingerprint')} ({who})")
        console.info(f"done in {self.seconds:.1f}s")


def parse_ref(ref: str) -> tuple[str, str, str]:
    """(registry, repository, tag) of REGISTRY/REPO:TAG; UserError for anything else."""
    m = _REF.match(ref)
    if not m or ("." not in m["registry"] and ":" not in m["registry"] and m["registry"] != "localhost"):
        raise UserError(f"{ref!r} is not REGISTRY/REPO:TAG (e.g. registry.site:5000/models/qwen7b:v1)",
                        hint="name the registry host, the repository and a tag")
    return m["registry"], m["repo"], m["tag"]


def tag_for(tag: str, role: str) -> str:
    """The tag a role of the layout gets: the modelcar TAG itself, the others TAG-ROLE."""
    return tag if role == "modelcar" else f"{tag}-{role}"


def _skopeo() -> str:
    path = shutil.which("skopeo")
    if not path:
        raise UserError("skopeo is not installed", hint="apt-get install skopeo (Debian/Ubuntu)")
    return path


class _Session:
    """A temporary folder with the auth file and certs folder skopeo reads for one registry."""

    def __init__(self, registry: str, auth: Auth, side: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sealift-registry-"))
        self.args: list[str] = []
        if auth.plain_http:
            self.args.append(f"--{side}-tls-verify=false")
        if auth.ca is not None:
            if not Path(auth.ca).is_file():
                raise UserError(f"--ca {auth.ca}: no such file", hint="give the site CA's PEM file")
            certs = self.dir / "certs"
            certs.mkdir()
            shutil.copyfile(auth.ca, certs / "ca.crt")
            self.args.append(f"--{side}-cert-dir={certs}")
        if auth.username is not None:
            if not auth.password:
                raise UserError(f"--username {auth.username} without a password",
                                hint=f"give it on stdin (--password-stdin) or in ${PASSWORD_ENV}")
            token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            fd = os.open(self.dir / "auth.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"auths": {registry: {"auth": token}}}, f)
            self.args.append(f"--{side}-authfile={self.dir / 'auth.json'}")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _copy(src: str, dst: str, args: list[str], what: str) -> None:
    """skopeo copy --preserve-digests SRC DST; UserError with skopeo's own words and what to do."""
    with console.spinner(what):
        p = subprocess.run([_skopeo(), "copy", "--quiet", "--preserve-digests", *args, src, dst],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=24 * 3600)
    if p.returncode == 0:
        return
    said = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    low = said.lower()
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        hint = f"give --username and the password (stdin or ${PASSWORD_ENV}), or log in with skopeo login"
    elif "x509" in low or "certificate" in low:
        hint = "give the site CA with --ca FILE"
    elif "http response to https client" in low:
        hint = "the registry speaks plain HTTP: --plain-http"
    elif "manifest unknown" in low or "not found" in low:
        hint = "check the reference (sealift push wrote TAG, TAG-model, TAG-bento, TAG-sealift, ...)"
    elif "connection refused" in low or "no such host" in low:
        hint = "check the registry address and that it is up"
    else:
        hint = "see skopeo's message; SEALIFT_DEBUG=1 shows the command"
    if os.environ.get("SEALIFT_DEBUG"):
        console.warn(p.stderr)
    raise UserError(f"{what} failed: {said}", hint=hint)


def _layout_artifact(root: Path, into: Path) -> None:
    """A one-manifest layout (ref `sealift`) whose layers are root's index.json, SHA256SUMS and its signature."""
    blobs = into / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str, title: str = "") -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        d: dict[str, Any] = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if title:
            d["annotations"] = {mp.TITLE: title}
        return d

    layers = [blob((root / "index.json").read_bytes(), mp.IMAGE_INDEX, "index.json"),
              blob((root / SUMS).read_bytes(), "text/plain", SUMS)]
    if (root / signing.SIG_NAME).is_file():
        layers.append(blob((root / signing.SIG_NAME).read_bytes(), "application/vnd.sealift.sshsig.v1",
                           signing.SIG_NAME))
    manifest = {"schemaVersion": 2, "mediaType": mp.IMAGE_MANIFEST, "artifactType": LAYOUT_ARTIFACT,
                "config": blob(mp.EMPTY_JSON, mp.EMPTY_CONFIG), "layers": layers}
    desc = blob(json.dumps(manifest, sort_keys=True).encode(), mp.IMAGE_MANIFEST)
    (into / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (into / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {**desc, "annotations": {mp.REF_NAME: "sealift"}}]}))


def push(layout: Path, ref: str, *, auth: Auth = Auth()) -> Transfer:
    """Copy every manifest of `layout` (and its signed index) into REGISTRY/REPO under TAG, TAG-model, ..."""
    started = time.monotonic()
    registry, repo, tag = parse_ref(ref)
    layout = Path(layout).absolute()
    roles = read_index(layout)
    if not (layout / SUMS).is_file():
        raise UserError(f"{layout} has no {SUMS}: not a layout `sealift export --oci` wrote",
                        hint="export it with sealift export NAME DEST --oci")
    listed = (layout / SUMS).read_text()
    if f"{hashlib.sha256((layout / 'index.json').read_bytes()).hexdigest()}  index.json\n" not in listed:
        raise UserError(f"{layout}/index.json does not match its {SUMS} line: changed after export",
                        hint="export it again")
    session = _Session(registry, auth, "dest")
    images: dict[str, str] = {}
    try:
        for role, desc in roles.items():
            target = f"{registry}/{repo}:{tag_for(tag, role)}"
            _copy(f"oci:{layout}:{role}", f"docker://{target}", session.args, f"pushing {role} to {target}")
            images[role] = f"{target}@{desc['digest']}"
        small = session.dir / "layout"
        _layout_artifact(layout, small)
        target = f"{registry}/{repo}:{tag_for(tag, 'sealift')}"
        _copy(f"oci:{small}:sealift", f"docker://{target}", session.args, f"pushing the signed index to {target}")
        images["sealift"] = target
    finally:
        session.close()
    return Transfer(str(layout), ref, images, time.monotonic() - started)


def pull(ref: str, dest: Path, *, auth: Auth = Auth(), allowed_signers: Path | None = None) -> Transfer:
    """Bring REGISTRY/REPO:TAG's layout into `dest` (a new folder): the signed index first, checked under the
    allowed signers policy; each manifest by its signed digest; then every blob hashed. Nothing is left at `dest`
    unless all of it checks."""
    started = time.monotonic()
    registry, repo, tag = parse_ref(ref)
    dest = Path(dest).absolute()
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} exists and is not empty", hint="pull into a new folder")
    pol = signing.policy(allowed_signers)
    session = _Session(registry, auth, "src")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        small = session.dir / "sealift"
        _copy(f"docker://{registry}/{repo}:{tag_for(tag, 'sealift')}", f"oci:{small}:sealift", session.args,
              f"pulling {registry}/{repo}:{tag_for(tag, 'sealift')}")
        files = _artifact_files(small)
        if "index.json" not in files or SUMS not in files:
            raise UserError(f"{ref}: its -sealift artifact holds no index.json and {SUMS}",
                            hint="push the layout again with sealift push")
        checked = signing.verify_sums(ref, pol, sums=files[SUMS], sig=files.get(signing.SIG_NAME))
        digest = hashlib.sha256(files["index.json"]).hexdigest()
        if f"{digest}  index.json\n" not in files[SUMS].decode(errors="replace"):
            raise UserError(f"{ref}: its index.json is not the one {SUMS} lists", hint="do not use it; push it again")
        index = json.loads(files["index.json"])
        for desc in index.get("manifests", []):
            role = (desc.get("annotations") or {}).get(mp.REF_NAME, "")
            if role not in ("modelcar", "model", "bento", "wheels", "sbom"):
                raise UserError(f"{ref}: unknown role {role!r} in its index.json", hint="push it again")
            _copy(f"docker://{registry}/{repo}@{desc['digest']}", f"oci:{partial}:{role}", session.args,
                  f"pulling {role} ({desc['digest'][:19]})")
        for name in ("index.json", SUMS, signing.SIG_NAME):
            if name in files:
                write_atomic(partial / name, files[name])
        write_atomic(partial / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        total = sum(int(d["size"]) for d in index.get("manifests", []))
        with console.byte_progress(total, "verifying every blob") as adv:
            report = verify_layout(partial, pol, advance=adv)
        fsync_dir(partial)
        if dest.exists():
            dest.rmdir()
        os.rename(partial, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        session.close()
    images = {role: f"{registry}/{repo}:{tag_for(tag, role)}@{d}" for role, d in report.roles.items()}
    return Transfer(str(dest), ref, images, time.monotonic() - started, report.blobs, report.bytes,
                    checked.signature.to_dict() if checked.signature else None)


def _artifact_files(layout: Path) -> dict[str, bytes]:
    """title -> bytes of each layer of a small layout's one manifest (the -sealift artifact), each digest checked."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"

    def read(desc: dict[str, Any]) -> bytes:
        data = (blobs / desc["digest"].split(":", 1)[1]).read_bytes()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != desc["digest"] or len(data) > 64 << 20:
            raise UserError(f"{layout}: a blob does not match its digest", hint="pull again")
        return data

    manifest = json.loads(read(index["manifests"][0]))
    return {(d.get("annotations") or {}).get(mp.TITLE, ""): read(d) for d in manifest.get("layers", [])}
