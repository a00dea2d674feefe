"""The one module that touches BentoML's internals and exceptions: a BentoML upgrade changes this file.

Everything else in sealift asks here for the stores' directories, models and
bentos, and gets sealift errors (sealift.core.errors) instead of BentoML's:
`NotFound` becomes NotInStoreError (exit 2), other BentoMLExceptions become a
UserError or a Failure saying what failed. Imports of bentoml happen inside
the functions, so importing this module is cheap, and callers set the
environment bentoml reads (BENTOML_HOME, analytics off) first.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sealift.core.errors import Failure, NotInStoreError, UserError

if TYPE_CHECKING:
    import bentoml

__all__ = [
    "bento_from_path",
    "bento_store",
    "bentos_dir",
    "build_bentofile",
    "get_bento",
    "get_model",
    "in_store",
    "list_bentos",
    "list_models",
    "model_from_path",
    "model_store",
    "models_dir",
    "tag_problem",
    "write_model_yaml",
]

_IMPORT_HINT = "`sealift list` shows what is there; `sealift import SRC --name NAME` adds one"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- the stores


def models_dir() -> Path:
    """$BENTOML_HOME/models as bentoml resolves it (fixed when bentoml is first imported)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


def bentos_dir() -> Path:
    """$BENTOML_HOME/bentos as bentoml resolves it."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bento_store_dir.get())


def model_store() -> Any:
    """bentoml's model store object (get/delete by tag)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.model_store.get()


def bento_store() -> Any:
    """bentoml's bento store object (get/delete by tag)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.bento_store.get()


def in_store(store: Any, tag: Any) -> bool:
    """True if `store` (model_store() or bento_store()) holds `tag`."""
    from bentoml.exceptions import NotFound

    try:
        store.get(tag)
        return True
    except NotFound:
        return False


# --------------------------------------------------------------------------- models


def get_model(ref: str) -> bentoml.Model:
    """The Model for NAME[:VERSION] ("NAME" = latest); NotInStoreError if absent, UserError if `ref` is no tag."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        return bentoml.models.get(ref)
    except NotFound:
        raise NotInStoreError(f"model {ref!r} is not in the store {models_dir()}", ref=ref, hint=_IMPORT_HINT) from None
    except (BentoMLException, ValueError) as exc:
        raise UserError(f"model {ref!r}: {exc}", hint="use NAME or NAME:VERSION") from None


def list_models(name: str | None = None) -> list[bentoml.Model]:
    """Every model in the store (only versions of `name` if given: [] when there is none)."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        return list(bentoml.models.list(name) if name is not None else bentoml.models.list())
    except NotFound:
        return []
    except BentoMLException as exc:
        raise Failure(f"the Bento model store {models_dir()} has an unreadable entry: {exc}") from None


def tag_problem(name: str) -> str | None:
    """Why `name` is not a valid bentoml model or bento name, or None if it is."""
    from bentoml._internal.tag import Tag

    try:
        Tag(name)
    except ValueError as exc:
        return str(exc)
    return None


def write_model_yaml(stream: IO[str], tag: str, *, labels: Mapping[str, str], metadata: Mapping[str, Any]) -> None:
    """bentoml's model.yaml for a model sealift stores itself: no module, no signatures, no framework.

    The same ModelInfo `bentoml.models.create` would write, made without the
    scratch directory `Model.create` allocates (sealift places the files itself).
    """
    from bentoml._internal.models.model import ModelContext, ModelInfo, ModelOptions
    from bentoml._internal.tag import Tag
    from bentoml.exceptions import BentoMLException

    try:
        info = ModelInfo(
            tag=Tag.from_str(tag),
            module="",
            labels=dict(labels),
            options=ModelOptions(),
            metadata=dict(metadata),
            context=ModelContext(framework_name="", framework_versions={}),
            signatures={},
            api_version="v1",
        )
    except (BentoMLException, ValueError) as exc:
        raise Failure(f"bentoml refused the model record of {tag}: {_first_line(exc)}") from None
    info.dump(stream)


def _from_path(kind: str, path: Path) -> Any:
    """bentoml's Model or Bento read from a directory holding its model.yaml or bento.yaml (checked by bentoml)."""
    from bentoml._internal.bento.bento import Bento
    from bentoml._internal.models.model import Model
    from bentoml.exceptions import BentoMLException

    try:
        return (Model if kind == "model" else Bento).from_path(path)
    except (BentoMLException, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a bentoml {kind}: {_first_line(exc)}; nothing was imported") from None


def model_from_path(path: Path) -> Any:
    """bentoml's Model read from a directory holding model.yaml; UserError if it is none."""
    return _from_path("model", path)


# --------------------------------------------------------------------------- bentos


def get_bento(ref: str) -> Any:
    """The Bento for NAME[:VERSION]; NotInStoreError if absent or `ref` is no tag."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.bentos.get(ref)
    except (BentoMLException, ValueError):
        raise NotInStoreError(f"no bento {ref!r} in {bentos_dir()}", ref=ref,
                              hint="`bentoml list` shows the bentos; `sealift build NAME` makes one") from None


def list_bentos() -> list[Any]:
    """Every bento in the store."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return list(bentoml.bentos.list())
    except BentoMLException as exc:
        raise Failure(f"the Bento store {bentos_dir()} has an unreadable entry: {exc}") from None


def bento_from_path(path: Path) -> Any:
    """bentoml's Bento read from a directory holding bento.yaml; UserError if it is none."""
    return _from_path("bento", path)


def build_bentofile(bentofile: Path, ctx: Path, staging: Path) -> Any:
    """bentoml's Python build API, saving into a private store at `staging` (not the real one); the staged Bento.

    Failure (exit 1) when bentoml refuses the build or cannot load service.py.
    """
    import bentoml
    from bentoml._internal.bento.bento import BentoStore
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(ctx), _bento_store=BentoStore(staging))
    except BentoMLException as exc:
        raise Failure(f"bentoml build failed: {_first_line(exc)}") from exc
    except ImportError as exc:
        raise Failure(f"bentoml could not load service.py: {_first_line(exc)}",
                      hint="install the serving dependencies in this environment") from exc
