"""Export step: a bento and its models into a verified bundle on removable media (the format: sealift.bundle.format).

    export_bundle("qwen7b", Path("/media/usb"))   -> ExportResult  (DEST/<name>-<version>/)

Export writes the tar itself (sealift.bundle.tarstream), in one pass: each source byte is read once, hashed
into the archive's sha256 (and, for model files, into a check against the
model's own sealift manifest, so a store that rotted since import is refused),
and written once by a helper thread while the next chunk is hashed. Nothing is
compressed. Everything goes to `DEST/<name>-<version>.partial/`; a journal there
records fsynced checkpoints (archive offset + sha256 of the bytes before it,
wheels done), so a killed export resumes: the bytes already written are re-read
and checked, never rewritten. Free space is checked before anything is written.
The finished directory is fsynced and renamed; nothing incomplete has the final
name.

SEALIFT_EXPORT_CHECKPOINT_BYTES tunes how often export checkpoints (default
512 MiB); SEALIFT_WHEEL_CACHE is where wheels downloaded from an index are kept
between exports (default $SEALIFT_HOME/wheel-cache; sealift.bundle.wheelhouse).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from sealift.core import console
from sealift.bundle import signing, volumes
from sealift.bundle import delta as delta_step
from sealift.bundle import sbom as sbom_step
from sealift.core.atomic import fsync_dir, write_atomic
from sealift.bundle.format import OPENLLM_REQUIREMENTS, INSTALL_TXT, MANIFEST_JSON, PARTIAL, SUMS, WHEELS, WHEELS_OPENLLM, \
    bundle_bytes
from sealift.core.diskspace import check_free_space as _check_space
from sealift.core.errors import UserError
from sealift.bundle.inventory import read_inventory
from sealift.bundle.install_text import install_text
from sealift.model.store import LABEL_BACKEND
from sealift.model.manifest import FileEntry, copy_and_hash, hash_file, sha256sums_text
from sealift.core.offline import apply_offline_env
from sealift.bundle.parts import logical_files
from sealift.bundle.tarstream import JOURNAL, Advance, Member, Journal, archive_size, plan_digest, write_archive
from sealift.core.units import fmt_bytes
from sealift.bundle.result import ExportResult, bundle_manifest
from sealift.bundle.source import BentoSource, ModelSource, bundle_requirements, load_bento, plan_archive
from sealift.bundle.wheelcheck import WheelCheck
from sealift.bundle.wheelhouse import link_shared, resolve_locked, sealift_wheel, shared_wheel, wheel_sources

__all__ = ["BentoSource", "ExportResult", "ModelSource", "check_free_space", "export_bento", "export_bundle",
           "load_bento", "plan_archive"]

#: Free space to keep beyond the bundle's own bytes (directory blocks, filesystem slack).
SLACK = 16 * 1024 * 1024


def check_free_space(dest: Path, needed: int) -> None:
    """UserError (exit 2) unless dest's filesystem has `needed` bytes free (plus a little slack)."""
    _check_space(dest, needed, slack=SLACK, what="for the bundle", hint="free some space or choose another DEST")


def export_bundle(ref: str, dest: Path, *, platform: str | None = None, python_version: str | None = None,
                  wheels_from: Path | None = None, no_wheels: bool = False, with_openllm: bool = False,
                  sign: Path | None = None, sbom: bool | None = None, cuda: str | None = None, proof: bool = True,
                  extra_index_urls: tuple[str, ...] = (), find_links: tuple[str, ...] = (),
                  have: Path | None = None, max_file_size: int | None = None, volume_size: int | None = None,
                  more_dests: tuple[Path, ...] = (), oci: bool = False, shell: Path | None = None) -> Any:
    """Write the bundle of `ref` (model NAME[:VERSION] or bento tag) to DEST/<name>-<version>/.

    `max_file_size`: no file over it (numbered parts; automatic on FAT32); `volume_size` / `more_dests`:
    volumes (sealift.bundle.volumes).

    wheels/ holds the bento's wheels plus a sealift wheel and sealift's own
    dependencies (one resolution: one version of each), so sealift installs on
    a host with only Python; `with_openllm` adds openllm 0.6.30 and its pins in
    wheels-openllm/. `have`: the far side's inventory (sealift.host.inventory): a delta bundle
    (sealift.bundle.delta) that leaves out every file it lists. `oci`: an OCI image layout instead of the folder
    (sealift.bundle.oci; `shell` is the modelcar's static busybox): an OciExportResult.
    """
    started = time.monotonic()
    if oci:
        for flag, given in (("--have", have is not None), ("--max-file-size", max_file_size is not None),
                            ("--volume-size", volume_size is not None), ("a second DEST", bool(more_dests)),
                            ("--with-openllm", with_openllm)):
            if given:
                raise UserError(f"--oci and {flag} do not go together yet",
                                hint="a registry moves blobs, not media: export --oci to one DEST")
        from sealift.bundle.modelpack import static_shell
        from sealift.bundle.oci import SHELL
        static_shell(Path(shell or SHELL))  # the modelcar's shell works before anything is resolved
    if wheels_from is not None and no_wheels:
        raise UserError("--wheels-from and --no-wheels contradict each other", hint="use one of them")
    if with_openllm and no_wheels:
        raise UserError("--with-openllm and --no-wheels contradict each other", hint="use one of them")
    if wheels_from is not None and not Path(wheels_from).is_dir():
        raise UserError(f"--wheels-from {wheels_from}: no such directory")
    if sign is not None:  # the key must work before a byte is written
        signing.check_key(sign)
    apply_offline_env()
    from sealift.model.store import find_bento

    return export_bento(find_bento(ref), dest, platform=platform, python_version=python_version,
                        wheels_from=wheels_from, no_wheels=no_wheels, with_openllm=with_openllm, started=started,
                        sign=sign, sbom=sbom, cuda=cuda, proof=proof, extra_index_urls=extra_index_urls,
                        find_links=find_links, have=have, max_file_size=max_file_size, volume_size=volume_size,
                        more_dests=more_dests, oci=oci, shell=shell)


def export_bento(tag: str, dest: Path, *, platform: str | None, python_version: str | None, wheels_from: Path | None,
                 no_wheels: bool, with_openllm: bool = False, started: float | None = None,
                 sign: Path | None = None, sbom: bool | None = None, cuda: str | None = None,
                 proof: bool = True, extra_index_urls: tuple[str, ...] = (),
                 find_links: tuple[str, ...] = (), have: Path | None = None, max_file_size: int | None = None,
                 volume_size: int | None = None, more_dests: tuple[Path, ...] = (), oci: bool = False,
                 shell: Path | None = None) -> Any:
    """export_bundle for a bento tag already resolved; python_version None means the bento's own,
    platform None the default for the bento's target (sealift.bundle.target).

    `sign`: an OpenSSH key that signs SHA256SUMS (sealift.bundle.signing); `sbom`: write sbom.cdx.json
    (sealift.bundle.sbom; None: when the bundle carries wheels).
    """
    from sealift.bundle import proof as proof_step, target as target_facts

    started = time.monotonic() if started is None else started
    inventory = read_inventory(have) if have is not None else None  # bad input first: before the store is read
    bento = load_bento(tag)
    python_version = python_version or bento.python_version
    kind = target_facts.bento_target(bento.labels)
    backend = bento.labels.get(LABEL_BACKEND, "auto")
    left_out = target_facts.left_out(kind, backend)  # vLLM on CPU: no CUDA torchvision (sealift.bundle.target)
    platform = platform or target_facts.default_platform(kind, backend)
    sources = wheel_sources(kind, cuda=cuda, wheels_from=wheels_from, extra_index_urls=extra_index_urls,
                                         find_links=find_links)
    dest = Path(dest).expanduser().absolute()
    plan = delta_step.plan_delta(inventory, plan_archive(bento)) if inventory is not None else None
    final = dest / f"{bento.name}-{bento.version}{delta_step.DELTA_SUFFIX if plan else ''}"
    partial = final.with_name(final.name + PARTIAL)
    spanning = volume_size is not None or bool(more_dests)  # volumes (sealift.bundle.volumes)
    if plan is not None and spanning:
        raise UserError("a delta bundle (--have) cannot span volumes yet",
                        hint="export the delta without --volume-size and extra DEST: deltas are small")
    if final.exists() and not spanning and not oci:
        if plan is not None:
            delta_step.check_same_inventory(final, plan)
        return _already_exported(final, bento, started, with_openllm=with_openllm, sign=sign)

    members = plan.members if plan else plan_archive(bento)
    total = archive_size(members)
    wheels: list[Path] = []
    openllm_wheels: list[Path] = []
    check = WheelCheck()  # each wheel against its lock's sha256, where its bytes are read (sealift.bundle.wheelcheck)
    if not no_wheels:
        console.info(f"resolving wheels for {platform}, Python {python_version}")
        source = Path(wheels_from) if wheels_from else None
        own = sealift_wheel(source)
        resolved = resolve_locked([*bundle_requirements(bento), f"sealift @ {own.as_uri()}"], platform=platform,
                                  python_version=python_version, wheels_from=source, sources=sources,
                                  left_out=left_out)
        check.add(resolved)
        wheels = list(resolved)
        if with_openllm:
            console.info(f"resolving openllm's wheels ({' '.join(OPENLLM_REQUIREMENTS)})")
            resolved = resolve_locked(list(OPENLLM_REQUIREMENTS), platform=platform,
                                      python_version=python_version, wheels_from=source, sources=sources)
            check.add(resolved)
            openllm_wheels = list(resolved)

    # What the target needs: before a byte is written (sealift.bundle.target). The proof (sealift.bundle.proof) runs
    # beside the archive's write on the plain path; a delta, volumes and an OCI layout prove first.
    requirements = bundle_requirements(bento)
    limit = volumes.file_limit(dest, max_file_size)
    beside = (plan is None and not oci and not spanning
              and not volumes.needs_split(members, [*wheels, *openllm_wheels], limit))

    def needs_and_proof() -> tuple[dict[str, Any], dict[str, Any]]:
        if beside:
            needs = proof_step.needs_for(bento, kind, wheels, platform=platform, python_version=python_version,
                                         cuda=cuda, backend=backend, left_out=left_out)
            return needs, proof_step.skipped(wheels, run_proof=proof, python_version=python_version) or {}
        return proof_step.needs_and_proof(bento, kind, wheels, platform=platform, python_version=python_version,
                                          cuda=cuda, run_proof=proof, requirements=requirements,
                                          constraints=check.constraints(wheels), backend=backend,
                                          left_out=left_out)
    try:
        needs, proven = needs_and_proof()
    except UserError as exc:  # a wheel the proof's uv refused (hash, or not even a zip), or that the gpu check could
        # not read: is a cached one not the lock's? Each is hashed; one that is not is fetched again (or UserError)
        if not wheels or not check.verify([*wheels, *openllm_wheels]):
            raise  # every wheel is the lock's: the failure is the wheel set's own
        console.warn(f"the wheels were refused ({exc.message[:120]}); running the checks again over the wheels "
                     "fetched again")
        needs, proven = needs_and_proof()
    prove_beside = None
    if beside and not proven:  # the proof runs: over the medium's copies of the wheels, while the archive is written
        def prove_beside(copies: list[Path], steps: Any) -> dict[str, Any]:
            return proof_step.proof_for(bento, kind, copies, platform=platform, python_version=python_version,
                                        requirements=requirements, constraints=check.constraints(wheels),
                                        backend=backend, left_out=left_out, steps=steps, beside=True)
    wheels = plan.split_wheels(wheels) if plan else wheels  # the far side's pool holds the rest
    if oci:  # one OCI image layout instead of the folder (sealift.bundle.oci)
        from sealift.bundle import oci as oci_step

        result = oci_step.export_layout(bento, dest, wheels=wheels, check=check, started=started, sign=sign,
                                        sbom=bool(wheels) if sbom is None else sbom, shell=shell, needs=needs)
        result.proof = proven
        return result
    if spanning or volumes.needs_split(members, [*wheels, *openllm_wheels], limit):  # parts and volumes
        if plan is not None:
            raise UserError(f"a delta bundle (--have) cannot be written in parts yet, and a file of it is over "
                            f"{fmt_bytes(limit)}" + (" (DEST is FAT32)" if max_file_size is None else ""),
                            hint="export the delta to a medium without a file-size limit")
        return volumes.export_split(
            bento, members, wheels, openllm_wheels, dests=[dest, *(Path(d).expanduser().absolute() for d in more_dests)],
            max_file=limit, volume_size=volume_size, platform=platform, python_version=python_version,
            started=started, needs=needs, proven=proven, sign=sign, sbom=bool(wheels) if sbom is None else sbom,
            check=check)
    journal = Journal.load(partial, bento.tag, plan_digest(members), total)
    archive_there = (partial / f"{bento.name}-{bento.version}.tar").is_file()
    done_archive = int(journal.archive.get("offset", 0)) if archive_there else 0
    done_wheels = {k for k, v in journal.doc["files"].items()
                   if (partial / k).is_file() and (partial / k).stat().st_size == v.get("size")}
    to_copy = [w for d, ws in ((WHEELS, wheels), (WHEELS_OPENLLM, openllm_wheels)) for w in ws
               if f"{d}/{w.name}" not in done_wheels]
    # wheels another bundle on the medium holds are linked, not written (if the filesystem can): not counted
    to_copy = [w for w in to_copy if shared_wheel(dest, WHEELS, w.name, w.stat().st_size, exclude=final) is None
               and shared_wheel(dest, WHEELS_OPENLLM, w.name, w.stat().st_size, exclude=final) is None]
    needed = total - done_archive + sum(w.stat().st_size for w in to_copy)
    check_free_space(dest, needed)

    try:
        result = _write_bundle(bento, members, wheels, journal, partial, final, platform, python_version, started,
                               openllm_wheels=openllm_wheels, needs=needs, sign=sign,
                               sbom=bool(wheels) if sbom is None else sbom, delta=plan.record() if plan else None,
                               check=check, prove=prove_beside)
        if prove_beside is None:
            result.proof = proven
        return result
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"{dest} is full; the export stopped and can be resumed",
                            hint="free some space and run the same export again") from None
        raise


def _write_bundle(bento: BentoSource, members: list[Member], wheels: list[Path], journal: Journal, partial: Path,
                  final: Path, platform: str, python_version: str, started: float, *,
                  openllm_wheels: list[Path] | None = None, needs: dict[str, Any] | None = None,
                  sign: Path | None = None, sbom: bool = True, delta: dict[str, Any] | None = None,
                  check: WheelCheck | None = None,
                  prove: Callable[[list[Path], Any], dict[str, Any]] | None = None) -> ExportResult:
    """Write (or finish) everything in `partial`, then make it `final`; `delta`: manifest.json's delta record;
    `check`: each wheel's bytes as copied against its lock (sealift.bundle.wheelcheck).

    The wheels are written first; `prove` (sealift.bundle.proof.proof_for) then runs over their copies in a
    thread (proof.Beside) while the archive is written, and `partial` becomes `final` only once it passed:
    a failed proof leaves `partial` with its journal, for the next export to resume.
    """
    check = check or WheelCheck()
    if journal.doc["archive"]["offset"] == 0 and not journal.doc["files"] and partial.exists():
        shutil.rmtree(partial)  # no journal we can trust: nothing in it is known to be complete
    partial.mkdir(parents=True, exist_ok=True)
    journal.save()
    archive_name = f"{bento.name}-{bento.version}.tar"
    resumed = 0
    entries: list[FileEntry] = []

    reused = 0
    shared: list[FileEntry] = []
    for folder, files in ((WHEELS, wheels), (WHEELS_OPENLLM, openllm_wheels or [])):
        if not files:  # an earlier, interrupted run may have had wheels this one leaves out
            shutil.rmtree(partial / folder, ignore_errors=True)
            continue
        (partial / folder).mkdir(exist_ok=True)
        wanted = {f"{folder}/{w.name}" for w in files}
        for stale in (partial / folder).iterdir():
            if f"{folder}/{stale.name}" not in wanted:
                stale.unlink()
        unsynced: list[tuple[Path, FileEntry]] = []  # copied, not yet fsynced nor in the journal
        with console.byte_progress(sum(w.stat().st_size for w in files), folder) as adv:
            for w in files:
                rel = f"{folder}/{w.name}"
                entry, kept = _copy_wheel(w, partial / rel, rel, journal, adv, medium=(final.parent, final),
                                          check=check, unsynced=unsynced)
                reused += kept == 1
                if kept == 2:
                    shared.append(entry)
                entries.append(entry)
                if sum(e.size for _, e in unsynced) >= SYNC_BATCH_BYTES:
                    _settle(unsynced, journal)
            _settle(unsynced, journal)
    pending = None
    if prove is not None and wheels:  # the proof, over the medium's copies, beside the archive's write
        from sealift.bundle.proof import Beside

        console.info(f"proof: the runtime venv from the {len(wheels)} wheels on the medium, beside the archive's write")
        pending = Beside(lambda steps: prove([partial / WHEELS / w.name for w in wheels], steps),
                         outcome=f"the bundle was not finished ({partial} stays: the next export resumes it)")
    try:
        arch = journal.archive
        archive_entry: FileEntry | None = None
        written = partial / archive_name
        if arch.get("done") and written.is_file() and written.stat().st_size == arch["size"]:
            with console.byte_progress(arch["size"], "checking the archive already written") as adv:
                digest = hash_file(partial / archive_name, adv)
            if digest == arch["sha256"]:
                archive_entry = FileEntry(archive_name, arch["size"], digest)
                resumed = arch["size"]
            else:
                arch.update(offset=0, sha256=hashlib.sha256().hexdigest(), done=False)
        if archive_entry is None:
            console.info(f"writing {archive_name} ({fmt_bytes(arch['size'])})")
            # one bar (rich shows one at a time): a resumed export first re-reads what it wrote before
            with console.byte_progress(arch["size"] + int(arch.get("offset", 0)), archive_name) as adv:
                archive_entry, resumed = write_archive(members, partial / archive_name, journal, adv, adv)
    except BaseException:
        if pending is not None:
            pending.stop()
        raise
    proven = pending.wait() if pending is not None else None  # a failed proof: `partial` and its journal stay
    entries.insert(0, archive_entry)  # the archive first in the lists, as before the wheels were written first
    wheel_entries = [e for e in entries if e.path.startswith(WHEELS + "/")]
    openllm_entries = [e for e in entries if e.path.startswith(WHEELS_OPENLLM + "/")]
    own = next((e.path.split("/", 1)[1] for e in wheel_entries if e.path.startswith(f"{WHEELS}/sealift-")), "")

    for stale in (signing.SIG_NAME, sbom_step.SBOM_NAME):  # an earlier, interrupted run may have had them
        (partial / stale).unlink(missing_ok=True)
    if sbom:  # listed in SHA256SUMS like every other file, so a signature covers it
        entries.append(_write_small(partial, sbom_step.SBOM_NAME, sbom_step.bundle_sbom(bento, entries, partial)))
    key = signing.check_key(sign) if sign is not None else None
    has_wheels = bool(wheels) or bool(delta_step.relied_wheels({"delta": delta}))  # a delta's may all be relied on
    install_txt = install_text(bento, archive_name, final.name, has_wheels,
                                python_version=python_version, sealift_wheel="" if delta else own,
                                openllm=bool(openllm_entries), signed=key is not None)
    install_txt += delta_step.install_note(delta) if delta else ""
    entries.append(_write_small(partial, INSTALL_TXT, install_txt.encode()))
    manifest = bundle_manifest(bento, archive_name, entries, platform, python_version, has_wheels,
                                sealift_wheel=own, openllm=bool(openllm_entries), needs=needs)
    if key is not None:  # signed inside too: a bundle whose SHA256SUMS.sig was removed is not taken for unsigned
        manifest["signature"] = {"file": signing.SIG_NAME, "format": "sshsig", "namespace": signing.NAMESPACE,
                                 "key_type": key.key_type, "fingerprint": key.fingerprint}
    if delta:  # what the bundle relies on the far side holding (sealift.bundle.delta)
        manifest["delta"] = delta
    if wheels or openllm_wheels:  # how each wheel was held to its lock (signed with the rest)
        manifest["wheel_hashes"] = check.record([*wheels, *(openllm_wheels or [])])
    sums = [*entries, _write_small(partial, MANIFEST_JSON, (json.dumps(manifest, indent=1) + "\n").encode())]
    write_atomic(partial / SUMS, sha256sums_text(sums).encode())
    signature = signing.sign_sums(partial / SUMS, sign) if sign is not None else None

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
        openllm_wheel_bytes=sum(e.size for e in openllm_entries), needs=manifest["needs"],
        shared_wheels=len(shared), shared_wheel_bytes=sum(e.size for e in shared),
        sbom=sbom_step.SBOM_NAME if sbom else "", signature=signature.to_dict() if signature else None,
        relied_files=len(delta["relies"]) if delta else 0, relied_bytes=delta["relied_bytes"] if delta else 0,
        wheel_hashes=manifest.get("wheel_hashes") or {}, proof=proven or {},
    )


def _write_small(folder: Path, name: str, data: bytes) -> FileEntry:
    """Write a small generated file atomically; its entry, hashed from the bytes in hand."""
    write_atomic(folder / name, data)
    return FileEntry(name, len(data), hashlib.sha256(data).hexdigest())


#: Wheels copied without their fsync, at most this many bytes, are fsynced together, then journaled in one write.
#: An fsync right after each wheel waits for that wheel's writeback alone: on the build host 96 files of 2.7 MB
#: took 7.7 s so, 1.4 s written first and fsynced after; export --no-proof of a cpu bundle 11.6 s -> 9.5 s (issue 26).
SYNC_BATCH_BYTES = 512 * 1024 * 1024


def _settle(unsynced: list[tuple[Path, FileEntry]], journal: Journal) -> None:
    """fsync the copied wheels, then record them in the journal (one write): only fsynced files are journaled."""
    if not unsynced:
        return
    for dst, _ in unsynced:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for _, entry in unsynced:
        journal.doc["files"][entry.path] = {"size": entry.size, "sha256": entry.sha256}
    journal.save()
    unsynced.clear()


def _copy_wheel(src: Path, dst: Path, rel: str, journal: Journal, advance: Advance,
                medium: tuple[Path, Path] | None = None, check: WheelCheck | None = None,
                unsynced: list[tuple[Path, FileEntry]] | None = None) -> tuple[FileEntry, int]:
    """Copy+hash one wheel unless an earlier run already wrote it (re-read and checked), or another bundle on
    the medium holds the same bytes (hard-linked, sealift.bundle.wheelhouse.shared_wheel): (entry, 0 copied, 1 kept,
    2 shared). Each way, the bytes in the bundle hash to the lock's sha256 (`check`, sealift.bundle.wheelcheck):
    a cached wheel that does not is fetched again once, or the export stops. With `unsynced`, a copied wheel is
    not fsynced nor journaled here but added to it (`_settle` does both for a batch)."""
    check = check or WheelCheck()
    done = journal.doc["files"].get(rel)
    if done and dst.is_file() and dst.stat().st_size == done["size"] == src.stat().st_size \
            and check.matches(src, done["sha256"]):
        if hash_file(dst) == done["sha256"]:
            advance(done["size"])
            return FileEntry(rel, done["size"], done["sha256"]), 1
    size = src.stat().st_size
    other = shared_wheel(medium[0], rel.split("/")[0], src.name, size, exclude=medium[1]) if medium else None
    digest = link_shared(src, other, dst, advance, expected=check.expected(src)) if other is not None else None
    if digest is not None:
        journal.doc["files"][rel] = {"size": size, "sha256": digest}
        journal.save()
        return FileEntry(rel, size, digest), 2
    entry = check.copy(src, lambda: copy_and_hash(src, dst, advance, relpath=rel, fsync=unsynced is None),
                       lambda e: e.sha256, lambda: dst.unlink(missing_ok=True))
    if unsynced is not None:
        unsynced.append((dst, entry))
        return entry, 0
    journal.doc["files"][rel] = {"size": entry.size, "sha256": entry.sha256}
    journal.save()
    return entry, 0


def _already_exported(final: Path, bento: BentoSource, started: float, *, with_openllm: bool = False,
                      sign: Path | None = None) -> ExportResult:
    try:
        doc = json.loads((final / MANIFEST_JSON).read_text())
    except (OSError, ValueError):
        doc = {}
    if doc.get("bento", {}).get("tag") != bento.tag or not (final / SUMS).is_file():
        raise UserError(f"{final} already exists and is not a bundle of {bento.tag}",
                        hint="remove it or choose another DEST")
    files = [{"path": k, "size": v} for k, v in logical_files(doc).items()]  # numbered parts: as their file
    wheels = [f for f in files if f["path"].startswith(WHEELS + "/")]
    openllm = [f for f in files if f["path"].startswith(WHEELS_OPENLLM + "/")]
    if with_openllm and not openllm:
        raise UserError(f"{final} already exists, exported without --with-openllm",
                        hint="remove it or choose another DEST")
    signature = signing.already_signed(final, sign, doc) if sign is not None else None
    return ExportResult(
        bundle=str(final), bento_tag=bento.tag, model_tags=[m.tag for m in bento.models],
        archive=doc.get("archive", ""), archive_bytes=sum(f["size"] for f in files if f["path"] == doc.get("archive")),
        wheels=len(wheels), wheel_bytes=sum(f["size"] for f in wheels), total_bytes=bundle_bytes(final, doc),
        seconds=time.monotonic() - started, already_complete=True,
        platform=doc.get("target", {}).get("platform", ""),
        python_version=doc.get("target", {}).get("python_version", ""),
        sealift_wheel=doc.get("sealift_wheel") or "", openllm_wheels=len(openllm),
        openllm_wheel_bytes=sum(f["size"] for f in openllm),
        sbom=sbom_step.SBOM_NAME if any(f["path"] == sbom_step.SBOM_NAME for f in files) else "",
        signature=signature.to_dict() if signature else None,
    )
