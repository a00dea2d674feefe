"""Issue 9: the GPU bundle, proven before it leaves.

Fast: wheels come from the cpu bundle the session exports once (installed_bundle)
plus small wheels made here (a fake `torch-2.13.0+cpu`, a vllm that only carries
its METADATA); the GPU is mocked by a fake `nvidia-smi` on PATH. The real GPU
export (3.7 GB from the registry) is scripts/check_gpu_bundle.py, not a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import Env

from sealift.bundle import target, wheelhouse
from sealift.core.errors import UserError


# --------------------------------------------------------------------------- helpers


def make_wheel(where: Path, name: str, version: str, *, requires: tuple[str, ...] = (),
               files: dict[str, str] | None = None, tag: str = "py3-none-any") -> Path:
    """A small, valid wheel: METADATA, WHEEL, RECORD and `files`."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = dict(files or {f"{dist}/__init__.py": f"__version__ = {version!r}\n"})
    contents[f"{info}/METADATA"] = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                                              *(f"Requires-Dist: {r}" for r in requires)]) + "\n"
    contents[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: sealift-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
    record = [f"{path},sha256={hashlib.sha256(text.encode()).hexdigest()},{len(text.encode())}"
              for path, text in contents.items()]
    contents[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, text in contents.items():
            zf.writestr(p, text)
    return path


def wheel_set(src: Path, dst: Path, *, leave_out: tuple[str, ...]) -> Path:
    """dst holding (hardlinks to) src's wheels but those whose distribution name is in leave_out."""
    dst.mkdir(parents=True)
    for w in src.iterdir():
        if w.name.split("-")[0].lower() not in leave_out:
            try:
                os.link(w, dst / w.name)
            except OSError:
                shutil.copy2(w, dst / w.name)
    return dst


def fake_nvidia_smi(bin_dir: Path, rows: list[str]) -> Path:
    """An `nvidia-smi` that answers sealift's query with `rows` (index, name, MiB total, MiB free, driver)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    body = "\n".join(rows)
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{body}\nEOF\n")
    exe.chmod(0o755)
    return bin_dir


def gpu_torch(where: Path, version: str = "2.13.0", cuda: str | None = "13.0") -> Path:
    requires = ("nvidia-cuda-runtime==13.0.96",) if cuda and cuda.startswith("13") else \
        (("nvidia-cuda-runtime-cu12==12.8.90",) if cuda else ())
    return make_wheel(where, "torch", version, requires=requires,
                      files={"torch/__init__.py": "", "torch/version.py": f"cuda = {cuda!r}\n"},
                      tag="cp311-cp311-manylinux_2_28_x86_64")


# --------------------------------------------------------------------------- the wheel-set check (no store)


def test_a_gpu_wheel_set_with_a_cuda_torch_that_vllm_pins_passes(tmp_path):
    wheels = [gpu_torch(tmp_path), make_wheel(tmp_path, "torchvision", "0.28.0", requires=("torch==2.13.0",)),
              make_wheel(tmp_path, "vllm", "0.32.0", requires=("torch==2.13.0", "torchvision==0.28.0")),
              make_wheel(tmp_path, "nvidia-cuda-runtime", "13.0.96")]
    stack = target.check_gpu_wheels(wheels)
    assert (stack.torch, stack.torch_cuda, stack.torchvision, stack.vllm, stack.nvidia_wheels) == \
        ("2.13.0", "13.0", "0.28.0", "0.32.0", 1)
    assert target.check_gpu_wheels(wheels, cuda="13.0").torch_cuda == "13.0"


@pytest.mark.parametrize("case, needle", [
    ("cpu-local", "+cpu"),
    ("no-cuda", "names no CUDA"),
    ("vllm-pins-other-torch", "requires torch==2.12.0"),
    ("torchvision-pins-other-torch", "torchvision 0.28.0 requires torch==2.14.0"),
    ("vllm-pins-other-torchvision", "requires torchvision==0.29.0"),
    ("other-cuda-asked", "--cuda 12.8 asked for"),
    ("vllm-built-for-other-cuda", "built for cu128"),
    ("registry-vllm-index-torch", "registry's build"),
])
def test_a_gpu_wheel_set_that_cannot_serve_is_refused(tmp_path, case, needle):
    vllm_requires = ("torch==2.13.0", "torchvision==0.28.0")
    vision_requires = ("torch==2.13.0",)
    torch_wheel, vllm_version, cuda = None, "0.32.0", None
    if case == "cpu-local":
        torch_wheel = make_wheel(tmp_path, "torch", "2.13.0+cpu", files={"torch/version.py": "cuda = None\n"},
                                 tag="cp311-cp311-manylinux_2_28_x86_64")
    elif case == "no-cuda":
        torch_wheel = gpu_torch(tmp_path, cuda=None)
    elif case == "vllm-pins-other-torch":
        vllm_requires = ("torch==2.12.0", "torchvision==0.28.0")
    elif case == "torchvision-pins-other-torch":
        vision_requires = ("torch==2.14.0",)
    elif case == "vllm-pins-other-torchvision":
        vllm_requires = ("torch==2.13.0", "torchvision==0.29.0")
    elif case == "other-cuda-asked":
        cuda = "12.8"
    elif case == "vllm-built-for-other-cuda":
        vllm_version = "0.32.0+cu128"
    elif case == "registry-vllm-index-torch":
        torch_wheel = gpu_torch(tmp_path, version="2.13.0+cu128", cuda="12.8")
    wheels = [torch_wheel or gpu_torch(tmp_path),
              make_wheel(tmp_path, "torchvision", "0.28.0", requires=vision_requires),
              make_wheel(tmp_path, "vllm", vllm_version, requires=vllm_requires)]
    with pytest.raises(UserError) as err:
        target.check_gpu_wheels(wheels, cuda=cuda)
    assert needle in err.value.message


def test_platform_tags_and_cuda_lines():
    assert target.default_platform("gpu") == "manylinux_2_31_x86_64"  # llguidance >= 1.7: manylinux_2_31 only
    assert target.default_platform("cpu") == "manylinux_2_28_x86_64"
    assert target.uv_platform("manylinux_2_31_x86_64") == "x86_64-manylinux_2_31"
    assert target.uv_platform("manylinux2014_x86_64") == "x86_64-manylinux_2_17"
    assert target.glibc_of("manylinux_2_35_x86_64") == "2.35"
    with pytest.raises(UserError):
        target.uv_platform("macosx_11_0_arm64")
    assert target.CUDA_LINES["13.0"].min_driver == "580.65.06"
    assert target.CUDA_LINES["12.8"].min_driver == "525.60.13"
    assert target.CUDA_LINES["12.8"].torch_index.endswith("/cu128")
    src = wheelhouse.wheel_sources("gpu", cuda="12.8", wheels_from=None)
    assert not src.host_config and src.extra_index_urls == ("https://download.pytorch.org/whl/cu128",)
    assert not wheelhouse.wheel_sources("gpu", cuda=None, wheels_from=None).host_config  # never the host's pip config
    with pytest.raises(UserError):
        wheelhouse.wheel_sources("cpu", cuda="12.8", wheels_from=None)
    with pytest.raises(UserError):
        wheelhouse.wheel_sources("gpu", cuda="11.8", wheels_from=None)


def test_export_help_names_the_default_platforms_and_the_cuda_lines():
    p = subprocess.run([sys.executable, "-m", "sealift.cli", "export", "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    text = " ".join(p.stdout.split())
    for needle in ("manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "--cuda", "12.8", "580.65.06", "--no-proof"):
        assert needle in text


# --------------------------------------------------------------------------- host checks (fake nvidia-smi)


GPU_NEEDS = {"kind": "gpu", "platform": "manylinux_2_31_x86_64", "glibc": "2.31",
             "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}", "torch": "2.13.0",
             "torch_cuda": "13.0", "min_driver": "580.65.06", "weights_bytes": 60 * 2**30,
             "max_model_len": 32768, "kv_cache_bytes": 4 * 2**30, "gpu_memory_bytes": 64 * 2**30}


def test_host_facts_and_checks_read_a_fake_nvidia_smi(tmp_path, monkeypatch):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", ["0, NVIDIA H100 80GB HBM3, 81559, 80000, 535.104.05",
                                                 "1, NVIDIA H100 80GB HBM3, 81559, 20000, 535.104.05"])
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    facts = target.host_facts()
    assert facts.driver == "535.104.05" and len(facts.gpus) == 2 and facts.gpus[0].free_bytes == 80000 * 2**20
    assert facts.glibc and facts.glibc >= "2.2"
    rows = {r.check: r for r in target.check_host(GPU_NEEDS, facts)}
    assert rows["glibc"].status == rows["python"].status == "ok"
    assert rows["driver"].status == "fail" and "580.65.06" in rows["driver"].detail and "--cuda 12.8" in rows["driver"].fix
    assert rows["gpu count"].status == "ok"
    assert rows["gpu memory"].status == "ok"  # 64 GiB on the freer GPU (80 GB free, 0.9 x 79.6 usable)
    rows = {r.check: r for r in target.check_host(GPU_NEEDS, facts, tensor_parallel_size=4)}
    assert rows["gpu count"].status == "fail" and "tensor parallel size is 4" in rows["gpu count"].detail
    big = {**GPU_NEEDS, "weights_bytes": 90 * 2**30, "gpu_memory_bytes": 94 * 2**30}
    rows = {r.check: r for r in target.check_host(big, facts, tensor_parallel_size=1)}
    assert rows["gpu memory"].status == "fail" and "KV cache" in rows["gpu memory"].detail
    rows = {r.check: r for r in target.check_host({**GPU_NEEDS, "python_version": "3.2", "glibc": "9.99"}, facts)}
    assert rows["python"].status == "fail" and rows["glibc"].status == "fail"


def test_kv_cache_is_counted_in_what_a_model_needs():
    config = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
              "max_position_embeddings": 8192}
    assert target.kv_cache_bytes(config, tokens=8192) == 2 * 32 * 8 * 128 * 2 * 8192  # 1 GiB
    needs = target.target_needs(target="gpu", platform="manylinux_2_31_x86_64", python_version="3.11", stack=None,
                                weights_bytes=16 * 2**30, model_config=config)
    assert needs["gpu_memory_bytes"] == 17 * 2**30 and needs["max_model_len"] == 8192 and needs["glibc"] == "2.31"


def _crafted_gpu_bundle(where: Path) -> Path:
    """A bundle directory with only manifest.json and SHA256SUMS: install's host check reads nothing more."""
    from sealift.model.manifest import FileEntry, sha256sums_text
    from sealift.bundle.tarstream import BUNDLE_FORMAT

    where.mkdir(parents=True)
    doc = {"format": BUNDLE_FORMAT, "bento": {"tag": "tiny:v1", "name": "tiny", "version": "v1"},
           "archive": "tiny-v1.tar", "files": [],
           "target": {"platform": GPU_NEEDS["platform"], "python_version": GPU_NEEDS["python_version"]},
           "needs": GPU_NEEDS}
    data = json.dumps(doc).encode()
    (where / "manifest.json").write_bytes(data)
    (where / "SHA256SUMS").write_text(sha256sums_text([FileEntry("manifest.json", len(data),
                                                                 hashlib.sha256(data).hexdigest())]))
    return where


def test_install_refuses_a_driver_older_than_the_bundles_cuda_before_reading_anything(host, tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", ["0, NVIDIA A100-SXM4-80GB, 81920, 81000, 570.86.10"])
    bundle = _crafted_gpu_bundle(tmp_path / "usb" / "tiny-v1")
    run = host.sealift("install", bundle, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert run.code == 2, run.err
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "570.86.10 is older than 580.65.06" in lines[0] and "--cuda 12.8" in lines[0]
    assert not host.bentoml_home.exists() or not any(host.bentoml_home.rglob("bento.yaml"))
    # the same bundle on a host whose driver is new enough passes the host check (and fails later, on its
    # missing archive: it is no real bundle)
    bin_dir = fake_nvidia_smi(tmp_path / "bin580", ["0, NVIDIA A100-SXM4-80GB, 81920, 81000, 580.95.05"])
    run = host.sealift("install", bundle, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert run.code == 2 and "not one of the verified files" in run.err and "older than" not in run.err
    # and without any NVIDIA driver, --skip-host-check goes on to verification
    run = host.sealift("install", bundle, "--skip-host-check", PATH="/usr/bin:/bin")
    assert run.code == 2 and "not one of the verified files" in run.err


def test_doctor_holds_an_installed_bundles_needs_against_the_host(host, tmp_path):
    targets = host.sealift_home / target.TARGETS_DIR
    targets.mkdir(parents=True)
    (targets / "tiny.json").write_text(json.dumps({"bento": "tiny:v1", **GPU_NEEDS}))
    bin_dir = fake_nvidia_smi(tmp_path / "bin", ["0, NVIDIA L40S, 46068, 45000, 535.161.08"])
    run = host.sealift("doctor", "--quick", "--json", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    rows = {c["check"]: c for c in run.json()["checks"]}
    assert rows["driver (tiny)"]["status"] == "fail" and "580.65.06" in rows["driver (tiny)"]["detail"]
    assert rows["gpu memory (tiny)"]["status"] == "fail" and "KV cache" in rows["gpu memory (tiny)"]["detail"]
    assert rows["glibc (tiny)"]["status"] == "ok"


# --------------------------------------------------------------------------- engine knobs


def test_max_num_seqs_and_the_http_cap_are_separate_settings():
    from sealift.serving.config import BentoConfig, ServeConfig
    from sealift.serving.vllm_backend import vllm_command
    from sealift.host.start import option_env

    bento = BentoConfig(model_tag="tiny:v1", served_model_name="tiny")
    cap_only = vllm_command("/m", ServeConfig.from_env(bento, {"SEALIFT_MAX_CONCURRENCY": "8"}), executable=["vllm"])
    assert "--max-num-seqs" not in cap_only
    both = vllm_command("/m", ServeConfig.from_env(bento, {"SEALIFT_MAX_CONCURRENCY": "8", "SEALIFT_MAX_NUM_SEQS": "64",
                                                           "SEALIFT_TENSOR_PARALLEL_SIZE": "2"}), executable=["vllm"])
    assert both[both.index("--max-num-seqs") + 1] == "64" and both[both.index("--tensor-parallel-size") + 1] == "2"
    assert option_env({"max_num_seqs": 64, "max_concurrency": 8}) == {"SEALIFT_MAX_NUM_SEQS": "64",
                                                                      "SEALIFT_MAX_CONCURRENCY": "8"}
    with pytest.raises(UserError):
        option_env({"max_num_seqs": 0})


def test_start_help_documents_the_engine_knobs_and_their_env():
    p = subprocess.run([sys.executable, "-m", "sealift.cli", "start", "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    text = " ".join(p.stdout.split())
    for needle in ("--max-num-seqs", "SEALIFT_MAX_NUM_SEQS", "--tensor-parallel-size", "SEALIFT_TENSOR_PARALLEL_SIZE",
                   "--gpu-memory-utilization", "--max-model-len", "--max-concurrency"):
        assert needle in text


# --------------------------------------------------------------------------- exports (real store, real wheels)


def t_py() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_the_cpu_bundle_was_proven_and_records_what_its_target_needs(installed_bundle):
    proof = installed_bundle.export["proof"]
    assert {"torch", "transformers", "bentoml"} <= set(proof["versions"]), proof
    assert proof["torch_cuda"] is None and proof["total_seconds"] > 0 and "imports torch" in proof["summary"]
    doc = json.loads((installed_bundle.bundle / "manifest.json").read_text())
    assert doc["target"] == {"platform": "manylinux_2_28_x86_64", "python_version": t_py()}  # as before
    t = doc["needs"]
    assert (t["kind"], t["platform"], t["glibc"], t["python_version"]) == \
        ("cpu", "manylinux_2_28_x86_64", "2.28", f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert t["weights_bytes"] > 0 and t["kv_cache_bytes"] > 0 and t["gpu_memory_bytes"] > t["weights_bytes"]
    assert target.TARGETS_DIR in {p.name for p in installed_bundle.host.sealift_home.iterdir()}


def test_the_proof_installs_for_the_bundles_platform_and_says_when_this_host_cannot_run_it(tmp_path, monkeypatch):
    """A build host of another architecture (or an older glibc) proves the wheel set for the target's platform;
    the imports, which need a host like the target, are said not to have run (not a failed proof)."""
    import platform

    from sealift.bundle import proof

    here = platform.machine()
    other = "aarch64" if here == "x86_64" else "x86_64"
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    wheels = [make_wheel(tmp_path / "wheels", "nativepkg", "1.0", tag=f"{py}-{py}-manylinux_2_31_{other}"),
              make_wheel(tmp_path / "wheels", "purepkg", "1.0", requires=("nativepkg==1.0",))]
    found = proof.prove(wheels, ["purepkg==1.0"], target="cpu", python_version=t_py(),
                        platform=f"manylinux_2_31_{other}")
    assert found.not_run == f"this host is {here}, the bundle is for {other}"
    assert found.versions == {} and found.seconds["venv"] > 0
    assert f"installed for manylinux_2_31_{other}" in found.summary() and "imports not run" in found.summary()
    # for this host's platform (what the proof did before), uv finds no wheel of nativepkg it could install
    with pytest.raises(UserError, match="proof failed"):
        proof.prove(wheels, ["purepkg==1.0"], target="cpu", python_version=t_py())
    # the same architecture with an older glibc than the target's: installed, not run; a newer one runs it
    monkeypatch.setattr(target, "host_glibc", lambda: "2.28")
    assert proof.runs_here(f"manylinux_2_31_{here}") == "this host's glibc 2.28 is older than the bundle's 2.31"
    assert proof.runs_here(f"manylinux_2_28_{here}") is None and proof.runs_here(None) is None


def test_a_proof_that_fails_refuses_the_export_and_finishes_nothing(cpu_bento, installed_bundle, tmp_path):
    """The proof runs beside the archive's write: a failed one leaves only the .partial folder (no SHA256SUMS, no
    final name), and the next export resumes it: the archive's bytes are not written again."""
    wheels = wheel_set(installed_bundle.bundle / "wheels", tmp_path / "wheels", leave_out=("torch",))
    make_wheel(wheels, "torch", "2.13.0+cpu", files={"torch/__init__.py": "raise ImportError('a broken torch')\n"},
               tag="cp311-cp311-manylinux_2_28_x86_64")
    dest = tmp_path / "usb"
    run = cpu_bento.host.sealift("export", "tiny", dest, "--wheels-from", wheels)
    assert run.code == 2, run.err
    lines = [ln for ln in run.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "proof failed" in lines[0] and "a broken torch" in lines[0], run.err
    assert "was not finished" in lines[0] and "the next export resumes it" in lines[0], lines[0]
    [partial] = dest.iterdir()
    assert partial.name.endswith(".partial") and not (partial / "SHA256SUMS").exists()
    assert (partial / "wheels" / next(wheels.glob("torch-*.whl")).name).is_file()
    # --no-proof skips it: the same wheels then make a bundle (whose proof says skipped), from what was written
    run = cpu_bento.host.sealift("export", "tiny", dest, "--wheels-from", wheels, "--no-proof", "--json", check=True)
    result = run.json()
    assert result["proof"] == {"skipped": "--no-proof"}
    assert result["resumed_from_bytes"] == result["archive_bytes"] and result["reused_files"] == result["wheels"]
    assert [p.name for p in dest.iterdir()] == [Path(result["bundle"]).name]


def test_the_proofs_uv_refuses_a_wheel_that_is_not_the_locks(tmp_path):
    """The proof holds each wheel to the lock's sha256 as uv reads it (HashMismatch: none of its code ran), a
    second check behind the copy's."""
    from sealift.bundle import proof

    marker = tmp_path / "ran"
    wheel = make_wheel(tmp_path / "wheels", "purepkg", "1.0",
                       files={"purepkg/__init__.py": f"open({str(marker)!r}, 'w').close()\n"})
    with pytest.raises(proof.HashMismatch, match="the wheel for purepkg==1.0 is not the one the lock names"):
        proof.prove([wheel], ["purepkg==1.0"], target="cpu", python_version=t_py(),
                    constraints=[f"purepkg==1.0 --hash=sha256:{'0' * 64}"])
    assert not marker.exists()


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory, tiny_llama) -> Env:
    """A host holding tiny_llama and a gpu bento of it (nothing else: the shared cpu host stays as it is)."""
    env = Env(tmp_path_factory.mktemp("gpu-host"))
    env.sealift("import", tiny_llama, "--name", "tiny", "--json", check=True)
    env.sealift("build", "tiny", "--target", "gpu", "--no-golden", "--json", check=True)
    return env


def test_a_gpu_export_refuses_a_cpu_torch_from_the_wheels(gpu_host, installed_bundle, tmp_path):
    wheels = wheel_set(installed_bundle.bundle / "wheels", tmp_path / "wheels", leave_out=("torch",))
    make_wheel(wheels, "torch", "2.13.0+cpu", files={"torch/__init__.py": "", "torch/version.py": "cuda = None\n"},
               tag="cp311-cp311-manylinux_2_28_x86_64")
    make_wheel(wheels, "torchvision", "0.28.0", requires=("torch==2.13.0",))
    make_wheel(wheels, "vllm", "0.32.0", requires=("torch==2.13.0", "torchvision==0.28.0"))
    make_wheel(wheels, "triton", "3.9.0")  # xgrammar needs it on a GPU; the CPU bundle these came from left it out
    dest = tmp_path / "usb"
    run = gpu_host.sealift("export", "tiny", dest, "--wheels-from", wheels)
    assert run.code == 2, run.err
    lines = [ln for ln in run.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "torch 2.13.0+cpu" in lines[0] and "CPU build" in lines[0], run.err
    assert not dest.exists() or not any(dest.iterdir())


def test_a_second_bundle_on_the_same_medium_adds_only_the_wheels_not_already_there(installed_bundle, tiny_llama,
                                                                                   tmp_path):
    env = Env(tmp_path / "host")
    env.sealift("import", tiny_llama, "--name", "tiny", "--json", check=True)
    wheels = installed_bundle.bundle / "wheels"
    dest = tmp_path / "usb"
    env.sealift("build", "tiny", "--target", "cpu", "--no-golden", "--json", check=True)
    first = env.sealift("export", "tiny", dest, "--wheels-from", wheels, "--no-proof", "--json", check=True).json()
    assert first["shared_wheels"] == 0
    env.sealift("build", "tiny", "--target", "cpu", "--no-golden", "--json", check=True)  # a second bento version
    second = env.sealift("export", "tiny", dest, "--wheels-from", wheels, "--no-proof", "--json", check=True).json()
    assert second["bundle"] != first["bundle"]
    assert second["shared_wheels"] == second["wheels"] == first["wheels"]
    assert second["shared_wheel_bytes"] == second["wheel_bytes"]
    for w in (Path(second["bundle"]) / "wheels").iterdir():  # the same inode: no byte written twice
        assert w.stat().st_ino == (Path(first["bundle"]) / "wheels" / w.name).stat().st_ino
    for b in (first["bundle"], second["bundle"]):  # each bundle still checks on its own, with plain sha256sum
        p = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=b, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
