"""The wheels a bundle carries: resolved by uv for the target platform and Python, kept in a cache.

    resolve_locked(requirements, platform=, python_version=, wheels_from=, sources=) -> {Path: Locked}
    resolve_wheels(...) -> [Path]           the same files alone
    lock(requirements, platform=, python_version=, sources=) -> [Locked]   (uv pip compile, pylock.toml)
    read_lock(pylock) -> [Locked]           its wheels, paths taken from the lock file's folder
    fetch(locked) -> {Path: Locked}         file:// wheels where they lie, others downloaded (sha256 checked)
    sealift_wheel(wheels_from) -> Path     a wheel of the running sealift (built once per source)

SEALIFT_WHEEL_CACHE is where wheels downloaded from an index, and the sealift
wheels built, are kept between exports (default $SEALIFT_HOME/wheel-cache).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli (a dependency there, and bentoml's), else pip's copy
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from pathlib import Path
from urllib.parse import unquote, urlparse

from sealift.bundle import target
from sealift.core.version import __version__
from sealift.core import console, paths
from sealift.core.errors import Failure, UserError

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


@dataclass(frozen=True)
class Sources:
    """Where a resolution may take wheels from.

    `wheels_from`: that directory alone (no index, no configuration). Otherwise
    the registry (PyPI), plus `extra_index_urls`, `find_links`, and, with
    `host_config`, the indexes, find-links and constraints of this host's pip
    configuration (a cpu bundle takes the CPU torch a host keeps there). A GPU
    target resolves with host_config False: whatever the host's pip says (a CPU
    torch in find-links, a torch cap) never reaches its wheel set.
    """

    wheels_from: Path | None = None
    host_config: bool = True
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()


def _split(value: str) -> list[str]:
    return [v for v in re.split(r"\s+", value.strip()) if v]


def pip_config() -> dict[str, list[str]]:
    """This host's pip settings that choose wheels (index-url, extra-index-url, find-links, constraint, no-index),
    from every pip configuration file and PIP_* variable (`pip config list`); {} where pip is absent."""
    try:
        p = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, list[str]] = {}
    wanted = ("index-url", "extra-index-url", "find-links", "constraint", "no-index")
    for line in p.stdout.splitlines() if p.returncode == 0 else []:
        m = re.fullmatch(r"[^.]*\.([a-z-]+)='(.*)'", line.strip())
        if m and m.group(1) in wanted:
            values = out.setdefault(m.group(1), [])
            values += [v for v in _split(m.group(2)) if v not in values]
    return out


def _uv_source_args(sources: Sources) -> list[str]:
    """uv's index options for `sources`; uv reads no configuration file of its own (--no-config)."""
    if sources.wheels_from is not None:
        return ["--no-index", "--find-links", str(sources.wheels_from)]
    args: list[str] = []
    if sources.host_config:
        config = pip_config()
        no_index = bool(config.get("no-index")) and config["no-index"][-1].lower() in ("1", "true", "yes", "on")
        if no_index:
            args.append("--no-index")
        for url in config.get("index-url", [])[-1:]:
            args += ["--index-url", url]
        for url in config.get("extra-index-url", []):
            args += ["--extra-index-url", url]
        for link in config.get("find-links", []):
            args += ["--find-links", link]
        for path in config.get("constraint", []):
            if Path(path).is_file():
                args += ["--constraint", path]
        if config.get("extra-index-url") and not no_index:
            # Only where this host's pip configuration names several indexes: pip merges them and takes a
            # name's best version over all, and this host's own stack was installed that way. uv's default
            # (first-index: a name only from the first index holding it, extra indexes before the main one)
            # failed the cpu bundle here (measured 2026-12-02, uv 0.13.9: file:///opt/pypi/simple holds
            # huggingface-hub, not the 2.4.0 the bento pins, which the registry has). The CPU torch in
            # find-links needs no strategy (first-index takes it too). Everywhere else (the registry alone,
            # --extra-index-url, a gpu bundle's torch index) uv's default holds: an index listed first
            # keeps its names, so no other index can take one by a higher version (dependency confusion).
            args += ["--index-strategy", "unsafe-best-match"]
    for url in sources.extra_index_urls:
        args += ["--extra-index-url", url]
    for link in sources.find_links:
        args += ["--find-links", link]
    return args


def _uv_env() -> dict[str, str]:
    """The environment for uv: no UV_*/PIP_* settings of the caller (only uv's cache location is kept)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_")) or k == "UV_CACHE_DIR"}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.pop("VIRTUAL_ENV", None)
    return env


def _uv(args: list[str], *, what: str, hint: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "uv", *args], env=_uv_env(), capture_output=True, text=True)
    if p.returncode != 0:
        lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if not ln.startswith(("warning:", "Resolved", "Using"))] or lines
        raise UserError(f"{what} failed: {' '.join(errors)[:700]}", hint=hint)
    return p


@dataclass(frozen=True)
class Locked:
    """One wheel of a resolution: where uv found it."""

    name: str
    version: str
    url: str
    sha256: str | None
    size: int | None

    @property
    def filename(self) -> str:
        return unquote(urlparse(self.url).path.rsplit("/", 1)[-1])


def lock(requirements: list[str], *, platform: str, python_version: str, sources: Sources,
         left_out: tuple[str, ...] = ()) -> list[Locked]:
    """The wheels `requirements` resolve to on `platform`/Python, with uv (`uv pip compile`, pylock.toml).

    Only binary wheels; uv reads no configuration file and no UV_* variable, and
    only `sources`. pip is not needed (Python 3.11's own pip 23.2.1 refuses
    --platform without --target). `left_out`: distributions dropped from the resolution although a
    requirement names them (sealift.bundle.target.left_out; a uv overrides file).
    """

    hint = "check --platform/--python-version, the index, or --wheels-from DIR"
    with tempfile.TemporaryDirectory(prefix="sealift-wheels-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("\n".join(requirements) + "\n")
        out = Path(tmp) / "pylock.toml"
        overrides: list[str] = []
        if left_out:
            (Path(tmp) / "overrides.txt").write_text("\n".join(target.override_lines(left_out)) + "\n")
            overrides = ["--overrides", str(Path(tmp) / "overrides.txt")]
        _uv(["pip", "compile", "--quiet", "--no-config", "--no-header", "--format", "pylock.toml",
             "--python-platform", target.uv_platform(platform), "--python-version", python_version,
             "--only-binary", ":all:", *_uv_source_args(sources), *overrides, "-o", str(out), str(req)],
            what="resolving the wheels", hint=hint)
        return read_lock(out, platform=platform, python_version=python_version, hint=hint)


def read_lock(out: Path, *, platform: str, python_version: str, hint: str = "") -> list[Locked]:
    """The wheels of a pylock.toml. A `path` is relative to the lock file's folder (PEP 751; uv 0.6.15-0.10 writes
    `../../x.whl`, 0.11 and later absolute paths): resolved while that folder exists."""
    doc = tomllib.loads(out.read_text())
    locked = []
    for pkg in doc.get("packages", []):
        wheels = pkg.get("wheels") or ([pkg["archive"]] if "archive" in pkg else [])
        if not wheels:
            raise UserError(f"resolving the wheels gave no wheel for {pkg.get('name')} {pkg.get('version')} "
                            f"on {platform}", hint=hint)
        w = wheels[0] if len(wheels) == 1 else _best_wheel(wheels, platform, python_version)
        url = w.get("url") or (out.parent / w["path"]).resolve().as_uri()
        locked.append(Locked(str(pkg["name"]), str(pkg.get("version", "")), url,
                             (w.get("hashes") or {}).get("sha256"), w.get("size")))
    return locked


def _best_wheel(wheels: list[dict[str, Any]], platform: str, python_version: str) -> dict[str, Any]:
    """Of the wheels uv lists for one package, the one pip would take on the target (its most specific tag)."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    py = tuple(int(x) for x in python_version.split(".")[:2])
    platforms = expand_platforms(platform)
    rank = {t: i for i, t in enumerate([*cpython_tags(py, platforms=platforms),
                                        *compatible_tags(py, platforms=platforms)])}

    def score(w: dict[str, Any]) -> int:
        name = unquote(urlparse(w.get("url") or "").path.rsplit("/", 1)[-1]) or Path(w.get("path", "")).name
        try:
            return min((rank.get(t, len(rank)) for t in parse_wheel_filename(name)[3]), default=len(rank))
        except ValueError:
            return len(rank) + 1

    return min(wheels, key=score)


def download(item: Locked, dest: Path, advance) -> None:
    """Fetch one wheel into dest (via a partial file of this process: two exports may share the cache), checking
    its sha256 as the bytes arrive."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(item.url, timeout=120) as resp, open(tmp, "wb") as f:
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
                advance(len(chunk))
    except (OSError, urllib.error.URLError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"downloading {item.url} failed: {exc}", hint="check the network, or use --wheels-from DIR") from None
    if item.sha256 and h.hexdigest() != item.sha256:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{item.filename} from {item.url} has sha256 {h.hexdigest()}, the index says {item.sha256}",
                        hint="run the export again")
    os.replace(tmp, dest)


def fetch(locked: list[Locked]) -> dict[Path, Locked]:
    """Local files for a resolution, each with its lock entry: file:// wheels where they lie, the others
    downloaded into the wheel cache (checked as they arrive).

    A wheel already in the cache is taken by name and size here, unread: its bytes are checked against the
    lock's sha256 where they are read anyway (the proof's uv, export's copy: sealift.bundle.wheelcheck).
    """
    files: dict[Path, Locked] = {}
    remote: list[tuple[Locked, Path]] = []
    cache = wheel_cache()
    for item in locked:
        if item.url.startswith("file://"):
            files[Path(unquote(urlparse(item.url).path))] = item
            continue
        dest = cache / item.filename
        remote.append((item, dest))
        files[dest] = item
    missing = [(i, d) for i, d in remote if not (d.is_file() and (i.size is None or d.stat().st_size == i.size))]
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        total = sum(i.size or 0 for i, _ in missing)
        console.info(f"downloading {len(missing)} wheels into {cache}")
        with console.byte_progress(total, "downloading") as adv:
            for item, dest in missing:
                download(item, dest, adv)
    return dict(sorted(files.items(), key=lambda kv: kv[0].name))


def resolve_locked(requirements: list[str], *, platform: str, python_version: str,
                   wheels_from: Path | None, sources: Sources | None = None,
                   left_out: tuple[str, ...] = ()) -> dict[Path, Locked]:
    """Local wheel files for the requirements on the target, each with its lock entry: `lock` then `fetch`.

    `wheels_from`: only that directory is looked at (no index, no configuration).
    Otherwise `sources` (default: the registry and this host's pip configuration).
    """
    if wheels_from is not None:
        sources = Sources(wheels_from=Path(wheels_from))
    return fetch(lock(requirements, platform=platform, python_version=python_version, sources=sources or Sources(),
                      left_out=left_out))


def resolve_wheels(requirements: list[str], *, platform: str, python_version: str,
                   wheels_from: Path | None, sources: Sources | None = None) -> list[Path]:
    """resolve_locked's files alone (sorted by name)."""
    return list(resolve_locked(requirements, platform=platform, python_version=python_version,
                               wheels_from=wheels_from, sources=sources))


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
    (sealift.bundle.selfwheel), kept in the wheel cache under the digest of those files.
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
    if built and _holds_only(built[-1], root / "pipeline"):
        return built[-1]
    if built:  # the cache's copy is not what this checkout builds: no lock vouches for it, so it is made again
        console.warn(f"{built[-1]} holds files this checkout does not; building sealift's wheel again")
        shutil.rmtree(where, ignore_errors=True)
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


def _holds_only(wheel: Path, package_root: Path) -> bool:
    """Whether every file of a cached sealift wheel but its .dist-info is the checkout's own (pipeline/), byte for
    byte: a wheel from the cache is read once (~1 MB) before it goes into a bundle as sealift itself."""
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or (name.split("/", 1)[0].endswith(".dist-info") and "/" in name
                                     and name.split("/", 1)[0].startswith("sealift-")):
                    continue
                src = package_root / name
                if ".." in name.split("/") or not src.is_file() or src.read_bytes() != zf.read(info):
                    return False
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return True


def _installed_wheel() -> Path:
    """The installed sealift, zipped again as its wheel (sealift.bundle.selfwheel), cached by content."""
    from sealift.bundle.selfwheel import installed_files, wheel_from_installed

    files = installed_files()  # read once: hashed for the cache key, then zipped if not cached
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    where = wheel_cache() / "sealift" / f"installed-{h.hexdigest()[:16]}"
    built = sorted(where.glob("sealift-*.whl")) if where.is_dir() else []
    return built[-1] if built else wheel_from_installed(where, files=files)


# =========================================================================== wheels shared on one medium


def shared_wheel(dest: Path, folder: str, name: str, size: int, *, exclude: Path) -> Path | None:
    """A wheel of this name and size in another finished bundle on the same medium (DEST/*/folder/name)."""
    try:
        others = sorted(p for p in Path(dest).iterdir() if p.is_dir() and p != exclude and not p.name.endswith(".partial"))
    except OSError:
        return None
    for other in others:
        candidate = other / folder / name
        if candidate.is_file() and not candidate.is_symlink() and candidate.stat().st_size == size:
            return candidate
    return None


def link_shared(src: Path, candidate: Path, dst: Path, advance=None, *, expected: str | None = None) -> str | None:
    """Hard-link dst to `candidate` when it holds the wheel `src` is; the sha256, or None (copy instead).

    The candidate is read (from the medium: it is the bytes the new bundle will
    list) and must hash to `expected`, the lock's sha256 of the wheel; with no
    `expected`, to `src`'s bytes (read from the cache). Nothing is written but a
    directory entry. None where the filesystem has no hard links (FAT32, exFAT):
    each bundle then carries its own copy.
    """
    from sealift.model.manifest import hash_file

    if (expected or hash_file(src)) != (digest := hash_file(candidate, advance)):
        return None
    tmp = dst.with_name(dst.name + ".link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(candidate, tmp)
    except OSError:
        return None
    os.replace(tmp, dst)
    return digest


def wheel_sources(kind: str, *, cuda: str | None, wheels_from: Path | None, extra_index_urls: tuple[str, ...] = (),
                  find_links: tuple[str, ...] = ()) -> Sources:
    """Where the wheels of a `kind` bundle come from (Sources).

    gpu: the registry and the CUDA line's torch index only, never this host's pip
    configuration (its find-links hold a CPU torch, its constraints cap torch).
    cpu: the registry and this host's pip configuration, as `pip install` would.
    """
    if kind != "gpu":
        if cuda is not None:
            raise UserError(f"--cuda {cuda} is for gpu bundles; this bento was built with --target cpu",
                            hint="leave --cuda out, or build the bento with --target gpu")
        if wheels_from is not None:
            return Sources(wheels_from=Path(wheels_from))
        return Sources(host_config=True, extra_index_urls=extra_index_urls, find_links=find_links)
    lines, default = target.CUDA_LINES, target.DEFAULT_CUDA
    line = lines.get(cuda or default)
    if line is None:
        raise UserError(f"--cuda {cuda}: sealift knows CUDA {', '.join(lines)}",
                        hint=f"use --cuda {default} (driver >= {lines[default].min_driver}) or 12.8 "
                             f"(driver >= {lines['12.8'].min_driver})")
    if wheels_from is not None:
        return Sources(wheels_from=Path(wheels_from))
    torch_index = (line.torch_index,) if line.torch_index else ()
    return Sources(host_config=False, extra_index_urls=(*torch_index, *extra_index_urls), find_links=find_links)
