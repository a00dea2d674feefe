"""Atomic steps: staging directories named after their process, fsync, sweep.

Every step writes into a staging directory named `<prefix><pid>-<random>` on
the destination's filesystem, fsyncs, and renames into place. A step killed
with SIGKILL leaves its staging directory behind; the next run of any step
sweeps those whose process is gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
