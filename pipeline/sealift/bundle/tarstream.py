"""The bundle's tar, written in one pass: each source byte read once, hashed while it is written.

    members = [Member(...), ...]                   what the tar holds, in order
    archive_size(members) -> int                   its exact size, before a byte is written
    write_archive(members, path, journal, advance) -> (FileEntry, resumed_from)

The tar is a pure function of its members (names, sizes, modes, mtimes and the
source bytes), so a resumed export regenerates the same stream and can start
writing at any checkpointed offset. A helper thread writes each chunk while the
caller hashes it into the archive's sha256; a second one hashes model files into
a check against the model's own sealift manifest. `Journal`
(`.partial/.sealift-export.json`) records fsynced checkpoints (offset + sha256
of the bytes before it); on resume those bytes are re-read and checked, never
rewritten. sealift.bundle.export plans the members and drives the export.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealift.core import console
from sealift.core.atomic import write_atomic
from sealift.bundle.format import BUNDLE_FORMAT
from sealift.core.errors import Failure, UserError
from sealift.model.manifest import FileEntry

__all__ = ["CHECKPOINT_ENV", "CHUNK", "JOURNAL", "Advance", "Journal", "Member", "archive_size", "plan_digest", "walk",
           "write_all", "write_archive"]

JOURNAL = ".sealift-export.json"
CHUNK = 8 * 1024 * 1024
CHECKPOINT_ENV = "SEALIFT_EXPORT_CHECKPOINT_BYTES"
DEFAULT_CHECKPOINT = 512 * 1024 * 1024

Advance = Callable[[int], None]


@dataclass(frozen=True)
class Member:
    """One tar member: a directory, a file read from `src`, or a small generated file (`data`)."""

    name: str
    kind: str  # "dir" | "file"
    size: int
    mode: int
    mtime: int
    src: str | None = None
    data: bytes | None = None
    #: The sha256 the source must have (from the model's sealift manifest), checked while streaming.
    sha256: str | None = None

    def header(self) -> bytes:
        """The member's tar header (PAX, deterministic: uid/gid 0, no user names)."""
        info = tarfile.TarInfo(self.name)
        info.type = tarfile.DIRTYPE if self.kind == "dir" else tarfile.REGTYPE
        info.size = 0 if self.kind == "dir" else self.size
        info.mode = self.mode & 0o7777
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def key(self) -> list[Any]:
        """What identifies this member in the stream (for the resume journal)."""
        data = hashlib.sha256(self.data).hexdigest() if self.data is not None else None
        return [self.name, self.kind, self.size, self.mode & 0o7777, self.mtime, self.src, data]


def _padding(n: int) -> int:
    return -n % tarfile.BLOCKSIZE


def _trailer_size(body: int) -> int:
    """Two zero blocks, then zeros up to a whole record, as tar and tarfile write."""
    end = body + 2 * tarfile.BLOCKSIZE
    return end + (-end % tarfile.RECORDSIZE) - body


def archive_size(members: list[Member]) -> int:
    """The exact size of the tar these members make."""
    body = sum(len(m.header()) + (0 if m.kind == "dir" else m.size + _padding(m.size)) for m in members)
    return body + _trailer_size(body)


def plan_digest(members: list[Member]) -> str:
    return hashlib.sha256(json.dumps([m.key() for m in members]).encode()).hexdigest()


def walk(root: Path, prefix: str, *, skip_top: Iterable[str] = (),
          checks: dict[str, str] | None = None) -> list[Member]:
    """Members for everything under root (sorted), named prefix + relative path; symlinked files are followed."""
    skip = set(skip_top)
    checks = checks or {}
    out: list[Member] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        if not rel_dir:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        dirnames.sort()
        for d in dirnames:
            if (here / d).is_symlink():
                raise UserError(f"{here / d} is a symlink to a directory; sealift does not archive those",
                                hint="replace it with the directory itself")
            st = (here / d).stat()
            out.append(Member(prefix + rel_dir + d + "/", "dir", 0, st.st_mode, int(st.st_mtime)))
        for f in sorted(filenames):
            path = here / f
            try:
                st = path.stat()
            except FileNotFoundError:
                raise UserError(f"{path} is a dangling symlink", hint="re-import the model") from None
            if not path.is_file():
                raise UserError(f"{path} is not a regular file", hint="remove it from the bento or model")
            rel = rel_dir + f
            out.append(Member(prefix + rel, "file", st.st_size, st.st_mode, int(st.st_mtime),
                              src=str(path), sha256=checks.get(rel)))
    # os.walk yields a directory's entries after the directory itself; keep that
    # order but make it stable: parents before children, then by name.
    return sorted(out, key=lambda m: m.name.rstrip("/").split("/"))


def write_all(fd: int, view: memoryview | bytes) -> None:
    view = memoryview(view)
    while view:
        view = view[os.write(fd, view):]


class _Sink:
    """Appends to a file from a helper thread, in order, while the caller hashes the same chunk.

    A second helper thread runs the per-file check hashes (`check`), so the
    archive hash, the check hash and the write of a chunk run on three threads
    (hashlib and os.write release the GIL). At most two writes and two checks
    are outstanding after each call, so a caller rotating three buffers never
    refills one that is still being written or hashed.
    """

    BUFFERS = 3

    def __init__(self, write: Callable[[memoryview | bytes], None], offset: int) -> None:
        self.write = write
        self.offset = offset
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealift-tar")
        self.checker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealift-check")
        self.pending: deque[concurrent.futures.Future[None]] = deque()
        self.checks: deque[concurrent.futures.Future[None]] = deque()
        self.buffers = [bytearray(CHUNK) for _ in range(self.BUFFERS)]
        self.turn = 0

    def check(self, hasher: Any, view: memoryview) -> None:
        """hasher.update(view) on the checker thread, in order."""
        self.checks.append(self.checker.submit(hasher.update, view))
        while len(self.checks) > self.BUFFERS - 1:
            self.checks.popleft().result()

    def settle_checks(self) -> None:
        while self.checks:
            self.checks.popleft().result()

    def buffer(self) -> bytearray:
        buf = self.buffers[self.turn % self.BUFFERS]
        self.turn += 1
        return buf

    def put(self, view: memoryview | bytes) -> None:
        self.pending.append(self.pool.submit(self.write, view))
        self.offset += len(view)
        while len(self.pending) > self.BUFFERS - 1:
            self.pending.popleft().result()

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        try:
            self.drain()
            self.settle_checks()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.checker.shutdown(wait=True, cancel_futures=True)


class Journal:
    """`.partial/.sealift-export.json`: what an interrupted export already wrote and fsynced."""

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc

    @classmethod
    def load(cls, partial: Path, bento_tag: str, plan: str, archive_total: int) -> Journal:
        """The journal of an earlier run of this same export, or a fresh one."""
        fresh = {"format": BUNDLE_FORMAT, "bento": bento_tag, "plan": plan,
                 "archive": {"offset": 0, "sha256": hashlib.sha256().hexdigest(), "size": archive_total,
                             "done": False},
                 "files": {}}
        path = partial / JOURNAL
        try:
            doc = json.loads(path.read_text())
            if doc.get("bento") != bento_tag or doc.get("plan") != plan or doc.get("format") != BUNDLE_FORMAT:
                doc = fresh
        except (OSError, ValueError):
            doc = fresh
        return cls(path, doc)

    @property
    def archive(self) -> dict[str, Any]:
        return self.doc["archive"]

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.doc, indent=1).encode())


def _checkpoint_every() -> int:
    try:
        return max(tarfile.RECORDSIZE, int(os.environ.get(CHECKPOINT_ENV, DEFAULT_CHECKPOINT)))
    except ValueError:
        return DEFAULT_CHECKPOINT


def _verified_prefix(path: Path, journal: Journal, advance: Advance) -> tuple[int, Any]:
    """Re-read the archive up to the journal's checkpoint; (offset, running sha256) to go on from.

    The bytes are only read: if they still hash to what the journal recorded
    when they were fsynced, writing resumes right after them; otherwise (or if
    the file is shorter) the archive starts over.
    """
    h = hashlib.sha256()
    offset = int(journal.archive.get("offset", 0))
    if offset <= 0 or not path.is_file() or path.stat().st_size < offset:
        return 0, hashlib.sha256()
    buf = bytearray(CHUNK)
    left = offset
    with open(path, "rb", buffering=0) as f:
        while left:
            n = f.readinto(memoryview(buf)[: min(CHUNK, left)])
            if not n:
                return 0, hashlib.sha256()
            h.update(memoryview(buf)[:n])
            left -= n
            advance(n)
    if h.hexdigest() != journal.archive.get("sha256"):
        console.warn(f"{path.name}: the bytes written before the interruption changed; writing it again")
        return 0, hashlib.sha256()
    return offset, h


class _OneFile:
    """The archive as one file (the default output of write_archive; sealift.bundle.parts.SplitOut writes parts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def resume(self, journal: Journal, advance: Advance) -> tuple[int, Any]:
        return _verified_prefix(self.path, journal, advance)

    def open(self, start: int) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, start)
        os.lseek(self.fd, start, os.SEEK_SET)

    def write(self, view: memoryview | bytes) -> None:
        write_all(self.fd, view)

    def sync(self) -> None:
        os.fsync(self.fd)

    def state(self, h: Any) -> dict[str, Any]:
        """What the journal records at a checkpoint besides the offset."""
        return {"sha256": h.copy().hexdigest()}

    def result(self, h: Any, total: int) -> FileEntry:
        return FileEntry(self.path.name, total, h.hexdigest())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_archive(members: list[Member], path: Path, journal: Journal, advance: Advance,
                  verify_advance: Advance | None = None, *, out: Any = None) -> tuple[Any, int]:
    """Write (or finish) the tar at `path` from `members`; fsynced; returns its size and sha256.

    Resumes at the journal's last checkpoint when the bytes before it are still
    intact (the second value: where writing started). Raises Failure when a
    model file does not match its manifest. `out` writes the stream elsewhere
    (sealift.bundle.parts.SplitOut: numbered parts, each hashed; the first value is then their FileEntry list).
    """
    total = archive_size(members)
    out = _OneFile(path) if out is None else out
    start, h = out.resume(journal, verify_advance or advance)
    every = _checkpoint_every()
    sink = _Sink(out.write, start)
    try:
        out.open(start)
        last_checkpoint = start

        def checkpoint() -> None:
            nonlocal last_checkpoint
            sink.drain()
            out.sync()
            journal.archive.update(offset=sink.offset, done=False, **out.state(h))
            journal.save()
            last_checkpoint = sink.offset

        def maybe_checkpoint() -> None:
            if sink.offset - last_checkpoint >= every:
                checkpoint()

        def put_small(data: bytes, pos: int) -> int:
            """Write the part of a small piece at stream position pos that lies past the resume point."""
            end = pos + len(data)
            if end > start:
                piece = data[max(0, start - pos):]
                h.update(piece)
                sink.put(piece)
                advance(len(piece))
            return end

        pos = 0
        for m in members:
            pos = put_small(m.header(), pos)
            if m.kind == "dir":
                continue
            if m.data is not None:
                pos = put_small(m.data, pos)
            else:
                if pos + m.size > start:
                    _stream_file(m, max(0, start - pos), h, sink, advance, maybe_checkpoint)
                pos += m.size
            pos = put_small(b"\0" * _padding(m.size), pos)
        pos = put_small(b"\0" * _trailer_size(pos), pos)
        if pos != total or sink.offset != total:
            raise Failure(f"internal error: wrote {sink.offset} bytes of a {total}-byte archive")
        sink.drain()
        out.sync()
    finally:
        sink.close()
        out.close()
    journal.archive.update(offset=total, done=True, **out.state(h))
    journal.save()
    return out.result(h, total), start


def _stream_file(m: Member, skip: int, h: Any, sink: _Sink, advance: Advance, after_chunk: Callable[[], None]) -> None:
    """Hash and write m's source from byte `skip` on; check it against m.sha256 (re-reading the skipped head).

    `after_chunk` runs after each chunk is queued (checkpoints can fall inside a big file).
    """
    assert m.src is not None
    check = hashlib.sha256() if m.sha256 else None
    left = m.size - skip
    with open(m.src, "rb", buffering=0) as f:
        if check is not None and skip:
            head = skip
            buf = bytearray(min(CHUNK, skip))  # not one of the sink's: those may still be being written
            while head:
                n = f.readinto(memoryview(buf)[: min(CHUNK, head)])
                if not n:
                    break
                check.update(memoryview(buf)[:n])
                head -= n
        f.seek(skip)
        while left > 0:
            buf = sink.buffer()
            n = f.readinto(memoryview(buf)[: min(CHUNK, left)])
            if not n:
                raise Failure(f"{m.src} shrank while it was being exported", hint="export again")
            view = memoryview(buf)[:n]
            sink.put(view)
            if check is not None:
                sink.check(check, view)
            h.update(view)
            left -= n
            advance(n)
            after_chunk()
        if f.read(1):
            raise Failure(f"{m.src} grew while it was being exported", hint="export again")
    sink.settle_checks()
    if check is not None and check.hexdigest() != m.sha256:
        raise Failure(
            f"{m.src} in the model store does not match the model's manifest (sha256 {check.hexdigest()}, "
            f"expected {m.sha256}); nothing was exported",
            hint="run `sealift verify NAME`, then re-import the model",
        )


