"""`sealift build`: the bento's labels, envs, requirements and sources; no network; errors.

One cpu bento (conftest `cpu_bento`) is shared with test_start.py; one gpu
bento is built here on the same host.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import yaml

from sealift.core.offline import OFFLINE_ENV, read_guard_log

from conftest import ROOT


def bento_yaml(bento) -> dict:
    return yaml.safe_load((bento.bento_dir / "bento.yaml").read_text())


def requirements(bento_dir) -> list[str]:
    text = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_cpu_bento_labels_envs_and_models(cpu_bento):
    info = bento_yaml(cpu_bento)
    build = cpu_bento.build
    model_tag = build["model_tag"]
    assert build["bento_tag"] == f"{info['name']}:{info['version']}"
    assert info["name"] == "tiny" and build["target"] == "cpu" and build["backend"] == "transformers"
    # head size 16: vLLM's CPU attention refuses it, so the build chose the transformers batcher and says why
    assert "head size is 16" in build["engine_reason"] and info["labels"]["sealift-backend"] == "transformers"
    labels = info["labels"]
    assert labels["sealift-model"] == model_tag
    assert labels["sealift-target"] == "cpu"
    assert labels["platforms"] == "linux"
    assert labels["aliases"] == "cpu"
    assert labels["sealift-manifest"]
    # the bento carries exactly the imported model, pinned to its version
    service_models = [m["tag"] for s in info["services"] for m in s.get("models", [])]
    assert service_models == [model_tag]
    envs = {e["name"]: e.get("value") for e in info["envs"]}
    assert {k: envs.get(k) for k in OFFLINE_ENV} == OFFLINE_ENV
    names = [e["name"] for e in info["envs"]]
    assert len(names) == len(set(names)), f"an env listed twice: {names}"
    # openllm 0.6.30 reads these to make its venv
    assert info["image"]["python_version"]


def test_manifest_label_is_the_stored_models(cpu_bento):
    listed = cpu_bento.host.sealift("list", "--json", check=True).json()["models"]
    (model,) = [m for m in listed if m["tag"] == cpu_bento.build["model_tag"]]
    assert bento_yaml(cpu_bento)["labels"]["sealift-manifest"] == model["manifest_digest"]


def test_cpu_requirements_pin_this_hosts_stack(cpu_bento):
    reqs = requirements(cpu_bento.bento_dir)
    assert f"bentoml=={importlib.metadata.version('bentoml')}" in reqs
    assert not any("file://" in r or "@" in r for r in reqs)
    assert "torch==2.13.0" in reqs
    for dist in ("transformers", "tokenizers", "safetensors", "jinja2"):
        assert f"{dist}=={importlib.metadata.version(dist)}" in reqs
    assert not any(r.startswith("vllm") for r in reqs)
    assert cpu_bento.build["requirements"] == reqs


def test_bento_src_holds_service_pipeline_and_config(cpu_bento):
    src = cpu_bento.bento_dir / "src"
    assert (src / "service.py").is_file()
    assert (src / "sealift" / "__init__.py").is_file()
    assert (src / "sealift" / "serving").is_dir()
    assert not list(src.rglob("__pycache__")) and not list(src.rglob("*.pyc"))
    config = json.loads((src / "sealift_bento.json").read_text())
    labels = bento_yaml(cpu_bento)["labels"]
    assert config == {
        "model_tag": cpu_bento.build["model_tag"],
        "served_model_name": "tiny",
        "backend": "transformers",
        "target": "cpu",
        "trust_remote_code": False,
        "manifest_digest": labels["sealift-manifest"],
        "sealift_version": labels["sealift-version"],
    }
    assert not (cpu_bento.bento_dir / "models").exists()  # weights stay in the model store


def test_build_used_no_network_and_left_no_context(cpu_bento):
    # built with UV_OFFLINE=1 PIP_NO_INDEX=1 and every process under the network guard
    assert read_guard_log(cpu_bento.guard_log) == []
    tmp = cpu_bento.host.bentoml_home / "tmp"
    assert not list(tmp.glob("sealift-build-*"))


def test_gpu_target_follows_vllm_pins(host, tiny_llama):
    # its own host: the shared cpu_bento host must keep one bento (export and start pick the newest)
    model = host.sealift("import", tiny_llama, "--name", "tiny", "--json", check=True).json()
    run = host.sealift("build", "tiny", "--target", "gpu", "--backend", "vllm", "--json", check=True,
                       UV_OFFLINE="1", PIP_NO_INDEX="1")
    gpu = run.json()
    assert gpu["target"] == "gpu" and gpu["backend"] == "vllm"
    reqs = requirements(Path(gpu["path"]))
    assert any(r.startswith("vllm==") for r in reqs)
    assert f"bentoml=={importlib.metadata.version('bentoml')}" in reqs
    assert "torch==2.13.0" not in reqs
    # torch and transformers are left to vllm's pins: named, never pinned
    assert not any(r.startswith(("torch=", "transformers=")) for r in reqs)
    info = yaml.safe_load((Path(gpu["path"]) / "bento.yaml").read_text())
    assert info["labels"]["sealift-target"] == "gpu"
    assert info["labels"]["sealift-model"] == model["tag"]
    assert info["labels"]["aliases"] == "gpu"


def test_the_vllm_extra_installs_the_vllm_a_gpu_bento_pins():
    """`pip install sealift[vllm]` on a GPU host gets the vLLM the export proof was made for, not the newest."""
    import tomllib

    from sealift.bento.engine import DEFAULT_VLLM_VERSION

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == [f"vllm=={DEFAULT_VLLM_VERSION}"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["build", "nope"], "nope"),
        (["build", "tiny", "--target", "tpu"], "--target"),
        (["build", "tiny", "--target", "cpu", "--backend", "vllm"], "--target gpu"),
    ],
)
def test_build_errors_are_one_line_exit_2(cpu_bento, args, words):
    before = sorted(p.name for p in (cpu_bento.host.bentoml_home / "bentos" / "tiny").iterdir())
    run = cpu_bento.host.sealift(*args)
    assert run.code == 2, run.err
    assert "Traceback" not in run.err and len(run.err.strip().splitlines()) == 1
    assert words in run.err
    after = sorted(p.name for p in (cpu_bento.host.bentoml_home / "bentos" / "tiny").iterdir())
    assert after == before



def test_requirements_follow_what_the_service_imports(tmp_path):
    """Every third-party import reachable from service.py (through sealift/, relative imports and
    imports inside functions included) becomes a requirement; stdlib and unreachable files do not."""
    from sealift.core.codescan import third_party_modules

    (tmp_path / "service.py").write_text("import os\nimport bentoml\nfrom sealift.serving import app\n")
    serving = tmp_path / "sealift" / "serving"
    serving.mkdir(parents=True)
    (tmp_path / "sealift" / "__init__.py").write_text("import json\n")
    (serving / "__init__.py").write_text("")
    (serving / "app.py").write_text("from . import engine\nfrom .. import util\n")
    (serving / "engine.py").write_text("def load():\n    import safetensors.torch\n")
    (tmp_path / "sealift" / "util.py").write_text("from jinja2 import Template\n")
    (tmp_path / "sealift" / "cli.py").write_text("import typer\n")  # not imported by the service
    assert third_party_modules(tmp_path, "service.py", "sealift") == {"bentoml", "safetensors", "jinja2"}


def test_quiet_prints_only_what_a_script_needs(host, tiny_llama, tmp_path):
    """--quiet: import prints the model tag, build the bento tag, export the bundle path; nothing else."""
    model = host.sealift("import", tiny_llama, "--name", "tiny", "--quiet", check=True)
    assert model.out.strip().startswith("tiny:") and len(model.out.strip().splitlines()) == 1, model.out
    built = host.sealift("build", "tiny", "--target", "cpu", "--no-golden", "--quiet", check=True)
    tag = built.out.strip()
    assert tag.startswith("tiny:") and len(tag.splitlines()) == 1, built.out
    assert (host.bentoml_home / "bentos" / "tiny" / tag.split(":")[1] / "bento.yaml").is_file()
    exported = host.sealift("export", "tiny", tmp_path / "usb", "--no-wheels", "--quiet", check=True)
    bundle = Path(exported.out.strip())
    assert len(exported.out.strip().splitlines()) == 1 and (bundle / "SHA256SUMS").is_file(), exported.out
