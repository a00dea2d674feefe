"""Each byte of the medium read once: hashed as it is read, written from the very buffer that was hashed.

    stream = Stream(medium, ["x.tar.part-0001", ...], sums)    the parts of one file, in order
    members = read_members(stream)       the archive's headers (tarfile, seeking over the data), checked
    stream.unpack(members, staging, wanted, advance)   every byte read in order, hashed per part; the wanted
                                         members' data written under staging; UserError at the end if any
                                         part's sha256 is not the one SHA256SUMS names
    stream.copy(dst_fd, advance)         a wheel (or any file) copied while hashed; dst_fd None: hash only

The fds are opened once (O_NOFOLLOW, regular files) and kept for both passes, so a file swapped
on the medium in between is not read. The header pass records every byte tarfile read; the data
pass, which hashes the whole stream, checks that those bytes come back the same, so the layout
that was checked is the layout of the bytes that were hashed. Writes run on a helper thread
while the main thread hashes the next chunk (hashlib and os.write release the GIL).

Only directories and regular files are extracted (sealift's exporter writes nothing else):
links, devices, FIFOs, sparse files, names twice, names outside the root and data past the end
are refused (sealift.core.tarsafe holds the rules of tarfile's `data` filter, also on a Python
that lacks it).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import tarfile
from collections import deque
from pathlib import Path
from typing import Any, Callable

from sealift.core.errors import UserError
from sealift.core.safepath import checked_rel
from sealift.host.medium import Folder, Medium

__all__ = ["CHUNK", "Stream", "member_rel", "read_members"]

#: Bytes read (and hashed) at a time, and how many chunks a helper thread reads ahead.
CHUNK = 4 * 1024 * 1024
READ_AHEAD = 2
Advance = Callable[[int], None]


def member_rel(name: str) -> str:
    """A member name relative to the archive root ("" for the root itself); ValueError if it is not plain."""
    rel = name[2:] if name.startswith("./") else name
    rel = rel.rstrip("/")
    return "" if rel in ("", ".") else checked_rel(rel)


class Stream:
    """One logical file of the bundle (its parts in order), read sequentially and hashed per part."""

    def __init__(self, medium: Medium, rels: list[str], sums: dict[str, str] | None, sizes: list[int],
                 label: str | None = None) -> None:
        self.medium = medium
        self.rels = rels
        self.label = label or str(medium.where(rels[0]))
        self.sizes = sizes
        self.want = [sums[r] for r in rels] if sums is not None else None
        self.fds: list[int] = []
        try:
            for rel, size in zip(rels, sizes):
                fd = medium.open(rel)
                self.fds.append(fd)
                if os.fstat(fd).st_size != size:
                    got = os.fstat(fd).st_size
                    raise UserError(f"bundle {medium.label} failed verification: {rel}: "
                                    f"{'truncated' if got < size else 'too long'}: {got} bytes, expected {size}; "
                                    "nothing was imported", hint="copy the bundle from the source again")
        except BaseException:
            self.close()
            raise
        self.size = sum(sizes)
        self.recorded: list[tuple[int, bytes]] = []

    @classmethod
    def of_files(cls, files: list[Path], label: str | None = None) -> Stream:
        """The files (parts in order, in one folder) as one stream, with no sha256 to check against."""
        root = Path(files[0]).parent
        return cls(Folder(label=str(root), root=root), [Path(f).name for f in files], None,
                   [Path(f).stat().st_size for f in files], label=label)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- the header pass (tarfile)

    def _pread(self, pos: int, n: int) -> bytes:
        out = []
        for i, size in enumerate(self.sizes):
            if pos >= size:
                pos -= size
                continue
            if n <= 0:
                break
            chunk = os.pread(self.fds[i], min(n, size - pos), pos)
            if not chunk:
                break
            out.append(chunk)
            n -= len(chunk)
            pos = 0
        return b"".join(out)

    def header_reader(self) -> io.RawIOBase:
        """A seekable reader for tarfile that records every byte it is handed (the headers)."""
        stream = self

        class _Reader(io.RawIOBase):
            pos = 0

            def readable(self) -> bool:
                return True

            def seekable(self) -> bool:
                return True

            def tell(self) -> int:
                return self.pos

            def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
                base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: stream.size}[whence]
                self.pos = max(0, base + offset)
                return self.pos

            def readinto(self, b: Any) -> int:
                view = memoryview(b).cast("B")
                data = stream._pread(self.pos, min(len(view), max(0, stream.size - self.pos)))
                view[:len(data)] = data
                stream.recorded.append((self.pos, data))
                self.pos += len(data)
                return len(data)

        return _Reader()

    # ----------------------------------------------------------------- the data pass

    def _chunks(self, advance: Advance) -> Any:
        """(stream offset, bytes) in order over every part, each chunk hashed into its part's sha256.

        A helper thread reads ahead (up to READ_AHEAD chunks) while this thread hashes: disk, hash and the
        writer's disk work overlap (os.pread and hashlib release the GIL).
        """
        reads = [(i, off, min(CHUNK, size - off)) for i, size in enumerate(self.sizes) for off in range(0, size, CHUNK)]
        for fd in self.fds:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (AttributeError, OSError):
                pass
        hashers = [hashlib.sha256() for _ in self.fds]
        pos = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealift-read") as pool:
            ahead: deque[concurrent.futures.Future[bytes]] = deque()
            queued = iter(reads)
            for i, off, n in reads:
                while len(ahead) < READ_AHEAD:
                    nxt = next(queued, None)
                    if nxt is None:
                        break
                    ahead.append(pool.submit(os.pread, self.fds[nxt[0]], nxt[2], nxt[1]))
                data = ahead.popleft().result()
                if len(data) != n:
                    for f in ahead:
                        f.cancel()
                    raise UserError(f"bundle {self.medium.label} failed verification: {self.rels[i]}: ended early "
                                    "while read; nothing was imported", hint="copy the bundle from the source again")
                hashers[i].update(data)
                yield pos, data
                advance(n)
                pos += n
        self.got = [h.hexdigest() for h in hashers]

    def _settle(self) -> None:
        """UserError naming the first part whose bytes are not the ones SHA256SUMS names."""
        for rel, got, want in zip(self.rels, self.got, self.want or self.got):
            if got != want:
                raise UserError(f"bundle {self.medium.label} failed verification: {rel}: corrupted: sha256 "
                                f"{got[:16]}..., SHA256SUMS says {want[:16]}...; nothing was imported",
                                hint="copy the bundle from the source again, or run `sealift export` again")

    def copy(self, dst: int | None, advance: Advance, *, also: Callable[[bytes], Any] | None = None) -> None:
        """Every byte hashed (and handed to `also`); written to dst (an fd) as read, when there is one.
        UserError if a part's sha256 is not the one SHA256SUMS names."""
        with _Writer() as writer:
            for _, data in self._chunks(advance):
                if also is not None:
                    also(data)
                if dst is not None:
                    writer.put(dst, data)
        self._settle()

    def unpack(self, members: list[tarfile.TarInfo], root: Path, wanted: Callable[[str], bool],
               advance: Advance) -> int:
        """Every byte read in order and hashed; the wanted members written under root; the header bytes the
        header pass read compared with the bytes read now. Returns the bytes written. UserError on a mismatch."""
        plan = sorted(self.recorded)
        starts = {m.offset_data: m for m in members if m.isreg() and m.size}
        files: list[tuple[int, int, int]] = []  # (data start, data end, fd) of the open outputs
        written = 0
        with _Writer() as writer:
            for m in members:  # folders and empty files first: nothing is read for them
                rel = member_rel(m.name)
                if not wanted(rel):
                    continue
                if m.isdir():
                    (root / rel if rel else root).mkdir(parents=True, exist_ok=True)
                elif m.size == 0:
                    os.close(_create(root, rel, m.mode))
            ends = sorted(starts)
            k = 0
            for pos, data in self._chunks(advance):
                end = pos + len(data)
                while plan and plan[0][0] < end:  # the headers tarfile read must be the bytes hashed now
                    at, rec = plan[0]
                    lo, hi = max(at, pos), min(at + len(rec), end)
                    if data[lo - pos:hi - pos] != rec[lo - at:hi - at]:
                        raise UserError(f"bundle {self.medium.label}: {self.label} changed between two reads "
                                        "(the medium returned other bytes); nothing was imported",
                                        hint="copy the bundle to a local disk and install from there")
                    if at + len(rec) <= end:
                        plan.pop(0)
                    else:
                        break
                while k < len(ends) and ends[k] < end:  # members whose data starts in this chunk
                    m = starts[ends[k]]
                    rel = member_rel(m.name)
                    if wanted(rel):
                        files.append((m.offset_data, m.offset_data + m.size, _create(root, rel, m.mode)))
                    k += 1
                for start, stop, fd in files:
                    lo, hi = max(start, pos), min(stop, end)
                    if lo < hi:
                        writer.put(fd, memoryview(data)[lo - pos:hi - pos])
                        written += hi - lo
                done = [f for f in files if f[1] <= end]
                if done:
                    writer.drain()
                    for _, _, fd in done:
                        os.close(fd)
                    files = [f for f in files if f[1] > end]
        for _, _, fd in files:
            os.close(fd)
        self._settle()
        for m in members:  # modes and times once everything is written (a folder's mtime last)
            rel = member_rel(m.name)
            if wanted(rel) and (m.isreg() or rel):
                target = root / rel
                os.chmod(target, (m.mode & 0o755) | (0o700 if m.isdir() else 0o600))
                os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
        return written


def _create(root: Path, rel: str, mode: int) -> int:
    """A new file root/rel (its folders made), O_EXCL and O_NOFOLLOW: nothing that exists is written through."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, (mode & 0o755) | 0o600)
    except FileExistsError:
        raise UserError(f"archive member {rel!r} is there twice; nothing was imported",
                        hint="this archive was not written by `sealift export`; do not install it") from None


class _Writer:
    """os.write on one helper thread, in order, at most two chunks behind the reader."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealift-unpack")
        self.pending: deque[concurrent.futures.Future[None]] = deque()

    def put(self, fd: int, view: memoryview | bytes) -> None:
        self.pending.append(self.pool.submit(_write_all, fd, view))
        while len(self.pending) > 2:
            self.pending.popleft().result()

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                self.drain()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _write_all(fd: int, view: memoryview | bytes) -> None:
    view = memoryview(view)
    while view:
        view = view[os.write(fd, view):]


def read_members(stream: Stream, check: Callable[[tarfile.TarInfo], str | None]) -> list[tarfile.TarInfo]:
    """The archive's members from its headers (tarfile seeks over the data); each refused by `check`
    (a reason) or by the rules here: only folders and regular files, each name once, data inside the file."""
    try:
        with tarfile.open(fileobj=stream.header_reader(), mode="r:") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{stream.label} is not an uncompressed tar archive or is damaged ({exc}); "
                        "nothing was imported", hint="copy the bundle again") from None
    seen: set[str] = set()
    for m in members:
        try:
            rel = member_rel(m.name)
            why = check(m)
            if why:
                raise ValueError(why)
            if not (m.isdir() or (m.isreg() and not m.issparse())):
                raise ValueError(f"a member of type {m.type!r}: sealift bundles hold only folders and files")
            if rel in seen:
                raise ValueError("the same name twice")
            seen.add(rel)
            if m.isreg() and m.offset_data + m.size > stream.size:
                raise ValueError("data past the end of the archive (truncated)")
            if rel == "" and not m.isdir():
                raise ValueError("the root is not a folder")
        except ValueError as exc:
            raise UserError(f"{stream.label}: refusing member {m.name[:200]!r}: {exc}; nothing was imported",
                            hint="this archive was not written by `sealift export`; do not install it") from None
    return members
