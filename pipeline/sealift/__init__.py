"""sealift: carry an LLM across an air gap with BentoML, verified, and serve it offline.

The package is laid out by stage, the way README's "The path" reads:

    core/     the ground: errors, console, paths, atomic writes, units, the offline env
    model/    `sealift import`: a downloaded checkpoint into the Bento model store
    bento/    `sealift build`: a Bento with weights, tokenizer, code and the service
    bundle/   `sealift export`: the bundle format and everything that writes it
    host/     the air-gapped side: `install`, `verify`, `start`, `check`, `doctor`
    serving/  the OpenAI-compatible service every bento runs
    cli/      the `sealift` command, thin

Imports run one way: cli -> host -> bento -> bundle -> model -> serving -> core
(tests/test_layers.py holds it). What a script may use is named here (`__all__`);
everything else is private by convention. The step functions are loaded on first
use, so `import sealift` stays cheap:

    import sealift
    tag = sealift.import_model(sealift.resolve("/models/Qwen2.5-7B-Instruct"), "qwen7b").tag
    bento = sealift.build_bento(tag, target="gpu").bento_tag
    bundle = sealift.export_bundle(bento, Path("/media/usb")).bundle
    sealift.install_bundle(Path(bundle))        # on the air-gapped host
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sealift.core.errors import Failure, NotInStoreError, SealiftError, UserError
from sealift.core.version import __version__

#: Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    "Source": "sealift.model.sources",
    "resolve": "sealift.model.sources",
    "ImportResult": "sealift.model.importer",
    "import_model": "sealift.model.importer",
    "VerifyReport": "sealift.model.store",
    "verify_model": "sealift.model.store",
    "BuildResult": "sealift.bento.build",
    "build_bento": "sealift.bento.build",
    "ExportResult": "sealift.bundle.result",
    "export_bundle": "sealift.bundle.export",
    "InstallResult": "sealift.host.install",
    "install_bundle": "sealift.host.install",
    "CheckReport": "sealift.host.check",
    "check_model": "sealift.host.check",
}

__all__ = [
    "BuildResult", "CheckReport", "ExportResult", "Failure", "ImportResult", "InstallResult", "NotInStoreError",
    "SealiftError", "Source", "UserError", "VerifyReport", "__version__", "build_bento", "check_model",
    "export_bundle", "import_model", "install_bundle", "resolve", "verify_model",
]

if TYPE_CHECKING:
    from sealift.bento.build import BuildResult, build_bento
    from sealift.bundle.export import export_bundle
    from sealift.bundle.result import ExportResult
    from sealift.host.check import CheckReport, check_model
    from sealift.host.install import InstallResult, install_bundle
    from sealift.model.importer import ImportResult, import_model
    from sealift.model.sources import Source, resolve
    from sealift.model.store import VerifyReport, verify_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sealift' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
