"""The one checked join: a relative path from a file sealift did not write, turned into a path that stays inside its root.

    rel = checked_rel("wheels/x.whl")          ValueError for "", "/x", "a/../b", "a//b", NUL, newline, backslash
    path = join_inside(root, "wheels/x.whl")   ValueError as above, or when a part below root is a symlink
    fd = open_regular(path)                    an O_NOFOLLOW read fd of a regular file, else ValueError

Every relative path read from a bundle (SHA256SUMS, manifest.json, VOLUME.json, parts maps, a delta's
`relies`, tar member names) goes through checked_rel before it is used, and through join_inside before
it touches the filesystem: no absolute path, no `..`, no empty part, no symlinked folder on the way,
and nothing outside root. Files are then opened with O_NOFOLLOW, so a symlink planted in the last part
is refused too (ELOOP), and checked to be regular files (not a FIFO or a device that blocks or lies).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["MAX_PATH", "checked_rel", "join_inside", "open_regular"]

#: The longest relative path accepted (Linux's PATH_MAX is 4096).
MAX_PATH = 4096


def checked_rel(rel: object) -> str:
    """rel itself when it is a plain relative path (POSIX separators, no `.`/`..`/empty parts); else ValueError."""
    if not isinstance(rel, str):
        raise ValueError(f"a path must be a string, not {type(rel).__name__}")
    if not rel:
        raise ValueError("an empty path")
    if len(rel) > MAX_PATH:
        raise ValueError(f"a path of {len(rel)} characters")
    bad = next((c for c in rel if c in "\0\n\r\\" or ord(c) < 0x20), None)
    if bad is not None:
        raise ValueError(f"a control character or backslash ({bad!r}) in {rel[:80]!r}")
    if rel.startswith("/"):
        raise ValueError(f"an absolute path {rel[:80]!r}")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"an empty, `.` or `..` part in {rel[:80]!r}")
    return rel


def join_inside(root: Path, rel: object) -> Path:
    """root / rel after checked_rel, refusing a symlink (or a non-folder) at any existing folder on the way.

    The last part is not followed here either: open it with open_regular (O_NOFOLLOW).
    """
    parts = checked_rel(rel).split("/")
    path = Path(root)
    for part in parts[:-1]:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # a folder still to be made (in staging); nothing below it exists either
        if stat.S_ISLNK(st.st_mode):
            raise ValueError(f"{path} is a symlink")
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{path} is not a folder")
    return path / parts[-1]


def open_regular(path: Path) -> int:
    """An O_RDONLY|O_NOFOLLOW fd of path, which must be a regular file; ValueError (with the reason) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if os.path.islink(path):
            raise ValueError(f"{path} is a symlink") from None
        raise ValueError(f"{path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return fd
