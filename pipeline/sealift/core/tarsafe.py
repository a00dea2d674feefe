"""Whether a tar member is safe to extract: PEP 706's `data` filter rules and sealift's stricter ones, on any Python 3.10+.

    member_problem(member, root) -> str | None     why it must not be extracted, or None
    data_filter_problem(member, root) -> str | None  the `data` filter's verdict alone

`tarfile.data_filter` (and `tarfile.FilterError`) arrived in Python 3.10.12,
3.11.4 and 3.12; Debian 12's python3.11 is 3.11.2 and has neither. Where the
running Python has the filter it decides; elsewhere `_fallback` applies the same
rules, written from CPython's `_get_filtered_attrs(for_data=True)`, with the
same messages. `STDLIB_FILTER = False` (or `stdlib=False`) forces the fallback.

On top of the filter, `member_problem` refuses what the filter would repair:
an empty name, a NUL or line break in a name or link target, an absolute name
(the filter strips its slashes), `..` anywhere in a name (the filter allows it
when it stays inside), a link with no target, a type other than a file,
directory, symlink or hard link, and a file or hard link with setuid, setgid or
the sticky bit (the filter clears those bits). Group and other write bits are
not refused: a build host with umask 002 writes them, and the filter and
sealift's extraction (`mode & 0o755`) both clear them.

`root` is a name only: nothing is written there. The stdlib filter resolves it
with `os.path.realpath`, and so does the fallback; pass a path that does not
exist, so that no link on this host changes a verdict.
"""

from __future__ import annotations

import os
import sys
import tarfile

__all__ = ["STDLIB_FILTER", "data_filter_problem", "member_problem"]

#: Whether tarfile.data_filter decides (this Python has it); False forces the fallback (tests set it).
STDLIB_FILTER: bool = hasattr(tarfile, "data_filter")

#: Mode bits no file of a bundle carries: setuid, setgid, sticky (the data filter clears them).
_SPECIAL_BITS = 0o7000
_BAD_CHARS = ("\0", "\n", "\r")


def member_problem(member: tarfile.TarInfo, root: str, *, stdlib: bool | None = None) -> str | None:
    """Why `member` must not be extracted under `root`, or None when it may be (the filter's rules and ours)."""
    name = member.name
    if not name:
        return "an empty name"
    if any(c in name for c in _BAD_CHARS):
        return "a NUL or line break in its name"
    if name.startswith("/"):
        return "absolute path"  # the words of sealift.bundle.format.member_path
    if ".." in name.split("/"):
        return "`..` in the path"
    links = member.issym() or member.islnk()
    if links and not member.linkname:
        return "a link with an empty target"
    if links and any(c in member.linkname for c in _BAD_CHARS):
        return "a NUL or line break in its link target"
    problem = data_filter_problem(member, root, stdlib=stdlib)
    if problem:
        return problem
    if not (member.isreg() or member.isdir() or links):
        return f"{name!r} is a special file (type {member.type!r})"
    if (member.isreg() or member.islnk()) and member.mode is not None and member.mode & _SPECIAL_BITS:
        return f"mode {member.mode:o}: setuid, setgid or sticky bits on a file"
    return None


def data_filter_problem(member: tarfile.TarInfo, root: str, *, stdlib: bool | None = None) -> str | None:
    """What tarfile.data_filter would refuse `member` for under `root` (its message), or None: the stdlib
    filter where this Python has it (unless `stdlib=False` or STDLIB_FILTER is False), else the fallback."""
    use_stdlib = STDLIB_FILTER if stdlib is None else stdlib
    if use_stdlib and not hasattr(tarfile, "data_filter"):
        raise RuntimeError(f"Python {sys.version.split()[0]} has no tarfile.data_filter")
    try:
        if not use_stdlib:
            return _fallback(member, root)
        try:
            tarfile.data_filter(member, root)
        except tarfile.FilterError as exc:  # type: ignore[attr-defined]  # 3.10.12, 3.11.4, 3.12
            return str(exc)
        return None
    except ValueError as exc:  # os.path.realpath on a NUL in a name: "embedded null byte", from either
        return f"{member.name!r}: {exc}"


def _fallback(member: tarfile.TarInfo, root: str) -> str | None:
    """The refusals of CPython's `_get_filtered_attrs(member, root, for_data=True)`, with its messages.

    Mode changes and ownership resets are left out: they repair, they do not refuse
    (the caller sets modes itself). Paths are resolved as the filter resolves them.
    """
    dest = os.path.realpath(root)
    name = member.name
    if name.startswith(("/", os.sep)):  # the filter strips tar's separator and the OS's
        name = name.lstrip("/" + os.sep)
    if os.path.isabs(name):  # still absolute once stripped (only on Windows: 'C:/foo')
        return f"member {member.name!r} has an absolute path"
    target = os.path.realpath(os.path.join(dest, name))
    if os.path.commonpath([target, dest]) != dest:
        return f"{member.name!r} would be extracted to {target!r}, which is outside the destination"
    if member.mode is not None and not (member.isreg() or member.islnk() or member.isdir() or member.issym()):
        return f"{member.name!r} is a special file"
    if member.islnk() or member.issym():
        if os.path.isabs(member.linkname):
            return f"{member.name!r} is a link to an absolute path"
        if member.issym():
            target = os.path.join(dest, os.path.dirname(name), member.linkname)
        else:
            target = os.path.join(dest, member.linkname)
        target = os.path.realpath(target)
        if os.path.commonpath([target, dest]) != dest:
            return f"{member.name!r} would link to {target!r}, which is outside the destination"
    return None

