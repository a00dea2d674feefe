"""Pickle weights to safetensors (`sealift import --to-safetensors`): torch.load(weights_only=True), hash what is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sealift.core.atomic import write_atomic
from sealift.core.errors import UserError
from sealift.model.inspection import ModelInfo
from sealift.model.manifest import FileEntry

__all__ = ["convert_pickles", "safetensors_name"]


def safetensors_name(rel: str) -> str:
    p = Path(rel)
    stem = p.stem.replace("pytorch_model", "model", 1)
    return p.with_name(stem + ".safetensors").as_posix()


def convert_pickles(src_root: Path, info: ModelInfo, dst_root: Path) -> tuple[list[FileEntry], dict[str, str], set[str]]:
    """torch.load(weights_only=True) each pickle and write it as safetensors, hashing the bytes written.

    Returns (entries, {pickle: safetensors}, source files consumed: the pickles
    and their `*.bin.index.json`, which is rewritten as `*.safetensors.index.json`).
    """
    try:
        import torch
        from safetensors.torch import save as st_save
    except ImportError:
        raise UserError("--to-safetensors needs torch", hint="pip install torch==2.13.0 (CPU)") from None
    entries: list[FileEntry] = []
    renamed: dict[str, str] = {}
    consumed: set[str] = set()
    for rel in info.pickle_files:
        new = safetensors_name(rel)
        consumed.add(rel)
        if new in info.files:
            renamed[rel] = f"{new} (already there; pickle left out)"
            continue
        try:
            state = torch.load(src_root / rel, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError and friends: not a plain tensor dict
            raise UserError(
                f"{rel} cannot be converted: {str(exc).strip().splitlines()[0][:160]}",
                hint="remove it from the source, or keep pickles with --allow-pickle",
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{rel} is not a dict of tensors", hint="remove it from the source, or keep pickles with --allow-pickle")
        seen: set[int] = set()
        tensors = {}
        for k, v in state.items():  # safetensors refuses shared storage (tied weights): give each its own
            ptr = v.untyped_storage().data_ptr()
            tensors[k] = v.contiguous().clone() if ptr in seen else v.contiguous()
            seen.add(ptr)
        data = st_save(tensors, metadata={"format": "pt"})
        del state, tensors
        dst = dst_root / new
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dst, data)
        entries.append(FileEntry(new, len(data), hashlib.sha256(data).hexdigest()))
        renamed[rel] = new
        del data
    for rel in sorted(f for f in info.files if f.endswith(".bin.index.json") or f.endswith(".pt.index.json")):
        doc = json.loads((src_root / rel).read_text())
        doc["weight_map"] = {k: Path(safetensors_name(v)).name for k, v in doc.get("weight_map", {}).items()}
        new = rel.replace("pytorch_model", "model", 1).rsplit(".", 3)[0] + ".safetensors.index.json"
        consumed.add(rel)
        if new in info.files:
            continue
        data = (json.dumps(doc, indent=2) + "\n").encode()
        write_atomic(dst_root / new, data)
        entries.append(FileEntry(new, len(data), hashlib.sha256(data).hexdigest()))
        renamed[rel] = new
    return entries, renamed, consumed

