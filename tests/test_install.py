"""`sealift install`: verify every byte first, refuse hostile archives, import, offline venv, serve.

Each broken bundle is a private copy of one exported bundle; each install runs
on a fresh host (its own BENTOML_HOME/SEALIFT_HOME), and after a refusal that
host's store must still be empty. The end-to-end test uses conftest's
`installed_bundle`: exported with real wheels, installed with no network and
no index, then served from the venv install made, answering the openai client.
"""

from __future__ import annotations

import hashlib
import io
import json
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from sealift.host import unpack, verify
from sealift.core.errors import UserError

from conftest import Env

# --------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def reseal(path: Path) -> None:
    """Recompute manifest.json's file list and SHA256SUMS, as someone forging a bundle would."""
    doc = json.loads((path / "manifest.json").read_text())
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS"))
    doc["files"] = [{"path": p.relative_to(path).as_posix(), "size": p.stat().st_size, "sha256": sha256(p)}
                    for p in files]
    (path / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"{f['sha256']}  {f['path']}" for f in doc["files"]]
    lines.append(f"{sha256(path / 'manifest.json')}  manifest.json")
    (path / "SHA256SUMS").write_text("\n".join(sorted(lines, key=lambda ln: ln[66:])) + "\n")


def store_is_empty(host: Env) -> bool:
    """No bento, no model, nothing registered (bentoml may have made its empty folders)."""
    for kind in ("bentos", "models"):
        d = host.bentoml_home / kind
        if d.exists() and any(d.iterdir()):
            return False
    staging = list(host.bentoml_home.glob(".sealift-install-*")) if host.bentoml_home.exists() else []
    return not staging and not (host.sealift_home / "env").exists()


@pytest.fixture(scope="module")
def plain_bundle(cpu_bento, tmp_path_factory) -> Path:
    """The cpu bento exported without wheels: small, for the refusal tests."""
    usb = tmp_path_factory.mktemp("usb-plain")
    run = cpu_bento.host.sealift("export", "tiny", usb, "--no-wheels", "--json", check=True)
    return Path(run.json()["bundle"])


@pytest.fixture
def copy(plain_bundle, tmp_path) -> Path:
    dst = tmp_path / "usb" / plain_bundle.name
    shutil.copytree(plain_bundle, dst)
    return dst


def archive_of(path: Path) -> Path:
    return path / json.loads((path / "manifest.json").read_text())["archive"]


# --------------------------------------------------------------------------- verification comes first


def test_a_flipped_byte_in_the_model_is_caught_and_nothing_imported(copy, host):
    archive = archive_of(copy)
    with tarfile.open(archive) as tf:
        weights = next(m for m in tf.getmembers() if m.name.endswith("model.safetensors"))
    with open(archive, "r+b") as f:
        f.seek(weights.offset_data + weights.size // 2)
        byte = f.read(1)
        f.seek(weights.offset_data + weights.size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    run = host.sealift("install", copy)
    assert run.code == 2, run.err
    assert archive.name in run.err and "corrupted" in run.err and "nothing was imported" in run.err
    assert store_is_empty(host)


def test_a_missing_file_is_named(copy, host):
    (copy / "INSTALL.txt").unlink()
    run = host.sealift("install", copy)
    assert run.code == 2 and "INSTALL.txt: missing" in run.err
    assert store_is_empty(host)


def test_a_truncated_archive_is_named(copy, host):
    archive = archive_of(copy)
    with open(archive, "r+b") as f:
        f.truncate(archive.stat().st_size - 5000)
    run = host.sealift("install", copy)
    assert run.code == 2 and f"{archive.name}: truncated" in run.err
    assert store_is_empty(host)


def test_a_damaged_sums_file_or_manifest_is_refused(copy, host):
    sums = (copy / "SHA256SUMS").read_text()
    (copy / "SHA256SUMS").write_text(sums.replace(sums[:8], "00000000", 1))
    run = host.sealift("install", copy)
    assert run.code == 2 and "disagree" in run.err
    (copy / "manifest.json").unlink()
    run = host.sealift("install", copy)
    assert run.code == 2 and "manifest.json is missing" in run.err
    assert store_is_empty(host)


# --------------------------------------------------------------------------- hostile archives


def _add(tf: tarfile.TarFile, name: str, *, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


HOSTILE = {
    "dotdot": dict(name="./../../../escaped.txt"),
    "absolute": dict(name="/tmp/sealift-test-absolute-escape.txt"),
    "symlink-out": dict(name="./src/escape", kind=tarfile.SYMTYPE, link="../../../../../../etc"),
    "symlink-absolute": dict(name="./src/escape", kind=tarfile.SYMTYPE, link="/etc/passwd"),
    "hardlink-out": dict(name="./src/hard", kind=tarfile.LNKTYPE, link="../../etc/passwd"),
    "device": dict(name="./src/null", kind=tarfile.CHRTYPE),
    "fifo": dict(name="./src/fifo", kind=tarfile.FIFOTYPE),
}


def hostile_archive(original: Path, out: Path, case: str) -> None:
    """The original archive's members plus one hostile member."""
    with tarfile.open(original) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        _add(dst, **HOSTILE[case])


def _members(archive: Path) -> list:
    with unpack.Stream.of_files([archive]) as stream:
        return unpack.read_members(stream, verify.check_member)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_check_archive_refuses(case, tmp_path):
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tf:
        _add(tf, "./bento.yaml", data=b"name: x\n")
    bad = tmp_path / "bad.tar"
    hostile_archive(good, bad, case)
    _members(good)
    with pytest.raises(UserError, match="refusing member"):
        _members(bad)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_inside_the_archive_are_refused_too(kind, tmp_path):
    """sealift's exporter writes folders and files only: a link, even one that stays inside, is not its archive."""
    arc = tmp_path / "a.tar"
    with tarfile.open(arc, "w") as tf:
        _add(tf, "./dir/file.txt", data=b"hello")
        _add(tf, "./dir/link", kind=kind, link="file.txt" if kind == tarfile.SYMTYPE else "./dir/file.txt")
    with pytest.raises(UserError, match="refusing member './dir/link'"):
        _members(arc)


def test_members_are_written_from_the_bytes_that_were_hashed(tmp_path):
    arc = tmp_path / "a.tar"
    with tarfile.open(arc, "w") as tf:
        _add(tf, "./dir/file.txt", data=b"hello")
        _add(tf, "./big.bin", data=os.urandom(9 * 1024 * 1024))
    root = tmp_path / "root"
    root.mkdir()
    read: list[int] = []
    with unpack.Stream.of_files([arc]) as stream:
        members = unpack.read_members(stream, verify.check_member)
        written = stream.unpack(members, root, lambda rel: True, read.append)
        assert stream.got == [hashlib.sha256(arc.read_bytes()).hexdigest()]
    assert sum(read) == arc.stat().st_size  # every byte read once
    assert written == 5 + 9 * 1024 * 1024
    assert (root / "dir" / "file.txt").read_bytes() == b"hello"
    with tarfile.open(arc) as tf:
        assert (root / "big.bin").read_bytes() == tf.extractfile("./big.bin").read()


def test_a_header_that_changes_between_the_two_reads_is_refused(tmp_path, monkeypatch):
    """A medium that answers the header pass with one layout and the hashed pass with another is caught."""
    arc = tmp_path / "a.tar"
    with tarfile.open(arc, "w") as tf:
        _add(tf, "./bento.yaml", data=b"name: x\n")
    with unpack.Stream.of_files([arc]) as stream:
        members = unpack.read_members(stream, verify.check_member)
        stream.recorded[0] = (stream.recorded[0][0], b"X" + stream.recorded[0][1][1:])  # what was read first
        with pytest.raises(UserError, match="changed between two reads"):
            stream.unpack(members, tmp_path / "root", lambda rel: True, lambda n: None)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-out"])
def test_install_refuses_a_hostile_archive_that_verifies(case, copy, host, tmp_path):
    archive = archive_of(copy)
    forged = tmp_path / "forged.tar"
    hostile_archive(archive, forged, case)
    os.replace(forged, archive)
    reseal(copy)  # SHA256SUMS and manifest.json agree with the hostile archive
    run = host.sealift("install", copy)
    assert run.code == 2 and "refusing member" in run.err, run.err
    assert store_is_empty(host)
    assert not (copy.parent.parent / "escaped.txt").exists()
    assert not Path("/tmp/sealift-test-absolute-escape.txt").exists()


# --------------------------------------------------------------------------- installing


def test_install_without_wheels_imports_registers_and_says_present_the_second_time(plain_bundle, host):
    first = host.sealift("install", plain_bundle, "--json")
    assert first.code == 0, first.err
    result = first.json()
    assert result["bento"] == "imported" and set(result["models"].values()) == {"imported"}
    assert result["venv"] is None and "no wheels" in result["venv_status"]
    doc = json.loads((plain_bundle / "manifest.json").read_text())
    name, version = doc["bento"]["tag"].split(":")
    assert (host.bentoml_home / "bentos" / name / version / "bento.yaml").is_file()
    (model_tag,) = result["models"]
    mname, mversion = model_tag.split(":")
    stored = host.bentoml_home / "models" / mname / mversion
    # every model file arrived intact: the store's own verification agrees
    verify = host.sealift("verify", model_tag, "--json")
    assert verify.code == 0, verify.err + verify.out

    again = host.sealift("install", plain_bundle, "--json")
    assert again.code == 0, again.err
    assert again.json()["bento"] == "present" and set(again.json()["models"].values()) == {"present"}
    human = host.sealift("install", plain_bundle)
    assert "already in the store" in human.out

    # openllm's repo: links into the store, no copy of the weights
    repo = host.sealift_home / "openllm-repo" / "bentoml"
    assert (repo / "bentos" / name / version).is_symlink()
    assert (repo / "bentos" / name / version).resolve() == (host.bentoml_home / "bentos" / name / version).resolve()
    assert (repo / "models" / mname / mversion).resolve() == stored.resolve()
    assert (repo / "bentos" / name / "latest").read_text() == version
    real_files = [os.path.join(d, f) for d, _, files in os.walk(repo) for f in files]  # links are not followed
    assert sum(os.lstat(f).st_size for f in real_files if not os.path.islink(f)) < 1024

    # `sealift env` prints what a shell can eval
    show = 'echo "$OPENLLM_TEST_REPO|$UV_NO_INDEX|$UV_FIND_LINKS|$HF_HUB_OFFLINE"'
    script = f'eval "$({sys.executable} -m sealift.cli env)" && {show}'
    p = subprocess.run(["bash", "-c", script], env=host.environ(), capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{host.sealift_home / 'openllm-repo'}|1|{host.sealift_home / 'wheels'}|1"
    unknown = host.sealift("env", "nope")
    assert unknown.code == 2


def test_env_before_any_install_is_a_user_error(host):
    run = host.sealift("env")
    assert run.code == 2 and "sealift install" in run.err


# --------------------------------------------------------------------------- end to end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CACHED = r"""
import importlib, importlib.util, json, sys
out = {}
for name in sys.argv[1:]:
    mod = importlib.import_module(name)
    out[name] = __import__("os").path.isfile(importlib.util.cache_from_source(mod.__file__))
print(json.dumps(out))
"""


def test_install_wrote_the_bytecode_of_what_the_server_imports(installed_bundle):
    """uv does not compile; install imports the server's modules once so that each start (even where nothing
    can be written: PYTHONDONTWRITEBYTECODE, a read-only venv) finds their .pyc files."""
    result = installed_bundle.install
    assert result["timings"]["bytecode"] > 0
    py = Path(result["venv"]) / "bin" / "python"
    names = ["torch", "transformers", "transformers.models.llama.modeling_llama", "bentoml",
             "_bentoml_impl.worker.service", "sealift.serving.app", "safetensors.torch"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    src = Path(result["bento_path"]) / "src" if result.get("bento_path") else None
    src = src or next((installed_bundle.host.bentoml_home / "bentos").glob("*/*/src"))
    run = subprocess.run([str(py), "-c", CACHED, *names], env=env, cwd=src, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == dict.fromkeys(names, True)
    # a module the server does not import was left to uv's default (not compiled)
    untouched = Path(result["venv"]).glob("lib/python3*/site-packages/torch/utils/benchmark/utils/fuzzer.py")
    assert [f for f in untouched if Path(importlib.util.cache_from_source(str(f))).is_file()] == []


def test_installed_bundle_made_an_offline_venv_and_serves_a_chat(installed_bundle):
    """Export with wheels -> install on an empty host, no network, no index -> the venv's bentoml serves it."""
    from sealift.core.offline import guarded_env, read_guard_log

    result = installed_bundle.install
    host = installed_bundle.host
    assert result["venv_status"] == "created" and result["bento"] == "imported"
    assert installed_bundle.export["wheels"] > 10
    venv = Path(result["venv"])
    assert venv == host.sealift_home / "venvs" / result["bento_tag"].replace(":", "-")
    py = venv / "bin" / "python"
    versions = subprocess.run([str(py), "-c", "import bentoml, torch, transformers; print(bentoml.__version__)"],
                              capture_output=True, text=True, timeout=300)
    assert versions.returncode == 0, versions.stderr
    assert (Path(result["wheels_dir"]) / next(iter(sorted(os.listdir(installed_bundle.bundle / "wheels"))))).is_file()

    port = free_port()
    log = host.root / "serve-net.log"
    env = guarded_env(host.environ(), log_path=log)
    dump = "import json; from sealift.host import registry; print(json.dumps(registry.read_env_file()))"
    env.update(json.loads(subprocess.run([sys.executable, "-c", dump], env=host.environ(), capture_output=True,
                                         text=True, check=True, cwd=Path(__file__).resolve().parent.parent).stdout))
    proc = subprocess.Popen([str(py), "-m", "bentoml", "serve", result["bento_tag"], "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=host.root)
    try:
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        deadline = time.monotonic() + 300
        while True:
            try:
                reply = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "Hello, how are you?"}], max_tokens=8)
                break
            except (openai.APIConnectionError, openai.InternalServerError, openai.APIStatusError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read().decode(errors="replace")[-4000:]) from None
                time.sleep(1)
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.usage.completion_tokens > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert read_guard_log(log) == []


# --------------------------------------------------------------------------- the kept wheel pool


def test_the_wheel_pool_keeps_verified_copies_by_sha256_and_never_uses_wrong_bytes(tmp_path, monkeypatch):
    """A pool file with the right name (or the right sha256 name) and other bytes is reported and replaced;
    what is kept is a copy of the bytes that hashed right, never a link to the medium."""
    from sealift.host import wheelpool
    from sealift.host.medium import Folder

    monkeypatch.setenv("SEALIFT_HOME", str(tmp_path / "home"))
    medium_dir = tmp_path / "usb" / "wheels"
    medium_dir.mkdir(parents=True)
    name = "good_pkg-1.0-py3-none-any.whl"
    (medium_dir / name).write_bytes(b"the genuine wheel")
    digest = sha256(medium_dir / name)
    pool = tmp_path / "home" / "wheels"
    (pool / ".sha256").mkdir(parents=True)
    (pool / name).write_bytes(b"a planted wheel!!")  # same name and size, other bytes
    (pool / ".sha256" / digest).write_bytes(b"rotten blob bytes")
    medium = Folder(label=str(tmp_path / "usb"), root=tmp_path / "usb")
    w = wheelpool.Wheel(name, digest, len(b"the genuine wheel"), f"wheels/{name}")

    def stream_of(w):
        return unpack.Stream(medium, [w.rel], {w.rel: digest}, [w.size])

    staged = wheelpool.stage(stream_of, [w], tmp_path / "home" / "tmp" / "s", lambda n: None)
    wheelset = wheelpool.publish(staged, "good:v1")
    assert (pool / name).read_bytes() == b"the genuine wheel" == (wheelset / name).read_bytes()
    assert os.path.samefile(pool / name, pool / ".sha256" / digest)
    assert not os.path.samefile(pool / name, medium_dir / name)  # a copy: a later write to the medium changes nothing
    assert sorted(staged.replaced) == sorted([str(pool / ".sha256" / digest), str(pool / name)])
    index = json.loads((tmp_path / "home" / "wheels.json").read_text())
    assert index[name]["sha256"] == digest
    (medium_dir / name).write_bytes(b"a later hostile write")
    assert (pool / name).read_bytes() == b"the genuine wheel"


def test_a_wheel_whose_bytes_differ_from_the_list_is_not_kept(tmp_path, monkeypatch):
    from sealift.host import wheelpool
    from sealift.host.medium import Folder

    monkeypatch.setenv("SEALIFT_HOME", str(tmp_path / "home"))
    (tmp_path / "usb" / "wheels").mkdir(parents=True)
    name = "x_pkg-1.0-py3-none-any.whl"
    (tmp_path / "usb" / "wheels" / name).write_bytes(b"swapped bytes")
    medium = Folder(label=str(tmp_path / "usb"), root=tmp_path / "usb")
    w = wheelpool.Wheel(name, "0" * 64, 13, f"wheels/{name}")
    with pytest.raises(UserError, match="corrupted"):
        wheelpool.stage(lambda w: unpack.Stream(medium, [w.rel], {w.rel: w.sha256}, [w.size]), [w],
                        tmp_path / "home" / "tmp" / "s", lambda n: None)
    assert not (tmp_path / "home" / "wheels").exists()
