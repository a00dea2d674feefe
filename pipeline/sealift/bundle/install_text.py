"""INSTALL.txt and the command lines export and install print: how to get a bundle running on the other side."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from sealift.core.version import __version__
from sealift.bundle import signing
from sealift.bundle.format import OPENLLM_REQUIREMENTS, WHEELS, WHEELS_OPENLLM

if TYPE_CHECKING:
    from sealift.bundle.source import BentoSource

__all__ = ["CLI_VENV", "OPENLLM_VENV", "bootstrap_commands", "install_commands", "install_steps", "install_text"]


#: Where INSTALL.txt puts sealift's own venv and openllm's on the air-gapped host.
CLI_VENV = "~/.sealift/cli"
OPENLLM_VENV = "~/.sealift/openllm"


def bootstrap_commands(bundle_name: str, python_version: str, *, openllm: bool) -> list[tuple[str, str]]:
    """(command, why) lines that put sealift (and openllm) on a host that has only Python, from the bundle.

    pip with --no-index reads nothing but the bundle's wheels (resolved for this
    target Python, hence `pythonX.Y`); openllm goes in a venv of its own (its
    pins clash with sealift's) and only its `openllm` command joins sealift's.
    """
    python = f"python{python_version}" if python_version else "python3"
    lines = [
        (f"{python} -m venv {CLI_VENV}", "sealift's own venv (any directory will do)"),
        (f"{CLI_VENV}/bin/pip install --no-index --find-links {bundle_name}/{WHEELS} sealift",
         f"sealift and its dependencies from {WHEELS}/, no index"),
    ]
    if openllm:
        reqs = " ".join(f"'{r}'" if "<" in r else r for r in OPENLLM_REQUIREMENTS)
        lines += [
            (f"{python} -m venv {OPENLLM_VENV}", "openllm in a venv of its own: it pins bentoml==1.4.8"),
            (f"{OPENLLM_VENV}/bin/pip install --no-index --find-links {bundle_name}/{WHEELS_OPENLLM} {reqs}",
             f"openllm and its pins from {WHEELS_OPENLLM}/, no index"),
            (f"ln -sf {OPENLLM_VENV}/bin/openllm {CLI_VENV}/bin/", "only the openllm command beside sealift's"),
        ]
    lines.append((f'export PATH="{CLI_VENV.replace("~", "$HOME")}/bin:$PATH"', "sealift (and openllm) on PATH"))
    return lines


def install_steps(bundle_name: str, name: str, *, signed: bool = False) -> list[tuple[str, str]]:
    """(command, why): check, install and serve the bundle once sealift is on the host."""
    return [
        *([(f"(cd {bundle_name} && {signing.manual_check_command()})",
             "optional: who signed it (install --allowed-signers checks it)")] if signed else []),
        (f"(cd {bundle_name} && sha256sum -c SHA256SUMS)", "optional: install verifies every byte itself"),
        (f"sealift install {bundle_name}", "verify, import, offline venv, register for openllm"),
        (f"sealift start {name}", "OpenAI API on http://127.0.0.1:3000/v1"),
    ]


def install_commands(bundle_name: str, name: str, *, signed: bool = False) -> list[str]:
    return [c for c, _ in install_steps(bundle_name, name, signed=signed)]


#: INSTALL.txt is read in a terminal: a comment that would make its line longer goes above the command.
TEXT_WIDTH = 80


def _commented(pairs: list[tuple[str, str]]) -> list[str]:
    """`  command   # why` lines, the comments aligned; `  # why` above a command where it would not fit."""
    width = max(len(c) for c, _ in pairs) + 2
    if any(len(f"  {c.ljust(width)}# {why}") > TEXT_WIDTH for c, why in pairs):
        return [line for c, why in pairs for line in (f"  # {why}", f"  {c}")]
    return [f"  {c.ljust(width)}# {why}" for c, why in pairs]


def install_text(bento: BentoSource, archive: str, bundle_name: str, has_wheels: bool, *, python_version: str = "",
                  sealift_wheel: str = "", openllm: bool = False, signed: bool = False) -> str:
    """INSTALL.txt: how to get sealift (and openllm) onto a host that has only Python, then install and serve."""
    name = bento.name
    openllm_why = ("openllm from the venv made above" if openllm else
                   "needs openllm 0.6.30 in a venv of its own: export --with-openllm carries it")
    also = [
        (f'eval "$(sealift env)"; openllm serve {name}', openllm_why),
        (f'eval "$(sealift env {name})"; bentoml serve {bento.tag}', "the runtime venv's bentoml"),
    ]
    lines = [
        f"sealift bundle of {bento.tag} ({', '.join(m.tag for m in bento.models) or 'no models'})",
        f"written by sealift {__version__} on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        "On the air-gapped host, in the directory that holds this bundle:",
        "",
    ]
    if sealift_wheel:
        python = f"python{python_version}" if python_version else "python3"
        lines += [
            f"1. sealift from {WHEELS}/, no package index (this host needs only {python}):",
            "",
            *(line for c, why in bootstrap_commands(bundle_name, python_version, openllm=openllm)
              for line in (f"  # {why}", f"  {c}")),  # always above: these commands are long
            "",
            "2. the model:",
            "",
        ]
    lines += [
        *_commented(install_steps(bundle_name, name, signed=signed)),
        "",
        "It is also served by:",
        *_commented(also),
        "",
        f"`bentoml import {archive}` reads the archive too.",
    ]
    if not has_wheels:
        lines += ["", "This bundle has no wheels/: the host must already have sealift", "and the bento's Python packages."]
    return "\n".join(lines) + "\n"
