"""Issue 27: the lowest versions pyproject.toml allows are the ones proven, and one table says what was tested.

Fast (`make test`): each floor in pyproject.toml is sealift.core.version.TESTED's lowest, README's
"Tested versions" table is TESTED, and `sealift --version --verbose` prints each version against it.

Slow (`make test-floors`, `make test-full`; markers floors and slow): scripts/floors.py makes a venv with
`uv pip install --resolution lowest-direct` of this checkout (+ torch 2.13.0 CPU), every direct dependency
held at its floor, and with that venv's sealift runs import, build, export (wheels, proof), install
(runtime venv, --check) and start + one chat on a tiny model; then the tests whose code meets the
dependencies' APIs most (transformers' cache and generation, BentoML's serve and __command__ proxy, the
hub's cache, uv's --python-platform) run with that venv's Python.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import floors  # noqa: E402

from sealift.core.version import TESTED, TESTED_PYTHON  # noqa: E402

#: Run with the floors venv's Python after the path: where sealift's code meets its dependencies' APIs.
AT_THE_FLOORS = [
    "tests/test_serving.py",  # bentoml serve, the __command__ proxy (vllm route), transformers generation
    "tests/test_batching.py",  # DynamicCache(config=), cache.layers, logits processors
    "tests/test_sources.py",  # huggingface_hub's cache scan and snapshots
    "tests/test_inspect.py",  # transformers' auto classes and tokenizers, offline
    "tests/test_check_units.py",  # tokenizers' Tokenizer.from_file
    "tests/test_gpu_bundle.py::test_the_proof_installs_for_the_bundles_platform_and_says_when_this_host_cannot_run_it",
]


def _readme_table() -> dict[str, tuple[str, str]]:
    """README's "Tested versions" rows: `| dist | lowest | newest | ... |`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Tested versions"):]
    section = section[:section.index("\n## ", 3)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"[\d.]+", cells[1]) and re.fullmatch(r"[\d.]+", cells[2]):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_each_floor_is_the_lowest_version_tested() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    declared = {}
    for line in floors.tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(line)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lows) == 1, f"{line}: one >= floor, the version `make test-floors` runs"
        assert not [s for s in req.specifier if s.operator in ("<", "<=", "!=")], \
            f"{line}: an upper bound needs a known break (and a comment naming it)"
        declared[canonicalize_name(req.name)] = lows[0]
    assert declared == {name: TESTED[name][0] for name in declared}
    assert set(declared) <= set(TESTED)
    assert floors.floors() == {n: v for n, v in declared.items() if n != "tomli" or sys.version_info < (3, 11)}


def test_readme_says_the_tested_versions() -> None:
    assert _readme_table() == {**TESTED, "python": TESTED_PYTHON}


def test_version_verbose_prints_each_version_against_the_tested_range(monkeypatch, capsys) -> None:
    from sealift.cli import app

    installed = {"bentoml": "1.4.40", "transformers": "9.0.0", "torch": "2.13.0+cpu", "vllm": "not installed"}
    monkeypatch.setattr(app, "_versions", lambda: list(installed.items()))
    app._print_version(True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"bentoml 1.4.40 (tested {TESTED['bentoml'][0]} - {TESTED['bentoml'][1]})"
    assert lines[2].startswith("transformers 9.0.0 (tested ") and lines[2].endswith("; newer than tested)")
    assert lines[3] == "torch 2.13.0+cpu (tested 2.13.0)"
    assert lines[4] == "vllm not installed (tested 0.32.0)"
    assert lines[5].startswith("python ") and lines[5].endswith(f"; tested {TESTED_PYTHON[0]})")


@pytest.fixture(scope="module")
def floor_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("floors") / "venv"
    try:
        versions = floors.make_venv(venv)
    except floors.StepFailed as exc:
        pytest.fail(f"the floors do not install together (psutil 5.0.0 builds from source: a C compiler and "
                    f"Python's headers are needed):\n{exc.output[-4000:]}")
    assert floors.off_floor(versions) == []
    print("at the floors: " + ", ".join(f"{n} {versions[n]}" for n in floors.floors()))
    return venv


@pytest.mark.slow
@pytest.mark.floors
@pytest.mark.timeout(3600)
def test_the_whole_path_runs_at_the_floors(floor_venv: Path, wheel_cache: Path, tmp_path: Path) -> None:
    try:
        run = floors.run_path(floor_venv, tmp_path / "work", wheel_cache=wheel_cache)
    except floors.StepFailed as exc:
        pytest.fail(str(exc))
    print("path at the floors: " + ", ".join(f"{k} {v} s" for k, v in run.seconds.items()))
    version = subprocess.run([str(floor_venv / "bin" / "sealift"), "--version", "--verbose"], capture_output=True,
                             text=True, check=True).stdout
    assert f"transformers {TESTED['transformers'][0]} (tested " in version


@pytest.mark.slow
@pytest.mark.floors
@pytest.mark.timeout(3600)
def test_the_version_sensitive_tests_pass_at_the_floors(floor_venv: Path) -> None:
    try:
        print(floors.run_tests(floor_venv, AT_THE_FLOORS))
    except floors.StepFailed as exc:
        pytest.fail(str(exc))
