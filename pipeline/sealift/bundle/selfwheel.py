"""A wheel of the sealift that is installed here, rebuilt from its installed files.

    wheel_from_installed(dest_dir) -> Path   sealift-<version>-py3-none-any.whl in dest_dir

A bundle carries sealift's own wheel so the air-gapped host can install sealift
with no index. From a source checkout the wheel is built from the sources
(wheelhouse.sealift_wheel). A sealift installed from its wheel (`pip install
sealift`, or the wheel a bundle carried) has no sources, but it has what the
wheel held: the files its RECORD lists, with their sha256. sealift is pure
Python (py3-none-any), so those files, zipped again with a fresh RECORD, are
the wheel. Each file is checked against the RECORD hash first: an installed
sealift that was modified after install is refused, not carried.

The zip is deterministic (sorted names, fixed timestamps), so the same
installed sealift always gives the same bytes, and a resumed export finds the
wheel it wrote before.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from sealift.core.errors import UserError

__all__ = ["wheel_from_installed", "installed_files"]

#: dist-info files the installer wrote (not part of the wheel); RECORD is written anew.
INSTALLER_FILES = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")
#: 1980-01-01, the earliest time a zip can hold: fixed so that the bytes depend on the content alone.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _b64_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def installed_files(dist_name: str = "sealift") -> dict[str, bytes]:
    """{name in the wheel: bytes} of an installed distribution, each checked against its RECORD hash."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"{dist_name} is not installed in {sys.prefix}",
                        hint=f"pip install {dist_name}") from None
    files = dist.files
    if not files:
        raise UserError(f"the installed {dist_name} has no RECORD, so its wheel cannot be rebuilt",
                        hint=f"reinstall it with pip (pip install --force-reinstall {dist_name})")
    out: dict[str, bytes] = {}
    changed: list[str] = []
    for entry in files:
        name = entry.as_posix()
        parts = entry.parts
        if name.startswith("..") or "__pycache__" in parts or name.endswith((".pyc", ".pyo")):
            continue  # console scripts the installer wrote outside site-packages, and bytecode
        if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] in INSTALLER_FILES:
            continue
        path = Path(entry.locate())
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            changed.append(f"{name} (missing)")
            continue
        if entry.hash is not None and entry.hash.mode == "sha256" and _b64_digest(data) != entry.hash.value:
            changed.append(name)
            continue
        out[name] = data
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise UserError(f"the installed {dist_name} differs from what its wheel installed: {shown}",
                        hint=f"reinstall it (pip install --force-reinstall {dist_name}) before exporting")
    return out


def wheel_from_installed(dest_dir: Path, dist_name: str = "sealift", files: dict[str, bytes] | None = None) -> Path:
    """Zip the installed distribution's files (`files`, as installed_files gave them, read here if None),
    with a new RECORD, into dest_dir (atomically)."""
    files = installed_files(dist_name) if files is None else files
    dist = importlib.metadata.distribution(dist_name)
    dist_info = next((n.split("/")[0] for n in files if n.split("/")[0].endswith(".dist-info")), None)
    if dist_info is None or f"{dist_info}/WHEEL" not in files:
        raise UserError(f"the installed {dist_name} has no .dist-info/WHEEL, so it did not come from a wheel",
                        hint=f"reinstall it from its wheel (pip install {dist_name})")
    wheel_meta = files[f"{dist_info}/WHEEL"].decode()
    if "Root-Is-Purelib: true" not in wheel_meta:
        raise UserError(f"the installed {dist_name} is not a pure-Python wheel; it cannot be rebuilt here")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name in sorted(files):
        writer.writerow([name, f"sha256={_b64_digest(files[name])}", len(files[name])])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    fd, tmp = tempfile.mkstemp(prefix=".selfwheel-", suffix=".whl", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, ZIP_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, files[name])
            info = zipfile.ZipInfo(f"{dist_info}/RECORD", ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, record.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final
