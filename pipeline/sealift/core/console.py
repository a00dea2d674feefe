"""Terminal output: rich progress bars on stderr, quiet and JSON modes.

Step modules write to the terminal only through this module, never with print():
`info` lines on stderr (hidden by --quiet and --json), `warn` lines on stderr
(hidden by --json), progress bars from `byte_progress` (an `Advance` callback:
called with a number of bytes done, from any thread; a no-op when quiet or not
a terminal), and their result objects' `print_human`, which the CLI calls
through `emit` (in --json the result is printed as JSON instead).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

Advance = Callable[[int], None]

# soft_wrap: a long line stays one line (rich would break it at 80 columns when piped, mid-word
# for grep and scripts); tables still fit the terminal.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class _Mode:
    quiet = False
    json = False


mode = _Mode()


def set_mode(*, quiet: bool = False, json_output: bool = False) -> None:
    mode.quiet = quiet or json_output
    mode.json = json_output


def info(message: str) -> None:
    """A human line on stderr (not in --quiet or --json); text, not rich markup."""
    if not mode.quiet:
        err.print(escape(message))


def warn(message: str) -> None:
    """A warning on stderr, shown even in --quiet (not in --json)."""
    if not mode.json:
        err.print(f"[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    """The one `error: ...` line on stderr (always shown; the message is text, not rich markup)."""
    err.print(f"[red]error:[/] {escape(message)}")


def emit(result: dict[str, Any], human: Callable[[], None], *, quiet_line: str | None = None) -> None:
    """Print a command's result: JSON on stdout in --json, `quiet_line` alone in --quiet when the
    command has one (the tag or path a script wants), else the human form."""
    if mode.json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    elif mode.quiet and quiet_line is not None:
        out.print(quiet_line, markup=False, highlight=False)
    else:
        human()


@contextlib.contextmanager
def byte_progress(total: int, label: str) -> Iterator[Advance]:
    """A bytes/rate/ETA bar on stderr; a no-op in quiet/JSON mode or when stderr is no terminal."""
    if mode.quiet or not err.is_terminal or total <= 0:
        yield lambda n: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def spinner(label: str) -> Iterator[None]:
    """A spinner with the elapsed time on stderr for work with no byte count; the label alone when no terminal."""
    if mode.quiet:
        yield
        return
    if not err.is_terminal:
        info(label)
        yield
        return
    from rich.progress import SpinnerColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        bar.add_task(escape(label), total=None)
        yield
