"""`sealift doctor [NAME]`: a table of checks with a fix for each failing row; exit 1 on any failure.

A fresh host fails (nothing in the store) and says how to fix it; a host with a
model imported and a bento built passes the store and bento rows; a corrupted
byte in the store fails verification; a (fake) GPU's free memory is compared
with the model's estimate. The GPU is the only thing mocked: a fake nvidia-smi.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import Env  # the root tests/conftest.py (pytest puts tests/ on sys.path)
from sealift.core.offline import OFFLINE_ENV


def rows(run) -> dict[str, dict]:
    return {c["check"]: c for c in run.json()["checks"]}


def fake_nvidia_smi(bin_dir: Path, *gpus: tuple[int, int]) -> dict[str, str]:
    """A PATH with an nvidia-smi that reports GPUs of (total MiB, free MiB)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'echo "{i}, NVIDIA H100 80GB HBM3, {total}, {free}"\n' for i, (total, free) in enumerate(gpus))
    exe = bin_dir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + lines)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tiny_llama) -> Env:
    """A host with tiny_llama imported as `tiny` and no bento (tests restore anything they break)."""
    env = Env(tmp_path_factory.mktemp("doctor-host"))
    env.sealift("import", tiny_llama, "--name", "tiny", "--json", check=True)
    return env


def test_fresh_host_fails_with_a_fix_for_every_failing_row(host):
    run = host.sealift("doctor", "--json")
    assert run.code == 1, run.err
    report = run.json()
    assert report["ok"] is False and report["counts"]["fail"] >= 1
    checks = rows(run)
    assert checks["model"]["status"] == "fail"
    assert "sealift install" in checks["model"]["fix"] and "sealift import" in checks["model"]["fix"]
    for c in report["checks"]:
        assert c["status"] in ("ok", "warn", "fail")
        if c["status"] != "ok":
            assert c["fix"], c
    # the test host sets only some offline variables: the row names the rest and how to set them
    assert checks["offline env"]["status"] == "warn"
    assert "TRANSFORMERS_OFFLINE" in checks["offline env"]["detail"]
    # no env file yet (nothing installed): the fix says what writes it and what to export meanwhile
    assert "sealift install" in checks["offline env"]["fix"] and "TRANSFORMERS_OFFLINE=1" in checks["offline env"]["fix"]
    assert checks["disk (store)"]["status"] == "ok"

    named = host.sealift("doctor", "nosuch", "--json")
    assert named.code == 1 and rows(named)["model"]["status"] == "fail"
    assert "nosuch" in rows(named)["model"]["detail"]

    human = host.sealift("doctor", COLUMNS="200")
    assert human.code == 1
    for word in ("CHECK", "STATUS", "DETAIL", "FIX", "not ready", "sealift import"):
        assert word in human.out


def test_offline_env_row_ok_when_all_set(host):
    run = host.sealift("doctor", "--json", **OFFLINE_ENV)
    assert rows(run)["offline env"]["status"] == "ok"


def test_after_import_and_build_the_store_and_bento_rows_pass(cpu_bento):
    run = cpu_bento.host.sealift("doctor", "tiny", "--json", CUDA_VISIBLE_DEVICES="", **OFFLINE_ENV)
    checks = rows(run)
    model_tag = cpu_bento.build["model_tag"]
    assert checks["model"]["status"] == "ok" and model_tag in checks["model"]["detail"]
    assert checks["verified tiny"]["status"] == "ok"
    assert checks["bento tiny"]["status"] == "ok" and cpu_bento.build["bento_tag"] in checks["bento tiny"]["detail"]
    assert checks["runtime"]["status"] == "ok"
    assert checks["gpu"]["status"] == "ok"  # a cpu bento needs none
    assert checks["offline env"]["status"] == "ok"
    failing = [c for c in run.json()["checks"] if c["status"] == "fail"]
    assert failing == [] and run.code == 0, failing


def test_a_corrupted_byte_in_the_store_fails_verification(imported):
    listed = imported.sealift("list", "--json", check=True).json()["models"]
    weights = Path(listed[0]["path"]) / "model.safetensors"
    original = weights.read_bytes()
    try:
        with open(weights, "r+b") as f:
            f.seek(len(original) // 2)
            f.write(bytes([original[len(original) // 2] ^ 0xFF]))
        run = imported.sealift("doctor", "tiny", "--json")
        assert run.code == 1
        row = rows(run)["verified tiny"]
        assert row["status"] == "fail" and "model.safetensors" in row["detail"] and "sealift" in row["fix"]
        quick = imported.sealift("doctor", "tiny", "--quick", "--json")
        assert "verified tiny" not in rows(quick)  # --quick does not re-hash
    finally:
        weights.write_bytes(original)
    run = imported.sealift("doctor", "tiny", "--json")
    assert rows(run)["verified tiny"]["status"] == "ok"
    # no bento was built on this host: that row fails with the command that fixes it
    assert rows(run)["bento tiny"]["status"] == "fail" and "sealift build tiny" in rows(run)["bento tiny"]["fix"]


def test_gpu_memory_is_checked_against_the_models_estimate(imported, tmp_path):
    need = next(m for m in imported.sealift("list", "--json", check=True).json()["models"])["gpu_memory_bytes"]
    assert need and need > 0
    need_mib = -(-need // 2**20)

    enough = imported.sealift("doctor", "tiny", "--quick", "--json",
                              **fake_nvidia_smi(tmp_path / "a", (81559, need_mib + 100)))
    gpu = rows(enough)
    assert gpu["gpu"]["status"] == "ok" and "NVIDIA H100" in gpu["gpu"]["detail"]
    assert gpu["gpu memory tiny"]["status"] == "ok"

    short = imported.sealift("doctor", "tiny", "--quick", "--json", **fake_nvidia_smi(tmp_path / "b", (81559, 0)))
    row = rows(short)["gpu memory tiny"]
    assert short.code == 1 and row["status"] == "fail" and row["fix"]

    hidden = imported.sealift("doctor", "tiny", "--quick", "--json", CUDA_VISIBLE_DEVICES="",
                              **fake_nvidia_smi(tmp_path / "d", (81559, 81000)))
    assert "gpu memory tiny" not in rows(hidden) and "no GPU visible" in rows(hidden)["gpu"]["detail"]


def test_gpu_rows_for_split_models_and_vllm_free_share(tmp_path, monkeypatch):
    """In-process (no store involved): multi-GPU advice and vLLM's free-memory rule, on fake GPUs."""
    from types import SimpleNamespace

    from sealift.host import doctor

    model = SimpleNamespace(name="big", tag="big:1", gpu_memory_bytes=120 * 2**30)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for key, value in fake_nvidia_smi(tmp_path / "four", *[(81559, 70000)] * 4).items():
        monkeypatch.setenv(key, value)
    got = {c.check: c for c in doctor.check_gpu([model], {"gpu"})}
    assert got["gpu"].status == "ok" and "4 visible" in got["gpu"].detail
    assert got["gpu memory big"].status == "warn" and "--tensor-parallel-size 2" in got["gpu memory big"].fix
    # 70000 of 81559 MiB free is 85%: vLLM's default 0.9 would refuse to start
    assert got["gpu free share"].status == "warn" and "--gpu-memory-utilization 0.84" in got["gpu free share"].fix

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    got = {c.check: c for c in doctor.check_gpu([model], {"gpu"})}
    assert "1 visible" in got["gpu"].detail and got["gpu memory big"].status == "fail"

    for key, value in fake_nvidia_smi(tmp_path / "one", (81559, 81000)).items():
        monkeypatch.setenv(key, value)
    got = {c.check: c for c in doctor.check_gpu([model], {"gpu"})}
    assert got["gpu free share"].status == "ok"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    got = {c.check: c for c in doctor.check_gpu([model], {"gpu"})}
    assert got["gpu"].status == "warn" and "CUDA_VISIBLE_DEVICES" in got["gpu"].fix


def test_installed_venv_rows(tmp_path, monkeypatch):
    """In-process, on a fake SEALIFT_HOME: an unfinished, a broken and an absent runtime venv."""
    import json

    from sealift.host import doctor, venv as venv_module

    home = tmp_path / "sealift"
    venv = home / "venvs" / "tiny-v1"
    (venv / "bin").mkdir(parents=True)
    record = {"tiny": {"bento_tag": "tiny:v1", "venv": str(venv), "bundle": "/media/usb/tiny-v1"}}
    (home / "installed.json").write_text(json.dumps(record))
    monkeypatch.setenv("SEALIFT_HOME", str(home))

    row = doctor.check_installed_venv("tiny:v1", "cpu")
    assert row.status == "fail" and "incomplete" in row.detail and "sealift install /media/usb/tiny-v1" in row.fix
    (venv / venv_module.VENV_MARKER).write_text("{}")
    row = doctor.check_installed_venv("tiny:v1", "cpu")
    assert row.status == "fail" and "does not run" in row.detail  # no bin/python
    (venv / "bin" / "python").write_text("#!/bin/sh\necho '[\"torch\"]'\n")
    (venv / "bin" / "python").chmod(0o755)
    row = doctor.check_installed_venv("tiny:v1", "cpu")
    assert row.status == "fail" and "lacks torch" in row.detail

    assert doctor.check_installed_venv("tiny:v2", "cpu").status == "warn"  # installed record is for v1
    assert doctor.check_installed_venv("other:v1", "cpu").status == "ok"  # not installed from a bundle
    record["tiny"]["venv"] = None
    (home / "installed.json").write_text(json.dumps(record))
    assert doctor.check_installed_venv("tiny:v1", "cpu").status == "ok"
