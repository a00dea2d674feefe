"""The sha256 manifest: what every file of a model is, byte for byte.

A manifest lists every file of a model directory (relative POSIX path, size,
sha256). Its digest, the sha256 of its `sha256sum`-format text, is the model's
identity: the same content gives the same digest wherever it lies. The manifest
is stored beside the model as `sealift-manifest.json` and its digest in the
model's bentoml metadata; `sha256sums_text` gives the lines `sha256sum -c` reads.

Bytes are read once: `copy_and_hash` hashes the very buffer it writes, and
reading, hashing and writing overlap (hashlib and file I/O release the GIL on
big buffers, so a thread pool across files uses every core).
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sealift.core.atomic import write_atomic  # noqa: F401  (bundle and openllm import it from here too)

MANIFEST_NAME = "sealift-manifest.json"
MANIFEST_FORMAT = "sealift-manifest/1"
CHUNK = 16 * 1024 * 1024  # big buffers: hashlib and os.write release the GIL above ~2 KiB

Advance = Callable[[int], None]


def default_workers() -> int:
    """Threads for parallel hashing/copying: every core, at least 2 (I/O overlaps CPU)."""
    return max(2, os.cpu_count() or 1)


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class FileEntry:
    """One file of a model: path relative to the model root (POSIX), size in bytes, sha256 hex."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256sums_text(entries: Iterable[FileEntry]) -> str:
    """`<hex>  <relpath>` lines sorted by path: exactly what `sha256sum -c` reads."""
    return "".join(f"{e.sha256}  {e.path}\n" for e in sorted(entries, key=lambda e: e.path))


@dataclass
class Manifest:
    """Every file of a model directory; `digest()` identifies the content."""

    files: list[FileEntry]
    #: Facts recorded beside the file list (the `checkpoint` record: what was left out, license, ...); not in the digest.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.files = sorted(self.files, key=lambda e: e.path)

    def digest(self) -> str:
        """sha256 hex of the sorted sha256sums text (paths and contents; sizes follow from contents)."""
        return hashlib.sha256(sha256sums_text(self.files).encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {e.path: e for e in self.files}

    def to_json(self) -> str:
        doc = {
            "format": MANIFEST_FORMAT,
            "algorithm": "sha256",
            "digest": self.digest(),
            "total_bytes": self.total_bytes,
            **{k: v for k, v in self.extra.items() if k not in ("format", "algorithm", "digest", "total_bytes", "files")},
            "files": [e.to_dict() for e in self.files],
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest; ValueError if it is malformed or its digest does not match its files."""
        try:
            doc = json.loads(text)
            files = [FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed manifest: {exc}") from None
        extra = {k: v for k, v in doc.items() if k not in ("format", "algorithm", "digest", "total_bytes", "files")}
        man = cls(files, extra)
        if doc.get("digest") not in (None, man.digest()):
            raise ValueError("manifest digest does not match its file list (edited by hand?)")
        return man

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def write(self, path: str | Path) -> None:
        """Write atomically: a `.partial` sibling, fsync, rename."""
        write_atomic(Path(path), self.to_json().encode())


# --------------------------------------------------------------------------- hashing and copying


def _entry_path(relpath: str | None, dst: Path) -> str:
    return relpath if relpath is not None else dst.name


def _sequential(fd: int) -> None:
    """Tell the kernel we read front to back (a bigger readahead window); harmless where unsupported."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass


def hash_file(path: str | Path, advance: Advance | None = None) -> str:
    """sha256 hex of a file, read once in big chunks; `advance(n)` after each chunk."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        _sequential(f.fileno())
        while n := f.readinto(buf):
            h.update(view[:n])
            if advance:
                advance(n)
    return h.hexdigest()


def _libc_sync_file_range():
    """libc's sync_file_range (Linux), or None: starts writeback of a range without waiting."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
        return fn
    except (OSError, AttributeError):
        return None


_sync_file_range = _libc_sync_file_range() if sys.platform.startswith("linux") else None
SYNC_FILE_RANGE_WRITE = 2


def _write_all(fd: int, view: memoryview, offset: int, start_writeback: bool) -> None:
    """Write the whole view; then ask the kernel to start writing it to disk (so the final fsync is short)."""
    n = len(view)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    if start_writeback and _sync_file_range is not None:
        _sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)


def copy_and_hash(
    src: str | Path,
    dst: str | Path,
    advance: Advance | None = None,
    *,
    relpath: str | None = None,
    fsync: bool = True,
) -> FileEntry:
    """Copy src to dst and hash the same bytes in one pass; returns the dst's FileEntry.

    Two buffers alternate: while chunk k is written (in a helper thread) it is
    hashed here, then chunk k+1 is read into the other buffer. Every byte is
    read once and written once. With fsync, writeback of each chunk starts as
    soon as it is written (sync_file_range), so the closing fsync waits for
    little. `relpath` names the entry (default: dst's name). `advance` may
    raise to abort (the partial dst is removed).
    """
    src, dst = Path(src), Path(dst)
    h = hashlib.sha256()
    bufs = (bytearray(CHUNK), bytearray(CHUNK))
    size = 0
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealift-write")
    try:
        with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
            _sequential(fin.fileno())
            fd = fout.fileno()
            pending: concurrent.futures.Future[None] | None = None
            k = 0
            while True:
                buf = bufs[k & 1]  # its previous write finished: we waited for it last round
                n = fin.readinto(buf)
                if pending is not None:
                    pending.result()
                    pending = None
                if not n:
                    break
                view = memoryview(buf)[:n]
                pending = writer.submit(_write_all, fd, view, size, fsync)
                h.update(view)
                size += n
                k += 1
                if advance:
                    advance(n)
            if fsync:
                os.fsync(fd)
    except BaseException:
        writer.shutdown(wait=True)
        dst.unlink(missing_ok=True)
        raise
    writer.shutdown(wait=True)
    return FileEntry(_entry_path(relpath, dst), size, h.hexdigest())


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(src: Path, dst: Path) -> bool:
    """Copy-on-write clone of src at dst (btrfs, xfs, ...); False if the filesystem cannot."""
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        return True
    except OSError:
        Path(dst).unlink(missing_ok=True)
        return False


def link_and_hash(
    src: str | Path, dst: str | Path, advance: Advance | None = None, *, relpath: str | None = None
) -> tuple[FileEntry, str]:
    """Place src at dst without copying bytes (reflink, else hardlink) and hash it (read only).

    Returns (entry, how) with how = "reflink" or "hardlink". Raises OSError
    (errno EXDEV) when src and dst are on different filesystems.
    A hardlink shares the inode: editing the source later edits the stored
    model too, which `sealift verify` then reports.
    """
    src, dst = Path(src).resolve(), Path(dst)
    if reflink(src, dst):
        how = "reflink"
    else:
        os.link(src, dst)
        how = "hardlink"
    try:
        digest = hash_file(dst, advance)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return FileEntry(_entry_path(relpath, dst), dst.stat().st_size, digest), how


# --------------------------------------------------------------------------- walking and verifying


def walk_files(root: str | Path, *, skip_hidden: bool = True, ignore: Iterable[str] = ()) -> list[str]:
    """Relative POSIX paths of the regular files under root (symlinks followed), sorted.

    Hidden entries (`.git/`, `.cache/huggingface/`, ModelScope's `.mdl`/`.msc`)
    are skipped when skip_hidden; `ignore` names top-level files to leave out.
    A dangling symlink is listed (so a check can report it missing).
    """
    root = Path(root)
    skip = set(ignore)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel_dir = Path(dirpath).relative_to(root)
        if skip_hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        dirnames.sort()
        for fn in filenames:
            if skip_hidden and fn.startswith("."):
                continue
            rel = (rel_dir / fn).as_posix()
            if rel in skip:
                continue
            found.append(rel)
    return sorted(found)


@dataclass(frozen=True)
class Problem:
    """One mismatch between a directory and its manifest."""

    path: str
    kind: Literal["missing", "size", "sha256", "unexpected", "unreadable"]
    expected: str | None = None
    actual: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: missing"
        if self.kind == "unexpected":
            return f"{self.path}: not in the manifest"
        if self.kind == "unreadable":
            return f"{self.path}: unreadable ({self.actual})"
        return f"{self.path}: {self.kind} is {self.actual}, expected {self.expected}"


def map_parallel(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int | None = None,
    *,
    cancel: threading.Event | None = None,
) -> Iterator[Any]:
    """fn over items on a thread pool (order items biggest first); results in completion order.

    On any exception (a worker's, or KeyboardInterrupt in the caller) `cancel`
    is set (workers built with `cancellable` stop within one chunk), pending
    items are dropped and running ones end before the exception propagates, so
    no thread writes after the caller cleans up.
    """
    if not items:
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="sealift")
    try:
        futures = [pool.submit(fn, item) for item in items]
        for fut in concurrent.futures.as_completed(futures):
            yield fut.result()
    except BaseException:
        if cancel is not None:
            cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def verify_dir(
    root: str | Path,
    manifest: Manifest,
    advance: Advance | None = None,
    *,
    ignore: Iterable[str] = (MANIFEST_NAME,),
    workers: int | None = None,
) -> list[Problem]:
    """Re-hash every file of root against the manifest (in parallel); [] when identical.

    Reports each missing file, size or sha256 mismatch, and each file under root
    that the manifest does not list (except `ignore`, e.g. model.yaml).
    """
    root = Path(root)
    problems: list[Problem] = []
    present = set(walk_files(root, skip_hidden=False, ignore=ignore))
    expected = manifest.by_path()
    for rel in sorted(present - expected.keys()):
        problems.append(Problem(rel, "unexpected"))
    todo: list[FileEntry] = []
    for rel, entry in expected.items():
        p = root / rel
        if rel not in present or not p.is_file():
            problems.append(Problem(rel, "missing"))
            if advance:
                advance(entry.size)
            continue
        size = p.stat().st_size
        if size != entry.size:
            problems.append(Problem(rel, "size", str(entry.size), str(size)))
            if advance:
                advance(entry.size)
            continue
        todo.append(entry)

    def check(entry: FileEntry) -> Problem | None:
        try:
            actual = hash_file(root / entry.path, advance)
        except OSError as exc:
            return Problem(entry.path, "unreadable", None, exc.strerror or str(exc))
        return None if actual == entry.sha256 else Problem(entry.path, "sha256", entry.sha256, actual)

    todo.sort(key=lambda e: -e.size)
    cancel = threading.Event()
    if advance is not None:
        advance = cancellable(advance, cancel)
    problems.extend(p for p in map_parallel(check, todo, workers, cancel=cancel) if p is not None)
    return sorted(problems, key=lambda p: (p.path, p.kind))


#: Suffixes of the files that decide which code runs when a model is loaded with
#: trust_remote_code: its own modules and the configs whose auto_map names them.
CODE_SUFFIXES = (".py", ".json")


def code_problems(model_dir: str | Path) -> list[Problem]:
    """Re-hash a stored model's code and config files against its sealift manifest; [] when unchanged.

    With trust_remote_code, transformers and vLLM import the model's own .py files,
    picked by the auto_map of config.json / tokenizer_config.json. Each such file
    changed, missing or added since import is reported; a missing or unreadable
    manifest is one problem. Only these small files are read (the weights are
    `sealift verify`'s job), so it is cheap enough to run before every start.
    """
    root = Path(model_dir)
    try:
        manifest = Manifest.read(root / MANIFEST_NAME)
    except FileNotFoundError:
        return [Problem(MANIFEST_NAME, "missing")]
    except (OSError, ValueError) as exc:
        return [Problem(MANIFEST_NAME, "unreadable", actual=str(exc))]
    expected = {e.path: e for e in manifest.files if e.path.endswith(CODE_SUFFIXES)}
    present = {r for r in walk_files(root, skip_hidden=False, ignore=(MANIFEST_NAME,)) if r.endswith(CODE_SUFFIXES)}
    problems = [Problem(rel, "unexpected") for rel in sorted(present - expected.keys())]
    for rel, entry in sorted(expected.items()):
        if rel not in present or not (root / rel).is_file():
            problems.append(Problem(rel, "missing"))
            continue
        try:
            actual = hash_file(root / rel)
        except OSError as exc:
            problems.append(Problem(rel, "unreadable", actual=exc.strerror or str(exc)))
            continue
        if actual != entry.sha256:  # reported as sha256 even when the size differs: the digest is what import showed
            problems.append(Problem(rel, "sha256", entry.sha256, actual))
    return problems


class Cancelled(Exception):
    """Raised inside workers (through `advance`) once a cancel was requested."""


def cancellable(advance: Advance, cancel: threading.Event) -> Advance:
    """An advance callback that raises Cancelled in the worker once `cancel` is set."""

    def adv(n: int) -> None:
        if cancel.is_set():
            raise Cancelled()
        advance(n)

    return adv
