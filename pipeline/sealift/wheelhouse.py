"""The wheels a bundle carries: resolved by pip for the target platform and Python, kept in a cache.

    resolve_wheels(requirements, platform=, python_version=, wheels_from=) -> [Path]
    sealift_wheel(wheels_from) -> Path     a wheel of the running sealift (built once per source)

SEALIFT_WHEEL_CACHE is where wheels downloaded from an index, and the sealift
wheels built, are kept between exports (default $SEALIFT_HOME/wheel-cache).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from sealift import __version__, console, paths
from sealift.errors import Failure, UserError

WHEEL_CACHE_ENV = "SEALIFT_WHEEL_CACHE"
#: The files beside pipeline/ that building the sealift wheel reads.
SELF_BUILD_FILES = ("pyproject.toml", "README.md")


def expand_platforms(platform: str) -> list[str]:
    """A manylinux tag and every older one it runs (pip takes only the exact tags it is given).

    manylinux_2_28_x86_64 -> manylinux_2_28_x86_64 ... manylinux_2_17_x86_64,
    manylinux2014_x86_64, ..., manylinux1_x86_64. Other tags are returned as they are.
    """
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    glibc, arch = int(m.group(1)), m.group(2)
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    out = []
    for minor in range(glibc, 4, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            out.append(f"{legacy[minor]}_{arch}")
    return out


def wheel_cache() -> Path:
    return Path(os.environ.get(WHEEL_CACHE_ENV) or paths.sealift_home() / "wheel-cache")


def _pip(args: list[str], *, isolated: bool, what: str,
         hint: str = "check --platform/--python-version, the index, or --wheels-from DIR"
         ) -> subprocess.CompletedProcess[str]:
    """Run pip (this Python's) quietly; `isolated` ignores the user's pip config, index and find-links."""
    env = dict(os.environ)
    if isolated:
        for key in list(env):
            if key.startswith("PIP_"):
                del env[key]
        env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    cmd = [sys.executable, "-m", "pip", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("ERROR")] or p.stderr.strip().splitlines()[-3:]
        raise UserError(f"{what} failed: {' '.join(errors)[:600]}", hint=hint)
    return p


def resolve_wheels(requirements: list[str], *, platform: str, python_version: str,
                   wheels_from: Path | None) -> list[Path]:
    """Local wheel files for the requirements on the target, resolved by pip for that platform.

    `wheels_from`: only that directory is looked at (no index, no pip config).
    Otherwise pip resolves against the configured index; wheels not already
    local (file:// links) are downloaded into the wheel cache.
    """
    plat_args = [a for p in expand_platforms(platform) for a in ("--platform", p)]
    common = ["--only-binary=:all:", *plat_args, "--python-version", python_version]
    with tempfile.TemporaryDirectory(prefix="sealift-wheels-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        report = Path(tmp) / "report.json"
        source = ["--no-index", "--find-links", str(wheels_from)] if wheels_from else []
        _pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *common, *source,
              "-r", str(req)], isolated=wheels_from is not None, what="resolving the wheels")
        install = json.loads(report.read_text()).get("install", [])
    files: list[Path] = []
    remote: dict[str, str] = {}
    for item in install:
        url = item["download_info"]["url"]
        if url.startswith("file://"):
            files.append(Path(unquote(urlparse(url).path)))
        else:
            name = url.rsplit("/", 1)[-1].split("#")[0]
            meta = item["metadata"]
            remote[name] = f"{meta['name']}=={meta['version']}"
    if remote:
        cache = wheel_cache()
        cache.mkdir(parents=True, exist_ok=True)
        missing = [spec for name, spec in remote.items() if not (cache / name).is_file()]
        if missing:
            console.info(f"downloading {len(missing)} wheels into {cache}")
            _pip(["download", "--no-deps", "--quiet", "--dest", str(cache), *common, *missing],
                 isolated=False, what="downloading the wheels")
        for name in remote:
            if not (cache / name).is_file():
                raise UserError(f"pip did not download {name} into {cache}", hint="run the export again")
            files.append(cache / name)
    return sorted(set(files), key=lambda p: p.name)


def _self_source() -> list[Path] | None:
    """The files the sealift wheel is built from (sorted), or None when this sealift is no source checkout."""
    root = paths.repo_root()
    if not all((root / f).is_file() for f in SELF_BUILD_FILES) or \
            not re.search(r'^name\s*=\s*"sealift"', (root / "pyproject.toml").read_text(), re.M):
        return None
    package = [p for p in (root / "pipeline").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")]
    return sorted([root / f for f in SELF_BUILD_FILES] + package)


def sealift_wheel(wheels_from: Path | None = None) -> Path:
    """A wheel of the sealift that is running (py3-none-any), so a bundle can install sealift with no index.

    From a source checkout (pyproject.toml beside pipeline/, editable install
    or not): built with the setuptools already installed (`pip wheel --no-deps
    --no-build-isolation --no-index`), from a copy of just the files the wheel
    holds, so the checkout gets no build/ or egg-info. The wheel is kept in the
    wheel cache under the sha256 of those files: the same source gives the same
    wheel file, built once, and a resumed export finds the bytes it wrote.
    Without a checkout (sealift installed from its wheel): the
    `sealift-<version>-*.whl` in --wheels-from if there is one, else the wheel
    rebuilt from the installed files, each checked against its RECORD hash
    (sealift.selfwheel), kept in the wheel cache under the digest of those files.
    """
    source = _self_source()
    if source is None:
        if wheels_from is not None:
            found = sorted(Path(wheels_from).glob(f"sealift-{__version__}-*.whl"))
            if found:
                return found[-1]
        return _installed_wheel()
    root = paths.repo_root()
    h = hashlib.sha256()
    for path in source:
        data = path.read_bytes()
        h.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    where = wheel_cache() / "sealift" / h.hexdigest()[:16]
    built = sorted(where.glob("sealift-*.whl")) if where.is_dir() else []
    if built:
        return built[-1]
    where.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sealift-self-", dir=where.parent) as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        for path in source:
            dst = src / path.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", "--wheel-dir", str(out), str(src)],
             isolated=True, what="building the sealift wheel",
             hint="the build needs setuptools in this venv (pip install 'setuptools>=68'), or use --no-wheels")
        wheels = sorted(out.glob("sealift-*-py3-none-any.whl"))
        if len(wheels) != 1:
            raise Failure(f"building the sealift wheel in {out} gave {[w.name for w in out.iterdir()]}")
        try:
            os.rename(out, where)  # atomic: a concurrent export that built the same source first wins
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    return sorted(where.glob("sealift-*.whl"))[-1]


def _installed_wheel() -> Path:
    """The installed sealift, zipped again as its wheel (sealift.selfwheel), cached by content."""
    from sealift.selfwheel import installed_files, wheel_from_installed

    h = hashlib.sha256()
    for name, data in sorted(installed_files().items()):
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    where = wheel_cache() / "sealift" / f"installed-{h.hexdigest()[:16]}"
    built = sorted(where.glob("sealift-*.whl")) if where.is_dir() else []
    return built[-1] if built else wheel_from_installed(where)
