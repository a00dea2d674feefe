"""SRC resolution: local dirs, the Hugging Face cache (real layout, resolved by huggingface_hub), ModelScope caches.

huggingface_hub fixes its cache location when imported, so resolution runs in
subprocesses with the test host's HF_HOME / MODELSCOPE_CACHE.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Env

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def make_hf_cache(hub: Path, repo_id: str, model_dir: Path, commit: str, ref: str | None = "main") -> Path:
    """Lay model_dir out as huggingface_hub does: blobs named by content hash, snapshot symlinks, refs/<ref>."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(model_dir.rglob("*")):
        if not f.is_file():
            continue
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snap / f.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


def resolve(host: Env, src: str, **kw) -> subprocess.CompletedProcess:
    """sealift.model.sources.resolve in a subprocess with the host's caches; prints the Source as JSON."""
    code = (
        "import json, sys\n"
        "from sealift.model.sources import resolve\n"
        "from sealift.core.errors import UserError\n"
        "try:\n"
        f"    s = resolve({src!r}, revision={kw.get('revision')!r}, hub={kw.get('hub', 'auto')!r}, download=False)\n"
        "except UserError as e:\n"
        "    print(e.one_line(), file=sys.stderr); sys.exit(2)\n"
        "print(json.dumps(s.to_dict()))\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=host.environ(), cwd=ROOT, capture_output=True, text=True)


def test_local_directory(host: Env, tiny_llama: Path) -> None:
    p = resolve(host, str(tiny_llama))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"path": str(tiny_llama), "kind": "local", "ref": str(tiny_llama), "revision": None}
    p = resolve(host, str(tiny_llama / "config.json"))
    assert p.returncode == 2 and "is a file" in p.stderr
    p = resolve(host, "./no/such/dir")
    assert p.returncode == 2 and "no such directory" in p.stderr


def test_hf_cache_resolves_through_huggingface_hub(host: Env, tiny_llama: Path) -> None:
    hub = host.root / "hf" / "hub"
    snap = make_hf_cache(hub, "tiny-org/Tiny-Llama-0.1", tiny_llama, COMMIT)
    make_hf_cache(hub, "tiny-org/Tiny-Llama-0.1", tiny_llama, OLD_COMMIT, ref=None)

    p = resolve(host, "tiny-org/Tiny-Llama-0.1")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"path": str(snap), "kind": "hf-cache", "ref": "tiny-org/Tiny-Llama-0.1", "revision": COMMIT}

    p = resolve(host, "tiny-org/Tiny-Llama-0.1", revision=OLD_COMMIT)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["revision"] == OLD_COMMIT

    p = resolve(host, "tiny-org/Tiny-Llama-0.1", revision="v9")
    assert p.returncode == 2 and "not at revision 'v9'" in p.stderr and "main" in p.stderr

    p = resolve(host, "tiny-org/not-there")
    assert p.returncode == 2
    assert "Hugging Face cache" in p.stderr and "ModelScope cache" in p.stderr and "hf download" in p.stderr

    p = resolve(host, "tiny-org/Tiny-Llama-0.1", hub="modelscope")
    assert p.returncode == 2 and "Hugging Face" not in p.stderr.split("(")[0]


@pytest.mark.parametrize("layout", ["models/<org>/<name>", "<org>/<name>"])
def test_modelscope_cache_layouts(host: Env, tiny_llama: Path, layout: str) -> None:
    cache = host.root / "modelscope"
    base = cache / "models" if layout.startswith("models/") else cache
    target = base / "tiny-org" / "Tiny___Llama-0___5B"  # '.' is stored as '___'
    shutil.copytree(tiny_llama, target)
    (target / ".mdl").write_text("modelscope metadata")
    p = resolve(host, "tiny-org/Tiny.Llama-0.5B")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"path": str(target), "kind": "modelscope-cache", "ref": "tiny-org/Tiny.Llama-0.5B", "revision": None}
    p = resolve(host, "tiny-org/Tiny.Llama-0.5B", hub="hf")
    assert p.returncode == 2


def test_bad_hub_option(host: Env) -> None:
    p = resolve(host, "a/b", hub="github")
    assert p.returncode == 2 and "--hub 'github'" in p.stderr


def test_import_from_hf_cache_stores_real_files(host: Env, tiny_llama: Path) -> None:
    make_hf_cache(host.root / "hf" / "hub", "tiny-org/tiny-llama", tiny_llama, COMMIT)
    r = host.sealift("import", "tiny-org/tiny-llama", "--name", "tl", "--json", check=True).json()
    assert r["source"] == {"path": r["source"]["path"], "kind": "hf-cache", "ref": "tiny-org/tiny-llama", "revision": COMMIT}
    stored = Path(r["path"])
    for f in tiny_llama.iterdir():
        s = stored / f.name
        assert s.is_file() and not s.is_symlink()
        assert s.read_bytes() == f.read_bytes()
    listed = host.sealift("list", "--json", check=True).json()["models"]
    assert [(m["tag"], m["source"]["kind"], m["source"]["revision"]) for m in listed] == [(r["tag"], "hf-cache", COMMIT)]


def test_import_from_modelscope_cache(host: Env, tiny_llama: Path) -> None:
    target = host.root / "modelscope" / "models" / "tiny-org" / "tiny___llama"
    shutil.copytree(tiny_llama, target)
    for meta in (".mdl", ".msc", ".mv"):
        (target / meta).write_text("x")
    r = host.sealift("import", "tiny-org/tiny.llama", "--name", "ms", "--json", check=True).json()
    assert r["source"]["kind"] == "modelscope-cache"
    assert sorted(p.name for p in Path(r["path"]).iterdir()) == sorted(
        [p.name for p in tiny_llama.iterdir()] + ["model.yaml", "sealift-manifest.json"]
    )
