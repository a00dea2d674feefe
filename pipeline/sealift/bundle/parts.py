"""Numbered parts: a bundle file too big for the medium, written as NAME.part-0001, NAME.part-0002, ...

    plan_pieces(files, max_file=, capacity=) -> {rel: [Piece, ...]}   where each byte goes (volume, part)
    SplitOut(paths, sizes)        write_archive's output as parts, each hashed as it is written (one pass)
    copy_split(src, targets)      a wheel into parts, read once, each part and the whole hashed
    logical_files(doc)            every file of a bundle as it was before splitting -> its size
    fat_limit(dest)               4 GiB - 1 when dest is on FAT32 (vfat/msdos), from /proc/self/mountinfo

A part is a plain file listed in SHA256SUMS like any other, so `sha256sum -c` checks it; manifest.json's
`parts` maps each split file to its parts in order (sealift.bundle.format). Nothing ever joins parts into a
second copy: install reads the archive across its parts in one hashed pass (sealift.host.unpack) and
writes each member's bytes from the part(s) holding it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealift.core import console
from sealift.core.errors import UserError
from sealift.model.manifest import FileEntry
from sealift.bundle.tarstream import CHUNK, Advance, Journal, write_all

__all__ = ["FAT_LIMIT", "PART_SEP", "Piece", "SplitOut", "copy_split", "fat_limit", "fs_type", "logical_files",
           "part_name", "plan_pieces"]

PART_SEP = ".part-"
#: The largest file FAT32 holds.
FAT_LIMIT = 4 * 1024**3 - 1
FAT_TYPES = frozenset({"vfat", "msdos", "fat", "umsdos"})
_OCTAL = re.compile(rb"\\([0-7]{3})")


def part_name(rel: str, index: int) -> str:
    """The index-th part (1-based) of rel: `x.tar` -> `x.tar.part-0001`."""
    return f"{rel}{PART_SEP}{index:04d}"


# --------------------------------------------------------------------------- the medium's filesystem


def _unescape(field: str) -> str:
    """A mountinfo path field as the path it names (`/media/j\\303\\266rg/MY\\040USB` -> `/media/jörg/MY USB`).

    The kernel writes space, tab, newline and backslash as octal escapes and, here (measured: a tmpfs on
    `.../jörg/MY USB`), the other bytes raw; an octal escape of a non-ASCII byte (`\\303\\266`) means
    the same. Both are bytes of one path in the filesystem encoding: put the bytes back together, then
    os.fsdecode them, as Python names paths (not `unicode_escape`, which read each byte as a latin-1 letter).
    """
    if "\\" not in field:
        return field
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), os.fsencode(field))
    return os.fsdecode(raw)


def fs_type(path: Path, mountinfo: str | None = None) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding path; ("", "") when /proc/self/mountinfo is unreadable."""
    if mountinfo is None:
        try:
            mountinfo = os.fsdecode(Path("/proc/self/mountinfo").read_bytes())  # raw bytes of paths kept
        except OSError:
            return "", ""
    full = Path(path).absolute()
    probe = full
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    target = os.path.join(os.path.realpath(probe), os.path.relpath(full, probe)).rstrip("/.") or "/"
    best = ("", "")
    for line in mountinfo.split("\n"):
        fields = line.split(" ")  # one space between fields; a path's own spaces are escaped (\\040)
        if " - " not in line or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        fstype = line.split(" - ", 1)[1].split(" ")[0]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):  # the last, deepest mount wins (mounts stack)
            best = (point, fstype)
    return best


def fat_limit(dest: Path, mountinfo: str | None = None) -> int | None:
    """FAT_LIMIT when dest lies on FAT32 (vfat, msdos), else None (no limit known)."""
    point, fstype = fs_type(dest, mountinfo)
    return FAT_LIMIT if fstype in FAT_TYPES else None


# --------------------------------------------------------------------------- where each byte goes


@dataclass(frozen=True)
class Piece:
    """One file of the bundle as written: volume (0-based), its path in the bundle, its size."""

    volume: int
    rel: str
    size: int


def plan_pieces(files: list[tuple[str, int]], *, max_file: int | None = None,
                capacity: Callable[[int], int | None] | None = None) -> dict[str, list[Piece]]:
    """Lay files (rel, size), in order, onto volumes of capacity(i) bytes (None: unbounded), no file over max_file.

    A file that fits whole (in the volume's room and under max_file) stays whole; one under max_file that
    does not fit the room but fits an empty volume, and is small beside it, moves to the next volume whole;
    anything else is cut into parts that fill each volume's room. {rel: pieces in order}.
    """
    big = float("inf")
    cap = (lambda i: capacity(i) if capacity(i) is not None else big) if capacity else (lambda i: big)
    limit = max_file or big
    vol, room = 0, cap(0)
    out: dict[str, list[Piece]] = {}
    for rel, size in files:
        if size <= limit and size <= room:
            out[rel] = [Piece(vol, rel, size)]
            room -= size
            continue
        if size <= limit and size <= cap(vol + 1) / 8:
            vol, room = vol + 1, cap(vol + 1) - size
            out[rel] = [Piece(vol, rel, size)]
            continue
        pieces: list[tuple[int, int]] = []
        left = size
        while left:
            if room <= 0:
                vol, room = vol + 1, cap(vol + 1)
            n = int(min(left, limit, room))
            pieces.append((vol, n))
            left -= n
            room -= n
        if len(pieces) == 1:
            out[rel] = [Piece(pieces[0][0], rel, size)]
        else:
            out[rel] = [Piece(v, part_name(rel, i), n) for i, (v, n) in enumerate(pieces, 1)]
    return out


# --------------------------------------------------------------------------- writing


class PartHasher:
    """A sha256 per part, fed the stream in order (write_archive's hasher when it writes parts)."""

    def __init__(self, sizes: list[int], done: list[str] | None = None, current: Any = None, pos: int = 0) -> None:
        self.sizes = sizes
        self.done = list(done or [])
        self.current = current or hashlib.sha256()
        self.pos = pos

    def update(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.sizes[len(self.done)] - self.pos)
            self.current.update(view[:take])
            self.pos += take
            view = view[take:]
            if self.pos == self.sizes[len(self.done)]:
                self.done.append(self.current.hexdigest())
                self.current, self.pos = hashlib.sha256(), 0


def _locate(sizes: list[int], offset: int) -> tuple[int, int]:
    """(part index, offset in it) of a stream offset; (len(sizes), 0) at the very end."""
    for i, size in enumerate(sizes):
        if offset < size:
            return i, offset
        offset -= size
    return len(sizes), 0


def _hash_head(path: Path, n: int, advance: Advance) -> Any:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n:
            got = f.readinto(memoryview(buf)[: min(CHUNK, n)])
            if not got:
                raise EOFError(path)
            h.update(memoryview(buf)[:got])
            n -= got
            advance(got)
    return h


class SplitOut:
    """tarstream.write_archive's output as parts (paths, sizes in order, possibly on several volumes).

    Each part is hashed as the stream passes (PartHasher), fsynced and closed when full; the journal
    records the finished parts' sha256 and the running hash of the current one, so a resumed export
    re-reads (never rewrites) what is there and goes on.
    """

    def __init__(self, paths: list[Path], sizes: list[int], rels: list[str]) -> None:
        self.paths, self.sizes, self.rels = paths, sizes, rels
        self.index, self.pos, self.fd = 0, 0, -1

    def resume(self, journal: Journal, advance: Advance) -> tuple[int, PartHasher]:
        arch = journal.archive
        offset = int(arch.get("offset", 0))
        done = list(arch.get("parts") or [])
        index, pos = _locate(self.sizes, offset)
        if offset <= 0 or len(done) != index:
            return 0, PartHasher(self.sizes)
        try:
            for i in range(index):
                if self.paths[i].stat().st_size != self.sizes[i] or \
                        _hash_head(self.paths[i], self.sizes[i], advance).hexdigest() != done[i]:
                    raise ValueError(self.rels[i])
            current = _hash_head(self.paths[index], pos, advance) if pos else hashlib.sha256()
            if pos and current.hexdigest() != arch.get("sha256"):
                raise ValueError(self.rels[index])
        except (OSError, EOFError, ValueError):
            console.warn("the parts written before the interruption changed; writing the archive again")
            return 0, PartHasher(self.sizes)
        return offset, PartHasher(self.sizes, done, current, pos)

    def open(self, start: int) -> None:
        self.index, self.pos = _locate(self.sizes, start)
        for path in self.paths[self.index + 1:]:
            path.unlink(missing_ok=True)
        if self.index < len(self.paths):
            self._open_current(truncate_to=self.pos)

    def _open_current(self, truncate_to: int = 0) -> None:
        path = self.paths[self.index]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, truncate_to)
        os.lseek(self.fd, truncate_to, os.SEEK_SET)

    def write(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        while view:
            if self.fd < 0:
                self._open_current()
            take = min(len(view), self.sizes[self.index] - self.pos)
            write_all(self.fd, view[:take])
            self.pos += take
            view = view[take:]
            if self.pos == self.sizes[self.index]:
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd, self.index, self.pos = -1, self.index + 1, 0

    def sync(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)

    def state(self, h: PartHasher) -> dict[str, Any]:
        return {"parts": list(h.done), "sha256": h.current.copy().hexdigest()}

    def result(self, h: PartHasher, total: int) -> list[FileEntry]:
        if len(h.done) != len(self.sizes) or sum(self.sizes) != total:
            raise RuntimeError(f"internal error: {len(h.done)} of {len(self.sizes)} parts hashed")
        return [FileEntry(rel, size, digest) for rel, size, digest in zip(self.rels, self.sizes, h.done)]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def copy_split(src: Path, targets: list[tuple[Path, str, int]], advance: Advance) -> tuple[list[FileEntry], str]:
    """Copy src into targets (path, rel, size) in order, reading it once: (an entry per part, sha256 of src)."""
    whole = hashlib.sha256()
    entries = []
    buf = bytearray(CHUNK)
    with open(src, "rb", buffering=0) as fin:
        for path, rel, size in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with open(path, "wb", buffering=0) as fout:
                left = size
                while left:
                    n = fin.readinto(memoryview(buf)[: min(CHUNK, left)])
                    if not n:
                        raise UserError(f"{src} shrank while it was being copied", hint="export again")
                    view = memoryview(buf)[:n]
                    write_all(fout.fileno(), view)
                    h.update(view)
                    whole.update(view)
                    left -= n
                    advance(n)
                os.fsync(fout.fileno())
            entries.append(FileEntry(rel, size, h.hexdigest()))
        if fin.read(1):
            raise UserError(f"{src} grew while it was being copied", hint="export again")
    return entries, whole.hexdigest()


# --------------------------------------------------------------------------- the lists


def logical_files(doc: dict[str, Any]) -> dict[str, int]:
    """Every file of the bundle as it was before splitting (path -> size): parts folded into their file."""
    split = doc.get("parts") or {}
    in_parts = {p for s in split.values() for p in s["parts"]}
    out = {f["path"]: int(f["size"]) for f in doc.get("files", []) if f["path"] not in in_parts}
    out.update({rel: int(s["size"]) for rel, s in split.items()})
    return out
