"""Issue 15, in-process: the leave-out plan, import -> package mapping, license and quantization reading.

Each case builds its files on the fly (safetensors headers written for real, pickles never loaded).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from sealift.model import model_card, model_deps
from sealift.core.errors import UserError
from sealift.model.weights_select import matches, plan_leave_out


def _safetensors(path: Path, tensors: dict[str, int]) -> None:
    """A real safetensors file: float32 tensors of the given lengths (zeros)."""
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(n, dtype=np.float32) for k, n in tensors.items()}, str(path))


def _files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


class Trap:
    """Unpickling this creates the marker file: proof that nothing unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    root = tmp_path / "m"
    _safetensors(root / "model-00001-of-00002.safetensors", {"a": 4, "b": 4})
    _safetensors(root / "model-00002-of-00002.safetensors", {"c": 8})
    wmap = {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    (root / "config.json").write_text("{}")
    return root


def test_plan_leaves_out_the_three_redundant_kinds(indexed: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    _safetensors(indexed / "consolidated.safetensors", {"layers.0.wq": 16})
    (indexed / "original").mkdir()
    (indexed / "original" / "consolidated.00.pth").write_bytes(pickle.dumps(Trap(marker)))
    (indexed / "original" / "params.json").write_text("{}")
    (indexed / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    (indexed / "training_args.bin").write_bytes(pickle.dumps(Trap(marker)))
    (indexed / "flax_model.msgpack").write_bytes(b"\x80")
    files = _files(indexed)
    plan = plan_leave_out(indexed, files)
    assert plan.covered_by == "model.safetensors.index.json"
    assert plan.files == {"consolidated.safetensors", "original/consolidated.00.pth", "original/params.json",
                          "pytorch_model.bin", "training_args.bin", "flax_model.msgpack"}
    assert plan.bytes == sum(files[f] for f in plan.files)
    names = {g.name: g.reason for g in plan.groups}
    assert names["original/"] == "Meta reference checkpoint"
    assert names["consolidated.safetensors"] == "safetensors no index names"
    assert names["pytorch_model.bin"] == "pickle copy of the safetensors weights"
    line = plan.line()
    assert line.startswith("left out ") and "the server never reads: " in line and "original/ (Meta reference" in line
    assert not marker.exists()


def test_include_keeps_exclude_wins_and_code_named_files_stay(indexed: Path) -> None:
    (indexed / "original").mkdir()
    (indexed / "original" / "params.json").write_text("{}")
    (indexed / "original" / "consolidated.00.pth").write_bytes(b"not read")
    (indexed / "pytorch_model.bin").write_bytes(b"not read")
    (indexed / "optimizer.pt").write_bytes(b"not read")
    (indexed / "modeling_x.py").write_text("STATE = 'optimizer.pt'\n")
    (indexed / "notes.txt").write_text("hi")
    files = _files(indexed)
    plan = plan_leave_out(indexed, files, include=["original/"], exclude=["original/*.pth", "notes.*"],
                          code_files=["modeling_x.py"])
    assert plan.files == {"original/consolidated.00.pth", "notes.txt", "pytorch_model.bin"}
    assert {g.reason for g in plan.groups} >= {"--exclude original/*.pth", "--exclude notes.*"}
    assert "optimizer.pt" not in plan.files  # its code names it
    assert matches("a/b/c.bin", ["*.bin"]) == "*.bin" and matches("original/x", ["original/"]) == "original/"
    assert matches("config.json", ["*.bin"]) is None


def test_no_complete_set_no_default_leave_out(indexed: Path) -> None:
    (indexed / "pytorch_model.bin").write_bytes(b"x")
    doc = json.loads((indexed / "model.safetensors.index.json").read_text())
    doc["weight_map"]["d"] = "model-00002-of-00002.safetensors"  # a tensor its shard does not hold
    (indexed / "model.safetensors.index.json").write_text(json.dumps(doc))
    plan = plan_leave_out(indexed, _files(indexed))
    assert plan.covered_by is None and plan.files == set()
    assert "names 1 tensors that model-00002-of-00002.safetensors lacks" in plan.notes[0]
    _safetensors(indexed / "model-00002-of-00002.safetensors", {"c": 8, "d": 4, "e": 4})
    plan = plan_leave_out(indexed, _files(indexed))
    assert plan.covered_by is None and "holds 1 tensors" in plan.notes[0]
    only_pickle = indexed.parent / "p"
    only_pickle.mkdir()
    (only_pickle / "pytorch_model.bin").write_bytes(b"x")
    assert plan_leave_out(only_pickle, _files(only_pickle)).files == set()
    assert plan_leave_out(only_pickle, _files(only_pickle), exclude=["*.bin"]).files == {"pytorch_model.bin"}


def test_single_model_safetensors_covers(tmp_path: Path) -> None:
    _safetensors(tmp_path / "model.safetensors", {"a": 4})
    _safetensors(tmp_path / "consolidated.safetensors", {"x": 4})
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "vision" / "pytorch_model.bin").parent.mkdir()
    (tmp_path / "vision" / "pytorch_model.bin").write_bytes(b"x")  # another folder: the model's own business
    plan = plan_leave_out(tmp_path, _files(tmp_path))
    assert plan.covered_by == "model.safetensors"
    assert plan.files == {"consolidated.safetensors", "pytorch_model.bin"}


# --------------------------------------------------------------------------- imports -> packages


def test_imports_map_through_the_known_map_then_metadata() -> None:
    res = model_deps.resolve({"einops": "imported by modeling_x.py", "google.protobuf": "tokenizer.model",
                              "torch": "imported by modeling_x.py", "flash_attn": "imported by modeling_x.py",
                              "yaml": "imported by modeling_x.py"})
    by = {r.distribution: r.imports for r in res.requirements}
    assert by["einops"] == ("einops",) and by["protobuf"] == ("google.protobuf",) and "torch" in by
    assert res.skipped == ("flash_attn (optional: flash-attn)",)
    lines = model_deps.requirement_lines(res, "cpu", ["torch==2.13.0", "transformers==5.0"])
    assert "einops" in lines and "torch==2.13.0" in lines
    assert any(line.lower().startswith("pyyaml==") for line in lines)  # installed here: pinned for cpu
    assert "protobuf" in lines  # not installed here: named
    gpu = model_deps.requirement_lines(res, "gpu", ["vllm==0.32.0", "torch", "transformers"])
    assert gpu[0] == "vllm==0.32.0" and "protobuf" in gpu and "einops" in gpu


def test_the_known_package_wins_over_an_installed_one_and_two_candidates_are_said(monkeypatch) -> None:
    installed = {"cv2": ["opencv-python"], "fancy": ["zeta-fancy", "fancy"], "twin": ["b-twin-dist", "a-twin-dist"]}
    monkeypatch.setattr(model_deps, "_packages_distributions", lambda: installed)
    res = model_deps.resolve({"cv2": "imported by modeling_x.py", "fancy": "x", "twin": "x"})
    by = {r.imports[0]: r.distribution for r in res.requirements}
    # a server needs no libGL: the headless build, though this desktop host has opencv-python
    assert by == {"cv2": "opencv-python-headless", "fancy": "fancy", "twin": "a-twin-dist"}
    notes = "\n".join(res.notes)
    assert "cv2: opencv-python-headless" in notes and "not opencv-python installed here" in notes
    assert "--requirement cv2=opencv-python" in notes
    assert "fancy: fancy, one of fancy, zeta-fancy" in notes and "twin: a-twin-dist, one of a-twin-dist, b-twin-dist" in notes
    # asked for by name: no second guess, no note
    chosen = model_deps.resolve({"cv2": "x"}, requirements=["cv2=opencv-python"])
    assert [r.distribution for r in chosen.requirements] == ["opencv-python"] and chosen.notes == ()
    # the same package installed here: nothing to say
    monkeypatch.setattr(model_deps, "_packages_distributions", lambda: {"cv2": ["opencv-python-headless"]})
    assert model_deps.resolve({"cv2": "x"}).notes == ()


def test_the_build_summary_says_which_package_it_chose(monkeypatch) -> None:
    import io

    from rich.console import Console

    from sealift.bento.build import BuildResult
    from sealift.core import console

    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=300, highlight=False))
    note = "cv2: opencv-python-headless (sealift's choice for a server), not opencv-python installed here"
    result = BuildResult("m:1", "m:0", "m", "cpu", "auto", 1, 1, "/b", package_notes=[note])
    result.print_human()
    assert f"package: {note}" in buf.getvalue()
    assert result.to_dict()["package_notes"] == [note]


def test_unknown_import_is_a_user_error_naming_the_fix() -> None:
    with pytest.raises(UserError) as err:
        model_deps.resolve({"sealift_nowhere": "imported by modeling_x.py"}, model="mymodel")
    line = err.value.one_line()
    assert "sealift_nowhere" in line and "modeling_x.py" in line
    assert "sealift build mymodel --requirement sealift-nowhere" in line and "--ignore-import sealift_nowhere" in line
    ok = model_deps.resolve({"sealift_nowhere": "x"}, requirements=["sealift-nowhere>=1"])
    assert [r.line for r in ok.requirements] == ["sealift-nowhere>=1"]
    mapped = model_deps.resolve({"nw": "x"}, requirements=["nw=other-dist==2.0"])
    assert model_deps.requirement_lines(mapped, "cpu", ["torch==2.13.0"]) == ["other-dist==2.0", "torch==2.13.0"]
    assert model_deps.resolve({"nw": "x"}, ignore=["nw"]).skipped == ("nw (--ignore-import)",)
    with pytest.raises(UserError, match="not a requirement"):
        model_deps.resolve({}, requirements=["not a req!!"])


def test_code_and_tokenizer_imports(tmp_path: Path) -> None:
    (tmp_path / "modeling_x.py").write_text("import einops\nfrom google.protobuf import message\nimport torch.nn\n")
    found = model_deps.code_imports(tmp_path, ["modeling_x.py"], {"einops", "google", "torch"})
    assert found == {"einops": "imported by modeling_x.py", "google.protobuf": "imported by modeling_x.py",
                     "torch": "imported by modeling_x.py"}
    assert set(model_deps.tokenizer_imports(["tokenizer.model", "config.json"], {})) == {"sentencepiece",
                                                                                        "google.protobuf"}
    assert model_deps.tokenizer_imports(["tokenizer.model", "tokenizer.json"], {}) == {}
    assert set(model_deps.tokenizer_imports(["qwen.tiktoken"], {})) == {"tiktoken"}
    assert set(model_deps.tokenizer_imports([], {"tokenizer_class": "TikTokenTokenizer"})) == {"tiktoken"}
    assert model_deps.quantization_imports("bitsandbytes") == {"bitsandbytes": "bitsandbytes quantization"}


# --------------------------------------------------------------------------- license and quantization


def test_license_from_front_matter_or_file(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: qwen-research\n"
                                        "license_link: https://example.org/LICENSE\n---\n# Model\n")
    (tmp_path / "LICENSE").write_text("\n  Tongyi Qianwen RESEARCH LICENSE AGREEMENT\n\nterms...\n")
    lic, warnings = model_card.read_license(tmp_path, _files(tmp_path))
    assert lic == {"id": "other", "name": "qwen-research", "link": "https://example.org/LICENSE", "source": "README.md",
                   "file": "LICENSE", "title": "Tongyi Qianwen RESEARCH LICENSE AGREEMENT"} and warnings == []
    assert model_card.license_str(lic) == "other: qwen-research <https://example.org/LICENSE> (LICENSE)"
    assert model_card.license_short(lic) == "qwen-research"
    (tmp_path / "README.md").write_text("no front matter\n")
    lic, _ = model_card.read_license(tmp_path, _files(tmp_path))
    assert model_card.license_str(lic) == "LICENSE: Tongyi Qianwen RESEARCH LICENSE AGREEMENT"
    (tmp_path / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    lic, warnings = model_card.read_license(tmp_path, {"README.md": 1})
    assert lic is None and "does not parse" in warnings[0]


@pytest.mark.parametrize("config, files, method, bits, vllm_flag", [
    ({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}, {}, "awq", 4, None),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, {}, "gptq", 4, None),
    ({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3"}}, {}, "fp8", 8, None),
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}, {}, "bitsandbytes", 4, None),
    ({"quantization_config": {"quant_method": "compressed-tensors",
                              "config_groups": {"g": {"weights": {"num_bits": 8}}}}}, {}, "compressed-tensors", 8, None),
    ({"compression_config": {"format": "pack-quantized"}}, {}, "compressed-tensors", None, None),
    ({}, {"quantize_config.json": {"bits": 4, "group_size": 128}}, "gptq", 4, "gptq"),
    ({}, {"quant_config.json": {"w_bit": 4, "q_group_size": 128}}, "awq", 4, "awq"),
    ({}, {}, None, None, None),
])
def test_quantization_read_and_handed_to_vllm_only_when_needed(tmp_path, config, files, method, bits, vllm_flag):
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    q = model_card.read_quantization(tmp_path, config, {name: 1 for name in files})
    assert (q or {}).get("method") == method and (q or {}).get("bits") == bits
    assert model_card.vllm_quantization(q) == vllm_flag
    if method:
        with pytest.raises(UserError, match="cannot run on CPU"):
            model_card.check_target(q, "cpu", model="m")
        model_card.check_target(q, "gpu", model="m")
    model_card.check_target({"method": "quanto"}, "cpu", model="m")


def test_vllm_command_carries_the_bentos_quantization(tmp_path: Path) -> None:
    from sealift.serving.config import BentoConfig, ServeConfig
    from sealift.serving.vllm_backend import vllm_command

    doc = {"model_tag": "q:v1", "served_model_name": "q", "target": "gpu", "quantization": "gptq"}
    (tmp_path / "sealift_bento.json").write_text(json.dumps(doc))
    bento = BentoConfig.load(tmp_path)
    assert bento.to_dict()["quantization"] == "gptq"
    cmd = vllm_command("/m", ServeConfig.from_env(bento, environ={}), executable=["vllm"])
    assert cmd[cmd.index("--quantization") + 1] == "gptq"
    override = ServeConfig.from_env(bento, environ={"SEALIFT_QUANTIZATION": "gptq_marlin"})
    assert override.quantization == "gptq_marlin"
    (tmp_path / "sealift_bento.json").write_text(json.dumps({**doc, "quantization": None}))
    plain = BentoConfig.load(tmp_path)
    assert "quantization" not in plain.to_dict()
    assert "--quantization" not in vllm_command("/m", ServeConfig.from_env(plain, environ={}), executable=["vllm"])
