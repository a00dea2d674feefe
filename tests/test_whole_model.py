"""Issue 25 through the real CLI: a checkpoint missing tensors is refused at import, not served as noise.

The safetensors headers are held against the model class built on the meta device (no weight read):
a layer or `lm_head` missing, or a tensor in another shape, is refused (exit 2, one line, store untouched)
unless --allow-missing-tensors, which the manifest and the build summary record; tied embeddings, keys
transformers renames (a Mixtral checkpoint in the hub's per-expert layout) and a GPTQ checkpoint's packed
tensors pass; tensors the model does not use are warned about and recorded; what cannot be judged
(another quantization, pickles kept as pickles) says "unchecked" in one line, never a false error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Env

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _store_is_empty(host: Env) -> None:
    models = host.bentoml_home / "models"
    assert not models.exists() or [p for p in models.glob("*/*") if p.is_dir()] == []
    staging = host.bentoml_home / ".sealift-staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def _rewrite(model_dir: Path, edit=None, config=None) -> Path:
    """Rewrite model_dir's single model.safetensors through edit(state) -> state, and config.json through config(cfg)."""
    from safetensors.torch import load_file, save_file

    if edit is not None:
        state = edit(load_file(model_dir / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in state.items()}, str(model_dir / "model.safetensors"),
                  metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((model_dir / "config.json").read_text())
        config(cfg)
        (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    return model_dir


def _without(*names: str):
    return lambda state: {k: v for k, v in state.items() if k not in names}


def _refused(run, *, count: int) -> str:
    assert run.code == 2, run.err + run.out
    assert "Traceback" not in run.err
    errors = [ln for ln in run.err.splitlines() if ln.startswith("error: ")]  # "converting ..." may precede it
    assert len(errors) == 1, run.err
    line = errors[0]
    assert "is not a whole model" in line and "nothing was written" in line and "--allow-missing-tensors" in line
    assert f"{count} of the " in line or f"{count} ha" in line
    return line


def _manifest(result: dict) -> dict:
    return json.loads((Path(result["path"]) / "sealift-manifest.json").read_text())


# --------------------------------------------------------------------------- refused


def test_a_checkpoint_missing_one_layer_is_refused_and_nothing_written(host: Env, tiny_llama: Path, model_copy) -> None:
    m = _rewrite(model_copy(tiny_llama), lambda st: {k: v for k, v in st.items() if ".layers.1." not in k})
    line = _refused(host.sealift("import", m, "--name", "holed"), count=9)
    assert "9 of the 21 tensors LlamaForCausalLM declares are missing" in line
    assert "model.layers.1.input_layernorm.weight" in line and "and 6 more" in line
    _store_is_empty(host)


def test_missing_lm_head_with_untied_embeddings_is_refused(host: Env, tiny_llama: Path, model_copy) -> None:
    m = _rewrite(model_copy(tiny_llama), _without("lm_head.weight"))
    assert json.loads((m / "config.json").read_text())["tie_word_embeddings"] is False
    line = _refused(host.sealift("import", m, "--name", "headless"), count=1)
    assert "(lm_head.weight)" in line
    _store_is_empty(host)


def test_a_tensor_in_another_shape_is_refused(host: Env, tiny_llama: Path, model_copy) -> None:
    import torch

    m = _rewrite(model_copy(tiny_llama), lambda st: {**st, "model.norm.weight": torch.ones(65)})
    line = _refused(host.sealift("import", m, "--name", "shape"), count=1)
    assert "model.norm.weight is [65], expected [64]" in line
    _store_is_empty(host)


# --------------------------------------------------------------------------- accepted


def test_tied_embeddings_without_lm_head_are_accepted(host: Env, tiny_llama: Path, model_copy) -> None:
    m = _rewrite(model_copy(tiny_llama), _without("lm_head.weight"), lambda c: c.update(tie_word_embeddings=True))
    r = host.sealift("import", m, "--name", "tied", "--json", check=True).json()
    assert r["tensors"]["status"] == "complete" and r["tensors"]["missing_count"] == 0
    assert r["tensors"]["found"] == r["tensors"]["expected"] - 1  # lm_head is the embedding
    assert _manifest(r)["checkpoint"]["tensors"]["status"] == "complete"


def tiny_mixtral_hub_layout(out: Path, tokenizer_from: Path) -> Path:
    """A tiny Mixtral saved as the hub's checkpoints are: block_sparse_moe.experts.N.w1/w2/w3, which transformers
    renames and fuses into mlp.experts.gate_up_proj / down_proj when it loads."""
    import torch
    from safetensors.torch import save_file
    from transformers import MixtralConfig, MixtralForCausalLM

    vocab = json.loads((tokenizer_from / "config.json").read_text())["vocab_size"]
    config = MixtralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=128, tie_word_embeddings=False,
                           architectures=["MixtralForCausalLM"])
    torch.manual_seed(0)
    fused = MixtralForCausalLM(config).state_dict()
    state = {}
    for key, value in fused.items():
        moe = key.replace(".mlp.", ".block_sparse_moe.")
        if key.endswith("experts.gate_up_proj"):
            for e in range(value.shape[0]):
                gate, up = value[e].chunk(2, dim=0)
                state[moe.replace("gate_up_proj", f"{e}.w1.weight")] = gate.contiguous()
                state[moe.replace("gate_up_proj", f"{e}.w3.weight")] = up.contiguous()
        elif key.endswith("experts.down_proj"):
            for e in range(value.shape[0]):
                state[moe.replace("down_proj", f"{e}.w2.weight")] = value[e].contiguous()
        else:
            state[moe] = value.contiguous()
    out.mkdir(parents=True)
    config.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_from / name, out / name)
    return out


def test_renamed_keys_that_transformers_converts_are_accepted(host: Env, tiny_llama: Path, tmp_path: Path) -> None:
    m = tiny_mixtral_hub_layout(tmp_path / "mixtral", tiny_llama)
    r = host.sealift("import", m, "--name", "mixtral", "--json", check=True).json()
    t = r["tensors"]
    assert t["status"] == "complete" and t["model_class"] == "MixtralForCausalLM" and t["unexpected_count"] == 0
    assert t["found"] > t["expected"]  # 4 experts x 3 checkpoint tensors become 2 fused parameters per layer
    # one expert lost: the fused parameter comes out in another shape, as transformers would find it
    _rewrite(m, _without("model.layers.1.block_sparse_moe.experts.3.w2.weight"))
    line = _refused(host.sealift("import", m, "--name", "mixtral-holed"), count=1)
    assert "model.layers.1.mlp.experts.down_proj is [3, 32, 64], expected [4, 32, 64]" in line


def test_extra_tensors_are_warned_about_and_recorded(host: Env, tiny_llama: Path, model_copy) -> None:
    import torch

    extra = {f"vision_tower.blocks.{i}.attn.qkv.weight": torch.zeros(8, 8) for i in range(4)}
    m = _rewrite(model_copy(tiny_llama), lambda st: {**st, **extra})
    run = host.sealift("import", m, "--name", "vision", check=True)  # human: warnings on stderr
    warned = [ln for ln in run.err.splitlines() if "not part of LlamaForCausalLM" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: 4 tensors")
    assert "vision_tower.blocks.0.attn.qkv.weight" in warned[0] and "and 1 more" in warned[0]
    assert "2 more in the checkpoint, ignored" not in run.out and "4 more in the checkpoint, ignored" in run.out
    listed = host.sealift("list", "--json", check=True).json()["models"][0]
    t = listed["checkpoint"]["tensors"]
    assert t["status"] == "complete" and t["unexpected_count"] == 4 and t["unexpected"] == sorted(extra)
    assert json.loads((Path(listed["path"]) / "sealift-manifest.json").read_text())["checkpoint"]["tensors"] == t


def test_what_transformers_reports_agrees(tiny_llama: Path, model_copy, tmp_path: Path) -> None:
    """The premise, and the check's agreement with a real load: transformers loads a checkpoint without lm_head
    with no error (it only reports the key missing and fills it at random); the accepted ones load whole."""
    headless = _rewrite(model_copy(tiny_llama), _without("lm_head.weight"))
    tied = _rewrite(shutil.copytree(tiny_llama, tmp_path / "tied"), _without("lm_head.weight"),
                    lambda c: c.update(tie_word_embeddings=True))
    mixtral = tiny_mixtral_hub_layout(tmp_path / "mixtral", tiny_llama)
    code = (
        "import json, sys\n"
        "from transformers import AutoModelForCausalLM\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    _, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)\n"
        "    out[path] = sorted(info['missing_keys']) + sorted(k for k, *_ in info['mismatched_keys'])\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(headless), str(tied), str(mixtral)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    found = json.loads(p.stdout.strip().splitlines()[-1])
    assert found == {str(headless): ["lm_head.weight"], str(tied): [], str(mixtral): []}


# --------------------------------------------------------------------------- quantized


def gptq_state(state: dict, *, bits: int = 4, group: int = 32) -> dict:
    """AutoGPTQ's packed tensors in place of each linear layer of the blocks (zeros: only the layout matters here)."""
    import torch

    out = {}
    for key, value in state.items():
        if ".layers." in key and key.endswith("_proj.weight"):
            rows, cols = value.shape  # out_features, in_features
            base = key.removesuffix(".weight")
            out[f"{base}.qweight"] = torch.zeros(cols * bits // 32, rows, dtype=torch.int32)
            out[f"{base}.qzeros"] = torch.zeros(math.ceil(cols / group), rows * bits // 32, dtype=torch.int32)
            out[f"{base}.scales"] = torch.zeros(math.ceil(cols / group), rows, dtype=torch.float16)
            out[f"{base}.g_idx"] = torch.zeros(cols, dtype=torch.int32)
        else:
            out[key] = value
    return out


def test_a_gptq_checkpoint_is_held_to_its_packed_layout(host: Env, tiny_llama: Path, model_copy) -> None:
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True}
    m = _rewrite(model_copy(tiny_llama), gptq_state, lambda c: c.update(quantization_config=qc))
    r = host.sealift("import", m, "--name", "gptq", "--json", check=True).json()
    assert r["quantization"] == "gptq"
    assert r["tensors"]["status"] == "complete" and r["tensors"]["expected"] == r["tensors"]["found"] == 63

    _rewrite(m, _without("model.layers.0.self_attn.q_proj.qzeros"))
    line = _refused(host.sealift("import", m, "--name", "gptq-holed"), count=1)
    assert "model.layers.0.self_attn.q_proj.qzeros" in line

    # a layout sealift does not know: said in one line and recorded, never refused
    _rewrite(m, config=lambda c: c["quantization_config"].update(checkpoint_format="marlin"))
    r = host.sealift("import", m, "--name", "marlin", "--json", check=True).json()
    said = [w for w in r["warnings"] if "tensors unchecked" in w]
    assert len(said) == 1 and "marlin" in said[0]
    assert r["tensors"]["status"] == "unchecked" and "marlin" in r["tensors"]["reason"]
    assert _manifest(r)["checkpoint"]["tensors"]["status"] == "unchecked"


def test_bitsandbytes_is_said_unchecked(host: Env, tiny_llama: Path, model_copy) -> None:
    m = _rewrite(model_copy(tiny_llama), config=lambda c: c.update(
        quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}))
    r = host.sealift("import", m, "--name", "bnb", "--json", check=True).json()
    assert r["tensors"]["status"] == "unchecked" and "bitsandbytes" in r["tensors"]["reason"]


# --------------------------------------------------------------------------- the override


def test_the_override_is_recorded_in_the_manifest_and_the_build_summary(host: Env, tiny_llama: Path, model_copy) -> None:
    m = _rewrite(model_copy(tiny_llama), _without("lm_head.weight"))
    r = host.sealift("import", m, "--name", "forced", "--allow-missing-tensors", "--json", check=True).json()
    assert any("not a whole model" in w and "--allow-missing-tensors" in w for w in r["warnings"])
    t = _manifest(r)["checkpoint"]["tensors"]
    assert t["status"] == "incomplete" and t["allowed_by"] == "--allow-missing-tensors"
    assert t["missing"] == ["lm_head.weight"] and t["missing_count"] == 1
    listed = host.sealift("list", "--json", check=True).json()["models"][0]
    assert listed["checkpoint"]["tensors"]["allowed_by"] == "--allow-missing-tensors"

    again = host.sealift("import", m, "--name", "forced")  # the same bytes, without the flag: still refused
    assert again.code == 2 and "is not a whole model" in again.err and r["tag"] in again.err

    built = host.sealift("build", "forced", "--target", "cpu", "--no-golden", UV_OFFLINE="1", PIP_NO_INDEX="1")
    assert built.code == 0, built.err
    line = [ln for ln in built.out.splitlines() if ln.startswith("tensors:")]
    assert len(line) == 1 and "lm_head.weight" in line[0] and "--allow-missing-tensors" in line[0]


# --------------------------------------------------------------------------- custom code, pickles


def test_custom_code_is_checked_only_when_trusted(host: Env, tiny_custom: Path, model_copy) -> None:
    untrusted = host.sealift("import", tiny_custom, "--name", "custom")
    assert untrusted.code == 2 and "--trust-remote-code" in untrusted.err and "whole model" not in untrusted.err
    r = host.sealift("import", tiny_custom, "--name", "custom", "--trust-remote-code", "--json", check=True).json()
    assert r["tensors"]["status"] == "complete" and r["tensors"]["model_class"] == "TinyForCausalLM"

    holed = _rewrite(model_copy(tiny_custom), _without("model.layers.0.mlp.down_proj.weight"))
    assert host.sealift("import", holed, "--name", "custom-holed").code == 2  # untrusted: refused for its code
    line = _refused(host.sealift("import", holed, "--name", "custom-holed", "--trust-remote-code"), count=1)
    assert "TinyForCausalLM" in line and "model.layers.0.mlp.down_proj.weight" in line


@pytest.fixture
def pickled_headless(tiny_llama: Path, model_copy) -> Path:
    """tiny_llama without lm_head, as pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file

    m = model_copy(tiny_llama)
    state = load_file(m / "model.safetensors")
    state.pop("lm_head.weight")
    torch.save(state, m / "pytorch_model.bin")
    (m / "model.safetensors").unlink()
    return m


def test_pickles_are_checked_once_converted_and_said_unchecked_when_kept(host: Env, pickled_headless: Path) -> None:
    kept = host.sealift("import", pickled_headless, "--name", "kept", "--allow-pickle", "--json", check=True).json()
    assert [w for w in kept["warnings"] if w.startswith("tensors unchecked: pickle weights")]
    t = _manifest(kept)["checkpoint"]["tensors"]
    assert t["status"] == "unchecked" and "pickle" in t["reason"]
    built = host.sealift("build", "kept", "--target", "cpu", "--no-golden", UV_OFFLINE="1", PIP_NO_INDEX="1")
    assert built.code == 0, built.err
    assert any(ln.startswith("tensors unchecked at import: pickle weights") for ln in built.out.splitlines())

    line = _refused(host.sealift("import", pickled_headless, "--name", "converted", "--to-safetensors"), count=1)
    assert "(lm_head.weight)" in line
    assert not (host.bentoml_home / "models" / "converted").exists()
