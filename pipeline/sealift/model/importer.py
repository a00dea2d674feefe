"""Import step: a model directory into the Bento model store, verified, atomically.

Inspect the source (nothing is written for an incomplete model), copy
and hash every file in one pass on a thread pool into a staging directory on
the store's own filesystem, write `sealift-manifest.json` and bentoml's
`model.yaml`, then publish with a single directory rename. A failure, Ctrl-C
or SIGTERM removes the staging directory; a SIGKILL leaves it only under
`$BENTOML_HOME/.sealift-staging/`, which bentoml never lists and the next
import sweeps. Nothing in `models/` is ever half-made.

Why not `bentoml.models.create()`'s context manager: in bentoml 1.4.39 it
stages under the system temp dir and `Model.save` then `shutil.copytree`s into
`models/<name>/<version>/` -- every byte written twice (even on the same
filesystem), and a kill during that copy leaves a half-copied model that
`bentoml models list` shows. sealift writes the same model.yaml (same
labels/metadata, sealift.model._bentoml.write_model_yaml) and publishes with a rename.

Version = the first 16 hex digits of the manifest digest: a model's identity is
its content, so importing the same content under the same name returns the
existing tag and writes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealift.core.version import __version__
from sealift.model import _bentoml
from sealift.core import console
from sealift.core.atomic import fsync_dir, fsync_tree, sigterm_as_interrupt, sweep_dead, write_atomic
from sealift.model.convert import convert_pickles
from sealift.core.diskspace import DISK_FULL, check_free_space
from sealift.core.errors import Failure, UserError
from sealift.model.inspection import Inspection, ModelInfo, inspect_model
from sealift.model.manifest import (
    MANIFEST_NAME,
    Cancelled,
    FileEntry,
    Manifest,
    cancellable,
    copy_and_hash,
    hash_file,
    link_and_hash,
    map_parallel,
)
from sealift.model import tensors as tensor_check
from sealift.model.sources import Source
from sealift.model.store import MODEL_YAML, SEALIFT_LABEL, StoredModel, get_model, models_dir
from sealift.core.units import fmt_bytes

if TYPE_CHECKING:
    import bentoml

__all__ = ["Cancelled", "ImportResult", "import_model"]

STAGING_DIRNAME = ".sealift-staging"
#: Free space to keep beyond the model's bytes (model.yaml, manifest, directory blocks).
SLACK = 4 * 1024 * 1024


def _check_free_space(store: Path, needed: int) -> None:
    """UserError (exit 2) before anything is written unless the store's filesystem has `needed` bytes free."""
    check_free_space(store, needed, slack=SLACK, what="for the model", where=store,
                     hint="free some space, or set BENTOML_HOME to a bigger disk")


@contextlib.contextmanager
def _staging(store: Path) -> Iterator[Path]:
    """A private dir on the store's filesystem, removed on any exit (the publish renames out of it).

    A full disk while it is in use (another writer took the space) is a UserError.
    """
    root = store.resolve().parent / STAGING_DIRNAME
    root.mkdir(parents=True, exist_ok=True)
    sweep_dead(root)
    stage = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
    try:
        yield stage
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise UserError(
                f"{store} filled up during the import ({exc.strerror}); nothing was written",
                hint="free some space, or set BENTOML_HOME to a bigger disk, and import again",
            ) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)



@dataclass
class ImportResult:
    """What `sealift import` did."""

    tag: str
    existed: bool
    path: Path
    info: ModelInfo
    manifest_digest: str
    files: int
    bytes: int
    seconds: float
    source: Source
    mode: str  # copy | hardlink | reflink | mixed | none (existed)
    converted: dict[str, str] = field(default_factory=dict)  # pickle file -> safetensors file
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        info = self.info
        return {
            "tag": self.tag,
            "existed": self.existed,
            "path": str(self.path),
            "manifest_digest": self.manifest_digest,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.bytes / 1e6 / self.seconds, 1) if self.seconds > 0 and not self.existed else None,
            "mode": self.mode,
            "source": self.source.to_dict(),
            "model_type": info.model_type,
            "architectures": info.architectures,
            "params": info.params,
            "dtype": info.dtype,
            "context_length": info.context_length,
            "gpu_memory_bytes": info.gpu_memory_bytes,
            "trust_remote_code": info.custom_code,
            "code_files": info.code_files,
            "chat_template": info.chat_template,
            "quantization": info.quantization,
            **info.checkpoint.to_result(),
            "converted": self.converted,
            "warnings": self.warnings,
        }

    def print_human(self) -> None:
        out = console.out
        if console.mode.quiet:  # --quiet: only the tag, for scripts
            out.print(self.tag, markup=False)
            return
        if self.existed:
            out.print(f"[green]already in the store:[/] [bold]{self.tag}[/] (same content; nothing written)")
        else:
            rate = f", {self.bytes / 1e6 / self.seconds:,.1f} MB/s" if self.seconds > 0 else ""
            out.print(f"[green]imported[/] [bold]{self.tag}[/] in {self.seconds:.1f}s ({self.mode}{rate})")
        rows = [
            ("source", self.source.describe()),
            ("stored at", str(self.path)),
            ("files", f"{self.files} files, {fmt_bytes(self.bytes)}"),
            *self.info.summary_rows(),
            ("manifest", f"sha256:{self.manifest_digest}"),
        ]
        for old, new in self.converted.items():
            rows.append(("converted", f"{old} -> {new}"))
        for label, value in rows:
            out.print(f"  {label:<14} {value}", soft_wrap=True)
        if self.info.code_files:
            out.print("  custom code (review these; stored and pinned by sha256):" if self.info.custom_code else "  python files:")
            for rel, digest in self.info.code_files.items():
                out.print(f"    {digest}  {rel}", soft_wrap=True)
        out.print(f"  next: sealift verify {self.tag}  |  sealift build {self.tag.split(':')[0]}")



def _check_name(name: str) -> str:
    if ":" in name:
        raise UserError(f"--name {name!r} must not hold a version", hint="sealift picks the version from the content")
    lowered = name.lower()  # bentoml would lowercase it too, with a log line of its own
    problem = _bentoml.tag_problem(lowered)
    if problem is not None:
        raise UserError(f"--name {name!r} is not a valid model name: {problem}", hint="use letters, digits, '-', '_', '.'")
    if lowered != name:
        console.warn(f"--name {name!r} is stored as {lowered!r} (model names are lowercase)")
    return lowered


def _existing_versions(name: str) -> list[bentoml.Model]:
    return [m for m in _bentoml.list_models(name) if m.info.labels.get(SEALIFT_LABEL) == "1"]


def _find_same_content(name: str, info: ModelInfo, workers: int | None) -> bentoml.Model | None:
    """A stored version of `name` holding exactly the source's files (read-only check, nothing written).

    Only when some version has the same file list and sizes are the source
    files hashed; a different model (or new content) costs nothing here.
    """
    candidates = []
    for m in _existing_versions(name):
        try:
            man = Manifest.read(Path(m.path) / MANIFEST_NAME)
        except (OSError, ValueError):
            continue
        if {e.path: e.size for e in man.files} == info.files:
            candidates.append((m, man.digest()))
    if not candidates:
        return None
    cancel = threading.Event()
    with console.byte_progress(info.total_bytes, f"checking {name}") as bar:
        advance = cancellable(bar, cancel)
        src = info.path

        def one(rel: str) -> FileEntry:
            return FileEntry(rel, info.files[rel], hash_file(src / rel, advance))

        entries = list(map_parallel(one, sorted(info.files, key=lambda r: -info.files[r]), workers, cancel=cancel))
    digest = Manifest(entries).digest()
    for m, d in candidates:
        if d == digest and m.info.metadata.get("manifest_digest") == digest:
            return m
    return None


def _place_files(
    src_root: Path,
    rels: list[str],
    dst_root: Path,
    sizes: dict[str, int],
    *,
    link: bool,
    label: str,
    workers: int | None,
    abort: threading.Event,
) -> tuple[list[FileEntry], set[str]]:
    """Copy+hash (or link+hash) every file on a thread pool; returns entries and the modes used.

    Raises Cancelled within one chunk once `abort` is set (the background inspection failed).
    """
    for rel in rels:
        (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
    modes: set[str] = set()
    cancel = threading.Event()
    total = sum(sizes[r] for r in rels)
    with console.byte_progress(total, label) as bar:

        def advance(n: int) -> None:
            if cancel.is_set() or abort.is_set():
                raise Cancelled()
            bar(n)

        def one(rel: str) -> FileEntry:
            if link:
                try:
                    entry, how = link_and_hash(src_root / rel, dst_root / rel, advance, relpath=rel)
                except OSError as exc:
                    if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise UserError(
                            f"--link: cannot link {src_root / rel} into the store ({exc.strerror})",
                            hint="the source and $BENTOML_HOME must be on one filesystem; import without --link to copy",
                        ) from None
                    raise
                modes.add(how)
                return entry
            modes.add("copy")
            return copy_and_hash(src_root / rel, dst_root / rel, advance, relpath=rel)

        entries = list(map_parallel(one, sorted(rels, key=lambda r: -sizes[r]), workers, cancel=cancel))
    return entries, modes



def _drop_none(value: Any) -> Any:
    """bentoml metadata refuses None: leave such keys out (readers use .get)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _metadata(info: ModelInfo, source: Source, manifest: Manifest) -> dict[str, Any]:
    return _drop_none({
        "sealift_version": __version__,
        "manifest_digest": manifest.digest(),
        "files": len(manifest.files),
        "size": manifest.total_bytes,
        "params": info.params,
        "dtype": info.dtype,
        "dtypes": info.dtypes,
        "context_length": info.context_length,
        "gpu_memory_bytes": info.gpu_memory_bytes,
        "model_type": info.model_type,
        "architectures": info.architectures,
        "trust_remote_code": info.custom_code,
        "code_files": info.code_files,
        "tokenizer_class": info.tokenizer_class,
        "chat_template": info.chat_template,
        "quantization": info.quantization,
        "checkpoint": info.checkpoint.to_record(),
        "source": {"ref": source.ref, "kind": source.kind, "revision": source.revision},
    })


def _publish(stage_model: Path, store: Path, name: str, version: str, info: ModelInfo, source: Source, manifest: Manifest) -> Path:
    """Write bentoml's model.yaml, then rename the staged dir into models/NAME/VERSION."""
    labels = {SEALIFT_LABEL: "1", "source": source.kind, "architecture": info.architecture}
    with open(stage_model / MODEL_YAML, "w", encoding="utf-8") as f:
        _bentoml.write_model_yaml(f, f"{name}:{version}", labels=labels, metadata=_metadata(info, source, manifest))
        f.flush()
        os.fsync(f.fileno())
    fsync_tree(stage_model, files=False)  # every file was fsynced as it was written
    name_dir = store / name
    name_dir.mkdir(parents=True, exist_ok=True)
    final = name_dir / version
    os.rename(stage_model, final)  # atomic: models/NAME/VERSION appears complete or not at all
    write_atomic(name_dir / "latest", version.encode())
    fsync_dir(name_dir)
    return final


def import_model(
    source: Source,
    name: str,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    to_safetensors: bool = False,
    link: bool = False,
    workers: int | None = None,
    include: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (),
    allow_missing_tensors: bool = False,
) -> ImportResult:
    """Inspect, then copy+hash (or link+hash) SOURCE into the store as NAME:<content version>.

    UserError (exit 2) before anything is written if the model is incomplete,
    needs code without trust_remote_code, or holds pickles without
    allow_pickle/to_safetensors; and, once the inspection child has held the
    safetensors headers against the architecture (sealift.model.tensors), if
    tensors are missing or misshapen, unless allow_missing_tensors (recorded
    in the manifest). Same content under the same name returns the
    existing tag without writing. Ctrl-C or SIGTERM removes the partial copy (KeyboardInterrupt
    propagates; the CLI says what was kept).
    """
    t0 = time.monotonic()
    name = _check_name(name)
    inspection = Inspection(source.path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle or to_safetensors,
                            include=include, exclude=exclude, allow_missing_tensors=allow_missing_tensors,
                            converting=to_safetensors)
    info = inspection.info  # structural checks passed; transformers checks run in the background
    warnings = list(info.warnings)
    for w in warnings:
        console.warn(w)
    if info.checkpoint.left_out_line:  # weights_select: what the server never reads stays out of the store
        console.info(info.checkpoint.left_out_line)
    convert = to_safetensors and bool(info.pickle_files)
    store = models_dir()

    with sigterm_as_interrupt(), contextlib.closing(inspection):
        if not convert:
            same = _find_same_content(name, info, workers)
            if same is not None:  # checked in full when it was imported; the same bytes need no second look
                inspection.close()
                return _existing_result(same, info, source, t0, warnings, allow_missing_tensors)

        if not link:
            _check_free_space(store, info.total_bytes)
        with _staging(store) as stage:
            stage_model = stage / "model"
            stage_model.mkdir()
            renamed: dict[str, str] = {}
            entries: list[FileEntry] = []
            consumed: set[str] = set()
            try:
                if convert:
                    inspection.finish()  # conversion unpickles: only once the model is known good
                    console.info(f"converting {len(info.pickle_files)} pickle file(s) to safetensors")
                    entries, renamed, consumed = convert_pickles(source.path, info, stage_model)
                rels = [r for r in info.files if r not in consumed]
                placed, modes = _place_files(
                    source.path, rels, stage_model, info.files, link=link, label=f"importing {name}",
                    workers=workers, abort=inspection.failed,
                )
            except Cancelled:
                inspection.finish()  # raises the inspection's UserError
                raise
            info = inspection.finish()
            _warn_new(info.warnings, warnings)  # the tensor check's, known only now
            entries += placed
            if convert:  # params and dtype now come from the new headers; config and tokenizer are unchanged
                tokenizer_class, checkpoint = info.tokenizer_class, info.checkpoint
                info = inspect_model(stage_model, trust_remote_code=trust_remote_code, allow_pickle=False, with_transformers=False)
                record, tensor_warnings = inspection.recheck_tensors(stage_model, list(info.files))  # what was written
                info.tokenizer_class, info.checkpoint = tokenizer_class, replace(checkpoint, tensors=record)
                _warn_new(info.warnings + tensor_warnings, warnings)
                modes.add("convert")
            manifest = Manifest(entries, {"checkpoint": info.checkpoint.to_record()})
            digest = manifest.digest()
            version = digest[:16]
            final = store / name / version
            if final.exists():  # converted content already there, or a concurrent import won the race
                return _existing_result(get_model(f"{name}:{version}"), info, source, t0, warnings)
            manifest.write(stage_model / MANIFEST_NAME)
            try:
                final = _publish(stage_model, store, name, version, info, source, manifest)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return _existing_result(get_model(f"{name}:{version}"), info, source, t0, warnings)
                if exc.errno in DISK_FULL:
                    raise
                raise Failure(f"could not publish {name}:{version} into {store}: {exc}") from None
    mode = "+".join(sorted(modes)) if modes else "copy"
    return ImportResult(
        tag=f"{name}:{version}",
        existed=False,
        path=final,
        info=info,
        manifest_digest=digest,
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        seconds=time.monotonic() - t0,
        source=source,
        mode=mode,
        converted=renamed,
        warnings=warnings,
    )


def _warn_new(found: list[str], warnings: list[str]) -> None:
    """Print and keep each warning not printed yet."""
    for w in found:
        if w not in warnings:
            warnings.append(w)
            console.warn(w)


def _existing_result(model: bentoml.Model, info: ModelInfo, source: Source, t0: float, warnings: list[str],
                     allow_missing_tensors: bool = True) -> ImportResult:
    sm = StoredModel.from_model(model)
    if info.tokenizer_class is None:  # the transformers check was skipped: the same content has this tokenizer
        info.tokenizer_class = sm.tokenizer_class
    stored = dict(sm.checkpoint.get("tensors") or {})  # the same bytes: the verdict recorded when they came in
    if stored.get("status") == "incomplete" and not allow_missing_tensors:
        error = tensor_check.judge(stored, root=info.path, allow_missing=False)[2]
        if error is not None:
            raise UserError(f"{error.message.removesuffix('; nothing was written')}; the store holds it as {sm.tag} "
                            f"(imported with {tensor_check.ALLOW_FLAG}); nothing was written", hint=error.hint)
    if not info.checkpoint.tensors:  # the inspection was closed early: the stored verdict stands for it
        info.checkpoint = replace(info.checkpoint, tensors=stored)
    return ImportResult(
        tag=sm.tag,
        existed=True,
        path=sm.path,
        info=info,
        manifest_digest=sm.manifest_digest,
        files=sm.files,
        bytes=sm.size,
        seconds=time.monotonic() - t0,
        source=source,
        mode="none",
        warnings=warnings,
    )

