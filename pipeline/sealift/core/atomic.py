"""Atomic steps: staging directories named after their process, fsync, rename, sweep.

Every step writes into a staging directory named `<prefix><pid>-<random>` on
the destination's filesystem, fsyncs, and renames into place. A step killed
with SIGKILL leaves its staging directory behind; the next run of any step
sweeps those whose process is gone. `sigterm_as_interrupt` makes SIGTERM clean up
as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path, *, files: bool = True) -> None:
    """fsync every file (unless `files` is False: they were fsynced as written) and every directory under root.

    Before the rename that publishes root: after a crash the renamed tree then
    holds every entry and every byte, not just its top directory.
    """
    for dirpath, _, filenames in os.walk(root):
        if files:
            for name in filenames:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(dirpath))


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a fsynced `.partial` sibling and a rename."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_dead(parent: Path, prefix: str = "") -> None:
    """Remove `parent/<prefix><pid>-*` directories whose process is no longer running."""
    if not parent.is_dir():
        return
    for d in parent.glob(f"{prefix}*"):
        pid = d.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, so cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
