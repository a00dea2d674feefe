"""Every wheel a bundle carries against the sha256 its lock records, checked on bytes that are read anyway.

    check = WheelCheck(resolved)               {file: Locked} (sealift.bundle.wheelhouse.resolve_locked)
    check.copy(src, copy, digest_of, discard)  export's copy of one wheel, again after one re-download when
                                               the bytes hashed on the way are not the lock's; else UserError
    check.matches(src, digest) -> bool
    check.verify(files) -> int                 hash each, fetch a bad one again (after the proof refused the set)
    check.constraints(files) -> [str]          `name==version --hash=sha256:...`: the proof's uv checks as it reads
    check.record(files) -> dict                manifest.json's `wheel_hashes`

The lock is uv's resolution (`uv pip compile --format pylock.toml`): each wheel's URL and sha256. A
wheel downloaded from an index is checked as it arrives; one found in the wheel cache is taken by name and
size, unread, and checked where its bytes are read anyway: the proof's uv (its constraints carry the
hashes, so no code of a wrong wheel runs; when the proof refuses the set, for a hash or for a file that is
no wheel, export hashes every wheel with verify and runs it again) and export's copy onto the medium
(copy_and_hash's digest is compared with the lock's, so what SHA256SUMS lists, and a signature covers, is
what the lock names). A cached wheel that does not match is set aside (`NAME.rejected`) and downloaded
once more, with a warning; where that cannot be done, export stops with one line naming the wheel, the
cache path and what to do. Measured (CPU bundle, 97 wheels, 278 MB, one cached wheel poisoned with
random bytes): the proof refused it, the wheel was fetched again, the proof passed and the export finished.

file:// wheels (--wheels-from, find-links, a file:// index, sealift's own wheel) are taken as found: uv
read their sha256 from the files themselves (or a local index page) when it resolved, so the check holds
them to the bytes resolved, but no index vouches for them. manifest.json's `wheel_hashes` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from sealift.bundle.wheelhouse import Locked, download
from sealift.core import console
from sealift.core.errors import UserError
from sealift.model.manifest import hash_file

__all__ = ["WheelCheck"]

T = TypeVar("T")


class WheelCheck:
    """The lock's word on each wheel file of an export, and the wheels fetched again because of it."""

    def __init__(self, resolved: dict[Path, Locked] | None = None) -> None:
        self.locked: dict[Path, Locked] = {}
        self.refetched: list[str] = []
        self.add(resolved or {})

    def add(self, resolved: dict[Path, Locked]) -> None:
        for path, item in resolved.items():
            self.locked[Path(path).absolute()] = item

    def _item(self, path: Path) -> Locked | None:
        return self.locked.get(Path(path).absolute())

    def expected(self, path: Path) -> str | None:
        """The lock's sha256 of the wheel at `path`; None where it records none (then nothing is checked)."""
        item = self._item(path)
        return item.sha256 if item else None

    def matches(self, path: Path, digest: str) -> bool:
        want = self.expected(path)
        return want is None or want == digest

    def copy(self, src: Path, copy: Callable[[], T], digest_of: Callable[[T], str], discard: Callable[[], None]) -> T:
        """copy() (it writes src onto the medium, hashing the bytes it reads), checked against the lock.

        A mismatch: what was written is discarded, the cached wheel fetched once more, and copied again;
        UserError (nothing of it kept) where it is a local file, was fetched already, or cannot be fetched.
        """
        while True:
            out = copy()
            digest = digest_of(out)
            if self.matches(src, digest):
                return out
            discard()
            self._refetch(src, digest)

    def _refetch(self, path: Path, digest: str) -> None:
        item = self._item(path)
        assert item is not None and item.sha256
        what = f"{path.name} ({path}) has sha256 {digest}, the lock says {item.sha256}"
        if item.url.startswith("file://"):
            raise UserError(f"{what}: the file changed since it was resolved; nothing of it was kept",
                            hint="check where it comes from, then run the export again")
        if path.name in self.refetched:
            raise UserError(f"{what} even after it was downloaded again; nothing of it was kept",
                            hint="something changes the wheel cache under the export: check it, then run it again")
        aside = path.with_name(path.name + ".rejected")
        try:
            path.replace(aside)
        except OSError:
            aside = path
        host = urlparse(item.url).netloc or item.url
        console.warn(f"{path.name} in the wheel cache is not the wheel the lock names (sha256 {digest[:16]}..., the "
                     f"lock says {item.sha256[:16]}...); set aside as {aside.name}, downloading it again from {host}")
        try:
            download(item, path, lambda n: None)
        except UserError as exc:
            raise UserError(f"{path.name} in the wheel cache ({path}) is not the wheel the lock names (sha256 "
                            f"{digest}, the lock says {item.sha256}), and downloading it again failed: {exc.message}",
                            hint="run the export again where the index is reachable (the bad copy is set aside as "
                                 f"{aside.name}), or export with --wheels-from DIR") from None
        self.refetched.append(path.name)

    def verify(self, files: list[Path]) -> int:
        """Hash every file the lock gives a sha256 for; fetch a cached wheel that does not match once more
        (UserError where that cannot be). The number of wheels fetched again."""
        before = len(self.refetched)
        for path in files:
            want = self.expected(path)
            if want is None:
                continue
            digest = hash_file(path)
            if digest != want:
                self._refetch(path, digest)
        return len(self.refetched) - before

    def constraints(self, files: list[Path]) -> list[str]:
        """Constraint lines pinning each wheel to its version and the lock's sha256 (uv checks them as it reads)."""
        lines = []
        for path in files:
            item = self._item(path)
            if item and item.sha256 and item.version:
                lines.append(f"{item.name}=={item.version} --hash=sha256:{item.sha256}")
        return lines

    def record(self, files: list[Path]) -> dict[str, Any]:
        """manifest.json's `wheel_hashes`: how each wheel in the bundle was held to its lock."""
        local, unhashed = [], []
        indexed = 0
        for path in files:
            item = self._item(path)
            if item is None or not item.sha256:
                unhashed.append(path.name)
            elif item.url.startswith("file://"):
                local.append(path.name)
            else:
                indexed += 1
        return {
            "lock": "uv pip compile --format pylock.toml",
            "checked": len(files) - len(unhashed),
            "from_index": indexed,
            "taken_as_found": sorted(local),
            "unchecked": sorted(unhashed),
            "downloaded_again": sorted(set(self.refetched) & {p.name for p in files}),
            "note": "every wheel's bytes as written equal the lock's sha256; taken_as_found are file:// wheels "
                    "(--wheels-from, find-links, a local index, sealift's own) whose sha256 uv read on this host when it "
                    "resolved (from the file or a local index page): no remote index vouches for them; unchecked "
                    "had no sha256 in the lock",
        }
