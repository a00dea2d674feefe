"""The bundle's archive into this host's Bento store, as `bentoml import` would: staged, checked, then renamed in.

    staged = StagedImport(trusted, bento_tag, model_tags, digests, fill)
    staged.extract(advance)       every byte of the archive read once and hashed (sealift.host.unpack); what the
                                  store lacks is written into a staging folder under BENTOML_HOME; a delta's
                                  gaps filled from this store; each model and the bento checked by bentoml
    staged.place() -> ImportOutcome   only once the whole bundle verified: renamed into the store
    staged.close()                the staging folder removed (a kill leaves one the next install sweeps)

Models already in the store are left alone (as bentoml does); a bento already there is reported
present. `bentoml import` would copy every byte twice, through the system temp directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sealift.core import paths
from sealift.core.atomic import sweep_dead, write_atomic
from sealift.core.errors import UserError
from sealift.host import verify
from sealift.host.unpack import member_rel
from sealift.model import _bentoml
from sealift.model.manifest import MANIFEST_NAME, Manifest, code_problems

__all__ = ["INSTALL_STAGING", "ImportOutcome", "StagedImport"]

INSTALL_STAGING = ".sealift-install-"


@dataclass
class ImportOutcome:
    bento: str  # "imported" | "present"
    models: dict[str, str]
    bento_path: str
    model_paths: dict[str, str]
    extracted_bytes: int


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


class StagedImport:
    """What the store lacks of the archive, extracted into staging and checked; placed only when asked."""

    def __init__(self, trusted: verify.Trusted, bento_tag: str, model_tags: list[str],
                 digests: dict[str, str] | None = None,
                 fill: Callable[[Path, Callable[[str], bool]], None] | None = None) -> None:
        self.trusted = trusted
        self.bento_tag = bento_tag
        self.model_tags = model_tags
        self.digests = digests or {}
        self.fill = fill
        self.bento_store = _bentoml.bento_store()
        self.model_store = _bentoml.model_store()
        self.need_bento = not _bentoml.in_store(self.bento_store, bento_tag)
        need_models = [t for t in model_tags if not _bentoml.in_store(self.model_store, t)]
        self.model_dirs = {f"models/{t.split(':')[0]}/{t.split(':')[1]}": t for t in need_models}
        home = paths.bentoml_home()
        home.mkdir(parents=True, exist_ok=True)
        sweep_dead(home, INSTALL_STAGING)
        self.staging = Path(tempfile.mkdtemp(prefix=f"{INSTALL_STAGING}{os.getpid()}-", dir=home))
        self.extracted = 0

    def wanted(self, rel: str) -> bool:
        top = rel.split("/")[0]
        if top != "models":
            return self.need_bento
        if rel.count("/") < 2:  # models/ and models/NAME/ (with its `latest`) are not extracted
            return False
        return "/".join(rel.split("/")[:3]) in self.model_dirs

    def extract(self, advance: Callable[[int], None]) -> None:
        """Read the archive once (hashed), write what is wanted, fill a delta's gaps, check what bentoml checks."""
        with self.trusted.stream(self.trusted.doc["archive"]) as stream:
            members = verify.archive_members(stream, self.trusted.doc, advance)
            self.label = stream.label
            self.extracted = stream.unpack(members, self.staging, self.wanted, advance)
        if self.fill is not None:
            self.fill(self.staging, self.wanted)
        if any(self.wanted(member_rel(m.name)) for m in members) or self.fill is not None:
            _syncfs(self.staging)
        for rel, tag in self.model_dirs.items():
            self._check_model(self.staging / rel, rel, tag)
        if self.need_bento:  # bentoml reads bento.yaml; the models/ still beside it are moved out at place()
            bento = _bentoml.bento_from_path(self.staging)
            if str(bento.tag) != self.bento_tag:
                raise UserError(f"{self.label} holds bento {bento.tag}, the manifest says {self.bento_tag}; "
                                "nothing was imported")

    def _check_model(self, src: Path, rel: str, tag: str) -> None:
        model = _bentoml.model_from_path(src)
        if str(model.tag) != tag:
            raise UserError(f"{self.label}: {rel} holds model {model.tag}, the manifest says {tag}; "
                            "nothing was imported")
        want = self.digests.get(tag)
        if want:  # before it is stored: the model's own manifest is the one the bundle names
            try:
                got = Manifest.read(src / MANIFEST_NAME).digest()
            except (OSError, ValueError) as exc:
                got = f"unreadable ({exc})"
            if got != want:
                raise UserError(f"{self.label}: model {tag} has manifest digest {got}, manifest.json says {want}; "
                                "nothing was imported", hint="do not install this bundle; export it again")
        code = code_problems(src) if (src / MANIFEST_NAME).is_file() else []
        if code:  # a bundle re-sealed after its model's code was changed: that code must never be stored
            raise UserError(f"{self.label}: model {tag}: {code[0]}: not the code its manifest recorded at import; "
                            "nothing was imported", hint="do not install this bundle; export it again from the source")

    def place(self) -> ImportOutcome:
        """Rename the checked models, then the bento, into the store (all or nothing)."""
        added: list[str] = []
        try:
            for rel, tag in self.model_dirs.items():
                src = self.staging / rel
                _place(self.model_store, _bentoml.models_dir(), _bentoml.model_from_path(src).tag, src)
                added.append(tag)
            if self.need_bento:
                shutil.rmtree(self.staging / "models", ignore_errors=True)  # what is left: models the store had
                bento = _bentoml.bento_from_path(self.staging)
                _place(self.bento_store, _bentoml.bentos_dir(), bento.tag, self.staging)
        except BaseException:
            for tag in added:  # all or nothing: do not leave models of a bento that failed to import
                try:
                    self.model_store.delete(tag)
                except Exception:  # noqa: BLE001 - best effort rollback
                    pass
            raise
        return ImportOutcome(
            bento="imported" if self.need_bento else "present",
            models={t: ("imported" if t in added else "present") for t in self.model_tags},
            bento_path=str(self.bento_store.get(self.bento_tag).path),
            model_paths={t: str(self.model_store.get(t).path) for t in self.model_tags},
            extracted_bytes=self.extracted,
        )

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
