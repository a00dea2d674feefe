"""Install step: a verified bundle into this host's Bento store, the kept wheel pool, an offline venv and openllm.

    install_bundle(Path("/media/usb/qwen7b-v1"))  -> InstallResult   (or the vol-N folders of one bundle)

The signature and the two lists first (sealift.host.verify: nothing unsigned is used before the
signature check passes), then every byte of the medium is read once: hashed as it is copied into
staging, the archive's wanted members under BENTOML_HOME (sealift.host.importing), the wheels under
$SEALIFT_HOME/tmp (sealift.host.wheelpool), the other files hashed only. The store and the pool
change only once every byte matched: models and the bento are renamed in (as `bentoml import`
would place them, without its two copies through the system temp directory), the wheels become
blobs named by their sha256. Then the runtime venv from exactly the bundle's wheels
(sealift.host.venv) and the bytecode of what the server imports (sealift.host.bytecode), the bento
linked for openllm (sealift.host.openllm), the install recorded.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.bundle import delta as delta_step
from sealift.bundle import signing, target
from sealift.bundle.format import WHEELS
from sealift.core import console, paths
from sealift.core.atomic import sweep_dead
from sealift.core.errors import Failure, UserError
from sealift.core.offline import apply_offline_env
from sealift.core.units import fmt_bytes
from sealift.host import openllm, registry, verify, wheelpool
from sealift.host.importing import StagedImport
from sealift.host.medium import open_medium
from sealift.host.bytecode import warm_bytecode
from sealift.host.venv import create_venv
from sealift.host.wheelpool import Wheel
from sealift.model import _bentoml
from sealift.model.manifest import MANIFEST_NAME, Manifest

__all__ = ["InstallResult", "install_bundle"]

#: The staging folder of kept wheels, under $SEALIFT_HOME/tmp (swept when its process is gone).
WHEEL_STAGING = ".sealift-wheels-"


@dataclass
class InstallResult:
    """What `sealift install` did."""

    bundle: str
    bento_tag: str
    model_tags: list[str]
    bento: str
    models: dict[str, str]
    verified_bytes: int
    extracted_bytes: int
    venv: str | None
    venv_status: str
    wheels_dir: str | None
    openllm_repo: str
    env_file: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    serve: list[str] = field(default_factory=list)
    #: Who signed SHA256SUMS (signing.Signature.to_dict()); None for an unsigned bundle.
    signature: dict[str, Any] | None = None
    #: A delta bundle: files it relied on, bytes taken from this host's store, how many of those were linked.
    delta: dict[str, Any] = field(default_factory=dict)
    #: Kept wheels whose bytes were not what their name promised: replaced by the verified ones.
    replaced_wheels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print_human(self) -> None:
        p = console.out.print
        if self.signature:
            p(f"signed by {signing.Signature(**self.signature).describe()}", markup=False, soft_wrap=True)
        p(f"verified {fmt_bytes(self.verified_bytes)} in {self.bundle}: every file matches SHA256SUMS and manifest.json",
          markup=False, soft_wrap=True)
        if self.delta:
            p(f"delta bundle: {self.delta['relied_files']} files taken from this host "
              f"({fmt_bytes(self.delta['taken_bytes'])}, {self.delta['linked']} linked), each byte hashed",
              markup=False, soft_wrap=True)
        p(f"bento {self.bento_tag}: {'already in the store' if self.bento == 'present' else 'imported'}", markup=False)
        for tag, how in self.models.items():
            p(f"model {tag}: {'already in the store' if how == 'present' else 'imported'}", markup=False)
        if self.venv:
            p(f"runtime venv {self.venv}: {self.venv_status}", markup=False, soft_wrap=True)
        else:
            p(f"runtime venv: {self.venv_status}", markup=False, soft_wrap=True)
        p(f"registered for openllm in {self.openllm_repo}; environment in {self.env_file}", markup=False,
          soft_wrap=True)
        p(f"done in {self.seconds:.1f} s. Serve it (OpenAI API on http://127.0.0.1:3000/v1) with any of:", markup=False)
        for line in self.serve:
            p(f"  {line}", markup=False, soft_wrap=True)


def default_venv(bento_tag: str) -> Path:
    name, version = bento_tag.split(":")
    return paths.sealift_home() / "venvs" / f"{name}-{version}"


def install_bundle(bundle_dir: Path | list[Path], *, venv: Path | None = None, make_venv: bool = True,
                   allowed_signers: Path | None = None, host_check: bool = True) -> InstallResult:
    """Verify, import, make the offline venv and register for openllm; nothing is touched unless all verifies.

    bundle_dir is a bundle folder, or the vol-N folders of one (sealift.host.medium). The signature over
    SHA256SUMS is checked first (sealift.bundle.signing: `allowed_signers`, else the environment's or the
    config's policy), then manifest.json from the bytes SHA256SUMS names, then the host against the
    bundle's target needs (sealift.bundle.target), then every byte once, as it is copied into staging
    (sealift.host.unpack); the store and the wheel pool change only after every byte verified.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    dirs = list(bundle_dir) if isinstance(bundle_dir, (list, tuple)) else [bundle_dir]
    medium = open_medium([Path(d).expanduser().absolute() for d in dirs])
    t = time.monotonic()
    trusted = verify.read_trusted(medium, signing.policy(allowed_signers))
    doc = trusted.doc
    if host_check:  # before a byte of the archive or a wheel is read: can this host run what the bundle carries?
        target.refuse_unfit_host(doc, Path(medium.label), venv=make_venv)
    verify.check_files(trusted)
    timings["lists"] = time.monotonic() - t

    apply_offline_env()
    bento_tag = doc["bento"]["tag"]
    model_tags = [m["tag"] for m in doc.get("models", [])]
    _check_model_digests(doc)  # models the store already holds: before anything is imported
    filler = delta_step.prepare(doc, Path(medium.label))  # a delta: this store, every file it relies on here
    digests = {m["tag"]: m["manifest_digest"] for m in doc.get("models", []) if m.get("manifest_digest")}
    files = trusted.logical()
    archive = doc["archive"]
    wheels = [Wheel(Path(rel).name, _whole_sha(trusted, rel), _whole_size(trusted, rel), rel)
              for rel in sorted(files) if rel.startswith(WHEELS + "/")]
    others = sorted(set(files) - {archive} - {w.rel for w in wheels})
    t = time.monotonic()
    scratch = paths.sealift_home() / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    sweep_dead(scratch, WHEEL_STAGING)
    staged_import = StagedImport(trusted, bento_tag, model_tags, digests, fill=filler)
    wheel_staging = Path(tempfile.mkdtemp(prefix=f"{WHEEL_STAGING}{os.getpid()}-", dir=scratch))
    try:
        with console.byte_progress(trusted.total_bytes - trusted.manifest_size, "verifying and importing") as adv:
            staged_import.extract(adv)
            for rel in others:  # INSTALL.txt, sbom.cdx.json, wheels-openllm/: hashed, not kept
                with trusted.stream(rel) as stream:
                    stream.copy(None, adv)
            staged = wheelpool.stage(lambda w: trusted.stream(w.rel), wheels, wheel_staging, adv,
                                     whole=lambda w: len(files[w.rel]) > 1)
        for r, src in filler.items if filler else []:
            if r.kind == "wheel":
                wheelpool.take(staged, Wheel(Path(r.path).name, r.sha256, r.size, r.path), src)
        timings["verify+import"] = time.monotonic() - t
        outcome = staged_import.place()  # every byte verified: only now does the store change
        wheelset = wheelpool.publish(staged, bento_tag) if staged.wheels else None
    finally:
        staged_import.close()
        shutil.rmtree(wheel_staging, ignore_errors=True)

    venv_path: Path | None = None
    if not make_venv:
        venv_status = "not made (--no-venv)"
    elif wheelset is None:
        venv_status = "not made: the bundle has no wheels (exported with --no-wheels)"
        console.warn("the bundle has no wheels/: no runtime venv was made")
    else:
        venv_path = Path(venv).expanduser().absolute() if venv else default_venv(bento_tag)
        t = time.monotonic()
        console.info(f"making the runtime venv {venv_path} (offline, from {wheelset})")
        requirements = Path(outcome.bento_path) / "env" / "python" / "requirements.txt"
        req_file = _requirements_with_bentoml(requirements, doc, venv_path.parent)
        venv_status = create_venv(venv_path, python_version=doc["bento"].get("python_version") or "3.11",
                                   requirements=req_file, wheels=wheelset,
                                   left_out=tuple((doc.get("needs") or {}).get("wheels_left_out") or ()))
        timings["venv"] = time.monotonic() - t
        if venv_status == "created":  # the .pyc files of what the server imports (sealift.host.bytecode)
            with console.spinner("compiling what the server imports (once, here: not at each start)"):
                warmed = warm_bytecode(venv_path / "bin" / "python", [Path(p) for p in outcome.model_paths.values()],
                                       Path(outcome.bento_path) / "src")
            timings["bytecode"] = warmed.seconds
            if warmed.error:
                console.warn(f"the runtime venv's bytecode was not written ({warmed.error}); each start compiles it")

    target.record_needs(doc)  # for `sealift doctor`
    repo = openllm.register(bento_tag=bento_tag, bento_path=Path(outcome.bento_path),
                            models={t: Path(p) for t, p in outcome.model_paths.items()})
    registry.add_left_out(list((doc.get("needs") or {}).get("wheels_left_out") or ()))
    env_path = registry.write_env_file(registry.environment())
    signer = trusted.signature.to_dict() if trusted.signature else None
    registry.record_install(bento_tag=bento_tag, model_tags=list(outcome.model_paths), venv=venv_path,
                            bundle=medium.recorded(), signer=signer,
                            engine=registry.engine_of(doc.get("needs") or {}) if wheelset is not None else None)
    return InstallResult(
        bundle=medium.recorded(), bento_tag=bento_tag, model_tags=model_tags, bento=outcome.bento,
        models=outcome.models, verified_bytes=trusted.total_bytes, extracted_bytes=outcome.extracted_bytes,
        venv=str(venv_path) if venv_path else None, venv_status=venv_status,
        wheels_dir=str(wheelset) if wheelset else None, openllm_repo=str(repo), env_file=str(env_path),
        seconds=time.monotonic() - started, timings={k: round(v, 2) for k, v in timings.items()},
        serve=openllm.serve_commands(bento_tag, venv_path), signature=signer,
        delta={"relied_files": len(filler.items), "taken_bytes": filler.filled_bytes, "linked": filler.linked}
        if filler else {},
        replaced_wheels=staged.replaced,
    )


def _whole_sha(trusted: verify.Trusted, rel: str) -> str:
    split = (trusted.doc.get("parts") or {}).get(rel)
    if split:
        if not split.get("sha256"):
            raise UserError(f"{trusted.medium.label}: manifest.json gives no sha256 for the wheel {rel} in parts; "
                            "nothing was imported", hint="export it again with this sealift")
        return split["sha256"]
    return trusted.sums[rel]


def _whole_size(trusted: verify.Trusted, rel: str) -> int:
    return sum(trusted.sizes(trusted.logical()[rel]))

def _requirements_with_bentoml(requirements: Path, doc: dict[str, Any], where: Path) -> Path:
    """The bento's requirements.txt if it pins bentoml, else a copy with the bundle's bentoml pin added."""
    text = requirements.read_text() if requirements.is_file() else ""
    if re.search(r"^bentoml\s*(==|@)", text, re.M):
        return requirements
    where.mkdir(parents=True, exist_ok=True)
    extra = where / f".{doc['bento']['name']}-{doc['bento']['version']}-requirements.txt"
    extra.write_text(text.rstrip("\n") + f"\nbentoml=={doc['bento'].get('bentoml_version')}\n")
    return extra


def _check_model_digests(doc: dict[str, Any]) -> None:
    """Each model the store already holds has the manifest digest manifest.json names (no re-hash of weights).

    Run before anything is imported: a bento is never imported beside a model that is not the one it was
    built with. The models the store lacks are checked before they are stored (import_archive).
    """
    model_store = _bentoml.model_store()
    for model in doc.get("models", []):
        want = model.get("manifest_digest")
        if not want or not _bentoml.in_store(model_store, model["tag"]):
            continue
        path = Path(model_store.get(model["tag"]).path) / MANIFEST_NAME
        try:
            got = Manifest.read(path).digest()
        except (OSError, ValueError) as exc:
            raise Failure(f"{path}: {exc}; nothing was imported", hint="run `sealift verify` on the model") from None
        if got != want:
            raise Failure(f"model {model['tag']} in the store has manifest digest {got}, the bundle says {want}; "
                          "nothing was imported",
                          hint=f"the store already held a different {model['tag']}; "
                               f"run `sealift verify {model['tag']}`")
