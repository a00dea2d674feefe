"""Install step: a verified bundle into this host's Bento store, an offline venv, and openllm's repo.

    install_bundle(Path("/media/usb/qwen7b-v1"))  -> InstallResult

Install verifies every file and archive member first (sealift.host.verify) and
touches nothing unless all of it verifies. Then it imports the bento and its
models the way `bentoml import` does (models into the model store unless
present, then the bento without `models/`, each checked by bentoml's
Model/Bento.from_path, `latest` updated as bentoml does), but extracting once
into a staging directory on the store's filesystem and renaming each item into
place: `bentoml import` would copy every byte twice, through the system temp
directory (which may be a small tmpfs). Then it keeps the wheels
(sealift.host.registry), makes the runtime venv from them (sealift.host.venv), links the
bento for openllm (sealift.host.openllm) and records the install.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sealift.model import _bentoml
from sealift.core import console, paths
from sealift.host import openllm, registry
from sealift.bundle import signing, target
from sealift.bundle import delta as delta_step
from sealift.host.inventory import record_wheels
from sealift.core.atomic import sweep_dead, write_atomic
from sealift.bundle.format import PARTIAL, WHEELS, bundle_bytes, member_path, read_bundle
from sealift.core.errors import Failure, UserError
from sealift.model.manifest import MANIFEST_NAME, Manifest, code_problems
from sealift.core.offline import apply_offline_env
from sealift.bundle.parts import Spans, logical_files, spans_of
from sealift.bundle.tarstream import CHUNK, Advance, write_all
from sealift.core.units import fmt_bytes
from sealift.host.venv import create_venv
from sealift.host.verify import check_bundle

__all__ = ["ImportOutcome", "InstallResult", "extract", "import_archive", "install_bundle"]


def _copy_range(ranges: list[tuple[int, int, int]], dst: Path, mode: int) -> None:
    """Copy the (src_fd, offset, size) ranges, in order, into a new file dst (in the kernel when it can).

    One range for a member of a one-file archive; one per part it spans in a split one (sealift.bundle.parts).
    """
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o755 | 0o600)
    try:
        for src_fd, offset, size in ranges:
            left, pos = size, offset
            try:
                while left:
                    n = os.copy_file_range(src_fd, fd, min(left, 1 << 30), pos)
                    if n <= 0:
                        raise OSError(errno.EIO, "short copy")
                    left -= n
                    pos += n
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                while left:
                    chunk = os.pread(src_fd, min(left, CHUNK), pos)
                    if not chunk:
                        raise OSError(errno.EIO, "archive ended early") from None
                    write_all(fd, chunk)
                    left -= len(chunk)
                    pos += len(chunk)
    finally:
        os.close(fd)


def extract(archive: Path | Spans, members: list[tarfile.TarInfo], root: Path, advance: Advance) -> None:
    """Extract the (already checked) members under root; no member is written through a link out of root.

    archive may be numbered parts (a Spans): each member is copied from the part(s) holding its bytes.
    """
    real_root = os.path.realpath(root)
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    spans = archive if isinstance(archive, Spans) else Spans([archive])
    with spans.open() as f:
        for m in members:
            rel = member_path(m.name)
            target = root / rel if rel else root
            if rel:
                parent = os.path.realpath(target.parent)
                if parent != real_root and not parent.startswith(real_root + os.sep):
                    raise UserError(f"{archive}: member {m.name!r} would be written outside the archive; stopped")
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                dirs.append((target, m))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if m.isreg():
                _copy_range([(f.fd(i), off, n) for i, off, n in spans.pieces(m.offset_data, m.size)], target, m.mode)
                os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
                advance(m.size)
            elif m.issym():
                os.symlink(m.linkname, target)
            elif m.islnk():
                os.link(root / member_path(m.linkname), target)
    for d, m in reversed(dirs):
        os.chmod(d, m.mode & 0o755 | 0o700)
        os.utime(d, (m.mtime, m.mtime))


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding path (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


INSTALL_STAGING = ".sealift-install-"


def _place(store: Any, root: Path, tag: Any, src: Path) -> None:
    """Rename the extracted src to root/NAME/VERSION (atomic: it appears complete or not at all); update `latest`.

    Not bentoml's Store.register: it makes the version directory first, and a
    kill before the rename would leave it empty, which makes `bentoml list` fail.
    `latest` moves only to a newer item, as register does.
    """
    final = root / tag.name / tag.version
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, final)
    latest = root / tag.name / "latest"
    if not latest.exists() or store.get(tag).creation_time >= store.get(tag.name).creation_time:
        write_atomic(latest, str(tag.version).encode())


@dataclass
class ImportOutcome:
    bento: str  # "imported" | "present"
    models: dict[str, str]
    bento_path: str
    model_paths: dict[str, str]
    extracted_bytes: int


def import_archive(archive: Path | Spans, members: list[tarfile.TarInfo], bento_tag: str,
                   model_tags: list[str], digests: dict[str, str] | None = None,
                   fill: Callable[[Path, Callable[[str], bool]], None] | None = None) -> ImportOutcome:
    """Put the archive's bento and models into this process's Bento store, as `bentoml import` would.

    Models already in the store are left alone (as bentoml does); a bento
    already there is reported present. Only what is missing is extracted, once,
    into a staging directory under BENTOML_HOME, checked by bentoml
    (Model/Bento.from_path, tags), and renamed into the store (`_place`, which
    also writes the `latest` pointers as bentoml's Store.register does). `fill(staging, wanted)` completes a
    delta bundle's extraction from this host's store and checks it (sealift.bundle.delta.Filler) before any rename.
    """
    bento_store = _bentoml.bento_store()
    model_store = _bentoml.model_store()
    need_bento = not _bentoml.in_store(bento_store, bento_tag)
    need_models = [t for t in model_tags if not _bentoml.in_store(model_store, t)]
    model_dirs = {f"models/{t.split(':')[0]}/{t.split(':')[1]}": t for t in need_models}

    def wanted(rel: str) -> bool:
        top = rel.split("/")[0]
        if top != "models":
            return need_bento
        if rel.count("/") < 2:  # models/ and models/NAME/ (with its `latest`) are not extracted
            return False
        return "/".join(rel.split("/")[:3]) in model_dirs

    selected = [m for m in members if wanted(member_path(m.name))]
    nbytes = sum(m.size for m in selected if m.isreg())
    home = paths.bentoml_home()
    home.mkdir(parents=True, exist_ok=True)
    sweep_dead(home, INSTALL_STAGING)
    staging = Path(tempfile.mkdtemp(prefix=f"{INSTALL_STAGING}{os.getpid()}-", dir=home))
    added: list[str] = []
    try:
        if selected:
            with console.byte_progress(nbytes, "importing") as adv:
                extract(archive, selected, staging, adv)
        if fill is not None:
            fill(staging, wanted)
        if selected or fill is not None:
            _syncfs(staging)
        for rel, tag in model_dirs.items():
            src = staging / rel
            model = _bentoml.model_from_path(src)
            if str(model.tag) != tag:
                raise UserError(f"{archive}: {rel} holds model {model.tag}, the manifest says {tag}")
            want = (digests or {}).get(tag)
            if want:  # before it is stored: the model's own manifest is the one the bundle names
                try:
                    got = Manifest.read(src / MANIFEST_NAME).digest()
                except (OSError, ValueError) as exc:
                    got = f"unreadable ({exc})"
                if got != want:
                    raise UserError(f"{archive}: model {tag} has manifest digest {got}, manifest.json says {want}; "
                                    "nothing was imported", hint="do not install this bundle; export it again")
            code = code_problems(src) if (src / MANIFEST_NAME).is_file() else []
            if code:  # a bundle re-sealed after its model's code was changed: that code must never be stored
                raise UserError(f"{archive}: model {tag}: {code[0]}: not the code its manifest recorded at import; "
                                "nothing was imported", hint="do not install this bundle; export it again from the source")
            _place(model_store, _bentoml.models_dir(), model.tag, src)
            added.append(tag)
        if need_bento:
            shutil.rmtree(staging / "models", ignore_errors=True)
            bento = _bentoml.bento_from_path(staging)
            if str(bento.tag) != bento_tag:
                raise UserError(f"{archive} holds bento {bento.tag}, the manifest says {bento_tag}")
            _place(bento_store, _bentoml.bentos_dir(), bento.tag, staging)
    except BaseException:
        for tag in added:  # all or nothing: do not leave models of a bento that failed to import
            try:
                model_store.delete(tag)
            except Exception:  # noqa: BLE001 - best effort rollback
                pass
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportOutcome(
        bento="imported" if need_bento else "present",
        models={t: ("imported" if t in added else "present") for t in model_tags},
        bento_path=str(bento_store.get(bento_tag).path),
        model_paths={t: str(model_store.get(t).path) for t in model_tags},
        extracted_bytes=nbytes,
    )


def persist_wheels(bundle: Path, files: list[str], dest: Path, advance: Advance,
                   doc: dict[str, Any] | None = None) -> int:
    """Copy the bundle's (verified) wheels into the shared wheel directory; returns how many were new.

    A wheel in numbered parts (manifest.json `parts`, sealift.bundle.parts) is joined there from its parts.
    """
    dest.mkdir(parents=True, exist_ok=True)
    new = 0
    for rel in files:
        src = spans_of(bundle, rel, doc or {})
        dst = dest / Path(rel).name
        size = src.size
        if dst.is_file() and dst.stat().st_size == size:
            advance(size)
            continue
        tmp = dst.with_name(dst.name + PARTIAL)
        tmp.unlink(missing_ok=True)
        try:
            if len(src.files) > 1:
                with src.open() as f:
                    _copy_range([(f.fd(i), 0, n) for i, n in enumerate(src.sizes)], tmp, 0o644)
            else:  # the file itself, not a symlink to it (install over volumes reads through symlinks)
                os.link(os.path.realpath(src.files[0]), tmp)
        except OSError:
            shutil.copyfile(src.files[0], tmp)
        os.replace(tmp, dst)
        advance(size)
        new += 1
    return new


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


def install_bundle(bundle_dir: Path, *, venv: Path | None = None, make_venv: bool = True,
                   allowed_signers: Path | None = None, host_check: bool = True) -> InstallResult:
    """Verify, import, make the offline venv and register for openllm; nothing is touched unless all verifies.

    The signature over SHA256SUMS is checked first (sealift.bundle.signing: `allowed_signers`, else the
    environment's or the config's policy), then the host against the bundle's target needs
    (sealift.bundle.target), then every byte, then the models the store already holds.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    bundle = Path(bundle_dir).expanduser().absolute()
    t = time.monotonic()
    if not bundle.is_dir():
        raise UserError(f"{bundle} is not a directory", hint="give the bundle directory that `sealift export` wrote")
    checked = signing.verify_sums(bundle, signing.policy(allowed_signers))
    if host_check:  # before a byte is hashed or imported: can this host run what the bundle carries?
        target.refuse_unfit_host(read_bundle(bundle, sums_bytes=checked.sums)[0], bundle, venv=make_venv)
    doc, sums, archive, members = check_bundle(bundle, sums_bytes=checked.sums)
    if doc.get("signature") and checked.signature is None:
        raise UserError(f"{bundle / 'manifest.json'} says the bundle was signed, but {signing.SIG_NAME} is missing "
                        "or could not be checked; nothing was imported",
                        hint="copy the whole bundle again (with its .sig), and have ssh-keygen installed")
    timings["verify"] = time.monotonic() - t

    apply_offline_env()
    bento_tag = doc["bento"]["tag"]
    model_tags = [m["tag"] for m in doc.get("models", [])]
    _check_model_digests(doc)  # models the store already holds: before anything is imported
    filler = delta_step.prepare(doc, bundle)  # a delta: this store, every file it relies on here (else exit 2)
    t = time.monotonic()
    digests = {m["tag"]: m["manifest_digest"] for m in doc.get("models", []) if m.get("manifest_digest")}
    outcome = import_archive(archive, members, bento_tag, model_tags, digests, fill=filler)
    timings["import"] = time.monotonic() - t

    sizes = logical_files(doc)  # a wheel in numbered parts counts once, by its own name (sealift.bundle.parts)
    wheel_files = sorted(p for p in sizes if p.startswith(WHEELS + "/"))
    wheels_dir: Path | None = None
    if wheel_files or delta_step.relied_wheels(doc):
        t = time.monotonic()
        wheels_dir = paths.kept_wheels_dir()
        with console.byte_progress(sum(sizes[w] for w in wheel_files), "wheels") as adv:
            persist_wheels(bundle, wheel_files, wheels_dir, adv, doc)
        whole = {rel: s.get("sha256") for rel, s in (doc.get("parts") or {}).items()}  # a wheel in parts: its own
        record_wheels(wheels_dir, {Path(w).name: sums.get(w) or whole[w] for w in wheel_files})  # `sealift inventory`
        timings["wheels"] = time.monotonic() - t

    venv_path: Path | None = None
    if not make_venv:
        venv_status = "not made (--no-venv)"
    elif wheels_dir is None:
        venv_status = "not made: the bundle has no wheels (exported with --no-wheels)"
        console.warn("the bundle has no wheels/: no runtime venv was made")
    else:
        venv_path = Path(venv).expanduser().absolute() if venv else default_venv(bento_tag)
        t = time.monotonic()
        console.info(f"making the runtime venv {venv_path} (offline, from {wheels_dir})")
        requirements = Path(outcome.bento_path) / "env" / "python" / "requirements.txt"
        req_file = _requirements_with_bentoml(requirements, doc, venv_path.parent)
        venv_status = create_venv(venv_path, python_version=doc["bento"].get("python_version") or "3.11",
                                   requirements=req_file, wheels=wheels_dir)
        timings["venv"] = time.monotonic() - t

    target.record_needs(doc)  # for `sealift doctor`
    repo = openllm.register(bento_tag=bento_tag, bento_path=Path(outcome.bento_path),
                            models={t: Path(p) for t, p in outcome.model_paths.items()})
    env_path = registry.write_env_file(registry.environment())
    registry.record_install(bento_tag=bento_tag, model_tags=list(outcome.model_paths), venv=venv_path, bundle=bundle,
                            signer=checked.signature.to_dict() if checked.signature else None)
    return InstallResult(
        bundle=str(bundle), bento_tag=bento_tag, model_tags=model_tags, bento=outcome.bento, models=outcome.models,
        verified_bytes=bundle_bytes(bundle, doc), extracted_bytes=outcome.extracted_bytes,
        venv=str(venv_path) if venv_path else None, venv_status=venv_status,
        wheels_dir=str(wheels_dir) if wheels_dir else None, openllm_repo=str(repo), env_file=str(env_path),
        seconds=time.monotonic() - started, timings={k: round(v, 2) for k, v in timings.items()},
        serve=openllm.serve_commands(bento_tag, venv_path),
        signature=checked.signature.to_dict() if checked.signature else None,
        delta={"relied_files": len(filler.items), "taken_bytes": filler.filled_bytes, "linked": filler.linked}
        if filler else {},
    )


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
