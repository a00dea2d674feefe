"""Where a bundle's files lie on the medium: one folder, or the vol-N folders of one export, read without trusting them.

    medium = open_medium([DIR, ...])    Folder(DIR), or Volumes over the vol-N folders (UserError, exit 2)
    medium.read_small(rel)              the bytes of a small file (SHA256SUMS, manifest.json), read once
    medium.open(rel) -> fd              a regular file, opened O_NOFOLLOW, never through a symlink

Nothing on the medium is used as a path before it went through sealift.core.safepath, and no
link or file is ever created beside the bundle. A bundle spanning volumes has no signature yet
(export refuses --sign with volumes); its root of trust is BUNDLE-SHA256SUMS, which every volume
holds byte for byte the same, and which names manifest.json's sha256. VOLUME.json is only a claim
("I am volume 2"): the files it lists must be exactly those the (hashed) manifest.json puts on that
volume, and counts come from manifest.json, never from VOLUME.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sealift.bundle.format import MANIFEST_JSON, SUMS
from sealift.bundle.lists import parse_sums
from sealift.bundle.volumes import BUNDLE_SUMS, VOLUME_FORMAT, VOLUME_JSON
from sealift.core.errors import UserError
from sealift.core.safepath import checked_rel, join_inside, open_regular

__all__ = ["SMALL_LIMIT", "Folder", "Medium", "Volumes", "is_volume_set", "open_medium"]

#: The most bytes read from a "small" file of the medium (SHA256SUMS, manifest.json, VOLUME.json, .sig).
SMALL_LIMIT = 64 * 1024 * 1024
#: The most volumes a bundle may span (a count above it is refused before anything is built from it).
MAX_VOLUMES = 1000


def _refuse(what: str, hint: str = "copy the bundle from the source again") -> UserError:
    return UserError(f"{what}; nothing was imported", hint=hint)


@dataclass
class Medium:
    """A bundle's files on the medium; `label` names the bundle in messages."""

    label: str

    def path(self, rel: str) -> Path:  # pragma: no cover - each kind says
        raise NotImplementedError

    def where(self, rel: str) -> Path:
        """path(rel), or UserError naming the unsafe path."""
        try:
            return self.path(rel)
        except ValueError as exc:
            raise _refuse(f"bundle {self.label}: refusing the path {str(rel)[:120]!r} ({exc})",
                          hint="this bundle was not written by `sealift export`; do not install it") from None

    def open(self, rel: str) -> int:
        """An fd of the regular file rel (O_NOFOLLOW); UserError when it is missing, a link or not a file."""
        path = self.where(rel)
        try:
            return open_regular(path)
        except ValueError as exc:
            what = "missing" if not os.path.lexists(path) else str(exc)
            raise _refuse(f"bundle {self.label}: {rel}: {what}") from None

    def size(self, rel: str) -> int | None:
        """The size of the regular file rel; None when it is missing. UserError for a link or a non-file."""
        path = self.where(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _refuse(f"bundle {self.label}: {rel}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise _refuse(f"bundle {self.label}: {rel} is {kind}",
                          hint="this bundle was not written by `sealift export`; do not install it")
        return st.st_size

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.where(rel))

    def read_small(self, rel: str, limit: int = SMALL_LIMIT) -> bytes:
        """The whole file rel, read once; UserError when missing, not a plain file, or over `limit` bytes."""
        fd = self.open(rel)
        try:
            chunks, got = [], 0
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                got += len(chunk)
                if got > limit:
                    raise _refuse(f"bundle {self.label}: {rel} is over {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise _refuse(f"bundle {self.label}: {rel} is unreadable ({exc.strerror})") from None
        finally:
            os.close(fd)

    def recorded(self) -> str:
        """What the install registry records as where the bundle came from."""
        return self.label

    @property
    def sums_name(self) -> str:
        return SUMS


@dataclass
class Folder(Medium):
    """A bundle in one folder."""

    root: Path = Path()

    def path(self, rel: str) -> Path:
        return join_inside(self.root, rel)


@dataclass
class Volumes(Medium):
    """A bundle over the vol-N folders of one export: each file is on the volume manifest.json puts it on."""

    folders: dict[int, Path] = field(default_factory=dict)  # volume number -> folder
    files: dict[str, int] = field(default_factory=dict)  # rel -> volume (manifest.json's volumes.files)

    def path(self, rel: str) -> Path:
        return join_inside(self.folders[self.files.get(checked_rel(rel), 1)], rel)

    def recorded(self) -> str:
        return " ".join(str(f) for _, f in sorted(self.folders.items()))

    @property
    def sums_name(self) -> str:
        return BUNDLE_SUMS


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def is_volume_set(dirs: list[Path]) -> bool:
    """Whether install was given volumes (several dirs, a VOLUME.json, or a folder of vol-N folders)."""
    return len(dirs) > 1 or any(os.path.lexists(Path(d) / VOLUME_JSON) or any(Path(d).glob(f"vol-*/{VOLUME_JSON}"))
                                for d in dirs)


def open_medium(dirs: list[Path]) -> Medium:
    """The medium install reads: one bundle folder, or the volumes of one bundle (checked: one export, each once,
    all there, each holding exactly the files manifest.json puts on it). UserError (exit 2) otherwise."""
    dirs = [Path(d).expanduser().absolute() for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d} is not a directory", hint="give the bundle directory that `sealift export` wrote")
    if not is_volume_set(dirs):
        return Folder(label=str(dirs[0]), root=dirs[0])
    return _open_volumes(dirs)


def _volume_folders(dirs: list[Path]) -> list[Path]:
    folders: list[Path] = []
    for d in dirs:
        if os.path.lexists(d / VOLUME_JSON):
            folders.append(d)
            continue
        inner = sorted(p for p in d.glob("vol-*") if _is_dir(p) and os.path.lexists(p / VOLUME_JSON))
        if not inner:
            raise _refuse(f"{d} is not a volume of a sealift bundle (no {VOLUME_JSON})",
                          hint="give the vol-N folders that `sealift export --volume-size` wrote")
        folders += inner
    return folders


def _claim(folder: Path) -> tuple[int, list[str]]:
    """What VOLUME.json says: (volume number, files); strict types, bounded; UserError otherwise."""
    raw = Folder(label=str(folder), root=folder).read_small(VOLUME_JSON, 16 * 1024 * 1024)
    try:
        vol = json.loads(raw)
        if not isinstance(vol, dict) or vol.get("format") != VOLUME_FORMAT:
            raise ValueError(f"format {vol.get('format') if isinstance(vol, dict) else None!r}")
        number, files = vol["volume"], vol["files"]
        if type(number) is not int or not 1 <= number <= MAX_VOLUMES:
            raise ValueError(f"volume {number!r} is not a number from 1 to {MAX_VOLUMES}")
        if not isinstance(files, list) or len(files) > 1_000_000:
            raise ValueError("files is not a list")
        return number, [checked_rel(f) for f in files]
    except (ValueError, KeyError, TypeError) as exc:
        raise _refuse(f"{folder / VOLUME_JSON} is unreadable ({exc})", hint="copy the volume again") from None


def _open_volumes(dirs: list[Path]) -> Volumes:
    folders = _volume_folders(dirs)
    first = folders[0]
    sums = Folder(label=str(first), root=first).read_small(BUNDLE_SUMS)
    manifest = Folder(label=str(first), root=first).read_small(MANIFEST_JSON)
    for folder in folders[1:]:
        f = Folder(label=str(folder), root=folder)
        if f.read_small(BUNDLE_SUMS) != sums or f.read_small(MANIFEST_JSON) != manifest:
            raise _refuse(f"{folder} and {first} are parts from two different bundles (their manifest.json or "
                          f"{BUNDLE_SUMS} differ)", hint="give the volumes of one export")
    listed_sums = parse_sums(sums, str(first / BUNDLE_SUMS))
    if listed_sums.get(MANIFEST_JSON) != hashlib.sha256(manifest).hexdigest():
        raise _refuse(f"{first / MANIFEST_JSON} does not match {BUNDLE_SUMS} (corrupted)")
    try:
        doc = json.loads(manifest)
        vols = doc["volumes"]
        count, placed = vols["count"], vols["files"]
        if type(count) is not int or not 1 <= count <= MAX_VOLUMES or not isinstance(placed, dict):
            raise ValueError("volumes.count or volumes.files is malformed")
        files = {checked_rel(rel): v for rel, v in placed.items()}
        if any(type(v) is not int or not 1 <= v <= count for v in files.values()):
            raise ValueError("volumes.files names a volume out of range")
        label = str(doc["bento"]["tag"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _refuse(f"{first / MANIFEST_JSON}: its volumes record is unreadable ({exc})") from None
    seen: dict[int, Path] = {}
    for folder in folders:
        number, listed = _claim(folder)
        if number in seen or folder in seen.values():
            raise _refuse(f"volume {number} of {label} was given twice ({seen.get(number, folder)} and {folder})",
                          hint="give each volume once")
        if number > count:
            raise _refuse(f"{folder / VOLUME_JSON} says volume {number}, the bundle has {count}",
                          hint="give the volumes of one export")
        expected = {rel for rel, v in files.items() if v == number} | (set(listed_sums) - set(files)) | {BUNDLE_SUMS}
        if set(listed) != expected:
            odd = sorted(set(listed) ^ expected)[0]
            raise _refuse(f"{folder / VOLUME_JSON} does not list the files manifest.json puts on volume {number} "
                          f"({odd})", hint="this volume was not written by `sealift export`; do not install it")
        seen[number] = folder
    absent = [i for i in range(1, count + 1) if i not in seen]
    if absent:
        names = ", ".join(f"vol-{i}" for i in absent)
        raise _refuse(f"{names} ({'volumes' if len(absent) > 1 else 'volume'} {', '.join(map(str, absent))} of "
                      f"{count}) of bundle {label} is missing",
                      hint=f"give every volume's folder: sealift install VOL1 ... VOL{count}")
    medium = Volumes(label="the volumes", folders=seen, files=files)
    for rel, v in sorted(files.items()):
        if medium.size(rel) is None:
            raise _refuse(f"{seen[v]}: {rel} is missing from volume {v} of {label}", hint="copy that volume again")
    return medium
