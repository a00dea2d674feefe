"""Hostile media, export side: every wheel a bundle carries is the one its lock names (sealift.bundle.wheelcheck),
and the index rule uv resolves with (sealift.bundle.wheelhouse).

The exports here resolve from a small index of made-up wheels served on loopback (http: downloaded into a
real wheel cache, as from the registry), one for each requirement of the cpu bento and of sealift itself;
the fake torch, transformers and bentoml import, so the proof runs over them too. A poisoned cached wheel
has the good one's name and size and other bytes.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import threading
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT, BuiltBento
from test_gpu_bundle import make_wheel

from sealift.bundle import wheelhouse

MARKER_ENV = "SEALIFT_TEST_POISON_MARKER"


# --------------------------------------------------------------------------- an index on loopback


class _Index(http.server.SimpleHTTPRequestHandler):
    #: when True, wheel downloads by sealift (Python's urllib) get 503: the index is gone for a re-download
    refuse_sealift = False

    def do_GET(self) -> None:
        if self.refuse_sealift and self.path.endswith(".whl") and \
                self.headers.get("User-Agent", "").startswith("Python-urllib"):
            self.send_error(503, "gone")
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def _module_file(version: str, body: str, width: int = 400) -> str:
    """A module's text padded to `width` characters: a good and a poisoned wheel come out the same size."""
    text = f"__version__ = {version!r}\n{body}\n"
    assert len(text) < width
    return text + "#" * (width - len(text) - 1) + "\n"


def _fake(where: Path, name: str, version: str, *, poison: bool = False) -> Path:
    """A stored (uncompressed) wheel of `name` that imports; poisoned: its import writes $MARKER_ENV."""
    dist = name.replace("-", "_").lower()
    body = "from . import version" if name == "torch" else ""
    if poison:  # importing it leaves a mark where the test asks for one
        body = f"import os, pathlib; m = os.environ.get({MARKER_ENV!r}); m and pathlib.Path(m).write_text('ran')"
    files = {f"{dist}/__init__.py": _module_file(version, body)}
    if name == "torch":
        files["torch/version.py"] = "cuda = None\n"
    return make_wheel(where, name, version, files=files)


def _requirements(bento: BuiltBento) -> dict[str, str]:
    """name -> version for every wheel the cpu bundle resolves to: the bento's pins, sealift's own dependencies."""
    env = bento.bento_dir / "env" / "python"
    req_file = env / "requirements.lock.txt" if (env / "requirements.lock.txt").is_file() else env / "requirements.txt"
    lines = [ln.strip() for ln in req_file.read_text().splitlines() if ln.strip() and ln.strip()[0] not in "#-"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out: dict[str, str] = {}
    for line in [*lines, *project["dependencies"], f"bentoml=={importlib.metadata.version('bentoml')}"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():  # tomli: only below Python 3.11
            continue
        pins = [s.version for s in req.specifier if s.operator == "=="]
        out.setdefault(canonicalize_name(req.name), pins[0] if pins else importlib.metadata.version(req.name))
    return out


@pytest.fixture(scope="module")
def index(cpu_bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory):
    """(url, {name: good wheel}, poisoned dir): the made-up index served on loopback while the module runs."""
    root = tmp_path_factory.mktemp("index")
    web, bad = root / "web", root / "poisoned"
    good = {name: _fake(web, name, v) for name, v in _requirements(cpu_bento).items()}
    for name, w in good.items():
        evil = _fake(bad, name, _requirements(cpu_bento)[name], poison=True)
        assert evil.stat().st_size == w.stat().st_size and evil.read_bytes() != w.read_bytes()
    links = "".join(f'<a href="{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a>\n'
                    for w in good.values())
    (web / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Index, directory=str(web)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", good, bad
    finally:
        server.shutdown()
        server.server_close()


def _export(bento: BuiltBento, url: str, cache: Path, dest: Path, *args: str, human: bool = False, **extra: str):
    """`sealift export tiny DEST` with only the loopback index (this host's pip configuration left out)."""
    return bento.host.sealift("export", "tiny", dest, *([] if human else ["--json"]), *args, timeout=900,
                              PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=url,
                              SEALIFT_WHEEL_CACHE=str(cache), **extra)


@pytest.fixture(scope="module")
def primed(cpu_bento: BuiltBento, index, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel cache that one clean export filled (every wheel downloaded, sealift's own built)."""
    url, good, _ = index
    cache = tmp_path_factory.mktemp("primed") / "cache"
    run = _export(cpu_bento, url, cache, tmp_path_factory.mktemp("usb0"), "--no-proof")
    assert run.code == 0, run.err
    doc = run.json()
    assert {w.name for w in cache.glob("*.whl")} == {w.name for w in good.values()}
    hashes = doc["wheel_hashes"]
    assert hashes["from_index"] == len(good) and hashes["checked"] == len(good) + 1 and not hashes["unchecked"]
    assert [n for n in hashes["taken_as_found"]] == [doc["sealift_wheel"]]  # file://: built from the checkout
    return cache


def _cache_copy(primed: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(primed, cache)
    return cache


def _poison(cache: Path, bad: Path, good: Path) -> Path:
    cached = cache / good.name
    shutil.copyfile(bad / good.name, cached)
    assert cached.stat().st_size == good.stat().st_size
    return cached


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_file_holds(where: Path, digest: str) -> None:
    for f in where.rglob("*"):
        if f.is_file():
            assert _sha(f) != digest, f"{f} holds the poisoned bytes"


# --------------------------------------------------------------------------- the checks


def test_a_poisoned_cached_wheel_is_downloaded_again_and_never_shipped(cpu_bento, index, primed, tmp_path):
    url, good, bad = index
    cache = _cache_copy(primed, tmp_path)
    cached = _poison(cache, bad, good["transformers"])
    poisoned = _sha(cached)
    dest = tmp_path / "usb"
    run = _export(cpu_bento, url, cache, dest, "--no-proof", human=True)
    assert run.code == 0, run.err
    said = [ln for ln in run.err.splitlines() if cached.name in ln]
    assert said and "not the wheel the lock names" in said[0] and "downloading it again" in said[0], run.err
    assert re.search(r"wheel hashes: \d+ match the lock .*1 downloaded again", run.out), run.out
    [bundle] = [p for p in dest.iterdir() if p.is_dir()]
    shipped = bundle / "wheels" / good["transformers"].name
    assert _sha(shipped) == _sha(good["transformers"]) == _sha(cached)  # the cache holds the good wheel again
    assert _sha(cache / (cached.name + ".rejected")) == poisoned  # set aside, not lost
    _no_file_holds(dest, poisoned)
    doc = json.loads((bundle / "manifest.json").read_text())
    assert doc["wheel_hashes"]["downloaded_again"] == [cached.name]
    p = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_bundle_in_parts_checks_its_wheels_too(cpu_bento, index, primed, tmp_path):
    """--max-file-size: the archive in numbered parts (sealift.bundle.volumes): the same check on each wheel."""
    url, good, bad = index
    cache = _cache_copy(primed, tmp_path)
    cached = _poison(cache, bad, good["tokenizers"])
    poisoned = _sha(cached)
    dest = tmp_path / "usb"
    run = _export(cpu_bento, url, cache, dest, "--no-proof", "--max-file-size", "1M")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["parts"] > 1 and doc["wheel_hashes"]["downloaded_again"] == [cached.name]
    bundle = Path(doc["bundle"])
    assert _sha(bundle / "wheels" / cached.name) == _sha(good["tokenizers"])
    assert json.loads((bundle / "manifest.json").read_text())["wheel_hashes"]["downloaded_again"] == [cached.name]
    _no_file_holds(dest, poisoned)


def test_a_poisoned_cached_wheel_that_cannot_be_fetched_again_is_refused(cpu_bento, index, primed, tmp_path):
    url, good, bad = index
    cache = _cache_copy(primed, tmp_path)
    cached = _poison(cache, bad, good["safetensors"])
    poisoned = _sha(cached)
    dest = tmp_path / "usb"
    _Index.refuse_sealift = True
    try:
        run = _export(cpu_bento, url, cache, dest, "--no-proof")
    finally:
        _Index.refuse_sealift = False
    assert run.code == 2, run.err
    lines = [ln for ln in run.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, run.err
    assert cached.name in lines[0] and str(cached) in lines[0] and "downloading it again failed" in lines[0]
    assert "--wheels-from" in lines[0] and "index is reachable" in lines[0]
    assert not any(p.is_dir() and not p.name.endswith(".partial") for p in dest.iterdir())  # nothing finished
    _no_file_holds(dest, poisoned)


@pytest.mark.parametrize("kind", ["code", "garbage"])
def test_the_proof_refuses_a_poisoned_wheel_before_its_code_runs(cpu_bento, index, primed, tmp_path, kind):
    """code: a valid wheel whose import leaves a mark; garbage: random bytes. Either way export finds the cached
    wheel is not the lock's as it copies it to the medium, fetches it again, and the proof (which runs over the
    medium's copies, beside the archive's write) installs the good one: the poison never reaches uv."""
    url, good, bad = index
    cache = _cache_copy(primed, tmp_path)
    cached = _poison(cache, bad, good["torch"])
    if kind == "garbage":
        cached.write_bytes(os.urandom(cached.stat().st_size))
    poisoned = _sha(cached)
    marker = tmp_path / "poison-ran"
    dest = tmp_path / "usb"
    run = _export(cpu_bento, url, cache, dest, human=True, **{MARKER_ENV: str(marker)})
    assert run.code == 0, run.err
    assert not marker.exists(), "the poisoned torch ran"
    assert f"{cached.name} in the wheel cache is not the wheel the lock names" in run.err, run.err
    assert re.search(r"proof: offline venv .* imports torch", run.out), run.out  # proven over the good wheel
    [bundle] = [p for p in dest.iterdir() if p.is_dir()]
    assert _sha(bundle / "wheels" / good["torch"].name) == _sha(good["torch"])
    _no_file_holds(dest, poisoned)


def test_a_poisoned_wheel_already_on_the_medium_is_not_linked(cpu_bento, index, primed, tmp_path):
    """A bundle on the medium hard-links the wheels another one there holds only when they are the lock's
    (before, only when they equalled the cached wheel: the same poison in both was linked)."""
    url, good, bad = index
    cache = _cache_copy(primed, tmp_path)
    dest = tmp_path / "usb"
    first = _export(cpu_bento, url, cache, dest, "--no-proof")
    assert first.code == 0, first.err
    other = Path(first.json()["bundle"])
    evil = other / "wheels" / good["jinja2"].name
    evil.unlink()
    shutil.copyfile(bad / good["jinja2"].name, evil)  # the other bundle's copy, and the cache, poisoned alike
    cached = _poison(cache, bad, good["jinja2"])
    renamed = other.with_name(other.name + "-old")
    other.rename(renamed)  # so the second export writes a bundle of its own beside it
    second = _export(cpu_bento, url, cache, dest, "--no-proof")
    assert second.code == 0, second.err
    doc = second.json()
    shipped = Path(doc["bundle"]) / "wheels" / good["jinja2"].name
    assert _sha(shipped) == _sha(good["jinja2"]) == _sha(cached)
    assert shipped.stat().st_ino != (renamed / "wheels" / shipped.name).stat().st_ino
    assert doc["shared_wheels"] == doc["wheels"] - 1  # every other wheel linked


# --------------------------------------------------------------------------- the index rule


@pytest.mark.parametrize("config, extra, best_match", [
    ({"extra-index-url": ["file:///opt/pypi/simple"], "find-links": ["/opt/wheels"]}, (), True),
    ({"index-url": ["https://mirror.example/simple"], "extra-index-url": ["https://more.example/simple"]}, (), True),
    ({"extra-index-url": ["https://more.example/simple"], "no-index": ["1"]}, (), False),
    ({"find-links": ["/opt/wheels"], "constraint": ["/nonexistent"]}, (), False),
    ({"index-url": ["https://mirror.example/simple"]}, (), False),
    ({}, ("https://private.example/simple",), False),
])
def test_pip_s_best_match_only_where_this_hosts_pip_names_several_indexes(monkeypatch, config, extra, best_match):
    monkeypatch.setattr(wheelhouse, "pip_config", lambda: config)
    args = wheelhouse._uv_source_args(wheelhouse.Sources(extra_index_urls=extra))
    assert ("unsafe-best-match" in args) == best_match, args
    assert "--index-strategy" not in wheelhouse._uv_source_args(wheelhouse.Sources(host_config=False,
                                                                                   extra_index_urls=extra))
    assert "--index-strategy" not in wheelhouse._uv_source_args(wheelhouse.Sources(wheels_from=Path("/w")))


# --------------------------------------------------------------------------- sealift's own wheel


def test_a_tampered_cached_sealift_wheel_is_built_again(tmp_path, monkeypatch):
    """sealift's wheel is file://, taken as found by the lock: the cached one must hold only the checkout's files."""
    import zipfile

    monkeypatch.setenv(wheelhouse.WHEEL_CACHE_ENV, str(tmp_path / "cache"))
    wheel = wheelhouse.sealift_wheel()
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(zf.namelist())
    assert wheelhouse.sealift_wheel() == wheel  # reused as it is
    with zipfile.ZipFile(wheel, "a") as zf:  # a .pth runs at every interpreter start of the venv it lands in
        zf.writestr("sealift_evil.pth", "import os; os.environ['HACKED'] = '1'\n")
    again = wheelhouse.sealift_wheel()
    with zipfile.ZipFile(again) as zf:
        assert sorted(zf.namelist()) == names


def test_a_path_in_the_lock_is_read_from_the_lock_files_folder(tmp_path, monkeypatch):
    """PEP 751: a `path` is relative to pylock.toml's folder. uv 0.6.15-0.10 writes `../../x.whl` (0.11 and later an
    absolute path): read from the process's working directory instead, export failed for a wheel that is there."""
    wheel = make_wheel(tmp_path / "wheels", "localpkg", "1.0")
    lockdir = tmp_path / "a" / "b"
    lockdir.mkdir(parents=True)
    rel = os.path.relpath(wheel, lockdir)
    (lockdir / "pylock.toml").write_text(
        'lock-version = "1.0"\n[[packages]]\nname = "localpkg"\nversion = "1.0"\n'
        f'archive = {{ path = "{rel}", hashes = {{ sha256 = "{hashlib.sha256(wheel.read_bytes()).hexdigest()}" }} }}\n'
        '[[packages]]\nname = "abspkg"\nversion = "2.0"\n'
        f'archive = {{ path = "{wheel}" }}\n')
    monkeypatch.chdir(ROOT)  # anywhere but the lock's folder
    local, absolute = wheelhouse.read_lock(lockdir / "pylock.toml", platform="manylinux_2_28_x86_64",
                                           python_version="3.11")
    assert rel.startswith("../") and local.url == wheel.resolve().as_uri() and local.sha256
    assert absolute.url == wheel.resolve().as_uri() and absolute.sha256 is None
