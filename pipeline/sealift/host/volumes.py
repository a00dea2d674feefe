"""Install from volumes: check that the vol-N folders are one export's, all there, each once, and read them as one bundle.

    install_any([DIR, ...])  -> install.InstallResult   one bundle directory, or the volumes of one
    open_volumes([VOL1, VOL2, ...], scratch)  -> a context manager yielding one bundle directory install reads
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sealift.bundle.format import MANIFEST_JSON, SUMS
from sealift.bundle.volumes import BUNDLE_SUMS, VOLUME_FORMAT, VOLUME_JSON
from sealift.core import paths
from sealift.core.errors import UserError
from sealift.host import install as install_step

__all__ = ["install_any", "install_volumes", "is_volume_set", "open_volumes"]


def is_volume_set(dirs: list[Path]) -> bool:
    """Whether install was given volumes (several dirs, a VOLUME.json, or a folder of vol-N folders)."""
    return len(dirs) > 1 or any((d / VOLUME_JSON).is_file() or any(d.glob(f"vol-*/{VOLUME_JSON}")) for d in dirs)


def _read_volume(folder: Path) -> dict[str, Any]:
    try:
        vol = json.loads((folder / VOLUME_JSON).read_text())
        if vol.get("format") != VOLUME_FORMAT:
            raise ValueError(f"format {vol.get('format')!r}")
        _ = (vol["bundle_id"], int(vol["volume"]), int(vol["volumes"]), list(vol["files"]), vol["bundle"])
    except FileNotFoundError:
        raise UserError(f"{folder} is not a volume of a sealift bundle (no {VOLUME_JSON}); nothing was imported",
                        hint="give the vol-N folders that `sealift export --volume-size` wrote") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{folder / VOLUME_JSON} is unreadable ({exc}); nothing was imported",
                        hint="copy the volume again") from None
    return vol


@contextlib.contextmanager
def open_volumes(dirs: list[Path], scratch: Path) -> Iterator[Path]:
    """Check the volumes belong together, are all there and each once; yield a bundle directory over them.

    The directory (under scratch, removed afterwards) holds a symlink to every file of every volume and
    the bundle's own SHA256SUMS: install verifies every byte of it once, then reads the parts in place.
    Any file missing from its volume, a volume missing or given twice, volumes of two bundles: UserError.
    """
    folders: list[Path] = []
    for d in dirs:
        d = Path(d).expanduser().absolute()
        if not d.is_dir():
            raise UserError(f"{d} is not a directory; nothing was imported", hint="give each volume's folder")
        inner = sorted(d.glob(f"vol-*/{VOLUME_JSON}"))
        folders += [p.parent for p in inner] if inner and not (d / VOLUME_JSON).is_file() else [d]
    seen: dict[int, Path] = {}
    first: dict[str, Any] | None = None
    for folder in folders:
        vol = _read_volume(folder)
        if first is None:
            first = vol
        elif vol["bundle_id"] != first["bundle_id"] or vol["volumes"] != first["volumes"]:
            raise UserError(f"{folder} is volume {vol['volume']} of bundle {vol['bundle']} (id {vol['bundle_id'][:12]}), "
                            f"{seen[first['volume']]} of bundle {first['bundle']} (id {first['bundle_id'][:12]}): "
                            "parts from two different bundles; nothing was imported",
                            hint="give the volumes of one export")
        if vol["volume"] in seen:
            raise UserError(f"volume {vol['volume']} of {vol['bundle']} was given twice ({seen[vol['volume']]} and "
                            f"{folder}); nothing was imported", hint="give each volume once")
        seen[vol["volume"]] = folder
        missing = [f for f in vol["files"] if not (folder / f).is_file()]
        if missing:
            raise UserError(f"{folder}: {missing[0]} is missing from volume {vol['volume']} of {vol['bundle']}"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; nothing was imported",
                            hint="copy that volume again")
    assert first is not None
    absent = [i for i in range(1, first["volumes"] + 1) if i not in seen]
    if absent:
        names = ", ".join(f"vol-{i}" for i in absent)
        raise UserError(f"{names} ({'volumes' if len(absent) > 1 else 'volume'} {', '.join(map(str, absent))} of "
                        f"{first['volumes']}) of bundle {first['bundle']} is missing; nothing was imported",
                        hint=f"give every volume's folder: sealift install VOL1 ... VOL{first['volumes']}")
    scratch.mkdir(parents=True, exist_ok=True)
    view = Path(tempfile.mkdtemp(prefix=f".sealift-volumes-{os.getpid()}-", dir=scratch))
    try:
        one = seen[1]
        for i, folder in sorted(seen.items()):
            if (folder / BUNDLE_SUMS).read_bytes() != (one / BUNDLE_SUMS).read_bytes() or \
                    (folder / MANIFEST_JSON).read_bytes() != (one / MANIFEST_JSON).read_bytes():
                raise UserError(f"{folder}: volume {i} disagrees with volume 1 about the bundle (manifest.json or "
                                f"{BUNDLE_SUMS}); nothing was imported", hint="give the volumes of one export")
            for rel in _read_volume(folder)["files"]:
                link = view / (SUMS if rel == BUNDLE_SUMS else rel)
                if link.exists():  # the small files every volume holds: volume 1's
                    continue
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(folder / rel, link)
        yield view
    finally:
        shutil.rmtree(view, ignore_errors=True)


def install_volumes(dirs: list[Path], **kwargs: Any) -> Any:
    """install.install_bundle over volumes (open_volumes); a problem in a file names the volume that holds it."""
    with open_volumes(dirs, paths.sealift_home() / "tmp") as view:
        try:
            result = install_step.install_bundle(view, **kwargs)
        except UserError as exc:
            where = {}
            for link in view.rglob("*"):
                if link.is_symlink():
                    where[link.relative_to(view).as_posix()] = os.readlink(link)
            message = exc.message.replace(f"bundle {view}", "the volumes").replace(str(view) + "/", "")
            for rel, target in sorted(where.items(), key=lambda kv: -len(kv[0])):
                if f"{rel}:" in message:
                    message = message.replace(f"{rel}:", f"{target}:", 1)
                    break
            raise UserError(message, hint=exc.hint) from None
        result.bundle = " ".join(str(Path(d).expanduser().absolute()) for d in dirs)
        return result


def install_any(dirs: list[Path], **kwargs: Any) -> Any:
    """`sealift install DIR...`: one bundle directory, or the volumes of one (install_volumes)."""
    if is_volume_set(dirs):
        return install_volumes(dirs, **kwargs)
    return install_step.install_bundle(dirs[0], **kwargs)
