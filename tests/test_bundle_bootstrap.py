"""A bundle is self-sufficient: sealift itself (and, with --with-openllm, openllm) installs from it alone.

The unit tests build the sealift wheel and read INSTALL.txt's text; the end-to-end
test uses conftest's `bare_host`: a HOME where the commands of the shared
bundle's INSTALL.txt (`installed_bundle`, exported --with-openllm) ran as
written, with pip, `--no-index`, no pip config, under the network guard and in
a loopback-only namespace where one can be made. The sealift it made then
installs the bundle on a fresh host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from sealift.core.version import __version__
from sealift.bundle import format as bundle, install_text, wheelhouse
from sealift.core import paths
from sealift.bundle import export as export_step
from sealift.core.offline import read_guard_log
from sealift.host.openllm import OPENLLM_REQUIREMENTS

from conftest import Env

# --------------------------------------------------------------------------- the sealift wheel


def test_the_sealift_wheel_is_built_once_per_source_and_holds_the_whole_package(tmp_path, monkeypatch):
    monkeypatch.setenv(wheelhouse.WHEEL_CACHE_ENV, str(tmp_path / "cache"))
    had_build_dir = (paths.repo_root() / "build").exists()
    wheel = wheelhouse.sealift_wheel()
    assert wheel.name == f"sealift-{__version__}-py3-none-any.whl"
    assert wheel.is_relative_to(tmp_path / "cache")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"sealift-{__version__}.dist-info/METADATA").decode()
        entry_points = zf.read(f"sealift-{__version__}.dist-info/entry_points.txt").decode()
    source = {p.relative_to(paths.repo_root() / "pipeline").as_posix()
              for p in (paths.repo_root() / "pipeline").rglob("*.py") if "__pycache__" not in p.parts}
    assert source <= names  # every module, the network guard's sitecustomize included
    assert "sealift/core/_guard/sitecustomize.py" in names
    assert "sealift = sealift.cli:main" in entry_points
    for dep in ("bentoml", "typer", "uv", "transformers"):
        assert f"Requires-Dist: {dep}" in meta
    assert wheelhouse.sealift_wheel() == wheel and len(list((tmp_path / "cache").rglob("*.whl"))) == 1  # not rebuilt
    assert (paths.repo_root() / "build").exists() == had_build_dir  # built from a copy: the checkout is untouched


def test_install_txt_starts_with_sealift_from_the_bundle_and_adds_openllm_when_carried():
    source = export_step.BentoSource("tiny:v1", Path("/nowhere"), "1.4.39", "3.11", {}, [])
    plain = install_text.install_text(source, "tiny-v1.tar", "tiny-v1", True, python_version="3.11",
                                 sealift_wheel="sealift-0.1.0-py3-none-any.whl")
    lines = plain.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("1. "))
    assert first < next(i for i, ln in enumerate(lines) if "sealift install tiny-v1" in ln)
    assert "python3.11 -m venv ~/.sealift/cli" in plain
    assert "~/.sealift/cli/bin/pip install --no-index --find-links tiny-v1/wheels sealift" in plain
    assert "wheels-openllm" not in plain and "--with-openllm" in plain  # says how to carry it

    with_openllm = install_text.install_text(source, "tiny-v1.tar", "tiny-v1", True, python_version="3.11",
                                        sealift_wheel="sealift-0.1.0-py3-none-any.whl", openllm=True)
    assert ("~/.sealift/openllm/bin/pip install --no-index --find-links tiny-v1/wheels-openllm "
            "openllm==0.6.30 'click<8.2' 'typer<0.16'") in with_openllm

    bare = install_text.install_text(source, "tiny-v1.tar", "tiny-v1", False)
    assert "1. " not in bare and "must already have sealift" in bare


def test_with_openllm_and_no_wheels_contradict(host, tmp_path):
    run = host.sealift("export", "tiny", tmp_path / "usb", "--no-wheels", "--with-openllm")
    assert run.code == 2 and "--with-openllm" in run.err
    assert not (tmp_path / "usb").exists()
    assert "--with-openllm" in host.sealift("export", "--help").out


# --------------------------------------------------------------------------- the shared bundle


def test_the_bundle_carries_sealift_and_openllm_listed_like_every_other_file(installed_bundle):
    path = installed_bundle.bundle
    export = installed_bundle.export
    doc = json.loads((path / "manifest.json").read_text())
    sums = (path / "SHA256SUMS").read_text()
    own = f"{bundle.WHEELS}/sealift-{__version__}-py3-none-any.whl"
    assert (path / own).is_file() and export["sealift_wheel"] == doc["sealift_wheel"] == Path(own).name
    listed = {f["path"]: f for f in doc["files"]}
    assert own in listed and f"  {own}\n" in sums
    wheels = {p.name.split("-")[0].lower() for p in (path / bundle.WHEELS).iterdir()}
    assert {"sealift", "uv", "typer", "rich", "bentoml", "torch"} <= wheels  # sealift's deps beside the bento's
    openllm = sorted((path / bundle.WHEELS_OPENLLM).iterdir())
    names = {p.name.split("-")[0].lower(): Version(p.name.split("-")[1]) for p in openllm}
    assert names["openllm"] == Version("0.6.30") and names["click"] < Version("8.2") and names["typer"] < Version("0.16")
    assert export["openllm_wheels"] == len(openllm) == sum(1 for p in listed if p.startswith("wheels-openllm/"))
    assert doc["openllm_requirements"] == list(OPENLLM_REQUIREMENTS)
    for p in openllm:
        assert f"  {bundle.WHEELS_OPENLLM}/{p.name}\n" in sums
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # install kept only wheels/ for uv: openllm's pins (typer<0.16, bentoml==1.4.8) stay out of its find-links
    kept = {p.name for p in Path(installed_bundle.install["wheels_dir"]).iterdir()}
    only_openllm = {p.name for p in openllm} - {p.name for p in (path / bundle.WHEELS).iterdir()}
    assert Path(own).name in kept and only_openllm and not (only_openllm & kept)


def test_sealift_from_install_txt_alone_runs_and_installs_the_bundle(bare_host, installed_bundle, tmp_path):
    """INSTALL.txt's pip step made a sealift that needs nothing from this checkout or any index."""
    sealift = bare_host.cli_bin / "sealift"
    run = bare_host.bash(f"{sealift} --version && {sealift} install --help")
    assert run.code == 0, run.err
    assert run.out.startswith(f"sealift {__version__}") and "BUNDLE" in run.out
    where = bare_host.bash(f'{bare_host.cli_bin / "python"} -c "import sealift; print(sealift.__file__)"').out
    assert where.startswith(str(bare_host.home / ".sealift" / "cli")), where  # the wheel's copy, not the checkout

    airgap = Env(tmp_path / "airgap")  # a fresh store: the bootstrapped sealift verifies and imports the bundle
    env = {k: v for k, v in airgap.environ().items() if k in ("BENTOML_HOME", "SEALIFT_HOME", "BENTOML_DO_NOT_TRACK")}
    run = bare_host.bash(f"{sealift} install {installed_bundle.bundle.name} --no-venv --json", **env)
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["bento_tag"] == installed_bundle.install["bento_tag"] and result["bento"] == "imported"
    name, version = result["bento_tag"].split(":")
    assert (airgap.bentoml_home / "bentos" / name / version / "bento.yaml").is_file()
    assert read_guard_log(bare_host.guard_log) == []


@pytest.mark.skipif(sys.platform != "linux", reason="the bundle's wheels are for manylinux")
def test_openllm_from_install_txt_alone_runs(bare_host_openllm, bare_host):
    """INSTALL.txt's openllm steps: openllm 0.6.30 in its own venv, its command beside sealift's."""
    assert bare_host_openllm.is_symlink()
    venv_python = bare_host.home / ".sealift" / "openllm" / "bin" / "python"
    run = bare_host.bash(f"{bare_host_openllm} --help >/dev/null && {venv_python} -c "
                         "'import importlib.metadata as m; print(m.version(\"openllm\"), m.version(\"click\"), "
                         "m.version(\"typer\"), m.version(\"bentoml\"))'")
    assert run.code == 0, run.err
    openllm, click, typer, bentoml = map(Version, run.out.split())
    assert openllm == Version("0.6.30") and bentoml == Version("1.4.8")
    assert click < Version("8.2") and typer < Version("0.16")
    assert read_guard_log(bare_host.guard_log) == []
