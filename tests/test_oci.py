"""`sealift export --oci`, `push`, `pull`, `k8s`: the layout read by umoci and sha256sum, a real registry
(Debian's docker-registry on 127.0.0.1 with htpasswd basic auth and TLS from a site CA made here with openssl),
real skopeo, and the manifests checked against Kubernetes' OpenAPI schema (tests/data/k8s-schema.json, made by
scripts/k8s_schema.py).

One cpu bento (the shared cpu_bento), exported once, signed, without wheels (the wheels artifact is written by
the same blob writer as the wheels of the folder bundle; test_bundle's wheel tests cover their lock check).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Env

pytestmark = pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("docker-registry")
                                     and Path("/bin/busybox").is_file() and shutil.which("ssh-keygen")),
                                reason="skopeo, docker-registry, busybox-static (.ci/run installs them)")

DATA = Path(__file__).parent / "data"
IDENTITY = "release@example.org"


def blob(layout: Path, desc: dict) -> bytes:
    return (layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_bytes()


def manifest(layout: Path, role: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    desc = next(d for d in index["manifests"] if d["annotations"]["org.opencontainers.image.ref.name"] == role)
    return json.loads(blob(layout, desc))


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release", "-f", str(d / "release")],
                   check=True)
    allowed = d / "allowed_signers"
    allowed.write_text(f'{IDENTITY} namespaces="sealift" {(d / "release.pub").read_text()}')
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "x", "-f", str(d / "stranger")], check=True)
    stranger = d / "stranger_signers"
    stranger.write_text(f'x@example.org namespaces="sealift" {(d / "stranger.pub").read_text()}')
    return {"key": d / "release", "allowed": allowed, "stranger": stranger}


@pytest.fixture(scope="module")
def layout(cpu_bento, key, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("oci")
    run = cpu_bento.host.sealift("export", "tiny", dest, "--oci", "--no-wheels", "--sbom", "--sign", key["key"],
                                 "--json", check=True)
    return Path(run.json()["layout"])


def test_the_layout_is_a_modelpack_artifact_and_a_modelcar_sharing_one_copy_of_each_file(layout, cpu_bento):
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert [d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"]] == \
        ["modelcar", "model", "bento", "sbom"]
    model = manifest(layout, "model")
    assert model["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert model["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    config = json.loads(blob(layout, model["config"]))
    assert config["modelfs"] == {"type": "layers", "diffIds": [d["digest"] for d in model["layers"]]}
    assert config["config"]["format"] == "safetensors" and config["descriptor"]["name"] == "tiny"
    kinds = {d["annotations"]["org.cncf.model.filepath"]: d["mediaType"] for d in model["layers"]}
    assert kinds["model.safetensors"] == "application/vnd.cncf.model.weight.v1.tar"
    assert kinds["config.json"] == kinds["tokenizer.json"] == "application/vnd.cncf.model.weight.config.v1.tar"
    # each file layer: models/<path>, readable by any uid, fixed mtime; its file is the store's, byte for byte
    store = Path(cpu_bento.build["path"]).parent.parent.parent / "models" / "tiny"
    version = (store / "latest").read_text().strip()
    for d in model["layers"]:
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(blob(layout, d))) as tar:
            member = tar.getmembers()[-1]
            rel = d["annotations"]["org.cncf.model.filepath"]
            assert member.name == f"models/{rel}" and member.mode == 0o644 and member.mtime == 0 and member.uid == 0
            data = tar.extractfile(member).read()
        assert data == (store / version / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == d["annotations"]["io.sealift.file.sha256"]
    car = manifest(layout, "modelcar")
    assert [d["digest"] for d in car["layers"][1:]] == [d["digest"] for d in model["layers"]]  # the same blobs
    assert all(d["mediaType"] == "application/vnd.oci.image.layer.v1.tar" for d in car["layers"])
    car_config = json.loads(blob(layout, car["config"]))
    assert car_config["rootfs"]["diff_ids"] == [d["digest"] for d in car["layers"]]
    weights = sum(d["size"] for d in model["layers"])
    on_disk = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    assert weights < on_disk < weights + 4 * 2**20  # one copy of each file, plus busybox and small blobs
    sbom = manifest(layout, "sbom")
    assert sbom["subject"]["digest"] == next(d["digest"] for d in index["manifests"]
                                             if d["annotations"]["org.opencontainers.image.ref.name"] == "model")


def test_sha256sum_and_ssh_keygen_check_it_and_umoci_unpacks_a_modelcar_whose_shell_runs(layout, key, tmp_path):
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=layout).returncode == 0
    assert "index.json" in (layout / "SHA256SUMS").read_text()
    with open(layout / "SHA256SUMS", "rb") as sums:
        p = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(key["allowed"]), "-I", IDENTITY, "-n", "sealift",
                            "-s", str(layout / "SHA256SUMS.sig")], stdin=sums, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    if not shutil.which("umoci"):
        pytest.skip("umoci is not installed")
    copy = tmp_path / "copy"
    shutil.copytree(layout, copy)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{copy}:modelcar", str(tmp_path / "b")], check=True,
                   capture_output=True)
    root = tmp_path / "b" / "rootfs"
    assert (root / "models" / "model.safetensors").is_file() and (root / "models" / "config.json").is_file()
    out = subprocess.run([str(root / "bin" / "sh"), "-c", "echo ok; ls -d /"], capture_output=True, text=True)
    assert out.stdout.startswith("ok")


def test_the_same_export_gives_the_same_digests(layout, cpu_bento, tmp_path):
    again = cpu_bento.host.sealift("export", "tiny", tmp_path, "--oci", "--no-wheels", "--sbom", "--json",
                                   check=True).json()
    first = json.loads((layout / "index.json").read_text())["manifests"]
    assert again["manifests"]["model"] == first[1]["digest"] and again["manifests"]["modelcar"] == first[0]["digest"]


def test_oci_bad_input_exits_2_and_writes_nothing(cpu_bento, tmp_path):
    for args, said in ((["--volume-size", "1G"], "--oci and --volume-size"),
                       (["--shell", "/bin/ls"], "dynamically linked"),
                       (["--shell", str(tmp_path / "nope")], "modelcar's shell")):
        run = cpu_bento.host.sealift("export", "tiny", tmp_path / "out", "--oci", "--no-wheels", *args)
        assert run.code == 2 and said in run.err, run.err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- a real registry: auth and TLS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """docker-registry on 127.0.0.1 with TLS (a server cert signed by a site CA made here) and htpasswd (bcrypt)."""
    bcrypt = pytest.importorskip("bcrypt")
    d = tmp_path_factory.mktemp("registry")
    ssl = ["openssl"]
    subprocess.run([*ssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2", "-subj", "/CN=site CA"],
                   check=True, capture_output=True)
    subprocess.run([*ssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", d / "server.key", "-out", d / "server.csr", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run([*ssl, "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
                    "-CAcreateserial", "-out", d / "server.crt", "-days", "2", "-extfile", d / "ext"],
                   check=True, capture_output=True)
    (d / "htpasswd").write_text(f"site:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=5)).decode()}\n")
    port = _free_port()
    (d / "config.yml").write_text(f"""version: 0.1
log: {{level: error}}
storage: {{filesystem: {{rootdirectory: {d / 'data'}}}}}
auth: {{htpasswd: {{realm: site, path: {d / 'htpasswd'}}}}}
http: {{addr: 127.0.0.1:{port}, tls: {{certificate: {d / 'server.crt'}, key: {d / 'server.key'}}}}}
""")
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "log", "w"))
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield {"addr": f"127.0.0.1:{port}", "ca": d / "ca.crt"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_push_then_pull_through_basic_auth_and_tls_gives_the_same_layout_verified(layout, registry, key, host: Env,
                                                                                  tmp_path):
    ref = f"{registry['addr']}/models/tiny:v1"
    auth = ["--username", "site", "--ca", str(registry["ca"])]
    pushed = host.sealift("push", layout, ref, *auth, "--json", SEALIFT_REGISTRY_PASSWORD="secret")
    assert pushed.code == 0, pushed.err
    images = pushed.json()["images"]
    index = json.loads((layout / "index.json").read_text())["manifests"]
    assert images["modelcar"] == f"{ref}@{index[0]['digest']}"  # KServe's storageUri: the digest export wrote
    out = tmp_path / "pulled"
    pulled = host.sealift("pull", ref, out, *auth, "--allowed-signers", str(key["allowed"]), "--json",
                          SEALIFT_REGISTRY_PASSWORD="secret")
    assert pulled.code == 0, pulled.err
    assert pulled.json()["signature"]["identity"] == IDENTITY
    assert pulled.json()["verified_blobs"] == len(list((layout / "blobs" / "sha256").iterdir()))
    for f in layout.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(layout)).read_bytes() == f.read_bytes(), f


def test_registry_refusals_are_one_line_exit_2_and_leave_nothing(layout, registry, key, host: Env, tmp_path):
    ref = f"{registry['addr']}/models/tiny:v1"
    wrong = host.sealift("push", layout, ref, "--username", "site", "--ca", str(registry["ca"]),
                         SEALIFT_REGISTRY_PASSWORD="wrong")
    assert wrong.code == 2 and "--username" in wrong.err, wrong.err
    no_ca = host.sealift("push", layout, ref, "--username", "site", SEALIFT_REGISTRY_PASSWORD="secret")
    assert no_ca.code == 2 and "--ca" in no_ca.err, no_ca.err
    assert host.sealift("push", layout, "no-registry-here:v1").code == 2
    # pushed by the test above or here: a policy that lists another key refuses it, and nothing is left
    host.sealift("push", layout, ref, "--username", "site", "--ca", str(registry["ca"]), check=True,
                 SEALIFT_REGISTRY_PASSWORD="secret")
    out = tmp_path / "pulled"
    stranger = host.sealift("pull", ref, out, "--username", "site", "--ca", str(registry["ca"]),
                            "--allowed-signers", str(key["stranger"]), SEALIFT_REGISTRY_PASSWORD="secret")
    assert stranger.code == 2 and "do not list" in stranger.err, stranger.err
    assert not out.exists() and not (tmp_path / "pulled.partial").exists()


# --------------------------------------------------------------------------- sealift k8s


def _validate(doc: dict) -> None:
    import jsonschema

    schema = json.loads((DATA / "k8s-schema.json").read_text())
    one = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{schema['kinds'][doc['kind']]}"}
    jsonschema.Draft7Validator(one).validate(doc)


def test_k8s_manifests_are_valid_kubernetes_and_say_what_the_cluster_needs(cpu_bento):
    run = cpu_bento.host.sealift("k8s", "tiny", "--image", "registry.site:5000/models/tiny:v1", "--runtime-image",
                                 "registry.site:5000/vllm/vllm-openai:v0.32.0", "--gpus", "2", "--json", check=True)
    docs = run.json()
    assert [d["kind"] for d in docs] == ["InferenceService", "Deployment", "Service"]
    for doc in docs:
        _validate(doc)
    model = docs[0]["spec"]["predictor"]["model"]
    assert model["storageUri"] == "oci://registry.site:5000/models/tiny:v1"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert model["args"][model["args"].index("--tensor-parallel-size") + 1] == "2"
    pod = docs[1]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.site:5000/models/tiny:v1"
    assert "cp -R /models/. /mnt/models/" in pod["initContainers"][0]["command"][-1]
    vllm = pod["containers"][0]
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in vllm["env"]
    assert next(v for v in pod["volumes"] if v["name"] == "model")["emptyDir"]
    # the schema is strict: an unknown field is refused (the check can fail)
    import jsonschema
    with pytest.raises(jsonschema.ValidationError):
        _validate({**docs[2], "spec": {**docs[2]["spec"], "bogus": 1}})
    yaml_out = cpu_bento.host.sealift("k8s", "tiny", "--image", "r.site/m/tiny:v1", "--runtime-image", "r.site/v:1",
                                      "--kind", "deployment", "--image-volume", check=True).out
    import yaml
    docs = list(yaml.safe_load_all(yaml_out))
    for doc in docs:
        _validate(doc)
    assert docs[0]["spec"]["template"]["spec"]["volumes"][0]["image"]["reference"] == "r.site/m/tiny:v1"


def test_k8s_bad_input_exits_2(cpu_bento):
    no_runtime = cpu_bento.host.sealift("k8s", "tiny", "--image", "r.site/m/tiny:v1")
    assert no_runtime.code == 2 and "--runtime-image" in no_runtime.err  # a cpu bento pins no vLLM
    bad = cpu_bento.host.sealift("k8s", "tiny", "--image", "oci://r.site/m/tiny:v1", "--runtime-image", "v:1")
    assert bad.code == 2 and "REGISTRY/REPO:TAG" in bad.err
    gpus = cpu_bento.host.sealift("k8s", "tiny", "--image", "r.site/m:v1", "--runtime-image", "v:1", "--gpus", "0")
    assert gpus.code == 2
