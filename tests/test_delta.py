"""Delta updates: `sealift inventory` on the air-gapped host, `export --have`, and `install` filling the gaps.

One flow shared by the module (fixture `flow`): a 3-shard tiny model v1 is imported, built, exported in full
and installed on an air-gapped host; that host's inventory is taken; revision 2 changes one shard; its delta
bundle is exported against the inventory and installed. Refusals run on copies of the air-gapped host.
No wheels here (--no-wheels): the wheel half of a delta is tested in-process on a wheel pool.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Env, _cached_model

MB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shards(model: Path) -> list[str]:
    return sorted(p.name for p in model.glob("model-*.safetensors"))


def change_one_shard(model: Path) -> int:
    """Revision 2: new values in the second shard (same tensors, same size); the shard's size."""
    import torch
    from safetensors.torch import load_file, save_file

    path = model / shards(model)[1]
    tensors = load_file(path)
    torch.manual_seed(2)
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})
    return path.stat().st_size


@dataclass
class Flow:
    online: Env
    airgap: Env
    inventory: Path
    full: dict  # export --json of v1
    delta: dict  # export --json of v2 --have
    install: dict  # install --json of the delta
    v2_tag: str
    changed_bytes: int

    @property
    def bundle(self) -> Path:
        return Path(self.delta["bundle"])


def build(env: Env, name: str) -> dict:
    return env.sealift("build", name, "--target", "cpu", "--no-golden", "--json", check=True, UV_OFFLINE="1",
                      PIP_NO_INDEX="1").json()


@pytest.fixture(scope="module")
def qwen_mb(models_dir: Path) -> Path:
    """A Qwen2-style model of a few MB in several shards (hidden size 256): the 1 MB allowance means something."""
    return _cached_model(models_dir, "qwen-delta", arch="qwen2", shards=3, hidden_size=256)


@pytest.fixture(scope="module")
def flow(qwen_mb: Path, tmp_path_factory: pytest.TempPathFactory) -> Flow:
    root = tmp_path_factory.mktemp("delta")
    online, airgap = Env(root / "online"), Env(root / "airgap")
    v1 = root / "v1"
    shutil.copytree(qwen_mb, v1)
    online.sealift("import", v1, "--name", "tq", "--json", check=True)
    build(online, "tq")
    full = online.sealift("export", "tq", root / "usb1", "--no-wheels", "--json", check=True).json()
    airgap.sealift("install", full["bundle"], "--no-venv", "--json", check=True)
    inventory = root / "carried" / "inventory.json"
    airgap.sealift("inventory", "-o", inventory, "-q", check=True)

    v2 = root / "v2"
    shutil.copytree(v1, v2)
    changed = change_one_shard(v2)
    v2_tag = online.sealift("import", v2, "--name", "tq", "--json", check=True).json()["tag"]
    build(online, "tq")
    delta = online.sealift("export", "tq", root / "usb2", "--no-wheels", "--have", inventory, "--json",
                           check=True).json()
    # refusal tests copy the air-gapped host as it is now, before the delta is installed
    shutil.copytree(airgap.root, root / "airgap-before", symlinks=True)
    install = airgap.sealift("install", delta["bundle"], "--no-venv", "--json", check=True).json()
    return Flow(online, airgap, inventory, full, delta, install, v2_tag, changed)


def host_before(flow: Flow, tmp_path: Path) -> Env:
    """A private copy of the air-gapped host as it was before the delta was installed."""
    dst = tmp_path / "airgap"
    shutil.copytree(flow.inventory.parent.parent / "airgap-before", dst, symlinks=True)
    return Env(dst)


def test_inventory_lists_model_files_from_the_manifest_with_tags_and_the_store_id(flow):
    inv = json.loads(flow.inventory.read_text())
    assert inv["format"] == "sealift-inventory/1"
    assert inv["store_id"] == (flow.airgap.bentoml_home / "sealift-store-id").read_text().strip()
    (model,) = inv["models"]
    assert model["tag"] == flow.full["model_tags"][0]
    store = flow.airgap.bentoml_home / "models" / "tq" / model["tag"].split(":")[1]
    name = shards(store)[1]
    shard = next(f for f in model["files"] if f["path"] == name)
    assert shard["sha256"] == sha256(store / name) and shard["size"] == (store / name).stat().st_size
    assert "not re-hashed" in inv["sources"]["models"]
    (bento,) = inv["bentos"]
    assert bento["tag"] == flow.full["bento_tag"]
    assert any(f["path"] == "bento.yaml" for f in bento["files"])
    # --json prints the same lists (now with v2, installed since); the store id does not change
    again = flow.airgap.sealift("inventory", "--json", check=True).json()
    assert again["store_id"] == inv["store_id"] and model in again["models"] and len(again["models"]) == 2


def test_delta_carries_the_changed_shard_and_small_files_only(flow):
    bundle = flow.bundle
    assert bundle.name.endswith("-delta")
    doc = json.loads((bundle / "manifest.json").read_text())
    rel = {r["path"]: r for r in doc["delta"]["relies"]}
    version = flow.v2_tag.split(":")[1]
    v1_version = flow.full["model_tags"][0].split(":")[1]
    online = flow.online.bentoml_home / "models" / "tq" / version
    changed, *same = [shards(online)[1], shards(online)[0], *shards(online)[2:]]
    assert len(same) >= 2
    for name in same:
        r = rel[f"models/tq/{version}/{name}"]
        assert r["kind"] == "model" and r["from"] == f"tq:{v1_version}" and len(r["sha256"]) == 64
    assert f"models/tq/{version}/{changed}" not in rel
    assert any(r["kind"] == "bento" for r in rel.values())  # service.py and friends: unchanged
    archive = bundle / doc["archive"]
    names = subprocess.run(["tar", "tf", str(archive)], capture_output=True, text=True, check=True).stdout.split()
    assert [n for n in names if n.endswith(".safetensors")] == [f"./models/tq/{version}/{changed}"]
    assert "./bento.yaml" in names
    # the size: the changed shard plus at most 1 MB
    assert flow.delta["total_bytes"] <= flow.changed_bytes + MB
    unchanged = sum((online / n).stat().st_size for n in same)
    assert flow.delta["total_bytes"] <= flow.full["total_bytes"] - unchanged
    assert doc["delta"]["store_id"] == json.loads(flow.inventory.read_text())["store_id"]
    assert "DELTA bundle" in (bundle / "INSTALL.txt").read_text()
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle).returncode == 0


def test_delta_install_assembles_the_model_and_it_verifies(flow):
    assert flow.install["models"] == {flow.v2_tag: "imported"}
    assert flow.install["delta"]["relied_files"] >= 2 and flow.install["delta"]["taken_bytes"] > 0
    report = flow.airgap.sealift("verify", flow.v2_tag, "--json", check=True).json()
    assert report["ok"] and report["files"] >= 5
    online = flow.online.bentoml_home / "models" / "tq" / flow.v2_tag.split(":")[1]
    stored = flow.airgap.bentoml_home / "models" / "tq" / flow.v2_tag.split(":")[1]
    for name in shards(online):
        assert sha256(stored / name) == sha256(online / name)
    bento = flow.airgap.bentoml_home / "bentos" / "tq" / flow.delta["bento_tag"].split(":")[1]
    assert (bento / "bento.yaml").is_file() and (bento / "src").is_dir()
    # the model loads: transformers reads the assembled store directory
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(stored, local_files_only=True)


def test_exporting_the_delta_again_is_a_no_op(flow):
    again = flow.online.sealift("export", "tq", flow.bundle.parent, "--no-wheels", "--have", flow.inventory,
                                "--json", check=True).json()
    assert again["already_complete"]


def test_a_delta_on_another_store_is_refused(flow, host):
    run = host.sealift("install", flow.bundle, "--no-venv")
    assert run.code == 2
    assert "delta bundle made from the inventory of store" in run.err and "full bundle" in run.err
    assert not (host.bentoml_home / "models").exists() or not any((host.bentoml_home / "models").iterdir())


def test_a_relied_file_changed_locally_is_named_and_nothing_imported(flow, tmp_path):
    host = host_before(flow, tmp_path)
    v1 = flow.full["model_tags"][0].split(":")[1]
    name = shards(host.bentoml_home / "models" / "tq" / v1)[-1]
    shard = host.bentoml_home / "models" / "tq" / v1 / name
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    run = host.sealift("install", flow.bundle, "--no-venv")
    assert run.code == 2, run.err
    assert name in run.err and "changed" in run.err
    assert "export a full bundle" in run.err and len(run.err.strip().splitlines()) == 1
    assert not (host.bentoml_home / "models" / "tq" / flow.v2_tag.split(":")[1]).exists()
    assert not (host.bentoml_home / "bentos" / "tq" / flow.delta["bento_tag"].split(":")[1]).exists()
    assert not list(host.bentoml_home.glob(".sealift-install-*"))


def test_a_relied_model_that_is_gone_is_named(flow, tmp_path):
    host = host_before(flow, tmp_path)
    v1 = flow.full["model_tags"][0].split(":")[1]
    shutil.rmtree(host.bentoml_home / "models" / "tq" / v1)
    (host.bentoml_home / "models" / "tq" / "latest").unlink()
    run = host.sealift("install", flow.bundle, "--no-venv")
    assert run.code == 2, run.err
    assert "missing" in run.err and "full bundle" in run.err
    assert not (host.bentoml_home / "bentos" / "tq" / flow.delta["bento_tag"].split(":")[1]).exists()


def test_a_killed_delta_install_leaves_nothing_half_made_and_runs_again(flow, tmp_path):
    """kill -9 at several moments of a delta install: every model version bentoml can see verifies against
    its manifest, the bento is whole or absent, and the same install then finishes."""
    import os
    import signal
    import time

    from conftest import ROOT, SEALIFT
    from sealift.model.manifest import MANIFEST_NAME, Manifest, verify_dir

    host = host_before(flow, tmp_path)
    models = host.bentoml_home / "models" / "tq"
    bento = host.bentoml_home / "bentos" / "tq" / flow.delta["bento_tag"].split(":")[1]
    for delay in (0.8, 1.6, 2.4, 3.2, 4.0):
        proc = subprocess.Popen([*SEALIFT, "install", str(flow.bundle), "--no-venv", "-q"], env=host.environ(),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for version in (d for d in models.iterdir() if d.is_dir()):
            manifest = Manifest.read(version / MANIFEST_NAME)
            assert verify_dir(version, manifest, ignore=(MANIFEST_NAME, "model.yaml")) == [], version
        assert not bento.exists() or (bento / "bento.yaml").is_file()
        if proc.returncode == 0:
            break
    host.sealift("install", flow.bundle, "--no-venv", "-q", check=True)
    assert host.sealift("verify", flow.v2_tag, "--json", check=True).json()["ok"]


def test_a_bad_inventory_is_refused_before_anything_is_written(flow, tmp_path):
    bad = tmp_path / "inv.json"
    bad.write_text(json.dumps({"format": "something else"}))
    for path in (bad, tmp_path / "absent.json"):
        run = flow.online.sealift("export", "tq", tmp_path / "usb", "--no-wheels", "--have", path)
        assert run.code == 2 and "--have" in run.err, run.err
    assert not (tmp_path / "usb").exists()


# --------------------------------------------------------------------------- wheels (in-process, no store)


def test_inventory_lists_kept_wheels_recorded_or_hashed(flow, tmp_path, monkeypatch):
    from sealift.host import wheelpool

    host = host_before(flow, tmp_path)
    pool = host.sealift_home / "wheels"
    pool.mkdir(parents=True, exist_ok=True)
    (pool / "a-1-py3-none-any.whl").write_bytes(b"a" * 1000)
    (pool / "b-1-py3-none-any.whl").write_bytes(b"b" * 500)
    monkeypatch.setenv("SEALIFT_HOME", str(host.sealift_home))
    wheelpool.record(pool, {"a-1-py3-none-any.whl": "0" * 64})  # as install records it: trusted, not re-hashed
    inv = host.sealift("inventory", "--json", check=True).json()
    got = {w["name"]: w["sha256"] for w in inv["wheels"]}
    assert got == {"a-1-py3-none-any.whl": "0" * 64, "b-1-py3-none-any.whl": sha256(pool / "b-1-py3-none-any.whl")}
    index = json.loads((host.sealift_home / "wheels.json").read_text())
    assert index["b-1-py3-none-any.whl"]["sha256"] == got["b-1-py3-none-any.whl"]  # recorded for next time


def test_wheels_the_pool_holds_are_left_out_and_checked_at_install(tmp_path, monkeypatch):
    from sealift.bundle import delta
    from sealift.core.errors import UserError
    from sealift.host.inventory import Inventory

    monkeypatch.setenv("SEALIFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    (tmp_path / "bentoml").mkdir()
    (tmp_path / "bentoml" / "sealift-store-id").write_text("store-1\n")
    pool = tmp_path / "home" / "wheels"
    pool.mkdir(parents=True)
    src = tmp_path / "resolved"
    src.mkdir()
    for name, body in (("a-1-py3-none-any.whl", b"a" * 1000), ("b-1-py3-none-any.whl", b"b" * 500)):
        (src / name).write_bytes(body)
    shutil.copy(src / "a-1-py3-none-any.whl", pool)
    (pool / "b-1-py3-none-any.whl").write_bytes(b"B" * 500)  # same name and size, other bytes
    wheels = [{"name": p.name, "size": p.stat().st_size, "sha256": sha256(p)} for p in sorted(pool.iterdir())]
    inv = Inventory(store_id="store-1", created="now", models=[], bentos=[], wheels=wheels)
    plan = delta.DeltaPlan(inv, [])
    carry = plan.split_wheels(sorted(src.iterdir()))
    assert [w.name for w in carry] == ["b-1-py3-none-any.whl"]
    assert [(r.path, r.kind, r.from_tag) for r in plan.relies] == [("wheels/a-1-py3-none-any.whl", "wheel",
                                                                    "wheel pool")]
    doc = {"delta": plan.record(), "models": []}
    assert delta.relied_wheels(doc) == ["wheels/a-1-py3-none-any.whl"]
    assert delta.prepare(doc, tmp_path / "bundle") is not None
    (pool / "a-1-py3-none-any.whl").write_bytes(b"x" * 1000)  # changed in the pool since the inventory
    with pytest.raises(UserError, match="a-1-py3-none-any.whl.*changed"):
        delta.prepare(doc, tmp_path / "bundle")
    (pool / "a-1-py3-none-any.whl").unlink()
    with pytest.raises(UserError, match="a-1-py3-none-any.whl.*missing.*nothing was imported"):
        delta.prepare(doc, tmp_path / "bundle")
    (tmp_path / "bentoml" / "sealift-store-id").write_text("store-2\n")
    with pytest.raises(UserError, match="inventory of store store-1.*store-2"):
        delta.prepare(doc, tmp_path / "bundle")
