"""The extras resolve for the platforms they are for (network: PyPI; `make test-full` runs them).

`sealift[vllm]` must resolve for a GPU server (Linux x86_64, glibc 2.35, Python 3.11), whatever
this host is; `sealift[modelscope]` brings the modelscope package that `import --download --hub
modelscope` needs. Resolved with uv against the public index, isolated from this host's pip
configuration (which points at a CPU torch).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sealift.core.version import __version__
from sealift.bento.engine import DEFAULT_VLLM_VERSION

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    from test_wheel_path import ROOT

    out = tmp_path_factory.mktemp("extras-wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(out), str(ROOT)], check=True, capture_output=True)
    return out / f"sealift-{__version__}-py3-none-any.whl"


def _compile(wheel: Path, extra: str, tmp_path: Path, *platform: str) -> dict[str, str]:
    req = tmp_path / "req.in"
    req.write_text(f"sealift[{extra}] @ {wheel.as_uri()}\n")
    p = subprocess.run([sys.executable, "-m", "uv", "pip", "compile", str(req), "--python-version", "3.11",
                        *platform, "--no-header", "--no-annotate", "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    pins = {}
    for line in p.stdout.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_the_vllm_extra_resolves_for_a_gpu_server(wheel, tmp_path):
    pins = _compile(wheel, "vllm", tmp_path, "--python-platform", "x86_64-manylinux_2_35")
    assert "vllm" in pins and "torch" in pins and "torchvision" in pins
    assert pins["vllm"] == DEFAULT_VLLM_VERSION  # the extra installs what a gpu bento pins
    assert "+cpu" not in pins["torch"]
    assert any(name.startswith("nvidia-") for name in pins)  # the CUDA build, not the CPU one


def test_the_modelscope_extra_brings_modelscope(wheel, tmp_path):
    pins = _compile(wheel, "modelscope", tmp_path)
    assert "modelscope" in pins
    assert "torch" not in pins  # the cache import needs no torch from this extra
