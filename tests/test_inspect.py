"""sealift.model.inspection on real tiny models: what it reads, and every refusal (in-process: no store involved)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from safetensors import safe_open

from sealift.core.errors import UserError
from sealift.core.codescan import auto_map_modules, iter_imports, scan_code
from sealift.model.inspection import inspect_model
from sealift.core.safetensors_header import HeaderError, read_safetensors_header


def _numel_and_bytes(model_dir: Path) -> tuple[int, int]:
    """Parameter count and tensor bytes, the slow way (safetensors' own reader)."""
    numel = nbytes = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                numel += t.numel()
                nbytes += t.numel() * t.element_size()
    return numel, nbytes


def _quick(path: Path, **kw):
    """inspect_model without the transformers child (milliseconds): for what the files say."""
    return inspect_model(path, trust_remote_code=kw.get("trust", False), allow_pickle=kw.get("pickle", False), with_transformers=False)


def _refusal(path: Path, **kw) -> str:
    with pytest.raises(UserError) as exc:
        inspect_model(
            path,
            trust_remote_code=kw.get("trust", False),
            allow_pickle=kw.get("pickle", False),
            with_transformers=kw.get("deep", False),
        )
    line = exc.value.one_line()
    assert "\n" not in line
    assert exc.value.exit_code == 2
    return line


# --------------------------------------------------------------------------- what it reads


def test_single_file_model(tiny_llama: Path) -> None:
    info = inspect_model(tiny_llama, trust_remote_code=False, allow_pickle=False)
    numel, nbytes = _numel_and_bytes(tiny_llama)
    assert info.params == numel
    assert info.weights_bytes == info.gpu_memory_bytes == nbytes
    assert info.dtype == "float32"
    assert info.model_type == "llama" and info.architectures == ["LlamaForCausalLM"]
    assert info.context_length == json.loads((tiny_llama / "config.json").read_text())["max_position_embeddings"]
    assert info.tokenizer_files == ["tokenizer.json"] and info.tokenizer_class
    assert info.chat_template and not info.custom_code and info.code_files == {}
    assert info.weight_files == ["model.safetensors"]
    assert set(info.files) == {p.name for p in tiny_llama.iterdir()}
    assert info.warnings == []


def test_sharded_model(tiny_qwen_sharded: Path) -> None:
    info = _quick(tiny_qwen_sharded)
    shards = sorted(p.name for p in tiny_qwen_sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2
    assert info.weight_files == shards
    assert info.params == _numel_and_bytes(tiny_qwen_sharded)[0]
    assert info.model_type == "qwen2"


def test_custom_code_listed_with_sha256(tiny_custom: Path) -> None:
    import hashlib

    info = _quick(tiny_custom, trust=True)
    assert info.custom_code
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_custom.glob("*.py")}
    assert info.code_files == expected
    assert set(expected) == {"configuration_tiny.py", "modeling_tiny.py", "tiny_layers.py"}


def test_hidden_metadata_dirs_are_not_part_of_the_model(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    (m / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (m / ".cache" / "huggingface" / "download" / "model.safetensors.metadata").write_text("x")
    (m / ".git").mkdir()
    (m / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (m / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    info = _quick(m)
    assert not any(rel.startswith(".") for rel in info.files)


def test_missing_chat_template_warns_but_accepts(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    (m / "chat_template.jinja").unlink()
    cfg = json.loads((m / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (m / "tokenizer_config.json").write_text(json.dumps(cfg))
    info = _quick(m)
    assert not info.chat_template
    assert len(info.warnings) == 1 and "no chat template" in info.warnings[0]
    assert "<|im_start|>" in info.warnings[0]  # the tokenizer's chat tokens give it away


def test_chat_template_in_tokenizer_config_counts(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    template = (m / "chat_template.jinja").read_text()
    (m / "chat_template.jinja").unlink()
    cfg = json.loads((m / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template  # where transformers < 5 put it
    (m / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert _quick(m).chat_template


# --------------------------------------------------------------------------- refusals


def test_missing_shard(tiny_qwen_sharded: Path, model_copy) -> None:
    m = model_copy(tiny_qwen_sharded)
    shard = sorted(m.glob("model-*.safetensors"))[1]
    shard.unlink()
    line = _refusal(m)
    assert f"{shard.name} missing (listed in model.safetensors.index.json)" in line


def test_truncated_safetensors_caught_from_the_header(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    f = m / "model.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size - 1)
    line = _refusal(m)
    assert f"model.safetensors truncated ({size - 1} bytes, the header needs {size})" in line


def test_every_problem_in_one_line(tiny_qwen_sharded: Path, model_copy) -> None:
    m = model_copy(tiny_qwen_sharded)
    shards = sorted(m.glob("model-*.safetensors"))
    shards[0].unlink()
    with open(shards[1], "r+b") as fh:
        fh.truncate(100)
    (m / "tokenizer.json").unlink()
    line = _refusal(m)
    assert shards[0].name + " missing" in line
    assert shards[1].name + " truncated" in line
    assert "tokenizer missing" in line


def test_missing_tokenizer(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    (m / "tokenizer.json").unlink()
    assert "tokenizer missing" in _refusal(m)


def test_broken_tokenizer_json(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    t = m / "tokenizer.json"
    t.write_bytes(t.read_bytes()[:500])
    assert "tokenizer.json does not parse" in _refusal(m)


def test_tokenizer_that_does_not_load(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    (m / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Nonsense"}}))
    assert "does not load offline" in _refusal(m, deep=True)


def test_missing_config(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    (m / "config.json").unlink()
    assert "config.json missing" in _refusal(m)


def test_unknown_architecture(tiny_llama: Path, model_copy) -> None:
    m = model_copy(tiny_llama)
    cfg = json.loads((m / "config.json").read_text())
    cfg["architectures"] = ["FrobnicatorForCausalLM"]
    cfg["model_type"] = "frobnicator"
    (m / "config.json").write_text(json.dumps(cfg))
    line = _refusal(m, deep=True)
    assert "model_type 'frobnicator' unknown" in line
    assert "architecture 'FrobnicatorForCausalLM' unknown" in line


def test_custom_code_refused_without_trust(tiny_custom: Path) -> None:
    line = _refusal(tiny_custom)
    assert "--trust-remote-code" in line
    for name in ("configuration_tiny.py", "modeling_tiny.py", "tiny_layers.py"):
        assert name in line


def test_missing_python_module(tiny_custom: Path, model_copy) -> None:
    m = model_copy(tiny_custom)
    (m / "tiny_layers.py").unlink()
    line = _refusal(m, trust=True)
    assert "tiny_layers.py missing (imported by modeling_tiny.py as .tiny_layers)" in line


def test_missing_auto_map_module(tiny_custom: Path, model_copy) -> None:
    m = model_copy(tiny_custom)
    (m / "configuration_tiny.py").unlink()
    line = _refusal(m, trust=True)
    assert "configuration_tiny.py missing" in line


def test_pickle_weights_refused_unless_allowed(tiny_llama: Path, model_copy) -> None:
    import torch
    from safetensors.torch import load_file

    m = model_copy(tiny_llama)
    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin")
    (m / "model.safetensors").unlink()
    line = _refusal(m)
    assert "pytorch_model.bin" in line and "--to-safetensors" in line
    info = _quick(m, pickle=True)
    assert info.pickle_files == ["pytorch_model.bin"]
    assert info.params is None and info.gpu_memory_bytes == (m / "pytorch_model.bin").stat().st_size


# --------------------------------------------------------------------------- the parts


def _write_st(path: Path, header: dict, data_len: int) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_len)


def test_safetensors_header_checks(tmp_path: Path) -> None:
    good = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": {"format": "pt"}}
    _write_st(tmp_path / "ok.safetensors", good, 24)
    h = read_safetensors_header(tmp_path / "ok.safetensors")
    assert h.tensors["a"].numel == 6 and h.metadata == {"format": "pt"}

    _write_st(tmp_path / "short.safetensors", good, 23)
    with pytest.raises(HeaderError, match="truncated"):
        read_safetensors_header(tmp_path / "short.safetensors")
    _write_st(tmp_path / "long.safetensors", good, 25)
    with pytest.raises(HeaderError, match="after its last tensor"):
        read_safetensors_header(tmp_path / "long.safetensors")
    bad = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}
    _write_st(tmp_path / "bad.safetensors", bad, 20)
    with pytest.raises(HeaderError, match="expected 24"):
        read_safetensors_header(tmp_path / "bad.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(HeaderError, match="no header"):
        read_safetensors_header(tmp_path / "tiny.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(HeaderError, match="truncated or not safetensors"):
        read_safetensors_header(tmp_path / "huge.safetensors")
    (tmp_path / "json.safetensors").write_bytes(struct.pack("<Q", 4) + b"{nop")
    with pytest.raises(HeaderError, match="not valid JSON"):
        read_safetensors_header(tmp_path / "json.safetensors")


def test_auto_map_forms() -> None:
    auto_map = {
        "AutoConfig": "configuration_x.XConfig",
        "AutoModelForCausalLM": "org/other--modeling_x.XForCausalLM",
        "AutoTokenizer": ["tokenization_x.XTokenizer", None],
    }
    assert auto_map_modules(auto_map) == [
        ("configuration_x", None),
        ("modeling_x", "org/other"),
        ("tokenization_x", None),
    ]


def test_code_closure_follows_local_imports(tmp_path: Path) -> None:
    (tmp_path / "modeling_x.py").write_text(
        "import os\nimport helper_abs\nfrom .sub import thing\nfrom . import sibling\n"
        "try:\n    import flash_attn_never_installed\nexcept ImportError:\n    pass\n"
        "import some_package_not_here\n"
    )
    (tmp_path / "helper_abs.py").write_text("from .deep import y\n")
    (tmp_path / "deep.py").write_text("y = 1\n")
    (tmp_path / "sub.py").write_text("thing = 2\n")
    (tmp_path / "sibling.py").write_text("z = 3\n")
    scan = scan_code(tmp_path, [("modeling_x", None)])
    assert scan.files == ["deep.py", "helper_abs.py", "modeling_x.py", "sibling.py", "sub.py"]
    assert scan.missing == []
    assert scan.external == {"some_package_not_here"}  # os is stdlib; the try-guarded import is optional
    (tmp_path / "deep.py").unlink()
    assert scan_code(tmp_path, [("modeling_x", None)]).missing == ["deep.py missing (imported by helper_abs.py as .deep)"]
    assert "missing (auto_map points at org/r)" in scan_code(tmp_path, [("nothere", "org/r")]).missing[0]


GUARDS = """
try:
    import guarded_a
except ImportError:
    import fallback_b
try:
    import caught_by_exception_c
except Exception:
    pass
try:
    import guarded_d
except (OSError, ModuleNotFoundError) as exc:
    pass
try:
    pass
except ImportError:
    pass
else:
    import in_else_e
finally:
    import in_finally_f
try:
    def later():
        import in_a_function_g
except ImportError:
    pass
with contextlib.suppress(ImportError):
    import suppressed_h
try:
    try:
        import inner_i
    except KeyError:
        import inner_handler_j
except builtins.ImportError:
    pass
if TYPE_CHECKING:
    import annotations_only_k
import plain_l
"""


def test_only_imports_guarded_by_except_import_error_are_optional(tmp_path: Path) -> None:
    import ast

    found = {ref.names[0]: ref.optional for ref in iter_imports(ast.parse(GUARDS))}
    assert found == {
        "guarded_a": True, "fallback_b": False,  # the fallback must be there when guarded_a is not
        "caught_by_exception_c": False, "guarded_d": True,
        "in_else_e": False, "in_finally_f": False,
        "in_a_function_g": False,  # runs when later() is called, outside the try
        "suppressed_h": True, "inner_i": True, "inner_handler_j": True,  # both in the outer ImportError try's body
        "plain_l": False,
    }
    (tmp_path / "modeling_x.py").write_text(GUARDS)
    scan = scan_code(tmp_path, [("modeling_x", None)])
    assert scan.external == {"fallback_b", "caught_by_exception_c", "in_else_e", "in_finally_f", "in_a_function_g",
                             "plain_l"}
