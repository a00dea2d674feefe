"""Export step and install step: a verified bundle on removable media, installed with no network.

    export_bundle("qwen7b", Path("/media/usb"))   -> ExportResult  (DEST/<name>-<version>/)
    install_bundle(Path("/media/usb/qwen7b-v1"))  -> InstallResult

A bundle directory holds:

    <name>-<version>.tar   the bento with its models inside, in the layout `bentoml export
                           TAG x.tar` writes and `bentoml import x.tar` reads (bento files at
                           the root, `models/<model>/{latest,<version>/...}`); uncompressed
    wheels/                every distribution the bento needs on the target (plus bentoml), and a
                           sealift wheel with sealift's own dependencies (one resolution), so
                           sealift itself installs on a host that has only Python
    wheels-openllm/        with --with-openllm: openllm 0.6.30, click<8.2, typer<0.16 and their
                           dependencies, for openllm's own venv (its pins clash with sealift's)
    INSTALL.txt            the commands to run on the other side
    manifest.json          sealift version, bento and model tags, the model manifest digest,
                           target platform/python, every file above with size and sha256
    SHA256SUMS             the same files plus manifest.json, for plain `sha256sum -c`

Export writes the tar itself (sealift.tarstream), in one pass: each source byte is read once, hashed
into the archive's sha256 (and, for model files, into a check against the
model's own sealift manifest, so a store that rotted since import is refused),
and written once by a helper thread while the next chunk is hashed. Nothing is
compressed. Everything goes to `DEST/<name>-<version>.partial/`; a journal there
records fsynced checkpoints (archive offset + sha256 of the bytes before it,
wheels done), so a killed export resumes: the bytes already written are re-read
and checked, never rewritten. Free space is checked before anything is written.
The finished directory is fsynced and renamed; nothing incomplete has the final
name.

Install verifies every file against SHA256SUMS and manifest.json before it
touches anything, checks every archive member (no absolute paths, no `..`, no
links leaving the archive, no devices: bentoml 1.4.39 checks none of this),
then imports the bento and its models the way `bentoml import` does (models
into the model store unless present, then the bento without `models/`, each
checked by bentoml's Model/Bento.from_path, `latest` updated as bentoml does),
but extracting once into a staging directory on the store's filesystem and
renaming each item into place: `bentoml import` would copy every byte twice,
through the system temp directory (which may be a small tmpfs). Then it makes the runtime
venv from wheels/ with uv and no index, and registers the bento for openllm
(sealift.openllm).

SEALIFT_EXPORT_CHECKPOINT_BYTES tunes how often export checkpoints (default
512 MiB); SEALIFT_WHEEL_CACHE is where wheels downloaded from an index are kept
between exports (default $SEALIFT_HOME/wheel-cache; sealift.wheelhouse).
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift import __version__, console, paths
from sealift.atomic import fsync_dir, sweep_dead
from sealift.errors import Failure, UserError
from sealift.inspect import fmt_bytes
from sealift.manifest import MANIFEST_NAME, FileEntry, Manifest, code_problems, copy_and_hash, hash_file, \
    map_parallel, sha256sums_text, write_atomic
from sealift.offline import apply_offline_env, offline_env
# The archive writer and the wheel resolution live apart; their names stay importable from here.
from sealift.tarstream import BUNDLE_FORMAT, CHUNK, JOURNAL, Advance, Member, _Journal, _walk, _write_all, \
    archive_size, plan_digest, write_archive
from sealift.tarstream import CHECKPOINT_ENV  # noqa: F401 - re-exported
from sealift.wheelhouse import resolve_wheels, sealift_wheel
from sealift.wheelhouse import WHEEL_CACHE_ENV, expand_platforms  # noqa: F401 - re-exported

MANIFEST_JSON = "manifest.json"
SUMS = "SHA256SUMS"
INSTALL_TXT = "INSTALL.txt"
WHEELS = "wheels"
PARTIAL = ".partial"

#: Free space to keep beyond the bundle's own bytes (directory blocks, filesystem slack).
SLACK = 16 * 1024 * 1024
VENV_MARKER = ".sealift-venv.json"
#: openllm's own wheels (`--with-openllm`): apart from wheels/, whose typer and bentoml pins theirs conflict with.
WHEELS_OPENLLM = "wheels-openllm"
#: What `openllm serve` needs in its own venv (DESIGN.md: 0.6.30 crashes with click>=8.2, typer>=0.16).
OPENLLM_REQUIREMENTS = ("openllm==0.6.30", "click<8.2", "typer<0.16")


# =========================================================================== the archive


class _Tagged:
    """`name` and `version` of a NAME:VERSION `tag`."""

    tag: str

    @property
    def name(self) -> str:
        return self.tag.split(":")[0]

    @property
    def version(self) -> str:
        return self.tag.split(":")[1]


@dataclass
class ModelSource(_Tagged):
    tag: str
    path: Path
    manifest: Manifest | None


@dataclass
class BentoSource(_Tagged):
    """A bento in the local store, as export needs it."""

    tag: str
    path: Path
    bentoml_version: str
    python_version: str
    labels: dict[str, str]
    models: list[ModelSource]

    @property
    def requirements_file(self) -> Path:
        env = self.path / "env" / "python"
        lock = env / "requirements.lock.txt"
        return lock if lock.is_file() else env / "requirements.txt"


def plan_archive(bento: BentoSource) -> list[Member]:
    """The archive `bentoml import` reads: the bento's files at `./`, each model under `./models/`."""
    st = bento.path.stat()
    members = [Member("./", "dir", 0, st.st_mode, int(st.st_mtime))]
    members += _walk(bento.path, "./", skip_top={"models"})
    if bento.models:
        members.append(Member("./models/", "dir", 0, 0o755, int(st.st_mtime)))
    for model in sorted(bento.models, key=lambda m: m.tag):
        mst = model.path.stat()
        latest = model.version.encode()
        checks = {e.path: e.sha256 for e in model.manifest.files} if model.manifest else {}
        members.append(Member(f"./models/{model.name}/", "dir", 0, 0o755, int(mst.st_mtime)))
        members.append(Member(f"./models/{model.name}/latest", "file", len(latest), 0o644, int(mst.st_mtime),
                              data=latest))
        members.append(Member(f"./models/{model.name}/{model.version}/", "dir", 0, mst.st_mode, int(mst.st_mtime)))
        members += _walk(model.path, f"./models/{model.name}/{model.version}/", checks=checks)
    return members


# =========================================================================== wheels


def bundle_requirements(bento: BentoSource) -> list[str]:
    """The bento's requirement lines, with `bentoml==<the version that built it>` if it has none."""
    lines = []
    if bento.requirements_file.is_file():
        lines = [ln.strip() for ln in bento.requirements_file.read_text().splitlines()
                 if ln.strip() and not ln.strip().startswith("#")]
    if not any(re.match(r"bentoml\s*(==|@|$)", ln) for ln in lines):
        lines.append(f"bentoml=={bento.bentoml_version}")
    return lines


# =========================================================================== export


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
        p(f"  {fmt_bytes(self.total_bytes)} in {self.seconds:.1f} s ({self.mb_per_s:,.0f} MB/s{resumed})", markup=False)
        p("on the air-gapped host (see INSTALL.txt):", markup=False)
        name = Path(self.bundle).name
        lines = [c for c, _ in bootstrap_commands(name, self.python_version, openllm=bool(self.openllm_wheels))
                 ] if self.sealift_wheel else []
        for line in [*lines, *install_commands(name, self.bento_tag.split(":")[0])]:
            p(f"  {line}", markup=False, soft_wrap=True)


#: Where INSTALL.txt puts sealift's own venv and openllm's on the air-gapped host.
CLI_VENV = "~/.sealift/cli"
OPENLLM_VENV = "~/.sealift/openllm"


def bootstrap_commands(bundle_name: str, python_version: str, *, openllm: bool) -> list[tuple[str, str]]:
    """(command, why) lines that put sealift (and openllm) on a host that has only Python, from the bundle.

    pip with --no-index reads nothing but the bundle's wheels (resolved for this
    target Python, hence `pythonX.Y`); openllm goes in a venv of its own (its
    pins clash with sealift's) and only its `openllm` command joins sealift's.
    """
    python = f"python{python_version}" if python_version else "python3"
    lines = [
        (f"{python} -m venv {CLI_VENV}", "sealift's own venv (any directory will do)"),
        (f"{CLI_VENV}/bin/pip install --no-index --find-links {bundle_name}/{WHEELS} sealift",
         f"sealift and its dependencies from {WHEELS}/, no index"),
    ]
    if openllm:
        reqs = " ".join(f"'{r}'" if "<" in r else r for r in OPENLLM_REQUIREMENTS)
        lines += [
            (f"{python} -m venv {OPENLLM_VENV}", "openllm in a venv of its own: it pins bentoml==1.4.8"),
            (f"{OPENLLM_VENV}/bin/pip install --no-index --find-links {bundle_name}/{WHEELS_OPENLLM} {reqs}",
             f"openllm and its pins from {WHEELS_OPENLLM}/, no index"),
            (f"ln -sf {OPENLLM_VENV}/bin/openllm {CLI_VENV}/bin/", "only the openllm command beside sealift's"),
        ]
    lines.append((f'export PATH="{CLI_VENV.replace("~", "$HOME")}/bin:$PATH"', "sealift (and openllm) on PATH"))
    return lines


def install_steps(bundle_name: str, name: str) -> list[tuple[str, str]]:
    """(command, why): check, install and serve the bundle once sealift is on the host."""
    return [
        (f"(cd {bundle_name} && sha256sum -c SHA256SUMS)", "optional: install verifies every byte itself"),
        (f"sealift install {bundle_name}", "verify, import, offline venv, register for openllm"),
        (f"sealift start {name}", "OpenAI API on http://127.0.0.1:3000/v1"),
    ]


def install_commands(bundle_name: str, name: str) -> list[str]:
    return [c for c, _ in install_steps(bundle_name, name)]


def load_bento(tag: str) -> BentoSource:
    """The bento `tag` and its models from the local store (this process's BENTOML_HOME)."""
    import bentoml

    bento = bentoml.bentos.get(tag)
    models = []
    for info in bento.info.all_models:
        if getattr(info, "registry", "bentoml") != "bentoml":
            raise UserError(f"{tag} refers to {info.tag} on a model hub; only store models can cross the gap",
                            hint="import the model with `sealift import` and build again")
        model = bentoml.models.get(info.tag)
        mpath = Path(model.path)
        manifest = None
        if (mpath / MANIFEST_NAME).is_file():
            try:
                manifest = Manifest.read(mpath / MANIFEST_NAME)
            except ValueError as exc:
                raise UserError(f"{mpath / MANIFEST_NAME}: {exc}", hint="re-import the model") from None
        models.append(ModelSource(str(model.tag), mpath, manifest))
    image = getattr(bento.info, "image", None)
    python_version = getattr(image, "python_version", None) or f"{sys.version_info[0]}.{sys.version_info[1]}"
    return BentoSource(str(bento.tag), Path(bento.path), str(bento.info.bentoml_version), str(python_version),
                       dict(bento.info.labels or {}), models)


def _free_space(path: Path) -> tuple[Path, int]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def check_free_space(dest: Path, needed: int) -> None:
    """UserError (exit 2) unless dest's filesystem has `needed` bytes free (plus a little slack)."""
    probe, free = _free_space(dest)
    if needed + SLACK > free:
        raise UserError(f"not enough free space on {probe}: the bundle needs {fmt_bytes(needed + SLACK)}, "
                        f"{fmt_bytes(free)} available; nothing was written",
                        hint="free some space or choose another DEST")


def export_bundle(ref: str, dest: Path, *, platform: str = "manylinux_2_28_x86_64", python_version: str | None = None,
                  wheels_from: Path | None = None, no_wheels: bool = False, with_openllm: bool = False) -> ExportResult:
    """Write the bundle of `ref` (model NAME[:VERSION] or bento tag) to DEST/<name>-<version>/.

    wheels/ holds the bento's wheels plus a sealift wheel and sealift's own
    dependencies (one resolution: one version of each), so sealift installs on
    a host with only Python; `with_openllm` adds openllm 0.6.30 and its pins in
    wheels-openllm/.
    """
    started = time.monotonic()
    if wheels_from is not None and no_wheels:
        raise UserError("--wheels-from and --no-wheels contradict each other", hint="use one of them")
    if with_openllm and no_wheels:
        raise UserError("--with-openllm and --no-wheels contradict each other", hint="use one of them")
    if wheels_from is not None and not Path(wheels_from).is_dir():
        raise UserError(f"--wheels-from {wheels_from}: no such directory")
    apply_offline_env()
    from sealift import build

    return export_bento(build.find_bento(ref), dest, platform=platform, python_version=python_version,
                        wheels_from=wheels_from, no_wheels=no_wheels, with_openllm=with_openllm, started=started)


def export_bento(tag: str, dest: Path, *, platform: str, python_version: str | None, wheels_from: Path | None,
                 no_wheels: bool, with_openllm: bool = False, started: float | None = None) -> ExportResult:
    """export_bundle for a bento tag already resolved; python_version None means the bento's own."""
    started = time.monotonic() if started is None else started
    bento = load_bento(tag)
    python_version = python_version or bento.python_version
    dest = Path(dest).expanduser().absolute()
    final = dest / f"{bento.name}-{bento.version}"
    partial = dest / f"{bento.name}-{bento.version}{PARTIAL}"
    if final.exists():
        return _already_exported(final, bento, started, with_openllm=with_openllm)

    members = plan_archive(bento)
    total = archive_size(members)
    wheels: list[Path] = []
    openllm_wheels: list[Path] = []
    if not no_wheels:
        console.info(f"resolving wheels for {platform}, Python {python_version}")
        source = Path(wheels_from) if wheels_from else None
        own = sealift_wheel(source)
        wheels = resolve_wheels([*bundle_requirements(bento), f"sealift @ {own.as_uri()}"], platform=platform,
                                python_version=python_version, wheels_from=source)
        if with_openllm:
            console.info(f"resolving openllm's wheels ({' '.join(OPENLLM_REQUIREMENTS)})")
            openllm_wheels = resolve_wheels(list(OPENLLM_REQUIREMENTS), platform=platform,
                                            python_version=python_version, wheels_from=source)
    journal = _Journal.load(partial, bento.tag, plan_digest(members), total)
    archive_there = (partial / f"{bento.name}-{bento.version}.tar").is_file()
    done_archive = int(journal.archive.get("offset", 0)) if archive_there else 0
    done_wheels = {k for k, v in journal.doc["files"].items()
                   if (partial / k).is_file() and (partial / k).stat().st_size == v.get("size")}
    to_copy = [w for d, ws in ((WHEELS, wheels), (WHEELS_OPENLLM, openllm_wheels)) for w in ws
               if f"{d}/{w.name}" not in done_wheels]
    needed = total - done_archive + sum(w.stat().st_size for w in to_copy)
    check_free_space(dest, needed)

    try:
        return _write_bundle(bento, members, wheels, journal, partial, final, platform, python_version, started,
                             openllm_wheels=openllm_wheels)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"{dest} is full; the export stopped and can be resumed",
                            hint="free some space and run the same export again") from None
        raise


def _write_bundle(bento: BentoSource, members: list[Member], wheels: list[Path], journal: _Journal, partial: Path,
                  final: Path, platform: str, python_version: str, started: float, *,
                  openllm_wheels: list[Path] | None = None) -> ExportResult:
    """Write (or finish) everything in `partial`, then make it `final`."""
    if journal.doc["archive"]["offset"] == 0 and not journal.doc["files"] and partial.exists():
        shutil.rmtree(partial)  # no journal we can trust: nothing in it is known to be complete
    partial.mkdir(parents=True, exist_ok=True)
    journal.save()
    archive_name = f"{bento.name}-{bento.version}.tar"
    resumed = 0
    entries: list[FileEntry] = []

    arch = journal.archive
    written = partial / archive_name
    if arch.get("done") and written.is_file() and written.stat().st_size == arch["size"]:
        with console.byte_progress(arch["size"], "checking the archive already written") as adv:
            digest = hash_file(partial / archive_name, adv)
        if digest == arch["sha256"]:
            entries.append(FileEntry(archive_name, arch["size"], digest))
            resumed = arch["size"]
        else:
            arch.update(offset=0, sha256=hashlib.sha256().hexdigest(), done=False)
    if not entries:
        console.info(f"writing {archive_name} ({fmt_bytes(arch['size'])})")
        # one bar (rich shows one at a time): a resumed export first re-reads what it wrote before
        with console.byte_progress(arch["size"] + int(arch.get("offset", 0)), archive_name) as adv:
            entry, resumed = write_archive(members, partial / archive_name, journal, adv, adv)
        entries.append(entry)

    reused = 0
    for folder, files in ((WHEELS, wheels), (WHEELS_OPENLLM, openllm_wheels or [])):
        if not files:  # an earlier, interrupted run may have had wheels this one leaves out
            shutil.rmtree(partial / folder, ignore_errors=True)
            continue
        (partial / folder).mkdir(exist_ok=True)
        wanted = {f"{folder}/{w.name}" for w in files}
        for stale in (partial / folder).iterdir():
            if f"{folder}/{stale.name}" not in wanted:
                stale.unlink()
        with console.byte_progress(sum(w.stat().st_size for w in files), folder) as adv:
            for w in files:
                rel = f"{folder}/{w.name}"
                entry, kept = _copy_wheel(w, partial / rel, rel, journal, adv)
                reused += kept
                entries.append(entry)
    wheel_entries = [e for e in entries if e.path.startswith(WHEELS + "/")]
    openllm_entries = [e for e in entries if e.path.startswith(WHEELS_OPENLLM + "/")]
    own = next((e.path.split("/", 1)[1] for e in wheel_entries if e.path.startswith(f"{WHEELS}/sealift-")), "")

    install_txt = _install_text(bento, archive_name, f"{bento.name}-{bento.version}", bool(wheels),
                                python_version=python_version, sealift_wheel=own, openllm=bool(openllm_entries))
    entries.append(_write_small(partial, INSTALL_TXT, install_txt.encode()))
    manifest = _bundle_manifest(bento, archive_name, entries, platform, python_version, bool(wheels),
                                sealift_wheel=own, openllm=bool(openllm_entries))
    sums = [*entries, _write_small(partial, MANIFEST_JSON, (json.dumps(manifest, indent=1) + "\n").encode())]
    write_atomic(partial / SUMS, sha256sums_text(sums).encode())

    (partial / JOURNAL).unlink(missing_ok=True)
    for folder in (WHEELS, WHEELS_OPENLLM):
        if (partial / folder).is_dir():
            fsync_dir(partial / folder)
    fsync_dir(partial)
    os.rename(partial, final)
    fsync_dir(final.parent)
    total = sum(e.size for e in sums)
    return ExportResult(
        bundle=str(final), bento_tag=bento.tag, model_tags=[m.tag for m in bento.models], archive=archive_name,
        archive_bytes=entries[0].size, wheels=len(wheel_entries), wheel_bytes=sum(e.size for e in wheel_entries),
        total_bytes=total, seconds=time.monotonic() - started, resumed_from_bytes=resumed, reused_files=reused,
        platform=platform, python_version=python_version, sealift_wheel=own, openllm_wheels=len(openllm_entries),
        openllm_wheel_bytes=sum(e.size for e in openllm_entries),
    )


def _write_small(folder: Path, name: str, data: bytes) -> FileEntry:
    """Write a small generated file atomically; its entry, hashed from the bytes in hand."""
    write_atomic(folder / name, data)
    return FileEntry(name, len(data), hashlib.sha256(data).hexdigest())


def _copy_wheel(src: Path, dst: Path, rel: str, journal: _Journal, advance: Advance) -> tuple[FileEntry, int]:
    """Copy+hash one wheel unless an earlier run already wrote it (re-read and checked): (entry, 1 if kept)."""
    done = journal.doc["files"].get(rel)
    if done and dst.is_file() and dst.stat().st_size == done["size"] == src.stat().st_size:
        if hash_file(dst) == done["sha256"]:
            advance(done["size"])
            return FileEntry(rel, done["size"], done["sha256"]), 1
    entry = copy_and_hash(src, dst, advance, relpath=rel)
    journal.doc["files"][rel] = {"size": entry.size, "sha256": entry.sha256}
    journal.save()
    return entry, 0


def _already_exported(final: Path, bento: BentoSource, started: float, *, with_openllm: bool = False) -> ExportResult:
    try:
        doc = json.loads((final / MANIFEST_JSON).read_text())
    except (OSError, ValueError):
        doc = {}
    if doc.get("bento", {}).get("tag") != bento.tag or not (final / SUMS).is_file():
        raise UserError(f"{final} already exists and is not a bundle of {bento.tag}",
                        hint="remove it or choose another DEST")
    files = doc.get("files", [])
    wheels = [f for f in files if f["path"].startswith(WHEELS + "/")]
    openllm = [f for f in files if f["path"].startswith(WHEELS_OPENLLM + "/")]
    if with_openllm and not openllm:
        raise UserError(f"{final} already exists, exported without --with-openllm",
                        hint="remove it or choose another DEST")
    return ExportResult(
        bundle=str(final), bento_tag=bento.tag, model_tags=[m.tag for m in bento.models],
        archive=doc.get("archive", ""), archive_bytes=sum(f["size"] for f in files if f["path"] == doc.get("archive")),
        wheels=len(wheels), wheel_bytes=sum(f["size"] for f in wheels), total_bytes=_bundle_bytes(final, doc),
        seconds=time.monotonic() - started, already_complete=True,
        platform=doc.get("target", {}).get("platform", ""),
        python_version=doc.get("target", {}).get("python_version", ""),
        sealift_wheel=doc.get("sealift_wheel") or "", openllm_wheels=len(openllm),
        openllm_wheel_bytes=sum(f["size"] for f in openllm),
    )


#: INSTALL.txt is read in a terminal: a comment that would make its line longer goes above the command.
TEXT_WIDTH = 80


def _commented(pairs: list[tuple[str, str]]) -> list[str]:
    """`  command   # why` lines, the comments aligned; `  # why` above a command where it would not fit."""
    width = max(len(c) for c, _ in pairs) + 2
    if any(len(f"  {c.ljust(width)}# {why}") > TEXT_WIDTH for c, why in pairs):
        return [line for c, why in pairs for line in (f"  # {why}", f"  {c}")]
    return [f"  {c.ljust(width)}# {why}" for c, why in pairs]


def _install_text(bento: BentoSource, archive: str, bundle_name: str, has_wheels: bool, *, python_version: str = "",
                  sealift_wheel: str = "", openllm: bool = False) -> str:
    """INSTALL.txt: how to get sealift (and openllm) onto a host that has only Python, then install and serve."""
    name = bento.name
    openllm_why = ("openllm from the venv made above" if openllm else
                   "needs openllm 0.6.30 in a venv of its own: export --with-openllm carries it")
    also = [
        (f'eval "$(sealift env)"; openllm serve {name}', openllm_why),
        (f'eval "$(sealift env {name})"; bentoml serve {bento.tag}', "the runtime venv's bentoml"),
    ]
    lines = [
        f"sealift bundle of {bento.tag} ({', '.join(m.tag for m in bento.models) or 'no models'})",
        f"written by sealift {__version__} on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        "On the air-gapped host, in the directory that holds this bundle:",
        "",
    ]
    if sealift_wheel:
        python = f"python{python_version}" if python_version else "python3"
        lines += [
            f"1. sealift from {WHEELS}/, no package index (this host needs only {python}):",
            "",
            *(line for c, why in bootstrap_commands(bundle_name, python_version, openllm=openllm)
              for line in (f"  # {why}", f"  {c}")),  # always above: these commands are long
            "",
            "2. the model:",
            "",
        ]
    lines += [
        *_commented(install_steps(bundle_name, name)),
        "",
        "It is also served by:",
        *_commented(also),
        "",
        f"`bentoml import {archive}` reads the archive too.",
    ]
    if not has_wheels:
        lines += ["", "This bundle has no wheels/: the host must already have sealift", "and the bento's Python packages."]
    return "\n".join(lines) + "\n"


def _bundle_manifest(bento: BentoSource, archive: str, entries: list[FileEntry], platform: str, python_version: str,
                     has_wheels: bool, *, sealift_wheel: str = "", openllm: bool = False) -> dict[str, Any]:
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
        "wheels": has_wheels,
        "requirements": bundle_requirements(bento),
        "sealift_wheel": sealift_wheel or None,
        "openllm_requirements": list(OPENLLM_REQUIREMENTS) if openllm else None,
        "files": [e.to_dict() for e in sorted(entries, key=lambda e: e.path)],
        "install": install_commands("<this directory>", bento.name),
    }


# =========================================================================== install: verify


@dataclass
class BundleProblem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def read_bundle(bundle: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """manifest.json and SHA256SUMS of a bundle; UserError if either is missing or malformed."""
    if not bundle.is_dir():
        raise UserError(f"{bundle} is not a directory", hint="give the bundle directory that `sealift export` wrote")
    try:
        doc = json.loads((bundle / MANIFEST_JSON).read_text())
        if doc.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {BUNDLE_FORMAT}")
        files = doc["files"]
        for f in files:
            _ = (f["path"], int(f["size"]), f["sha256"])
        _ = (doc["bento"]["tag"], doc["archive"])
    except FileNotFoundError:
        raise UserError(f"{bundle / MANIFEST_JSON} is missing; nothing was imported",
                        hint="copy the whole bundle directory again") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{bundle / MANIFEST_JSON} is unreadable ({exc}); nothing was imported",
                        hint="copy the bundle again") from None
    try:
        text = (bundle / SUMS).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{bundle / SUMS} is missing; nothing was imported",
                        hint="copy the whole bundle again") from None
    except (OSError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
        raise UserError(f"{bundle / SUMS} is unreadable ({exc}); nothing was imported", hint="copy the bundle again") from None
    sums: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not m:
            raise UserError(f"{bundle / SUMS}: malformed line {line[:80]!r}; nothing was imported",
                            hint="copy the bundle again")
        sums[m.group(2)] = m.group(1)
    # Nothing hashes SHA256SUMS itself: any byte of it that differs from what export writes for these
    # entries (a `*` for a space, a repeated line, a lost newline) is damage, even where sha256sum -c
    # would read the same meaning.
    if text != sha256sums_text(FileEntry(path, 0, digest) for path, digest in sums.items()):
        raise UserError(f"{bundle / SUMS} is not as `sealift export` wrote it (damaged or edited); nothing was imported",
                        hint="copy the bundle again")
    return doc, sums


def _safe_relpath(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts and "\0" not in path


def verify_bundle(bundle: Path, doc: dict[str, Any], sums: dict[str, str], advance: Advance) -> list[BundleProblem]:
    """Check every file against SHA256SUMS and manifest.json (sizes first, then every byte); [] when intact."""
    problems: list[BundleProblem] = []
    listed = {f["path"]: f for f in doc["files"]}
    for path in sorted(set(sums) | set(listed) | {MANIFEST_JSON}):
        if not _safe_relpath(path):
            problems.append(BundleProblem(path, "unsafe path in the bundle's lists"))
        elif path == MANIFEST_JSON:
            if path not in sums:
                problems.append(BundleProblem(path, f"not listed in {SUMS}"))
        elif path not in sums:
            problems.append(BundleProblem(path, f"listed in {MANIFEST_JSON} but not in {SUMS}"))
        elif path not in listed:
            problems.append(BundleProblem(path, f"listed in {SUMS} but not in {MANIFEST_JSON}"))
        elif sums[path] != listed[path]["sha256"]:
            problems.append(BundleProblem(path, f"{SUMS} and {MANIFEST_JSON} disagree about its sha256"))
    if problems:
        return problems
    todo: list[tuple[str, int | None]] = []
    for path in sorted(sums):
        p = bundle / path
        size = listed[path]["size"] if path in listed else None
        if not p.is_file():
            problems.append(BundleProblem(path, "missing"))
        elif size is not None and p.stat().st_size != size:
            actual = p.stat().st_size
            what = "truncated" if actual < size else "too long"
            problems.append(BundleProblem(path, f"{what}: {actual} bytes, expected {size}"))
        else:
            todo.append((path, size))
    if problems:
        return problems

    def check(item: tuple[str, int | None]) -> BundleProblem | None:
        path, _ = item
        try:
            digest = hash_file(bundle / path, advance)
        except OSError as exc:
            return BundleProblem(path, f"unreadable ({exc.strerror})")
        if digest == sums[path]:
            return None
        return BundleProblem(path, f"corrupted: sha256 {digest[:16]}..., {SUMS} says {sums[path][:16]}...")

    todo.sort(key=lambda t: -(t[1] or 0))
    problems.extend(p for p in map_parallel(check, todo) if p is not None)
    return sorted(problems, key=lambda p: p.path)


def member_path(name: str) -> str:
    """A member name relative to the archive root ("" for the root), or ValueError if it would leave it."""
    if name.startswith("/") or "\0" in name:
        raise ValueError("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("`..` in the path")
    return "/".join(parts)


def check_archive(path: Path) -> list[tarfile.TarInfo]:
    """Every member of an uncompressed tar, refusing any that could write outside the extraction root.

    Refused: absolute names, `..`, symlinks or hardlinks whose target leaves the
    archive (or a hardlink to a member that is not an earlier regular file),
    device files, FIFOs, anything but files, directories and links; also data
    past the end of the file (a truncated archive).
    """
    try:
        tf = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path} is not an uncompressed tar archive ({exc}); nothing was imported") from None
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"{path} is damaged ({exc}); nothing was imported", hint="copy the bundle again") from None
    size = path.stat().st_size
    files: set[str] = set()
    for m in members:
        try:
            rel = member_path(m.name)
            if m.isdev() or m.isfifo():
                raise ValueError("a device file or FIFO")
            if m.issym():
                if m.linkname.startswith("/"):
                    raise ValueError(f"a symlink to the absolute path {m.linkname}")
                target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), m.linkname))
                if target == ".." or target.startswith("../"):
                    raise ValueError(f"a symlink to {m.linkname}, outside the archive")
            elif m.islnk():
                target = member_path(m.linkname)
                if target not in files:
                    raise ValueError(f"a hardlink to {m.linkname}, not a file of the archive")
            elif m.isreg():
                if m.offset_data + m.size > size:
                    raise ValueError("data past the end of the archive (truncated)")
                files.add(rel)
            elif not m.isdir():
                raise ValueError(f"an unsupported member type {m.type!r}")
        except ValueError as exc:
            raise UserError(f"{path}: refusing member {m.name!r}: {exc}; nothing was imported",
                            hint="this archive was not written by `sealift export`; do not install it") from None
    return members


# =========================================================================== install: import


def _copy_range(src_fd: int, offset: int, size: int, dst: Path, mode: int) -> None:
    """Copy `size` bytes at `offset` of src_fd into a new file dst (in the kernel when it can)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o755 | 0o600)
    try:
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
                _write_all(fd, chunk)
                left -= len(chunk)
                pos += len(chunk)
    finally:
        os.close(fd)


def extract(archive: Path, members: list[tarfile.TarInfo], root: Path, advance: Advance) -> None:
    """Extract the (already checked) members under root; no member is written through a link out of root."""
    real_root = os.path.realpath(root)
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    with open(archive, "rb") as f:
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
                _copy_range(f.fileno(), m.offset_data, m.size, target, m.mode)
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


def import_archive(archive: Path, members: list[tarfile.TarInfo], bento_tag: str,
                   model_tags: list[str], digests: dict[str, str] | None = None) -> ImportOutcome:
    """Put the archive's bento and models into this process's Bento store, as `bentoml import` would.

    Models already in the store are left alone (as bentoml does); a bento
    already there is reported present. Only what is missing is extracted, once,
    into a staging directory under BENTOML_HOME, checked by bentoml
    (Model/Bento.from_path, tags), and renamed into the store (`_place`, which
    also writes the `latest` pointers as bentoml's Store.register does).
    """
    from bentoml._internal.bento.bento import Bento
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import Model
    from bentoml.exceptions import NotFound

    bento_store = BentoMLContainer.bento_store.get()
    model_store = BentoMLContainer.model_store.get()

    def present(store: Any, tag: str) -> bool:
        try:
            store.get(tag)
            return True
        except NotFound:
            return False

    need_bento = not present(bento_store, bento_tag)
    need_models = [t for t in model_tags if not present(model_store, t)]
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
            _syncfs(staging)
        for rel, tag in model_dirs.items():
            src = staging / rel
            model = Model.from_path(src)
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
            _place(model_store, Path(BentoMLContainer.model_store_dir.get()), model.tag, src)
            added.append(tag)
        if need_bento:
            shutil.rmtree(staging / "models", ignore_errors=True)
            bento = Bento.from_path(staging)
            if str(bento.tag) != bento_tag:
                raise UserError(f"{archive} holds bento {bento.tag}, the manifest says {bento_tag}")
            _place(bento_store, Path(BentoMLContainer.bento_store_dir.get()), bento.tag, staging)
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


# =========================================================================== install: venv


def _tail(text: str, n: int = 4) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def create_venv(venv: Path, *, python_version: str, requirements: Path, wheels: Path) -> str:
    """The runtime venv from local wheels only (uv, no index, offline); "created" or "present".

    A venv holding sealift's marker for these same requirements is reused; a
    half-made one is removed and made again.
    """
    reqs = requirements.read_text()
    key = hashlib.sha256(reqs.encode()).hexdigest()
    marker = venv / VENV_MARKER
    try:
        if json.loads(marker.read_text()).get("requirements_sha256") == key:
            return "present"
    except (OSError, ValueError):
        pass
    if venv.exists():
        shutil.rmtree(venv)
    env = offline_env(UV_OFFLINE="1", UV_NO_INDEX="1", UV_PYTHON_DOWNLOADS="never", UV_FIND_LINKS=str(wheels))
    env.pop("VIRTUAL_ENV", None)
    uv = [sys.executable, "-m", "uv"]
    steps = [
        [*uv, "venv", "--quiet", "--python", _python_for(python_version), str(venv)],
        [*uv, "pip", "install", "--quiet", "--offline", "--no-index", "--find-links", str(wheels),
         "--python", str(venv / "bin" / "python"), "-r", str(requirements)],
    ]
    for cmd in steps:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise UserError(f"the runtime venv could not be made from {wheels}: {_tail(p.stderr)}",
                            hint="export the bundle with wheels for this host's platform and Python "
                                 "(--platform, --python-version), or install with --no-venv")
    write_atomic(marker, json.dumps({"requirements_sha256": key, "python": python_version}).encode())
    return "created"


def _python_for(version: str) -> str:
    """This interpreter if it is the version asked for (uv may not find it on PATH), else the version for uv."""
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return getattr(sys, "_base_executable", None) or sys.executable
    return version


def persist_wheels(bundle: Path, files: list[str], dest: Path, advance: Advance) -> int:
    """Copy the bundle's (verified) wheels into the shared wheel directory; returns how many were new."""
    dest.mkdir(parents=True, exist_ok=True)
    new = 0
    for rel in files:
        src = bundle / rel
        dst = dest / Path(rel).name
        size = src.stat().st_size
        if dst.is_file() and dst.stat().st_size == size:
            advance(size)
            continue
        tmp = dst.with_name(dst.name + PARTIAL)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        advance(size)
        new += 1
    return new


# =========================================================================== install


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print_human(self) -> None:
        p = console.out.print
        p(f"verified {fmt_bytes(self.verified_bytes)} in {self.bundle}: every file matches SHA256SUMS and manifest.json",
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


def install_bundle(bundle_dir: Path, *, venv: Path | None = None, make_venv: bool = True) -> InstallResult:
    """Verify, import, make the offline venv and register for openllm; nothing is touched unless all verifies."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    bundle = Path(bundle_dir).expanduser().absolute()
    t = time.monotonic()
    doc, sums, archive, members = check_bundle(bundle)
    timings["verify"] = time.monotonic() - t

    apply_offline_env()
    bento_tag = doc["bento"]["tag"]
    model_tags = [m["tag"] for m in doc.get("models", [])]
    t = time.monotonic()
    digests = {m["tag"]: m["manifest_digest"] for m in doc.get("models", []) if m.get("manifest_digest")}
    outcome = import_archive(archive, members, bento_tag, model_tags, digests)
    timings["import"] = time.monotonic() - t
    _check_model_digests(outcome, doc)

    from sealift import openllm

    wheel_files = sorted(p for p in sums if p.startswith(WHEELS + "/"))
    wheels_dir: Path | None = None
    if wheel_files:
        t = time.monotonic()
        wheels_dir = openllm.wheels_dir()
        sizes = {f["path"]: int(f["size"]) for f in doc["files"]}
        with console.byte_progress(sum(sizes[w] for w in wheel_files), "wheels") as adv:
            persist_wheels(bundle, wheel_files, wheels_dir, adv)
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

    reg = openllm.register(
        bento_tag=bento_tag, bento_path=Path(outcome.bento_path),
        models={t: Path(p) for t, p in outcome.model_paths.items()},
        venv=venv_path, bundle=bundle,
    )
    return InstallResult(
        bundle=str(bundle), bento_tag=bento_tag, model_tags=model_tags, bento=outcome.bento, models=outcome.models,
        verified_bytes=_bundle_bytes(bundle, doc), extracted_bytes=outcome.extracted_bytes,
        venv=str(venv_path) if venv_path else None, venv_status=venv_status,
        wheels_dir=str(wheels_dir) if wheels_dir else None, openllm_repo=str(reg.repo), env_file=str(reg.env_file),
        seconds=time.monotonic() - started, timings={k: round(v, 2) for k, v in timings.items()},
        serve=openllm.serve_commands(bento_tag, venv_path),
    )


def check_bundle(bundle: Path) -> tuple[dict[str, Any], dict[str, str], Path, list[tarfile.TarInfo]]:
    """Everything install checks before it touches any store; needs no Bento store (tests call it directly).

    manifest.json and SHA256SUMS readable and agreeing, every file's size and
    sha256, then every archive member safe and the layout a sealift bundle's.
    UserError (exit 2) naming the first problem; else (manifest, sums, archive, members).
    """
    doc, sums = read_bundle(bundle)
    with console.byte_progress(_bundle_bytes(bundle, doc), "verifying") as adv:
        problems = verify_bundle(bundle, doc, sums, adv)
    if problems:
        others = ", ".join(p.path for p in problems[1:4])
        more = f" (and {len(problems) - 1} more: {others})" if len(problems) > 1 else ""
        raise UserError(f"bundle {bundle} failed verification: {problems[0]}{more}; nothing was imported",
                        hint="copy the bundle from the source again, or run `sealift export` again")
    archive = bundle / doc["archive"]
    if not _safe_relpath(doc["archive"]) or doc["archive"] not in sums:
        raise UserError(f"{bundle / MANIFEST_JSON}: archive {doc['archive']!r} is not one of the verified files")
    members = check_archive(archive)
    _check_layout(archive, members, doc)
    return doc, sums, archive, members


def _bundle_bytes(bundle: Path, doc: dict[str, Any]) -> int:
    """Every byte of the bundle: the files manifest.json lists, and manifest.json itself."""
    return sum(int(f["size"]) for f in doc.get("files", [])) + (bundle / MANIFEST_JSON).stat().st_size


def _requirements_with_bentoml(requirements: Path, doc: dict[str, Any], where: Path) -> Path:
    """The bento's requirements.txt if it pins bentoml, else a copy with the bundle's bentoml pin added."""
    text = requirements.read_text() if requirements.is_file() else ""
    if re.search(r"^bentoml\s*(==|@)", text, re.M):
        return requirements
    where.mkdir(parents=True, exist_ok=True)
    extra = where / f".{doc['bento']['name']}-{doc['bento']['version']}-requirements.txt"
    extra.write_text(text.rstrip("\n") + f"\nbentoml=={doc['bento'].get('bentoml_version')}\n")
    return extra


def _check_layout(archive: Path, members: list[tarfile.TarInfo], doc: dict[str, Any]) -> None:
    """The archive holds a bento.yaml at its root and each model the manifest names."""
    names = {member_path(m.name) for m in members if m.isreg()}
    missing = [] if "bento.yaml" in names else ["bento.yaml"]
    for model in doc.get("models", []):
        name, version = model["tag"].split(":")
        if f"models/{name}/{version}/model.yaml" not in names:
            missing.append(f"models/{name}/{version}/model.yaml")
    if missing:
        raise UserError(f"{archive} lacks {', '.join(missing)}; nothing was imported",
                        hint="this is not a bundle written by `sealift export`")


def _check_model_digests(outcome: ImportOutcome, doc: dict[str, Any]) -> None:
    """Each model the store already held has the manifest digest manifest.json names (no re-hash of weights).

    The models this install imported were checked before they were stored (import_archive).
    """
    for model in doc.get("models", []):
        want = model.get("manifest_digest")
        if not want or outcome.models[model["tag"]] != "present":
            continue
        path = Path(outcome.model_paths[model["tag"]]) / MANIFEST_NAME
        try:
            got = Manifest.read(path).digest()
        except (OSError, ValueError) as exc:
            raise Failure(f"{path}: {exc}", hint="run `sealift verify` on the model") from None
        if got != want:
            raise Failure(f"model {model['tag']} in the store has manifest digest {got}, the bundle says {want}",
                          hint=f"the store already held a different {model['tag']}; "
                               f"run `sealift verify {model['tag']}`")
