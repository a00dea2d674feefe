"""Import models into the Bento model store, and read them back: list, describe, verify.

Import: inspect the source (nothing is written for an incomplete model), copy
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
`bentoml models list` shows. We build the same `Model` (`Model.create`, same
labels/metadata/model.yaml) and publish it with a rename instead.

Version = the first 16 hex digits of the manifest digest: a model's identity is
its content, so importing the same content under the same name returns the
existing tag and writes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealift import __version__, console
from sealift.atomic import fsync_dir, fsync_tree, sweep_dead, write_atomic
from sealift.errors import Failure, UserError
from sealift.inspect import Inspection, ModelInfo, fmt_bytes, fmt_params, inspect_model
from sealift.manifest import (
    MANIFEST_NAME,
    Cancelled,
    FileEntry,
    Manifest,
    Problem,
    cancellable,
    copy_and_hash,
    hash_file,
    link_and_hash,
    map_parallel,
    verify_dir,
)
from sealift.sources import Source

if TYPE_CHECKING:
    import bentoml

MODEL_YAML = "model.yaml"
STAGING_DIRNAME = ".sealift-staging"
SEALIFT_LABEL = "sealift"


# --------------------------------------------------------------------------- the store


def models_dir() -> Path:
    """$BENTOML_HOME/models as bentoml resolves it (fixed when bentoml is first imported)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


def _bentoml():
    import bentoml

    return bentoml


def get_model(ref: str) -> bentoml.Model:
    """The bentoml Model for NAME[:VERSION] ("NAME" = latest); UserError with a hint if absent."""
    bentoml = _bentoml()
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        return bentoml.models.get(ref)
    except NotFound:
        raise UserError(
            f"model {ref!r} is not in the store {models_dir()}",
            hint="`sealift list` shows what is there; `sealift import SRC --name NAME` adds one",
        ) from None
    except (BentoMLException, ValueError) as exc:
        raise UserError(f"model {ref!r}: {exc}", hint="use NAME or NAME:VERSION") from None


@dataclass
class StoredModel:
    """A model sealift imported, as its metadata describes it."""

    tag: str
    name: str
    version: str
    path: Path
    size: int
    params: int | None
    dtype: str | None
    context_length: int | None
    source: dict[str, Any]
    trust_remote_code: bool
    manifest_digest: str
    code_files: dict[str, str]
    gpu_memory_bytes: int | None
    model_type: str | None
    architectures: list[str]
    files: int = 0
    created: str = ""
    chat_template: bool = True
    tokenizer_class: str | None = None
    quantization: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    @classmethod
    def from_model(cls, model: bentoml.Model) -> StoredModel:
        md = dict(model.info.metadata)
        if SEALIFT_LABEL not in model.info.labels or "manifest_digest" not in md:
            raise UserError(
                f"model {model.tag} was not imported by sealift (it has no manifest)",
                hint="import its files with `sealift import DIR --name NAME`",
            )
        return cls(
            tag=str(model.tag),
            name=model.tag.name,
            version=str(model.tag.version),
            path=Path(model.path),
            size=int(md.get("size", 0)),
            params=md.get("params"),
            dtype=md.get("dtype"),
            context_length=md.get("context_length"),
            source=dict(md.get("source") or {}),
            trust_remote_code=bool(md.get("trust_remote_code")),
            manifest_digest=str(md["manifest_digest"]),
            code_files=dict(md.get("code_files") or {}),
            gpu_memory_bytes=md.get("gpu_memory_bytes"),
            model_type=md.get("model_type"),
            architectures=list(md.get("architectures") or []),
            files=int(md.get("files", 0)),
            created=model.info.creation_time.isoformat(timespec="seconds"),
            chat_template=bool(md.get("chat_template", True)),
            tokenizer_class=md.get("tokenizer_class"),
            quantization=md.get("quantization"),
        )


def describe(ref: str) -> StoredModel:
    """What a stored model is (NAME = latest): for build and bundle steps."""
    return StoredModel.from_model(get_model(ref))


def list_models() -> list[StoredModel]:
    """Every model in the store that sealift imported, by name then newest first."""
    bentoml = _bentoml()
    from bentoml.exceptions import BentoMLException

    try:
        models = bentoml.models.list()
    except BentoMLException as exc:
        raise Failure(f"the Bento model store {models_dir()} has an unreadable entry: {exc}") from None
    found = [StoredModel.from_model(m) for m in models if m.info.labels.get(SEALIFT_LABEL) == "1"]
    found.sort(key=lambda m: m.created, reverse=True)
    found.sort(key=lambda m: m.name)
    return found


def print_table(models: list[StoredModel]) -> None:
    from rich.table import Table

    if not models:
        console.out.print(f"no models imported by sealift in {models_dir()} (add one: sealift import SRC --name NAME)")
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "VERSION", "SIZE", "PARAMS", "DTYPE", "CONTEXT"):  # never cut: tags are copied from here
        table.add_column(col, justify="right" if col in ("SIZE", "PARAMS", "CONTEXT") else "left", no_wrap=True)
    table.add_column("SOURCE", overflow="fold")
    for m in models:
        src = m.source.get("ref", "?")
        kind = m.source.get("kind", "?")
        table.add_row(
            m.name,
            m.version,
            fmt_bytes(m.size),
            fmt_params(m.params),
            m.dtype or "-",
            f"{m.context_length:,}" if m.context_length else "-",
            f"{src} ({kind})" + (" [code]" if m.trust_remote_code else ""),
        )
    console.out.print(table)


# --------------------------------------------------------------------------- staging


#: errnos that mean the store's filesystem is full (or the user's quota is).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Free space to keep beyond the model's bytes (model.yaml, manifest, directory blocks).
SLACK = 4 * 1024 * 1024


def _check_free_space(store: Path, needed: int) -> None:
    """UserError (exit 2) before anything is written unless the store's filesystem has `needed` bytes free."""
    probe = store
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + SLACK > free:
        raise UserError(
            f"not enough free space for the model in {store}: it needs {fmt_bytes(needed + SLACK)}, "
            f"{fmt_bytes(free)} available; nothing was written",
            hint="free some space, or set BENTOML_HOME to a bigger disk",
        )


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


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, so cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------- import


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
            "converted": self.converted,
            "warnings": self.warnings,
        }

    def print_human(self) -> None:
        out = console.out
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
    from bentoml._internal.tag import Tag

    if ":" in name:
        raise UserError(f"--name {name!r} must not hold a version", hint="sealift picks the version from the content")
    lowered = name.lower()  # bentoml would lowercase it too, with a log line of its own
    try:
        Tag(lowered)
    except ValueError as exc:
        raise UserError(f"--name {name!r} is not a valid model name: {exc}", hint="use letters, digits, '-', '_', '.'") from None
    if lowered != name:
        console.warn(f"--name {name!r} is stored as {lowered!r} (model names are lowercase)")
    return lowered


def _existing_versions(name: str) -> list[bentoml.Model]:
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    try:
        return [m for m in bentoml.models.list(name) if m.info.labels.get(SEALIFT_LABEL) == "1"]
    except NotFound:
        return []


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


def _safetensors_name(rel: str) -> str:
    p = Path(rel)
    stem = p.stem.replace("pytorch_model", "model", 1)
    return p.with_name(stem + ".safetensors").as_posix()


def _convert_pickles(src_root: Path, info: ModelInfo, dst_root: Path) -> tuple[list[FileEntry], dict[str, str], set[str]]:
    """torch.load(weights_only=True) each pickle and write it as safetensors, hashing the bytes written.

    Returns (entries, {pickle: safetensors}, source files consumed: the pickles
    and their `*.bin.index.json`, which is rewritten as `*.safetensors.index.json`).
    """
    try:
        import torch
        from safetensors.torch import save as st_save
    except ImportError:
        raise UserError("--to-safetensors needs torch", hint="pip install torch==2.13.0 (CPU)") from None
    import hashlib
    import json

    entries: list[FileEntry] = []
    renamed: dict[str, str] = {}
    consumed: set[str] = set()
    for rel in info.pickle_files:
        new = _safetensors_name(rel)
        consumed.add(rel)
        if new in info.files:
            renamed[rel] = f"{new} (already there; pickle left out)"
            continue
        try:
            state = torch.load(src_root / rel, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError and friends: not a plain tensor dict
            raise UserError(
                f"{rel} cannot be converted: {str(exc).strip().splitlines()[0][:160]}",
                hint="remove it from the source, or keep pickles with --allow-pickle",
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{rel} is not a dict of tensors", hint="remove it from the source, or keep pickles with --allow-pickle")
        seen: set[int] = set()
        tensors = {}
        for k, v in state.items():  # safetensors refuses shared storage (tied weights): give each its own
            ptr = v.untyped_storage().data_ptr()
            tensors[k] = v.contiguous().clone() if ptr in seen else v.contiguous()
            seen.add(ptr)
        data = st_save(tensors, metadata={"format": "pt"})
        del state, tensors
        dst = dst_root / new
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dst, data)
        entries.append(FileEntry(new, len(data), hashlib.sha256(data).hexdigest()))
        renamed[rel] = new
        del data
    for rel in sorted(f for f in info.files if f.endswith(".bin.index.json") or f.endswith(".pt.index.json")):
        doc = json.loads((src_root / rel).read_text())
        doc["weight_map"] = {k: Path(_safetensors_name(v)).name for k, v in doc.get("weight_map", {}).items()}
        new = rel.replace("pytorch_model", "model", 1).rsplit(".", 3)[0] + ".safetensors.index.json"
        consumed.add(rel)
        if new in info.files:
            continue
        data = (json.dumps(doc, indent=2) + "\n").encode()
        write_atomic(dst_root / new, data)
        entries.append(FileEntry(new, len(data), hashlib.sha256(data).hexdigest()))
        renamed[rel] = new
    return entries, renamed, consumed


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
        "source": {"ref": source.ref, "kind": source.kind, "revision": source.revision},
    })


def _publish(stage_model: Path, store: Path, name: str, version: str, info: ModelInfo, source: Source, manifest: Manifest) -> Path:
    """Write model.yaml with bentoml's own Model, then rename the staged dir into models/NAME/VERSION."""
    from bentoml._internal.models.model import Model, ModelContext

    labels = {SEALIFT_LABEL: "1", "source": source.kind, "architecture": info.architecture}
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = str(stage_model.parent)  # Model.create's (empty) scratch dir stays on our staging area
    try:
        model = Model.create(
            f"{name}:{version}",
            module="",
            api_version="v1",
            signatures={},
            labels=labels,
            metadata=_metadata(info, source, manifest),
            context=ModelContext(framework_name="", framework_versions={}),
        )
    finally:
        tempfile.tempdir = saved_tempdir
    with open(stage_model / MODEL_YAML, "w", encoding="utf-8") as f:
        model.info.dump(f)
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
) -> ImportResult:
    """Inspect, then copy+hash (or link+hash) SOURCE into the store as NAME:<content version>.

    UserError (exit 2) before anything is written if the model is incomplete,
    needs code without trust_remote_code, or holds pickles without
    allow_pickle/to_safetensors. Same content under the same name returns the
    existing tag without writing. Ctrl-C or SIGTERM removes the partial copy (KeyboardInterrupt
    propagates; the CLI says what was kept).
    """
    t0 = time.monotonic()
    name = _check_name(name)
    inspection = Inspection(source.path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle or to_safetensors)
    info = inspection.info  # structural checks passed; transformers checks run in the background
    warnings = list(info.warnings)
    for w in warnings:
        console.warn(w)
    convert = to_safetensors and bool(info.pickle_files)
    store = models_dir()

    with _sigterm_as_interrupt(), contextlib.closing(inspection):
        if not convert:
            same = _find_same_content(name, info, workers)
            if same is not None:  # checked in full when it was imported; the same bytes need no second look
                inspection.close()
                return _existing_result(same, info, source, t0, warnings)

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
                    entries, renamed, consumed = _convert_pickles(source.path, info, stage_model)
                rels = [r for r in info.files if r not in consumed]
                placed, modes = _place_files(
                    source.path, rels, stage_model, info.files, link=link, label=f"importing {name}",
                    workers=workers, abort=inspection.failed,
                )
            except Cancelled:
                inspection.finish()  # raises the inspection's UserError
                raise
            info = inspection.finish()
            entries += placed
            if convert:  # params and dtype now come from the new headers; config and tokenizer are unchanged
                tokenizer_class = info.tokenizer_class
                info = inspect_model(stage_model, trust_remote_code=trust_remote_code, allow_pickle=False, with_transformers=False)
                info.tokenizer_class = tokenizer_class
                for w in info.warnings:
                    if w not in warnings:
                        warnings.append(w)
                        console.warn(w)
                modes.add("convert")
            manifest = Manifest(entries)
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


def _existing_result(model: bentoml.Model, info: ModelInfo, source: Source, t0: float, warnings: list[str]) -> ImportResult:
    sm = StoredModel.from_model(model)
    if info.tokenizer_class is None:  # the transformers check was skipped: the same content has this tokenizer
        info.tokenizer_class = sm.tokenizer_class
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


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """The result of re-hashing a stored model against its manifest."""

    tag: str
    path: Path
    manifest_digest: str | None
    files: int
    bytes: int
    seconds: float
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "ok": self.ok,
            "path": str(self.path),
            "manifest_digest": self.manifest_digest,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "problems": [p.to_dict() for p in self.problems],
        }

    def print_human(self) -> None:
        if self.ok:
            console.out.print(
                f"[green]ok[/] {self.tag}: {self.files} files, {fmt_bytes(self.bytes)} match sha256:{self.manifest_digest} "
                f"({self.seconds:.1f}s)",
                soft_wrap=True,
            )
            return
        console.out.print(f"[red]MISMATCH[/] {self.tag}: {len(self.problems)} problem(s) in {self.path}", soft_wrap=True)
        for p in self.problems:
            console.out.print(f"  {p}", soft_wrap=True)


def verify_model(ref: str, *, workers: int | None = None) -> VerifyReport:
    """Re-hash every stored file against sealift-manifest.json and the digest in the metadata."""
    t0 = time.monotonic()
    model = get_model(ref)
    path = Path(model.path)
    expected_digest = model.info.metadata.get("manifest_digest")
    try:
        manifest = Manifest.read(path / MANIFEST_NAME)
    except FileNotFoundError:
        return VerifyReport(str(model.tag), path, expected_digest, 0, 0, time.monotonic() - t0, [Problem(MANIFEST_NAME, "missing")])
    except ValueError as exc:
        problem = Problem(MANIFEST_NAME, "unreadable", actual=str(exc))
        return VerifyReport(str(model.tag), path, expected_digest, 0, 0, time.monotonic() - t0, [problem])
    problems: list[Problem] = []
    if expected_digest and manifest.digest() != expected_digest:
        problems.append(Problem(MANIFEST_NAME, "sha256", f"digest {expected_digest}", f"digest {manifest.digest()}"))
    with _sigterm_as_interrupt(), console.byte_progress(manifest.total_bytes, f"verifying {model.tag}") as bar:
        problems += verify_dir(path, manifest, bar, ignore=(MANIFEST_NAME, MODEL_YAML), workers=workers)
    return VerifyReport(
        str(model.tag), path, manifest.digest(), len(manifest.files), manifest.total_bytes, time.monotonic() - t0, problems
    )


__all__ = [
    "ImportResult",
    "StoredModel",
    "VerifyReport",
    "describe",
    "get_model",
    "import_model",
    "list_models",
    "models_dir",
    "print_table",
    "verify_model",
    "Cancelled",
]
