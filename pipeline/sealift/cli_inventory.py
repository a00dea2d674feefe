"""`sealift inventory`: what this air-gapped host holds, for a delta export on the online host (sealift.inventory)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sealift import console

__all__ = ["inventory"]


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
