"""The kept wheel pool, content-addressed: a wheel is kept under its sha256 and used only when its bytes hash to it.

    $SEALIFT_HOME/wheels/.sha256/<sha256>     every kept wheel, read-only, named by its bytes
    $SEALIFT_HOME/wheels/<file>.whl           a hard link to the blob of that name the newest install verified
                                              (what openllm's uv and pip read as find-links, offline)
    $SEALIFT_HOME/wheelsets/<name>-<version>/  the exact wheels one bundle listed, linked from the blobs
                                              (what its runtime venv was made from)

    staged = stage(stream_of, wheels, staging, advance)   each wheel hashed as it is copied from the medium into
                                                           staging (or taken from a blob whose bytes hash right)
    wheelset = publish(staged, "qwen7b:v1")                 only after the whole bundle verified

Nothing on the medium is ever linked into the pool: a blob is a copy made from verified bytes, so a
later write to the medium cannot change it. A pool file whose name is right but whose bytes are not
the ones SHA256SUMS names is never used: it is reported and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealift.bundle.inventory import WHEEL_INDEX
from sealift.core import console, paths
from sealift.core.atomic import write_atomic
from sealift.core.errors import UserError
from sealift.host.unpack import Stream

__all__ = ["BLOBS", "Staged", "Wheel", "blob_path", "publish", "read_index", "record", "stage", "take"]

#: The folder of blobs inside the pool (pip and uv ignore folders in a find-links directory).
BLOBS = ".sha256"
Advance = Callable[[int], None]


@dataclass(frozen=True)
class Wheel:
    """One wheel of a bundle: its file name, its sha256 (from the signed lists), size, and path in the bundle."""

    name: str
    sha256: str
    size: int
    rel: str


@dataclass
class Staged:
    """Wheels verified into staging (new blobs) or found on this host (files whose bytes were hashed now)."""

    staging: Path
    wheels: list[Wheel] = field(default_factory=list)
    new: dict[str, Path] = field(default_factory=dict)  # sha256 -> staged blob
    taken: dict[str, Path] = field(default_factory=dict)  # sha256 -> a file of this host that holds it
    replaced: list[str] = field(default_factory=list)  # pool files whose bytes were wrong

    @property
    def copied_bytes(self) -> int:
        return sum(w.size for w in {w.sha256: w for w in self.wheels}.values() if w.sha256 in self.new)


def pool_dir() -> Path:
    return paths.kept_wheels_dir()


def blob_path(sha256: str) -> Path:
    return pool_dir() / BLOBS / sha256


def _hash(path: Path, advance: Advance) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(4 << 20):
                h.update(chunk)
                advance(len(chunk))
    except OSError:
        return None
    return h.hexdigest()


def stage(stream_of: Callable[[Wheel], Stream], wheels: list[Wheel], staging: Path, advance: Advance,
          *, whole: Callable[[Wheel], bool] = lambda w: False) -> Staged:
    """Each wheel into staging/<sha256>, hashed as it is copied, unless the pool's blob of that sha256 hashes right.

    `stream_of(w)` opens the wheel's part(s) on the medium (a Stream checks each part against SHA256SUMS);
    `whole(w)`: the wheel is in parts, so its own sha256 is hashed too. UserError if any byte differs.
    """
    out = Staged(staging=staging)
    staging.mkdir(parents=True, exist_ok=True)
    for w in wheels:
        out.wheels.append(w)
        if w.sha256 in out.new or w.sha256 in out.taken:
            continue
        blob = blob_path(w.sha256)
        if os.path.isfile(blob) and not os.path.islink(blob):
            if _hash(blob, advance) == w.sha256:
                out.taken[w.sha256] = blob
                continue
            out.replaced.append(str(blob))
            console.warn(f"{blob}: its bytes are not {w.name}'s ({w.sha256[:16]}...): replaced from the bundle")
        dst = staging / w.sha256
        h = hashlib.sha256() if whole(w) else None
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with stream_of(w) as stream:
                stream.copy(fd, advance, also=h.update if h else None)
        finally:
            os.close(fd)
        if h is not None and h.hexdigest() != w.sha256:
            raise UserError(f"{w.rel}: its parts join into other bytes than manifest.json's sha256 for it; "
                            "nothing was imported", hint="copy the bundle from the source again")
        out.new[w.sha256] = dst
    return out


def take(staged: Staged, w: Wheel, src: Path) -> None:
    """A wheel this host already holds (a delta relies on it), whose bytes were just hashed to w.sha256."""
    staged.wheels.append(w)
    if w.sha256 not in staged.new:
        staged.taken.setdefault(w.sha256, src)


def _link(src: Path, dst: Path) -> None:
    """dst becomes a hard link to src (atomically, replacing what was there), or a copy across filesystems."""
    try:
        if not os.path.islink(dst) and os.path.samefile(src, dst):
            return
    except OSError:
        pass
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def publish(staged: Staged, bento_tag: str) -> Path:
    """Move the verified blobs into the pool, point the named view at them, and make the bundle's wheelset.

    Returns the wheelset folder (the runtime venv's find-links). Run only after the whole bundle verified.
    """
    pool = pool_dir()
    (pool / BLOBS).mkdir(parents=True, exist_ok=True)
    for sha, src in staged.new.items():
        os.chmod(src, 0o444)
        os.replace(src, blob_path(sha))
    for sha, src in staged.taken.items():
        if not os.path.isfile(blob_path(sha)):  # a delta's wheel from the named view gets its blob too
            _link(src, blob_path(sha))
    recorded: dict[str, str] = {}
    for w in staged.wheels:
        named = pool / w.name
        if os.path.isfile(named) and not os.path.samefile(named, blob_path(w.sha256)):
            console.warn(f"{named} held other bytes than {w.name} of this bundle: now the verified ones")
            staged.replaced.append(str(named))
        _link(blob_path(w.sha256), named)
        recorded[w.name] = w.sha256
    record(pool, recorded)
    name, version = bento_tag.split(":")
    wheelset = paths.sealift_home() / "wheelsets" / f"{name}-{version}"
    wheelset.mkdir(parents=True, exist_ok=True)
    for w in staged.wheels:
        _link(blob_path(w.sha256), wheelset / w.name)
    return wheelset


def _index_path() -> Path:
    return paths.sealift_home() / WHEEL_INDEX


def read_index() -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(_index_path().read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def record(pool: Path, digests: dict[str, str]) -> None:
    """Record the sha256 of the pool's named wheels ({file name: sha256}) for `sealift inventory`."""
    index = read_index()
    for name, digest in digests.items():
        try:
            st = (pool / name).stat()
        except OSError:
            continue
        index[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _index_path().parent.mkdir(parents=True, exist_ok=True)
    write_atomic(_index_path(), (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
