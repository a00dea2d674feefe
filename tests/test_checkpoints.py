"""Issue 15 through the real CLI: checkpoints laid out as hub repos ship them.

- Meta style (indexed shards + original/consolidated.00.pth + params.json), Mistral style (indexed shards +
  consolidated.safetensors that no index names), older repos (pytorch_model.bin beside model.safetensors):
  each imports with default flags, the store holds no redundant byte, and the stored model generates the
  same greedy tokens as the source.
- A booby-trapped pytorch_model.bin is never unpickled.
- Custom code that imports a package missing here: refused at build with the fix named; with
  --requirement its wheel goes into the bundle and the model serves offline in a loopback-only namespace.
- Quantized and licensed checkpoints: recorded, listed, refused for cpu, handed to vLLM when needed; their
  packed tensors held to their quantization config at import (issue 25).
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, SEALIFT, Env, make_model

# --------------------------------------------------------------------------- layouts, built on the fly


class Trap:
    """Unpickling this creates the marker file: proof that nothing unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _state(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def meta_layout(src: Path, dst: Path) -> list[str]:
    """HF shards plus Meta's reference checkpoint under original/ (a real torch pickle, Meta's names)."""
    import torch

    shutil.copytree(src, dst)
    (dst / "original").mkdir()
    state = {k.replace("model.layers.", "layers.").replace("self_attn.q_proj", "attention.wq"): v
             for k, v in _state(src).items()}
    torch.save(state, dst / "original" / "consolidated.00.pth")
    (dst / "original" / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4}))
    (dst / "original" / "tokenizer.model").write_bytes(b"\x00tiktoken-ish bytes")
    (dst / "README.md").write_text("---\nlicense: llama3.2\nlicense_name: llama3.2\n"
                                   "license_link: https://www.llama.com/llama3_2/license/\n---\n# tiny meta\n")
    (dst / "LICENSE").write_text("LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\n...\n")
    return ["original/consolidated.00.pth", "original/params.json", "original/tokenizer.model"]


def mistral_layout(src: Path, dst: Path) -> list[str]:
    """Indexed shards plus consolidated.safetensors: the same weights again, under Mistral's names."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    save_file({f"mistral.{k}": v.contiguous() for k, v in _state(src).items()}, str(dst / "consolidated.safetensors"))
    (dst / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny mistral\n")
    return ["consolidated.safetensors"]


def old_layout(src: Path, dst: Path) -> list[str]:
    """pytorch_model.bin (a real torch pickle of the same tensors) beside a single model.safetensors."""
    import torch

    shutil.copytree(src, dst)
    torch.save(_state(src), dst / "pytorch_model.bin")
    return ["pytorch_model.bin"]


LAYOUTS = {"meta": (meta_layout, "tiny_qwen_sharded"), "mistral": (mistral_layout, "tiny_qwen_sharded"),
           "old": (old_layout, "tiny_llama")}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, tiny_qwen_sharded: Path, tiny_llama: Path):
    """The three layouts, each imported with default flags (human output) into one host."""
    bases = {"tiny_qwen_sharded": tiny_qwen_sharded, "tiny_llama": tiny_llama}
    root = tmp_path_factory.mktemp("layouts")
    env = Env(root / "host")
    out = {}
    for name, (make, base) in LAYOUTS.items():
        src = root / name
        redundant = make(bases[base], src)
        human = env.sealift("import", src, "--name", name, check=True)
        result = env.sealift("import", src, "--name", name, "--json", check=True).json()
        out[name] = {"src": src, "redundant": redundant, "human": human, "result": result}
    return env, out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_redundant_layouts_import_without_the_redundant_bytes(layouts, name: str) -> None:
    env, out = layouts
    case = out[name]
    src, r = case["src"], case["result"]
    assert r["existed"]  # the second import (JSON) found the same content: the plan is stable
    stored = Path(r["path"])
    redundant = case["redundant"]
    redundant_bytes = sum((src / f).stat().st_size for f in redundant)
    kept = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()
                  and p.relative_to(src).as_posix() not in redundant)
    stored_files = sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file())
    assert stored_files == sorted(kept + ["model.yaml", "sealift-manifest.json"])
    assert r["bytes"] == sum((src / f).stat().st_size for f in kept)
    assert r["left_out_bytes"] == redundant_bytes
    assert sorted(f for g in r["left_out"] for f in g["files"]) == sorted(redundant)
    line = [ln for ln in case["human"].err.splitlines() if ln.startswith("left out ")]
    assert len(line) == 1 and "the server never reads: " in line[0]
    first = redundant[0] if name != "meta" else "original/"
    assert first in line[0]
    manifest = json.loads((stored / "sealift-manifest.json").read_text())
    assert manifest["checkpoint"]["left_out"]["bytes"] == redundant_bytes
    assert sorted(e["path"] for e in manifest["files"]) == kept
    assert env.sealift("verify", r["tag"], "--json", check=True).json()["ok"]


def test_meta_layout_names_original_and_its_license(layouts) -> None:
    env, out = layouts
    r = out["meta"]["result"]
    assert [g["name"] for g in r["left_out"]] == ["original/"]
    assert r["left_out"][0]["reason"] == "Meta reference checkpoint"
    assert r["license"]["id"] == "llama3.2" and r["license"]["file"] == "LICENSE"
    assert "license" in out["meta"]["human"].out and "llama3.2" in out["meta"]["human"].out
    listed = {m["name"]: m for m in env.sealift("list", "--json", check=True).json()["models"]}
    assert listed["meta"]["checkpoint"]["license"]["id"] == "llama3.2"
    assert listed["mistral"]["checkpoint"]["license"]["id"] == "apache-2.0"
    table = env.sealift("list", check=True).out
    assert "LICENSE" in table and "apache-2.0" in table and "llama3.2" in table


def test_redundant_layouts_generate_like_their_source(layouts) -> None:
    """The stored model (what the server loads) gives the source's greedy tokens."""
    env, out = layouts
    code = (
        "import json, sys, bentoml, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "def greedy(path):\n"
        "    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)\n"
        "    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)\n"
        "    ids = tok('The quick brown fox', return_tensors='pt').input_ids\n"
        "    with torch.no_grad():\n"
        "        return model.generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()\n"
        "res = {}\n"
        "for tag, src in json.loads(sys.argv[1]):\n"
        "    res[tag] = [greedy(bentoml.models.get(tag).path), greedy(src)]\n"
        "print(json.dumps(res))\n"
    )
    jobs = [(c["result"]["tag"], str(c["src"])) for c in out.values()]
    p = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], env=env.environ(TRANSFORMERS_OFFLINE="1"),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for tag, (stored, source) in json.loads(p.stdout.strip().splitlines()[-1]).items():
        assert len(stored) > 5 and stored == source, tag


def test_include_keeps_and_exclude_leaves_out(host: Env, tiny_qwen_sharded: Path, tmp_path: Path) -> None:
    src = tmp_path / "meta"
    meta_layout(tiny_qwen_sharded, src)
    r = host.sealift("import", src, "--name", "m", "--include", "original/params.json", "--exclude", "README.md",
                     "--json", check=True).json()
    stored = Path(r["path"])
    assert (stored / "original" / "params.json").is_file() and not (stored / "original" / "consolidated.00.pth").exists()
    assert not (stored / "README.md").exists()
    assert {g["reason"] for g in r["left_out"]} == {"Meta reference checkpoint", "--exclude README.md"}
    refused = host.sealift("import", src, "--name", "m2", "--include", "original/")
    assert refused.code == 2 and "original/consolidated.00.pth" in refused.err and "pickle" in refused.err
    shard = sorted(p.name for p in src.glob("model-*.safetensors"))[0]
    broken = host.sealift("import", src, "--name", "m3", "--exclude", shard)
    assert broken.code == 2 and f"{shard} missing" in broken.err
    assert len(broken.err.strip().splitlines()) == 1


def test_a_booby_trapped_bin_is_never_unpickled(host: Env, tiny_llama: Path, tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    src = tmp_path / "trap"
    shutil.copytree(tiny_llama, src)
    (src / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    r = host.sealift("import", src, "--name", "trap", "--json", check=True).json()
    assert [g["files"] for g in r["left_out"]] == [["pytorch_model.bin"]]
    assert not (Path(r["path"]) / "pytorch_model.bin").exists()
    refused = host.sealift("import", src, "--name", "trap2", "--include", "*.bin")
    assert refused.code == 2 and "pytorch_model.bin" in refused.err
    converted = host.sealift("import", src, "--name", "trap3", "--include", "*.bin", "--to-safetensors", "--json",
                             check=True).json()  # model.safetensors is there already: the pickle is not read
    assert "already there" in converted["converted"]["pytorch_model.bin"]
    kept = host.sealift("import", src, "--name", "trap4", "--include", "*.bin", "--allow-pickle", "--json",
                        check=True).json()
    assert (Path(kept["path"]) / "pytorch_model.bin").read_bytes() == (src / "pytorch_model.bin").read_bytes()
    assert not marker.exists()


# --------------------------------------------------------------------------- quantized checkpoints


def packed(src: Path, dst: Path, method: str, *, bits: int = 4, group: int) -> Path:
    """src with each linear layer of its blocks in AutoGPTQ's or AutoAWQ's (gemm) packed tensors, as a real
    quantized checkpoint holds them (zeros: only the layout matters; import holds it to its config, issue 25)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = {}
    for key, value in load_file(dst / "model.safetensors").items():
        if ".layers." not in key or not key.endswith("_proj.weight"):
            state[key] = value
            continue
        n_out, n_in = value.shape
        base = key.removesuffix(".weight")
        groups = -(-n_in // group)
        if method == "gptq":
            state.update({f"{base}.qweight": torch.zeros(n_in * bits // 32, n_out, dtype=torch.int32),
                          f"{base}.qzeros": torch.zeros(groups, n_out * bits // 32, dtype=torch.int32),
                          f"{base}.g_idx": torch.zeros(n_in, dtype=torch.int32)})
        else:
            state.update({f"{base}.qweight": torch.zeros(n_in, n_out * bits // 32, dtype=torch.int32),
                          f"{base}.qzeros": torch.zeros(groups, n_out * bits // 32, dtype=torch.int32)})
        state[f"{base}.scales"] = torch.zeros(groups, n_out, dtype=torch.float16)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_quantized_checkpoint_recorded_listed_and_refused_for_cpu(host: Env, tiny_llama: Path, tmp_path: Path) -> None:
    awq = packed(tiny_llama, tmp_path / "awq", "awq", group=32)
    cfg = json.loads((awq / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm"}
    (awq / "config.json").write_text(json.dumps(cfg))
    r = host.sealift("import", awq, "--name", "awq", "--json", check=True).json()
    assert r["quantization"] == "awq" and r["quantization_config"]["bits"] == 4
    assert r["tensors"]["status"] == "complete"  # held to the awq gemm layout (issue 25)
    listed = host.sealift("list", check=True).out
    assert "QUANT" in listed and "awq 4-bit" in listed
    refused = host.sealift("build", "awq", "--target", "cpu")
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    assert "awq" in refused.err and "cannot run on CPU" in refused.err and "--target gpu" in refused.err
    assert not (host.bentoml_home / "bentos").exists() or not list((host.bentoml_home / "bentos").glob("awq/*"))

    # AutoGPTQ's own file: vLLM would not see it, so the bento tells vLLM
    gptq = packed(tiny_llama, tmp_path / "gptq", "gptq", group=128)
    (gptq / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128, "desc_act": False}))
    imported = host.sealift("import", gptq, "--name", "gptq", "--json", check=True).json()
    assert imported["tensors"]["status"] == "complete"
    gpu = host.sealift("build", "gptq", "--target", "gpu", "--json", check=True, UV_OFFLINE="1",
                       PIP_NO_INDEX="1").json()
    config = json.loads((Path(gpu["path"]) / "src" / "sealift_bento.json").read_text())
    assert config["quantization"] == "gptq"
    gpu_awq = host.sealift("build", "awq", "--target", "gpu", "--json", check=True, UV_OFFLINE="1",
                           PIP_NO_INDEX="1").json()
    assert "quantization" not in json.loads((Path(gpu_awq["path"]) / "src" / "sealift_bento.json").read_text())


# --------------------------------------------------------------------------- the model's own packages

DEP = "sealift_tinydep"


def make_wheel(out_dir: Path, dist: str = "sealift-tinydep", module: str = DEP, version: str = "1.0") -> Path:
    """A real, tiny pure-Python wheel (PEP 427: files, METADATA, WHEEL, RECORD with sha256s)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": "def scale() -> float:\n    return 1.0\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: sealift-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": f"{module}\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    path = out_dir / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def dep_model(tmp_path_factory) -> Path:
    """A custom-code model whose modeling file imports sealift_tinydep (not installed here)."""
    src = make_model(tmp_path_factory.mktemp("depmodel") / "m", custom_code=True)
    code = (src / "modeling_tiny.py").read_text()
    code = code.replace("from transformers import LlamaForCausalLM\n",
                        f"import {DEP}\nfrom transformers import LlamaForCausalLM\n")
    code += f"\n\nassert {DEP}.scale() == 1.0\n"
    (src / "modeling_tiny.py").write_text(code)
    return src


def test_unknown_import_refused_at_build_with_the_fix(host: Env, dep_model: Path) -> None:
    imported = host.sealift("import", dep_model, "--name", "dep", "--trust-remote-code", "--json", check=True).json()
    assert imported["runtime_imports"] == {DEP: "imported by modeling_tiny.py",
                                           "transformers": "imported by configuration_tiny.py"}
    run = host.sealift("build", "dep", "--target", "cpu")
    assert run.code == 2 and "Traceback" not in run.err and len(run.err.strip().splitlines()) == 1
    assert DEP in run.err and "sealift build dep --requirement sealift-tinydep" in run.err
    assert f"--ignore-import {DEP}" in run.err
    bentos = host.bentoml_home / "bentos"
    assert not bentos.exists() or not list(bentos.glob("dep/*"))


def test_a_missing_package_travels_as_a_wheel_and_serves_offline(dep_model: Path, installed_bundle, tmp_path: Path):
    """Build with --requirement, export from a wheel folder (the cpu stack's wheels + the tiny wheel), install
    and serve in a loopback-only namespace: the model's code imports the package from the bundle's wheel."""
    from sealift.core.offline import guarded_env, netns_prefix, read_guard_log

    build_host = Env(tmp_path / "build")
    build_host.sealift("import", dep_model, "--name", "dep", "--trust-remote-code", "--json", check=True)
    built = build_host.sealift("build", "dep", "--target", "cpu", "--requirement", "sealift-tinydep", "--no-golden", "--json",
                               check=True, UV_OFFLINE="1", PIP_NO_INDEX="1").json()
    assert "sealift-tinydep" in built["requirements"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for w in (installed_bundle.bundle / "wheels").iterdir():
        (wheels / w.name).symlink_to(w)
    make_wheel(wheels)
    usb = tmp_path / "usb"
    export = build_host.sealift("export", "dep", usb, "--wheels-from", wheels, "--json", check=True,
                                timeout=1800).json()
    bundle = Path(export["bundle"])
    assert (bundle / "wheels" / f"{DEP}-1.0-py3-none-any.whl").is_file()

    airgap = Env(tmp_path / "airgap")
    prefix = netns_prefix()
    log = airgap.root / "net.jsonl"
    env = guarded_env(airgap.environ(PIP_NO_INDEX="1", UV_NO_INDEX="1"), log_path=log)
    p = subprocess.run([*(prefix or []), *SEALIFT, "install", str(bundle), "--json"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    venv_python = Path(json.loads(p.stdout)["venv"]) / "bin" / "python"
    has = subprocess.run([str(venv_python), "-c", f"import {DEP}"], capture_output=True)
    assert has.returncode == 0
    assert subprocess.run([sys.executable, "-c", f"import {DEP}"], capture_output=True).returncode != 0

    driver = ROOT / "tests" / "reliability" / "serve_and_chat.py"
    with socket.socket() as s:  # a free port here; inside the namespace every port is free
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    p = subprocess.run([*(prefix or []), sys.executable, str(driver), "dep", port], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["ready"], out["output_tail"]
    assert isinstance(out["reply"], str) and out["finish_reason"] in ("stop", "length")
    assert read_guard_log(log) == []
