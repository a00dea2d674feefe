"""What export reads: a bento in the local store with its models, and the archive plan (`bentoml import`'s layout).

    load_bento("qwen7b:v1") -> BentoSource      plan_archive(bento) -> [Member]
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from sealift.bundle.tarstream import Member, walk
from sealift.core.errors import UserError
from sealift.model import _bentoml
from sealift.model.manifest import MANIFEST_NAME, Manifest

__all__ = ["BentoSource", "ModelSource", "bundle_requirements", "load_bento", "plan_archive"]


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
    members += walk(bento.path, "./", skip_top={"models"})
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
        members += walk(model.path, f"./models/{model.name}/{model.version}/", checks=checks)
    return members


def bundle_requirements(bento: BentoSource) -> list[str]:
    """The bento's requirement lines, with `bentoml==<the version that built it>` if it has none."""
    lines = []
    if bento.requirements_file.is_file():
        lines = [ln.strip() for ln in bento.requirements_file.read_text().splitlines()
                 if ln.strip() and not ln.strip().startswith("#")]
    if not any(re.match(r"bentoml\s*(==|@|$)", ln) for ln in lines):
        lines.append(f"bentoml=={bento.bentoml_version}")
    return lines



def load_bento(tag: str) -> BentoSource:
    """The bento `tag` and its models from the local store (this process's BENTOML_HOME)."""
    bento = _bentoml.get_bento(tag)
    models = []
    for info in bento.info.all_models:
        if getattr(info, "registry", "bentoml") != "bentoml":
            raise UserError(f"{tag} refers to {info.tag} on a model hub; only store models can cross the gap",
                            hint="import the model with `sealift import` and build again")
        model = _bentoml.get_model(str(info.tag))
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
