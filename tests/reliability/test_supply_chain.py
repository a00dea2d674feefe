"""Supply chain: a model's own code is shown with its sha256 at import and refused unless trusted; its
hash is checked again at install and before every start; pickle weights are never unpickled unless
the user says --allow-pickle.

The custom-code model is conftest's `tiny_custom` (configuration_tiny.py, modeling_tiny.py and the
tiny_layers.py it imports, named by config.json's auto_map). Every tampered copy of its code carries
a line that writes a marker file when Python runs it: the marker must never appear.
More pickle cases: tests/test_inspect.py::test_pickle_weights_refused_unless_allowed and
tests/test_import.py::test_pickle_weights_convert_to_safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import SEALIFT, Env
from sealift.model.manifest import code_problems

CODE = ("configuration_tiny.py", "modeling_tiny.py", "tiny_layers.py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def store_is_empty(host: Env) -> bool:
    return not any((host.bentoml_home / kind).exists() and any((host.bentoml_home / kind).iterdir())
                   for kind in ("models", "bentos"))


@pytest.fixture(scope="module")
def trusted(tiny_custom: Path, tmp_path_factory) -> dict:
    """tiny_custom imported with --trust-remote-code (human output kept), built for cpu, exported."""
    host = Env(tmp_path_factory.mktemp("supply") / "host")
    human = host.sealift("import", tiny_custom, "--name", "custom", "--trust-remote-code", check=True).out
    (model,) = host.sealift("list", "--json", check=True).json()["models"]
    bento = host.sealift("build", "custom", "--target", "cpu", "--no-golden", "--json", "-q", check=True).json()
    usb = tmp_path_factory.mktemp("supply-usb")
    ex = host.sealift("export", "custom", usb, "--no-wheels", "--json", "-q", check=True).json()
    return {"host": host, "human": human, "model": model, "bento": bento, "bundle": Path(ex["bundle"])}


# --------------------------------------------------------------------------- import


def test_code_is_shown_with_its_sha256_and_refused_unless_trusted(tiny_custom: Path, host: Env, trusted) -> None:
    digests = {name: sha256(tiny_custom / name) for name in CODE}
    refused = host.sealift("import", tiny_custom, "--name", "custom")
    assert refused.code == 2
    line = error_line(refused.err)
    assert "--trust-remote-code" in line
    for name, digest in digests.items():
        assert f"{name} (sha256:{digest[:12]})" in line, line
    assert store_is_empty(host)
    # trusted: every file listed with its full sha256, and the same digests pinned in the store's metadata
    for name, digest in digests.items():
        assert f"{digest}  {name}" in trusted["human"], trusted["human"]
    assert trusted["model"]["trust_remote_code"] is True
    assert trusted["model"]["code_files"] == digests


# --------------------------------------------------------------------------- install


def _model_code_member(archive: Path) -> tarfile.TarInfo:
    with tarfile.open(archive, "r:") as tf:
        return next(m for m in tf.getmembers() if m.name.endswith("/modeling_tiny.py") and "/models/" in m.name)


def _change_a_byte(archive: Path, member: tarfile.TarInfo) -> None:
    """Change one character of the code's docstring (still valid Python, different code)."""
    with open(archive, "r+b") as f:
        f.seek(member.offset_data + 5)
        old = f.read(1)
        f.seek(member.offset_data + 5)
        f.write(b"X" if old != b"X" else b"Y")


def _reseal(bundle: Path) -> None:
    """What a forger with write access to the medium does: recompute manifest.json and SHA256SUMS."""
    doc = json.loads((bundle / "manifest.json").read_text())
    for f in doc["files"]:
        f["sha256"] = sha256(bundle / f["path"])
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    entries = {f["path"]: f["sha256"] for f in doc["files"]} | {"manifest.json": sha256(bundle / "manifest.json")}
    (bundle / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sorted(entries.items())))


@pytest.mark.parametrize("forged", [False, True], ids=["damaged", "damaged-and-resealed"])
def test_install_refuses_a_bundle_whose_model_code_changed(trusted, forged: bool, tmp_path: Path) -> None:
    bundle = tmp_path / trusted["bundle"].name
    subprocess.run(["cp", "-r", str(trusted["bundle"]), str(bundle)], check=True)
    doc = json.loads((bundle / "manifest.json").read_text())
    archive = bundle / doc["archive"]
    _change_a_byte(archive, _model_code_member(archive))
    if forged:
        _reseal(bundle)
        assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True).returncode == 0
    host = Env(tmp_path / "airgap")
    run = host.sealift("install", bundle, "--no-venv")
    assert run.code == 2, run.err
    line = error_line(run.err)
    assert "nothing was imported" in line
    assert ("modeling_tiny.py" in line and "not the code its manifest recorded" in line) if forged else "corrupted" in line
    assert store_is_empty(host)
    assert not list(host.bentoml_home.glob(".sealift-install-*"))


def test_install_refuses_a_resealed_bundle_naming_another_model_digest(trusted, tmp_path: Path) -> None:
    """manifest.json names the model manifest it shipped; a bundle re-sealed to name another is refused
    before the model is stored (not imported and then rolled back)."""
    bundle = tmp_path / trusted["bundle"].name
    subprocess.run(["cp", "-r", str(trusted["bundle"]), str(bundle)], check=True)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["models"][0]["manifest_digest"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    _reseal(bundle)
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True).returncode == 0
    host = Env(tmp_path / "airgap")
    run = host.sealift("install", bundle, "--no-venv")
    assert run.code == 2, run.err
    line = error_line(run.err)
    assert "manifest digest" in line and "nothing was imported" in line
    assert store_is_empty(host)
    assert not list(host.bentoml_home.glob(".sealift-install-*"))


# --------------------------------------------------------------------------- start and serve


@pytest.fixture(scope="module")
def installed(trusted, tmp_path_factory) -> dict:
    host = Env(tmp_path_factory.mktemp("supply-airgap") / "host")
    inst = host.sealift("install", trusted["bundle"], "--no-venv", "--json", "-q", check=True).json()
    (model,) = host.sealift("list", "--json", check=True).json()["models"]
    return {"host": host, "bento_tag": inst["bento_tag"], "model_dir": Path(model["path"])}


def _tamper(model_dir: Path, how: str, marker: Path) -> dict[Path, bytes | None]:
    """Change the stored model's code or config; returns what to put back (None: delete)."""
    payload = f"\nopen({str(marker)!r}, 'w').write('the tampered code ran')\n"
    if how == "edit-code":
        target = model_dir / "modeling_tiny.py"
        before = target.read_bytes()
        target.write_bytes(before + payload.encode())
        return {target: before}
    if how == "add-code":
        (model_dir / "evil.py").write_text(payload)
        return {model_dir / "evil.py": None}
    if how == "edit-auto-map":  # point auto_map at a module the manifest never saw
        config = model_dir / "config.json"
        before = config.read_bytes()
        doc = json.loads(before)
        doc["auto_map"]["AutoModelForCausalLM"] = "evil.TinyForCausalLM"
        config.write_text(json.dumps(doc, indent=2) + "\n")
        (model_dir / "evil.py").write_text(payload + "from .modeling_tiny import TinyForCausalLM\n")
        return {config: before, model_dir / "evil.py": None}
    raise ValueError(how)


def _put_back(saved: dict[Path, bytes | None]) -> None:
    for path, data in saved.items():
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)


@pytest.mark.parametrize("how", ["edit-code", "add-code", "edit-auto-map"])
def test_start_refuses_model_code_changed_in_the_store(installed, how: str, tmp_path: Path) -> None:
    model_dir, host = installed["model_dir"], installed["host"]
    assert code_problems(model_dir) == []  # as installed: the code is what was imported
    marker = tmp_path / "marker"
    saved = _tamper(model_dir, how, marker)
    try:
        problems = code_problems(model_dir)
        assert problems, how
        port = free_port()
        run = host.sealift("start", "custom", "--port", port, timeout=120)
        assert run.code == 1, run.err + run.out
        line = error_line(run.err)
        assert "refusing to run it" in line and problems[0].path in line, line
        assert "sealift verify custom:" in line, line  # and what to do
        with socket.socket() as s:  # no server was started
            assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        _put_back(saved)
    assert not marker.exists(), "the tampered code ran"
    assert code_problems(model_dir) == []


def test_bentoml_serve_refuses_model_code_changed_in_the_store(installed, tmp_path: Path) -> None:
    """Served without sealift (bentoml serve TAG), the service itself refuses: never ready, the reason logged."""
    model_dir, host = installed["model_dir"], installed["host"]
    marker = tmp_path / "marker"
    saved = _tamper(model_dir, "edit-code", marker)
    port = free_port()
    log = tmp_path / "serve.log"
    bentoml = str(Path(SEALIFT[0]).parent / "bentoml")
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen([bentoml, "serve", installed["bento_tag"], "--host", "127.0.0.1", "--port", str(port)],
                                    env=host.environ(), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "refusing to run it" not in log.read_text(errors="replace"):
                assert proc.poll() is None or "refusing" in log.read_text(errors="replace"), log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
                except httpx.HTTPError:
                    ready = 0
                assert ready != 200, "the server became ready with tampered model code"
                time.sleep(0.3)
            time.sleep(2)
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code != 200
            except httpx.HTTPError:
                pass
        finally:
            stop_group(proc.pid)
            proc.wait(timeout=30)
        text = log.read_text(errors="replace")
        assert "modeling_tiny.py: sha256" in text, text[-3000:]
    finally:
        _put_back(saved)
    assert not marker.exists(), "the tampered code ran"


def stop_group(pgid: int) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(1)


# --------------------------------------------------------------------------- pickle


class _Evil:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_weights_are_never_unpickled_without_allow_pickle(host: Env, tiny_llama: Path, model_copy,
                                                                 tmp_path: Path) -> None:
    m = model_copy(tiny_llama)
    marker = tmp_path / "unpickled"
    (m / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Evil(marker)}))
    (m / "model.safetensors").unlink()

    refused = host.sealift("import", m, "--name", "p")
    assert refused.code == 2
    line = error_line(refused.err)
    assert "pytorch_model.bin" in line and "--allow-pickle" in line and "--to-safetensors" in line
    # converting loads with torch.load(weights_only=True): a pickle that is more than tensors is refused
    converting = host.sealift("import", m, "--name", "p", "--to-safetensors")
    assert converting.code == 2
    assert "pytorch_model.bin cannot be converted" in error_line(converting.err)
    assert not marker.exists(), "a pickle was unpickled"
    assert store_is_empty(host)
