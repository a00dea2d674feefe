"""The Bento model store as sealift reads it: list, describe, get, verify, and find a model's bento.

    describe("qwen7b")       -> StoredModel (what `sealift import` recorded)
    list_models()            -> [StoredModel]
    verify_model("qwen7b")   -> VerifyReport (every byte re-hashed against the manifest)
    find_bento("qwen7b")     -> the tag of the newest bento built for that model

Writing into the store is sealift.model.importer's job; BentoML itself is reached
through sealift.model._bentoml.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealift.model import _bentoml
from sealift.core import console, paths
from sealift.core.atomic import sigterm_as_interrupt, write_atomic
from sealift.core.errors import NotInStoreError, UserError
from sealift.model.manifest import MANIFEST_NAME, Manifest, Problem, verify_dir
from sealift.core.units import fmt_bytes, fmt_params

if TYPE_CHECKING:
    import bentoml

__all__ = [
    "STORE_ID_FILE",
    "store_id",
    "LABEL_BACKEND",
    "LABEL_MANIFEST",
    "LABEL_MODEL",
    "LABEL_TARGET",
    "LABEL_VERSION",
    "MODEL_YAML",
    "SEALIFT_LABEL",
    "StoredModel",
    "VerifyReport",
    "describe",
    "find_bento",
    "get_model",
    "list_models",
    "models_dir",
    "print_table",
    "verify_model",
]

MODEL_YAML = "model.yaml"
#: The label on every model sealift imported.
SEALIFT_LABEL = "sealift"

#: Labels sealift puts on every bento it builds (openllm reads `aliases` and `platforms`), read by find_bento.
LABEL_MODEL = "sealift-model"
LABEL_MANIFEST = "sealift-manifest"
LABEL_TARGET = "sealift-target"
LABEL_BACKEND = "sealift-backend"
LABEL_VERSION = "sealift-version"


def models_dir() -> Path:
    """$BENTOML_HOME/models as bentoml resolves it (fixed when bentoml is first imported)."""
    return _bentoml.models_dir()


def get_model(ref: str) -> bentoml.Model:
    """The bentoml Model for NAME[:VERSION] ("NAME" = latest); NotInStoreError (exit 2, with a hint) if absent."""
    return _bentoml.get_model(ref)


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
    #: Who signed the bundle this model was installed from (sealift.host.registry.with_signers; None: not known).
    signed_by: str | None = None
    #: the serving engine the bundle it came in carries (sealift.host.registry.engine_of); None: not installed from one
    engine: str | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)  # sealift.model.checkpoint record: left out, license, deps

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
            checkpoint=dict(md.get("checkpoint") or {}),
        )


def describe(ref: str) -> StoredModel:
    """What a stored model is (NAME = latest): for build and bundle steps."""
    return StoredModel.from_model(get_model(ref))


def list_models() -> list[StoredModel]:
    """Every model in the store that sealift imported, by name then newest first."""
    models = _bentoml.list_models()
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
    from sealift.model import model_card

    quantized = any(m.checkpoint.get("quantization") or m.quantization for m in models)
    if quantized:
        table.add_column("QUANT", no_wrap=True)
    table.add_column("LICENSE", no_wrap=True)
    table.add_column("SOURCE", overflow="fold")
    signed = any(m.signed_by for m in models)
    if signed:
        table.add_column("SIGNED BY", overflow="fold")
    engines = any(m.engine for m in models)
    if engines:
        table.add_column("ENGINE", no_wrap=True)
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
            *([_quant_cell(m)] if quantized else []),
            model_card.license_short(m.checkpoint.get("license")),
            f"{src} ({kind})" + (" [code]" if m.trust_remote_code else ""),
            *([m.signed_by or "-"] if signed else []),
            *([m.engine or "-"] if engines else []),
        )
    console.out.print(table)


def _quant_cell(m: StoredModel) -> str:
    q = m.checkpoint.get("quantization") or {}
    if not q:
        return m.quantization or "-"
    return f"{q.get('method')}" + (f" {q['bits']}-bit" if q.get("bits") else "")



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
    with sigterm_as_interrupt(), console.byte_progress(manifest.total_bytes, f"verifying {model.tag}") as bar:
        problems += verify_dir(path, manifest, bar, ignore=(MANIFEST_NAME, MODEL_YAML), workers=workers)
    return VerifyReport(
        str(model.tag), path, manifest.digest(), len(manifest.files), manifest.total_bytes, time.monotonic() - t0, problems
    )



# --------------------------------------------------------------------------- bentos


def find_bento(ref: str, *, target: str | None = None, prefer_target: str | None = None) -> str:
    """The tag of the bento to serve or export for `ref`.

    `ref` is looked up as a model first (NAME or NAME:VERSION, the meaning
    `openllm start` had): the newest bento whose `sealift-model` label is that
    model's tag; only of `target` if given; of `prefer_target` if there is one
    (`sealift start` prefers the bento made for the host it runs on).
    Otherwise `ref` may name a bento directly (NAME:VERSION, or NAME for its latest).
    """
    try:
        model = describe(ref)
    except UserError:
        model = None
    if model is not None:
        matches = [
            b for b in _bentoml.list_bentos()
            if b.info.labels.get(LABEL_MODEL) == str(model.tag)
            and (target is None or b.info.labels.get(LABEL_TARGET) == target)
        ]
        preferred = [b for b in matches if b.info.labels.get(LABEL_TARGET) == prefer_target]
        if matches:
            return str(max(preferred or matches, key=lambda b: b.creation_time).tag)
        kind = f"{target} " if target else ""
        raise UserError(
            f"model {model.tag} has no {kind}bento in {paths.bentoml_home()}",
            hint=f"run: sealift build {model.name}" + (f" --target {target}" if target else ""),
        )
    try:
        return str(_bentoml.get_bento(ref).tag)
    except NotInStoreError:
        raise NotInStoreError(
            f"no model or bento named {ref!r} in {paths.bentoml_home()}",
            ref=ref,
            hint="see `sealift list`; import it with `sealift import SRC --name NAME`, then `sealift build NAME`",
        ) from None


#: In the Bento store's home: the store's id (one line); a delta bundle names the store it was made for.
STORE_ID_FILE = "sealift-store-id"


def store_id(*, create: bool = True) -> str | None:
    """This Bento store's id; made (once, atomically) when `create` and there is none yet."""
    path = paths.bentoml_home() / STORE_ID_FILE
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    write_atomic(tmp, (uuid.uuid4().hex + "\n").encode())
    try:
        os.link(tmp, path)  # exclusive: two first inventories at once agree on one id
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
