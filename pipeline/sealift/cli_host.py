"""The commands about what a host holds and needs: `inventory` (for a delta export, sealift.inventory),
`sbom` (a bundle's CycloneDX SBOM), `doctor` (ready to serve offline?) and `env` (the serving environment).

Registered by sealift.cli; each calls one step module, as every command does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sealift import console

__all__ = ["doctor", "env", "inventory", "sbom"]

JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout (implies --quiet).")


def inventory(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", metavar="FILE", help="Write the inventory (JSON) to FILE, to carry to the online host."),
    json_output: bool = typer.Option(False, "--json", help="Print the inventory itself as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or chatter."),
) -> None:
    """List what this host holds, by sha256: model files, bento files and kept wheels, with their tags.

    Carry the file to the online host and run `sealift export NAME DEST --have FILE`:
    the bundle then leaves out every file listed here, and `sealift install` takes
    those from this host's store and wheel pool, hashing each byte as it is taken.

    Model files are not re-hashed: their sha256 come from each model's recorded
    sealift manifest (checked against the digest recorded at import). Wheels come
    from $SEALIFT_HOME/wheels with the sha256 install recorded (a wheel with none is
    hashed now); bento files are hashed (they are small).

    The inventory names this store's id ($BENTOML_HOME/sealift-store-id, made on
    first use): a delta bundle made from it installs on this store only (exit 2
    elsewhere).
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift import inventory as inventory_step

    inv = inventory_step.take_inventory()
    written = inventory_step.write_inventory(inv, output) if output is not None else None
    console.emit(inv.to_dict(), lambda: inv.print_human(written))


def sbom(
    bundle_dir: Path = typer.Argument(..., metavar="BUNDLE", help="A bundle directory (or its sbom.cdx.json)."),
    json_output: bool = JSON,
) -> None:
    """Summarize a bundle's SBOM (sbom.cdx.json, CycloneDX): packages, licenses, and what states no license.

    The SBOM is checked against its SHA256SUMS line first; a changed one is refused (exit 2).
    """
    console.set_mode(json_output=json_output)
    from sealift import sbom as sbom_step

    summary = sbom_step.summarize(bundle_dir)
    console.emit(summary.to_dict(), summary.print_human)


def doctor(
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="A model to check (default: every model in the store)."),
    quick: bool = typer.Option(False, "--quick", help="Do not re-hash the weights against their manifest."),
    json_output: bool = JSON,
) -> None:
    """Check this host for serving offline: env, store, bento, venv, openllm, GPU, disk; exit 1 on any failure."""
    console.set_mode(json_output=json_output)
    from sealift import doctor as doctor_step

    report = doctor_step.run_doctor(name, verify=not quick)
    console.emit(report.to_dict(), report.print_human)
    if not report.ok:
        raise typer.Exit(1)


def env(name: Optional[str] = typer.Argument(None, metavar="NAME", help="An installed model (default: all).")) -> None:
    """Print the environment for serving offline, for `eval "$(sealift env)"`."""
    from sealift import registry

    sys.stdout.write(registry.env_text(name))
