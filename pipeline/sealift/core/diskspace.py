"""Free space: how much the filesystem that will hold a path has, and a refusal before anything is written."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from sealift.core.errors import UserError
from sealift.core.units import fmt_bytes

__all__ = ["DISK_FULL", "check_free_space", "free_space"]

#: errnos that mean a filesystem is full (or the user's quota is).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def free_space(path: Path) -> tuple[Path, int]:
    """(the nearest existing directory at or above path, the bytes free on its filesystem)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def check_free_space(path: Path, needed: int, *, slack: int, what: str, hint: str, where: Path | None = None) -> None:
    """UserError (exit 2) unless path's filesystem has needed + slack bytes free; nothing is written either way.

    The message reads "not enough free space for WHAT in WHERE: it needs N, M available; nothing was
    written" (WHERE defaults to the existing directory that was measured).
    """
    probe, free = free_space(path)
    if needed + slack > free:
        raise UserError(
            f"not enough free space {what} in {where or probe}: it needs {fmt_bytes(needed + slack)}, "
            f"{fmt_bytes(free)} available; nothing was written",
            hint=hint,
        )
