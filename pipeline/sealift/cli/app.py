"""The `sealift` command line: thin; every command calls one step module.

Expected errors (sealift.core.errors.SealiftError) become one line on stderr and
exit code 2 (bad input) or 1 (failure); nothing else prints a traceback unless
SEALIFT_DEBUG=1.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from sealift.core import console
from sealift.core.version import __version__

HELP = """\
Carry a language model across an air gap, verified, and serve it offline.

[bold]THE PATH[/bold]

  online host
    sealift import SRC --name NAME  into the Bento store, sha256 manifest
    sealift build NAME              Bento: weights, tokenizer, code, service
    sealift export NAME DEST        bundle: bento tar, wheels, SHA256SUMS
  air-gapped host
    sealift install BUNDLE          verify every byte, import, offline venv
    sealift inventory -o FILE       what it holds; `export --have FILE`
                                    then carries only what it lacks
    sealift sbom BUNDLE             what the bundle carries, and its licenses
    sealift start NAME              OpenAI API on 127.0.0.1:3000
                                    (or openllm serve NAME, bentoml serve)
    sealift check NAME              answers like the model that left?
    sealift eval-config NAME --for opencompass|lm-eval

[bold]SOURCES[/bold]

  SRC is a model directory, a Hugging Face id in the local HF cache
  (HF_HOME, HF_HUB_CACHE) or a ModelScope id in MODELSCOPE_CACHE.
  Only `import --download` uses the network.

[bold]EXIT STATUS[/bold]

  0 success; 1 the work failed (a verification mismatch);
  2 bad input (missing shard, truncated file, corrupted bundle, unknown
    name); nothing is written.

[bold]ENVIRONMENT[/bold]

  BENTOML_HOME   the Bento store (default ~/bentoml)
  SEALIFT_HOME   venvs, openllm repo, env file (default ~/.sealift)
  SEALIFT_DEBUG  1 shows tracebacks
  SEALIFT_ALLOWED_SIGNERS  install requires a signature by a key listed
                 there (see `sealift install --help`)
"""


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM where a step maps it to Ctrl-C) during a command; `main` says so and exits 130."""

    def __init__(self, command: str | None) -> None:
        super().__init__(command)
        self.command = command


class _Group(TyperGroup):
    """typer turns KeyboardInterrupt into a silent exit 130; this hands it to `main` instead, which says so."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted(ctx.invoked_subcommand) from None


#: What an interrupted command leaves behind, said after "interrupted".
INTERRUPTED = {
    "import": "the partial copy was removed; nothing was added to the store",
    "export": "the bundle's .partial folder is kept; the same command resumes it",
}

app = typer.Typer(
    cls=_Group,
    name="sealift",
    help=HELP,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout (implies --quiet).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or chatter.")


def emit_report(report: Any) -> None:
    """Print a report that has `ok`, `to_dict()` and `print_human()` (verify, check, doctor); exit 1 unless ok."""
    console.emit(report.to_dict(), report.print_human)
    if not report.ok:
        raise typer.Exit(1)


#: What `sealift --version --verbose` reports beside sealift: the stack a bento is built and served with, each
#: with the versions sealift was tested with (sealift.core.version.TESTED, README's "Tested versions").
VERSION_DISTRIBUTIONS = ("bentoml", "transformers", "torch", "vllm", "uv", "huggingface-hub", "tokenizers",
                         "safetensors")


def _versions() -> list[tuple[str, str]]:
    """(distribution, installed version or "not installed"), read from package metadata: nothing is imported."""
    import importlib.metadata

    found = []
    for dist in VERSION_DISTRIBUTIONS:
        try:
            found.append((dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            found.append((dist, "not installed"))
    return found


def _against_tested(dist: str, version: str) -> str:
    """" (tested 4.56.0 - 5.24.0)", with "newer than tested" or "older than tested" where it is outside."""
    from sealift.core.version import TESTED, tested_range

    tested = tested_range(dist)
    if tested is None:
        return ""
    low, high = TESTED[dist]
    where = ""
    try:
        from packaging.version import Version

        v = Version(version).release
        where = "; newer than tested" if v > Version(high).release else \
            "; older than tested" if v < Version(low).release else ""
    except ValueError:  # "not installed"
        pass
    return f" (tested {tested}{where})"


def _print_version(verbose: bool) -> None:
    typer.echo(f"sealift {__version__}")
    if verbose:
        from sealift.core.version import TESTED_PYTHON

        for dist, version in _versions():
            typer.echo(f"{dist} {version}{_against_tested(dist, version)}")
        tested = " - ".join(dict.fromkeys(TESTED_PYTHON))
        typer.echo(f"python {sys.version.split()[0]} ({sys.executable}; tested {tested})")


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print sealift's version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="With --version: also the versions of bentoml, transformers, torch, vllm, uv, huggingface-hub, "
                                      "tokenizers and safetensors, each with the range sealift was tested with."),
) -> None:
    if version:
        _print_version(verbose)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:  # `sealift -v` alone: what `sealift` alone shows
        typer.echo(ctx.get_help())
        raise typer.Exit()
