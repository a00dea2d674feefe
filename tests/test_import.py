"""`sealift import` through the real CLI into a real Bento store: what lands there, refusals, idempotence, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SEALIFT, Env

STAGING = ".sealift-staging"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_qwen_sharded: Path, tiny_custom: Path):
    """One host with the three tiny models imported (read-only for the tests that use it)."""
    env = Env(tmp_path_factory.mktemp("store"))
    results = {
        "llama": env.sealift("import", tiny_llama, "--name", "llama", "--json", check=True).json(),
        "qwen": env.sealift("import", tiny_qwen_sharded, "--name", "qwen", "--json", check=True).json(),
        "custom": env.sealift("import", tiny_custom, "--name", "custom", "--trust-remote-code", "--json", check=True).json(),
    }
    return env, results


def _store_is_empty(host: Env) -> None:
    models = host.bentoml_home / "models"
    versions = [p for p in models.glob("*/*") if p.is_dir()] if models.exists() else []
    assert versions == [], f"left in the store: {versions}"
    staging = host.bentoml_home / STAGING
    assert not staging.exists() or list(staging.iterdir()) == []
    assert host.sealift("list", "--json", check=True).json() == {"models": []}


def _bentoml_list(host: Env) -> list[dict]:
    p = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "list", "-o", "json"],
        env=host.environ(), capture_output=True, text=True, check=True,
    )
    return json.loads(p.stdout or "[]")


# --------------------------------------------------------------------------- what lands in the store


def test_import_result_and_store_contents(store, tiny_llama: Path) -> None:
    host, results = store
    r = results["llama"]
    name, version = r["tag"].split(":")
    assert name == "llama" and r["manifest_digest"].startswith(version) and not r["existed"]
    stored = Path(r["path"])
    assert stored == host.bentoml_home / "models" / "llama" / version
    src_files = sorted(p.name for p in tiny_llama.iterdir())
    assert sorted(p.name for p in stored.iterdir()) == sorted(src_files + ["model.yaml", "sealift-manifest.json"])
    for f in src_files:
        assert (stored / f).read_bytes() == (tiny_llama / f).read_bytes()
    assert r["files"] == len(src_files) and r["bytes"] == sum((tiny_llama / f).stat().st_size for f in src_files)
    assert r["params"] > 0 and r["dtype"] == "float32" and r["context_length"] == 256
    assert r["gpu_memory_bytes"] == (tiny_llama / "model.safetensors").stat().st_size - _header_size(tiny_llama / "model.safetensors")
    assert r["source"]["kind"] == "local" and r["mode"] == "copy" and r["code_files"] == {}

    manifest = json.loads((stored / "sealift-manifest.json").read_text())
    assert manifest["digest"] == r["manifest_digest"]
    assert sorted(e["path"] for e in manifest["files"]) == src_files


def _header_size(path: Path) -> int:
    import struct

    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_bentoml_sees_labels_and_metadata(store) -> None:
    host, results = store
    code = (
        "import json, bentoml\n"
        "out = {}\n"
        "for m in bentoml.models.list():\n"
        "    out[str(m.tag)] = {'path': m.path, 'labels': m.info.labels, 'metadata': m.info.metadata}\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=host.environ(), capture_output=True, text=True, check=True)
    seen = json.loads(p.stdout)
    assert set(seen) == {r["tag"] for r in results.values()}
    llama = seen[results["llama"]["tag"]]
    assert llama["path"] == results["llama"]["path"]
    assert llama["labels"] == {"sealift": "1", "source": "local", "architecture": "LlamaForCausalLM"}
    md = llama["metadata"]
    assert md["manifest_digest"] == results["llama"]["manifest_digest"]
    assert md["params"] == results["llama"]["params"] and md["dtype"] == "float32"
    assert md["context_length"] == 256 and md["gpu_memory_bytes"] > 0 and md["trust_remote_code"] is False
    assert md["source"]["kind"] == "local"
    custom = seen[results["custom"]["tag"]]["metadata"]
    assert custom["trust_remote_code"] is True
    assert set(custom["code_files"]) == {"configuration_tiny.py", "modeling_tiny.py", "tiny_layers.py"}


def test_manifest_works_with_sha256sum(store) -> None:
    host, results = store
    stored = Path(results["qwen"]["path"])
    manifest = json.loads((stored / "sealift-manifest.json").read_text())
    sums = "".join(f"{e['sha256']}  {e['path']}\n" for e in manifest["files"])
    p = subprocess.run(["sha256sum", "-c", "-"], input=sums, cwd=stored, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(": OK") == len(manifest["files"])


def test_sharded_import(store, tiny_qwen_sharded: Path) -> None:
    host, results = store
    stored = Path(results["qwen"]["path"])
    shards = sorted(p.name for p in tiny_qwen_sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2 and all((stored / s).is_file() for s in shards)
    assert (stored / "model.safetensors.index.json").is_file()


def test_list_shows_every_import(store) -> None:
    host, results = store
    listed = host.sealift("list", "--json", check=True).json()["models"]
    assert sorted(m["tag"] for m in listed) == sorted(r["tag"] for r in results.values())
    for m in listed:
        r = next(r for r in results.values() if r["tag"] == m["tag"])
        assert m["size"] == r["bytes"] and m["params"] == r["params"] and m["manifest_digest"] == r["manifest_digest"]
    table = host.sealift("list", check=True).out
    for r in results.values():
        name, version = r["tag"].split(":")
        assert name in table and version in table


def test_stored_model_loads_and_generates_like_the_source(store, tiny_llama: Path, tiny_custom: Path) -> None:
    """from_pretrained(bentoml.models.get(tag).path, local_files_only=True): same greedy tokens as the source."""
    host, results = store
    code = (
        "import json, sys, bentoml, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "def greedy(path, trust):\n"
        "    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust)\n"
        "    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=trust)\n"
        "    ids = tok('The quick brown fox', return_tensors='pt').input_ids\n"
        "    with torch.no_grad():\n"
        "        out = model.generate(ids, max_new_tokens=12, do_sample=False)\n"
        "    return out[0].tolist()\n"
        "res = {}\n"
        "for tag, src, trust in json.loads(sys.argv[1]):\n"
        "    path = bentoml.models.get(tag).path\n"
        "    res[tag] = [greedy(path, trust), greedy(src, trust)]\n"
        "print(json.dumps(res))\n"
    )
    jobs = [(results["llama"]["tag"], str(tiny_llama), False), (results["custom"]["tag"], str(tiny_custom), True)]
    env = host.environ(HF_MODULES_CACHE=str(host.root / "hf-modules"), TRANSFORMERS_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for tag, (stored, source) in json.loads(p.stdout.strip().splitlines()[-1]).items():
        assert len(stored) > 5 and stored == source, tag


# --------------------------------------------------------------------------- idempotence, link, conversion


def test_reimport_same_content_writes_nothing(host: Env, tiny_llama: Path, model_copy) -> None:
    first = host.sealift("import", tiny_llama, "--name", "m", "--json", check=True).json()
    stored = Path(first["path"])
    before = {p.name: p.stat().st_mtime_ns for p in stored.iterdir()}
    again = host.sealift("import", tiny_llama, "--name", "m", "--json", check=True).json()
    assert again["existed"] and again["tag"] == first["tag"] and again["mode"] == "none"
    assert {p.name: p.stat().st_mtime_ns for p in stored.iterdir()} == before
    assert len(list((host.bentoml_home / "models" / "m").iterdir())) == 2  # the version and `latest`

    changed = model_copy(tiny_llama)
    (changed / "generation_config.json").write_text('{"do_sample": false, "max_new_tokens": 8}\n')
    third = host.sealift("import", changed, "--name", "m", "--json", check=True).json()
    assert not third["existed"] and third["tag"] != first["tag"]
    human = host.sealift("import", tiny_llama, "--name", "m", check=True)
    assert "already in the store" in human.out and first["tag"] in human.out


def test_link_hardlinks_and_still_hashes(host: Env, tiny_qwen_sharded: Path, model_copy) -> None:
    src = model_copy(tiny_qwen_sharded)
    r = host.sealift("import", src, "--name", "linked", "--link", "--json", check=True).json()
    assert r["mode"] in ("hardlink", "reflink")
    stored = Path(r["path"])
    for f in src.iterdir():
        if r["mode"] == "hardlink":
            assert (stored / f.name).stat().st_ino == f.stat().st_ino
        assert (stored / f.name).read_bytes() == f.read_bytes()
    from sealift.model.manifest import FileEntry, Manifest, hash_file

    expected = Manifest([FileEntry(f.name, f.stat().st_size, hash_file(f)) for f in src.iterdir()])
    assert r["manifest_digest"] == expected.digest()  # linking still hashed every byte
    assert host.sealift("verify", "linked", "--json", check=True).json()["ok"]


def test_pickle_weights_convert_to_safetensors(host: Env, tiny_llama: Path, model_copy) -> None:
    import torch
    from safetensors.torch import load_file

    src = model_copy(tiny_llama)
    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()

    refused = host.sealift("import", src, "--name", "p")
    assert refused.code == 2 and "pytorch_model.bin" in refused.err
    _store_is_empty(host)

    r = host.sealift("import", src, "--name", "p", "--to-safetensors", "--json", check=True).json()
    stored = Path(r["path"])
    assert (stored / "model.safetensors").is_file() and not (stored / "pytorch_model.bin").exists()
    assert r["converted"] == {"pytorch_model.bin": "model.safetensors"}
    assert r["params"] > 0 and r["dtype"] == "float32"
    assert host.sealift("verify", r["tag"], "--json", check=True).json()["ok"]

    kept = host.sealift("import", src, "--name", "pk", "--allow-pickle", "--json", check=True).json()
    assert (Path(kept["path"]) / "pytorch_model.bin").is_file()


# --------------------------------------------------------------------------- refusals leave the store empty


def _break_missing_shard(m: Path) -> str:
    shard = sorted(m.glob("model-*.safetensors"))[1]
    shard.unlink()
    return f"{shard.name} missing"


def _break_truncated(m: Path) -> str:
    shard = sorted(m.glob("model-*.safetensors"))[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    return f"{shard.name} truncated"


def _break_tokenizer(m: Path) -> str:
    (m / "tokenizer.json").unlink()
    return "tokenizer missing"


@pytest.mark.parametrize("breaker", [_break_missing_shard, _break_truncated, _break_tokenizer])
def test_incomplete_model_refused_and_nothing_written(host: Env, tiny_qwen_sharded: Path, model_copy, breaker) -> None:
    m = model_copy(tiny_qwen_sharded)
    expected = breaker(m)
    r = host.sealift("import", m, "--name", "broken")
    assert r.code == 2, r.err
    assert expected in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1 or r.err.count("error:") == 1
    _store_is_empty(host)


def test_custom_code_needs_trust_and_every_module(host: Env, tiny_custom: Path, model_copy) -> None:
    r = host.sealift("import", tiny_custom, "--name", "c")
    assert r.code == 2 and "--trust-remote-code" in r.err and "modeling_tiny.py" in r.err
    _store_is_empty(host)
    m = model_copy(tiny_custom)
    (m / "tiny_layers.py").unlink()
    r = host.sealift("import", m, "--name", "c", "--trust-remote-code")
    assert r.code == 2 and "tiny_layers.py missing" in r.err
    _store_is_empty(host)
    human = host.sealift("import", tiny_custom, "--name", "c", "--trust-remote-code", check=True).out
    assert "custom code" in human and "modeling_tiny.py" in human


def test_bad_name_and_unknown_source(host: Env, tiny_llama: Path) -> None:
    r = host.sealift("import", tiny_llama, "--name", "bad name!")
    assert r.code == 2 and "not a valid model name" in r.err
    r = host.sealift("import", tiny_llama, "--name", "x:v1")
    assert r.code == 2 and "must not hold a version" in r.err
    r = host.sealift("import", "nobody/nothing", "--name", "x")
    assert r.code == 2 and "not in the Hugging Face cache" in r.err
    _store_is_empty(host)


def test_missing_chat_template_warns(host: Env, tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    (m / "chat_template.jinja").unlink()
    r = host.sealift("import", m, "--name", "nochat", check=True)
    assert "warning:" in r.err and "no chat template" in r.err
    j = host.sealift("import", m, "--name", "nochat", "--json", check=True).json()
    assert j["existed"] and j["chat_template"] is False and "no chat template" in j["warnings"][0]


# --------------------------------------------------------------------------- interrupted imports


def _start_stuck_import(host: Env, src: Path) -> tuple[subprocess.Popen, Path]:
    """Start an import whose source holds a FIFO: the copy blocks on it mid-import until we write."""
    fifo = src / "zz-stream.txt"
    os.mkfifo(fifo)
    # SIGINT back to its default in the child: a test run started in the background (`make test &`) has
    # SIGINT ignored, which children inherit, and a Ctrl-C that is ignored cannot be tested.
    proc = subprocess.Popen(
        [*SEALIFT, "import", str(src), "--name", "killed"], env=host.environ(), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return proc, fifo


def _feed_until_staged(host: Env, proc: subprocess.Popen, fifo: Path):
    """Open the FIFO (returns once the importer reads it) and write part of it: the import is now mid-copy."""
    w = open(fifo, "wb")  # blocks until sealift opens it in its copy step
    w.write(b"x" * 100_000)
    w.flush()
    staging = host.bentoml_home / STAGING
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        staged = [p for p in staging.rglob("model.safetensors")] if staging.exists() else []
        if staged and staged[0].stat().st_size > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None
    assert list(staging.iterdir()), "nothing staged"
    models = host.bentoml_home / "models"
    assert not list(models.glob("*/*/")) if models.exists() else True
    return w


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_interrupted_import_leaves_nothing(host: Env, tiny_llama: Path, model_copy, sig) -> None:
    src = model_copy(tiny_llama)
    proc, fifo = _start_stuck_import(host, src)
    w = _feed_until_staged(host, proc, fifo)
    proc.send_signal(sig)
    time.sleep(0.2)
    try:
        w.close()  # EOF unblocks the copying thread, so a graceful shutdown can finish
    except BrokenPipeError:
        pass
    proc.wait(timeout=60)
    err = proc.stderr.read() if proc.stderr else ""
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "interrupted" in err and "nothing was added to the store" in err
        assert list((host.bentoml_home / STAGING).iterdir()) == []  # cleaned on the way out
    models = host.bentoml_home / "models"
    assert [p for p in models.glob("*/*") if p.is_dir()] == [] if models.exists() else True
    if sig != signal.SIGKILL:
        return  # the same cleanup path as any failure; SIGKILL below is the hard case
    assert [p.name for p in (host.bentoml_home / STAGING).iterdir()] != []  # leftovers, outside models/
    assert host.sealift("list", "--json", check=True).json() == {"models": []}
    assert _bentoml_list(host) == []

    fifo.unlink()
    r = host.sealift("import", src, "--name", "killed", "--json", check=True).json()
    assert not r["existed"]
    assert list((host.bentoml_home / STAGING).iterdir()) == []  # the dead import's leftovers are swept
    assert host.sealift("verify", r["tag"], "--json", check=True).json()["ok"]
