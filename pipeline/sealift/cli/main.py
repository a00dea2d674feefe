"""`sealift`'s entry point: every command registered on the app in the order `sealift --help` lists them, and
main(), which turns expected errors into one line and an exit code."""

from __future__ import annotations

import os
import sys

import typer

from sealift.cli import bento, bundle, host, model
from sealift.cli.app import INTERRUPTED, _Interrupted, app
from sealift.core import console
from sealift.core.errors import SealiftError

__all__ = ["main"]

app.command("import")(model.import_)
app.command("list")(model.list_)
app.command("verify")(model.verify)
app.command("build")(bento.build)
app.command("golden")(bento.golden)
app.command("check")(host.check)
app.command("eval-config")(bento.eval_config)
app.command("start")(host.start)
app.command("serve", help="Alias of `start`.")(host.start)
app.command("export")(bundle.export)
app.command("install")(host.install)
app.command("inventory")(host.inventory)
app.command("sbom")(bundle.sbom)
app.command("push")(bundle.push)
app.command("pull")(bundle.pull)
app.command("k8s")(bundle.k8s)
app.command("doctor")(host.doctor)
app.command("env")(host.env)


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("SEALIFT_NET_GUARD") == "1":  # refuse and count any non-loopback connection
        from sealift.core import offline

        offline.install_network_guard()
    try:
        # standalone_mode=False: click returns typer.Exit(code)'s code instead of raising it.
        code = app(args=argv, prog_name="sealift", standalone_mode=False)
    except SealiftError as exc:
        console.error(exc.one_line())
        return exc.exit_code
    except _Interrupted as exc:
        console.err.print(f"interrupted: {INTERRUPTED.get(exc.command or '', 'nothing half-done was kept')}")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:  # EOF on a prompt
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # click usage errors and the unexpected
        if _is_usage_error(exc):
            return _usage_error(exc)
        if os.environ.get("SEALIFT_DEBUG"):
            raise
        console.error(f"unexpected {type(exc).__name__}: {exc} (SEALIFT_DEBUG=1 shows the traceback)")
        return 1
    return code if isinstance(code, int) else 0


def _is_usage_error(exc: Exception) -> bool:
    """A click error (bad option, missing argument): newer typer vendors its own click, so check both families."""
    import click

    return isinstance(exc, (click.ClickException, getattr(typer, "TyperException", click.ClickException)))


def _usage_error(exc: Exception) -> int:
    """One line for a click usage error, pointing at the command's --help; its exit code (2 for usage)."""
    message = exc.format_message().strip()  # type: ignore[attr-defined]
    if message:  # empty for `sealift` alone: the help is already printed
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        console.error(f"{message}{hint}")
    return int(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())
