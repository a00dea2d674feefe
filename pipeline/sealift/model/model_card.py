"""What a checkpoint says about itself beyond its config: its license and its quantization.

License: the model card's YAML front matter (README.md: `license:`,
`license_name:`, `license_link:`, read with huggingface_hub's
`metadata_load`), else a LICENSE/LICENCE/COPYING file at the top, named by
its first line. Recorded at import; `sealift list` and the import summary
show it.

Quantization: `quantization_config` in config.json (AWQ, GPTQ, FP8,
bitsandbytes, compressed-tensors, ...; `compression_config` for older
compressed-tensors checkpoints), else a separate file that older tools wrote
(`quantize_config.json` from AutoGPTQ, `quant_config.json` from AutoAWQ,
`hf_quant_config.json` from NVIDIA ModelOpt).

What each target does with it (`check_target`, `vllm_quantization`):
- gpu (vLLM): vLLM reads `quantization_config` from config.json and
  `hf_quant_config.json` itself, and picks the fastest kernel for the GPU it
  finds (awq -> awq_marlin, gptq -> gptq_marlin); passing `--quantization awq`
  would pin it to the slow kernel. So sealift passes `--quantization` only
  where vLLM cannot see the method: AutoGPTQ's or AutoAWQ's separate file
  (config.json has no quantization_config). bitsandbytes needs the
  bitsandbytes package in the runtime venv (sealift.model.model_deps adds it).
- cpu (transformers): only methods transformers runs without GPU kernels
  (CPU_RUNNABLE: quanto, torchao) are built; anything else is refused at
  build, one line, exit 2 ("build it with --target gpu").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sealift.core.errors import UserError

__all__ = ["read_license", "read_quantization", "license_str", "license_short", "quantization_str", "check_target",
           "vllm_quantization", "CPU_RUNNABLE"]

LICENSE_NAMES = ("LICENSE", "LICENCE", "COPYING", "LICENSE-MODEL")
LICENSE_SUFFIXES = ("", ".txt", ".md", ".rst")

#: Quantization methods transformers runs on CPU, with the library each needs (model_deps adds it).
CPU_RUNNABLE = {"quanto": "optimum-quanto", "torchao": "torchao"}

#: Files older quantizers wrote instead of config.json's quantization_config: (method, vLLM finds it itself).
QUANT_FILES = {
    "quantize_config.json": ("gptq", False),  # AutoGPTQ
    "quant_config.json": ("awq", False),  # AutoAWQ before transformers integration
    "hf_quant_config.json": ("modelopt", True),  # NVIDIA ModelOpt (vLLM reads it)
}


# --------------------------------------------------------------------------- license


def _front_matter(readme: Path) -> tuple[dict[str, Any], str | None]:
    """(front matter, problem) of a model card; empty when there is none."""
    try:
        from huggingface_hub.repocard import metadata_load

        data = metadata_load(readme)
    except Exception as exc:  # yaml errors of many kinds: the card is text, not a reason to refuse the model
        return {}, f"README.md front matter does not parse ({type(exc).__name__})"
    return (data if isinstance(data, dict) else {}), None


def _license_file(root: Path, files: Mapping[str, int]) -> str | None:
    for name in LICENSE_NAMES:
        for suffix in LICENSE_SUFFIXES:
            for cand in (name + suffix, (name + suffix).lower()):
                if cand in files:
                    return cand
    return None


def _first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for _, line in zip(range(40), f):
                text = line.strip().strip("#*= ").strip()
                if text:
                    return text[:80]
    except OSError:
        return None
    return None


def read_license(root: Path, files: Mapping[str, int]) -> tuple[dict[str, Any] | None, list[str]]:
    """({id, name, link, file, title, source} without empty keys, or None; warnings)."""
    lic: dict[str, Any] = {}
    warnings: list[str] = []
    if "README.md" in files:
        card, problem = _front_matter(root / "README.md")
        if problem:
            warnings.append(problem)
        value = card.get("license")
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        for key, field_name in (("id", value), ("name", card.get("license_name")), ("link", card.get("license_link"))):
            if field_name:
                lic[key] = str(field_name)
        if lic:
            lic["source"] = "README.md"
    found = _license_file(root, files)
    if found:
        lic["file"] = found
        title = _first_line(root / found)
        if title:
            lic["title"] = title
        lic.setdefault("source", found)
    return (lic or None), warnings


def license_str(lic: Mapping[str, Any] | None) -> str:
    """'apache-2.0', 'other: qwen-research <link>', 'LICENSE: LLAMA 3.1 COMMUNITY LICENSE AGREEMENT', or '-'."""
    if not lic:
        return "-"
    ident, name = lic.get("id"), lic.get("name")
    if ident and name and ident != name:
        text = f"{ident}: {name}"
    else:
        text = ident or name or ""
    if lic.get("link"):
        text = f"{text} <{lic['link']}>" if text else str(lic["link"])
    if lic.get("file"):
        title = f": {lic['title']}" if lic.get("title") and not text else ""
        text = f"{text} ({lic['file']})" if text else f"{lic['file']}{title}"
    return text


def license_short(lic: Mapping[str, Any] | None) -> str:
    """One word for a table: the id ('apache-2.0'), the name of an 'other' license, else the file's title."""
    if not lic:
        return "-"
    ident, name = lic.get("id"), lic.get("name")
    if ident and ident != "other":
        return str(ident)
    if name:
        return str(name)
    if lic.get("title"):
        title = str(lic["title"])
        return title if len(title) <= 24 else title[:23] + "…"
    return str(ident or lic.get("file") or "-")


# --------------------------------------------------------------------------- quantization


def _bits(qc: Mapping[str, Any], method: str) -> int | None:
    for key in ("bits", "w_bit", "num_bits", "weight_bits"):
        v = qc.get(key)
        if isinstance(v, int):
            return v
    if method == "bitsandbytes" or "load_in_4bit" in qc or "load_in_8bit" in qc:
        if qc.get("load_in_4bit"):
            return 4
        if qc.get("load_in_8bit"):
            return 8
    if method == "fp8":
        return 8
    groups = qc.get("config_groups")
    if isinstance(groups, dict):  # compressed-tensors: the weights' num_bits of the first group
        for g in groups.values():
            w = (g or {}).get("weights") if isinstance(g, dict) else None
            if isinstance(w, dict) and isinstance(w.get("num_bits"), int):
                return w["num_bits"]
    return None


def _summary(qc: Mapping[str, Any], method: str, source: str, vllm_detects: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"method": method, "source": source, "vllm_detects": vllm_detects}
    bits = _bits(qc, method)
    if bits:
        out["bits"] = bits
    for key in ("group_size", "q_group_size", "fmt", "format", "bnb_4bit_quant_type", "version", "quant_format"):
        v = qc.get(key)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            out[key.replace("q_group_size", "group_size")] = v
    return out


def read_quantization(root: Path, config: Mapping[str, Any], files: Mapping[str, int]) -> dict[str, Any] | None:
    """{method, bits, group_size, ..., source, vllm_detects} or None for an unquantized checkpoint."""
    for key in ("quantization_config", "compression_config"):
        qc = config.get(key)
        if isinstance(qc, dict) and qc:
            method = str(qc.get("quant_method") or ("compressed-tensors" if key == "compression_config" else "unknown"))
            return _summary(qc, method.lower(), f"config.json {key}", True)
    text = config.get("text_config")
    if isinstance(text, dict) and isinstance(text.get("quantization_config"), dict):
        qc = text["quantization_config"]
        return _summary(qc, str(qc.get("quant_method") or "unknown").lower(), "config.json text_config", True)
    for name, (method, detects) in QUANT_FILES.items():
        if name in files:
            try:
                qc = json.loads((root / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                qc = {}
            qc = qc if isinstance(qc, dict) else {}
            if name == "hf_quant_config.json" and isinstance(qc.get("quantization"), dict):
                qc = qc["quantization"]
            found = str(qc.get("quant_method") or method).lower()
            return _summary(qc, found, name, detects)
    return None


def quantization_str(q: Mapping[str, Any] | None) -> str:
    """'awq 4-bit, group 128 (config.json quantization_config)' or '-'."""
    if not q:
        return "-"
    parts = [str(q.get("method"))]
    if q.get("bits"):
        parts[0] += f" {q['bits']}-bit"
    if q.get("group_size"):
        parts.append(f"group {q['group_size']}")
    for key in ("fmt", "format", "bnb_4bit_quant_type"):
        if q.get(key):
            parts.append(str(q[key]))
    return ", ".join(parts) + (f" ({q['source']})" if q.get("source") else "")


def check_target(q: Mapping[str, Any] | None, target: str, *, model: str) -> None:
    """UserError (exit 2) if the cpu target cannot run this quantization (before anything is built)."""
    if not q or target != "cpu":
        return
    method = str(q.get("method"))
    if method not in CPU_RUNNABLE:
        raise UserError(
            f"model {model} is quantized with {method}, which transformers cannot run on CPU (its kernels need a GPU)",
            hint=f"build it with `sealift build {model} --target gpu` (vLLM), or import an unquantized checkpoint",
        )


def vllm_quantization(q: Mapping[str, Any] | None) -> str | None:
    """The `--quantization` vLLM needs on its command line: only a method it would not find in config.json."""
    if not q or q.get("vllm_detects", True):
        return None
    return str(q.get("method")) or None
