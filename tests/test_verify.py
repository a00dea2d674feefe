"""The sha256 manifest (copy+hash in one pass, verify) and `sealift verify` on a real store."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Env
from sealift.model import manifest as M
from sealift.model.manifest import FileEntry, Manifest, Problem


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- manifest, in-process


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200), chunk=st.integers(min_value=1, max_value=17))
def test_copy_and_hash_is_exact_at_every_chunk_boundary(tmp_path_factory, data: bytes, chunk: int) -> None:
    """Double-buffered copy: any size against any chunk size gives the same bytes and the true sha256."""
    d = tmp_path_factory.mktemp("cp")
    (d / "src").write_bytes(data)
    seen: list[int] = []
    old = M.CHUNK
    M.CHUNK = chunk
    try:
        entry = M.copy_and_hash(d / "src", d / "dst", seen.append, relpath="a/src")
    finally:
        M.CHUNK = old
    assert (d / "dst").read_bytes() == data
    assert entry == FileEntry("a/src", len(data), _sha(data))
    assert sum(seen) == len(data)
    assert M.hash_file(d / "dst") == _sha(data)


def test_copy_and_hash_abort_removes_the_partial_file(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x" * 1000)
    cancel = threading.Event()
    cancel.set()
    old = M.CHUNK
    M.CHUNK = 100
    try:
        with pytest.raises(M.Cancelled):
            M.copy_and_hash(tmp_path / "src", tmp_path / "dst", M.cancellable(lambda n: None, cancel))
    finally:
        M.CHUNK = old
    assert not (tmp_path / "dst").exists()


def test_link_and_hash(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"weights" * 1000)
    entry, how = M.link_and_hash(tmp_path / "src", tmp_path / "dst", relpath="dst")
    assert how in ("reflink", "hardlink")
    assert entry == FileEntry("dst", 7000, _sha(b"weights" * 1000))
    if how == "hardlink":
        assert (tmp_path / "dst").stat().st_ino == (tmp_path / "src").stat().st_ino


def test_manifest_round_trip_digest_and_sha256sums(tmp_path: Path) -> None:
    files = [FileEntry("b.bin", 3, _sha(b"abc")), FileEntry("a/x.json", 2, _sha(b"{}"))]
    m = Manifest(files)
    assert [e.path for e in m.files] == ["a/x.json", "b.bin"]  # sorted: the digest does not depend on order
    assert Manifest(list(reversed(files))).digest() == m.digest()
    text = M.sha256sums_text(m.files)
    assert text == f"{_sha(b'{}')}  a/x.json\n{_sha(b'abc')}  b.bin\n"
    assert m.digest() == _sha(text.encode())
    m.write(tmp_path / M.MANIFEST_NAME)
    assert not (tmp_path / (M.MANIFEST_NAME + ".partial")).exists()
    back = Manifest.read(tmp_path / M.MANIFEST_NAME)
    assert back == m and back.total_bytes == 5
    doc = json.loads((tmp_path / M.MANIFEST_NAME).read_text())
    doc["files"][0]["sha256"] = "0" * 64  # edited by hand: the stored digest no longer matches
    with pytest.raises(ValueError, match="digest does not match"):
        Manifest.from_json(json.dumps(doc))
    with pytest.raises(ValueError, match="malformed"):
        Manifest.from_json("{}")


def test_verify_dir_reports_each_kind(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / "sub").mkdir(parents=True)
    contents = {"a.bin": b"a" * 100, "b.bin": b"b" * 50, "sub/c.txt": b"c", "d.txt": b"d"}
    for rel, data in contents.items():
        (root / rel).write_bytes(data)
    man = Manifest([FileEntry(rel, len(d), _sha(d)) for rel, d in contents.items()])
    man.write(root / M.MANIFEST_NAME)
    done: list[int] = []
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            done.append(n)

    assert M.verify_dir(root, man, advance) == []
    assert sum(done) == man.total_bytes

    data = bytearray(contents["a.bin"])
    data[42] ^= 0x01
    (root / "a.bin").write_bytes(bytes(data))
    (root / "b.bin").write_bytes(b"b" * 49)
    (root / "sub" / "c.txt").unlink()
    (root / "extra.py").write_text("print('hi')\n")
    problems = M.verify_dir(root, man)
    assert problems == [
        Problem("a.bin", "sha256", _sha(contents["a.bin"]), _sha(bytes(data))),
        Problem("b.bin", "size", "50", "49"),
        Problem("extra.py", "unexpected"),
        Problem("sub/c.txt", "missing"),
    ]
    assert str(problems[0]).startswith("a.bin: sha256 is ")


def test_walk_files_skips_hidden_and_follows_links(tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "x").write_text("x")
    snap = tmp_path / "snap"
    (snap / "sub").mkdir(parents=True)
    (snap / "config.json").symlink_to(tmp_path / "blobs" / "x")
    (snap / "sub" / "t.txt").write_text("t")
    (snap / ".cache" / "huggingface").mkdir(parents=True)
    (snap / ".cache" / "huggingface" / "meta").write_text("m")
    (snap / ".gitattributes").write_text("")
    assert M.walk_files(snap) == ["config.json", "sub/t.txt"]
    assert M.walk_files(snap, skip_hidden=False, ignore=["config.json"]) == [
        ".cache/huggingface/meta", ".gitattributes", "sub/t.txt"
    ]


# --------------------------------------------------------------------------- sealift verify


def test_verify_catches_one_flipped_byte(host: Env, tiny_qwen_sharded: Path) -> None:
    r = host.sealift("import", tiny_qwen_sharded, "--name", "v", "--json", check=True).json()
    ok = host.sealift("verify", "v", "--json", check=True).json()
    assert ok["ok"] and ok["problems"] == [] and ok["tag"] == r["tag"] and ok["files"] == r["files"]
    human = host.sealift("verify", r["tag"], check=True).out
    assert human.startswith("ok ") and r["manifest_digest"] in human

    stored = Path(r["path"])
    shard = sorted(stored.glob("model-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x20
    shard.write_bytes(bytes(data))

    bad = host.sealift("verify", "v", "--json")
    assert bad.code == 1
    report = bad.json()
    assert not report["ok"]
    assert report["problems"] == [
        {"path": shard.name, "kind": "sha256", "expected": _manifest_sha(stored, shard.name), "actual": _sha(bytes(data))}
    ]
    human = host.sealift("verify", "v")
    assert human.code == 1 and "MISMATCH" in human.out and shard.name in human.out

    # and sha256sum agrees, reading the same manifest
    man = Manifest.read(stored / M.MANIFEST_NAME)
    p = subprocess.run(["sha256sum", "-c", "-"], input=M.sha256sums_text(man.files), cwd=stored, capture_output=True, text=True)
    assert p.returncode == 1 and f"{shard.name}: FAILED" in p.stdout


def _manifest_sha(stored: Path, rel: str) -> str:
    return Manifest.read(stored / M.MANIFEST_NAME).by_path()[rel].sha256


def test_verify_missing_extra_and_edited_manifest(host: Env, tiny_llama: Path) -> None:
    r = host.sealift("import", tiny_llama, "--name", "w", "--json", check=True).json()
    stored = Path(r["path"])
    (stored / "generation_config.json").unlink()
    (stored / "notes.txt").write_text("added later\n")
    rep = host.sealift("verify", "w", "--json")
    assert rep.code == 1
    kinds = {(p["path"], p["kind"]) for p in rep.json()["problems"]}
    assert kinds == {("generation_config.json", "missing"), ("notes.txt", "unexpected")}

    # a manifest rewritten to match tampered files still disagrees with the digest in bentoml's metadata
    (stored / "notes.txt").unlink()
    gen = tiny_llama / "generation_config.json"
    (stored / "generation_config.json").write_bytes(gen.read_bytes() + b" ")
    man = Manifest.read(stored / M.MANIFEST_NAME)
    entries = [e for e in man.files if e.path != "generation_config.json"]
    entries.append(M.FileEntry("generation_config.json", gen.stat().st_size + 1, M.hash_file(stored / "generation_config.json")))
    Manifest(entries).write(stored / M.MANIFEST_NAME)
    rep = host.sealift("verify", "w", "--json")
    assert rep.code == 1
    assert [(p["path"], p["kind"]) for p in rep.json()["problems"]] == [(M.MANIFEST_NAME, "sha256")]


def test_verify_unknown_model(host: Env) -> None:
    r = host.sealift("verify", "nothing-here")
    assert r.code == 2 and "not in the store" in r.err and "sealift list" in r.err
