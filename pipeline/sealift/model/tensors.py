"""Whole models only: what the tensor check reads, and its verdict recorded, printed or refused (issue 25).

    files = tensor_files(files)                          # the safetensors transformers would load
    quant = quantization_request(root, config, summary)  # the raw quantization config the check follows
    record, warnings, error = judge(verdict, root=root, allow_missing=False)

The check itself runs in the inspection child (sealift.model._tensor_check):
the headers' names, shapes and dtypes against the class built on the meta
device. Here its verdict becomes the `tensors` record that the manifest, the
model's metadata and the build summary carry, the warnings import prints, and
the one-line UserError (exit 2) for a checkpoint that misses tensors or has
them in the wrong shape, unless `--allow-missing-tensors`.

    record = {"status": "complete" | "incomplete" | "unchecked", "reason": ..., "expected": N, "found": N,
              "missing": [...], "missing_count": N, "mismatched": [...], "mismatched_count": N,
              "unexpected": [...], "unexpected_count": N, "allowed_by": "--allow-missing-tensors",
              "model_class": ..., "by": "transformers X"}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from sealift.core.errors import UserError

__all__ = ["ALLOW_FLAG", "build_line", "judge", "quantization_request", "summary_value", "tensor_files", "unchecked"]

ALLOW_FLAG = "--allow-missing-tensors"
#: Names shown in one line (the count says how many in all).
SHOWN = 3
_RECORD_KEYS = ("status", "reason", "expected", "found", "missing", "missing_count", "mismatched", "mismatched_count",
                "unexpected", "unexpected_count", "model_class", "by")


def tensor_files(root: Path, files: Mapping[str, int]) -> list[str]:
    """The top-level safetensors transformers would load: the shards a `*.safetensors.index.json` names, else every
    top-level `*.safetensors` (an adapter-only or oddly named save is then held against the architecture too)."""
    shards: set[str] = set()
    for rel in files:
        if "/" in rel or not rel.endswith(".safetensors.index.json"):
            continue
        try:
            wmap = json.loads((root / rel).read_text(encoding="utf-8")).get("weight_map") or {}
        except (OSError, ValueError, AttributeError):
            continue  # the inspection names a broken index
        shards.update(str(v) for v in wmap.values() if isinstance(v, str) and str(v) in files)
    if shards:
        return sorted(shards)
    return sorted(rel for rel in files if "/" not in rel and rel.endswith(".safetensors"))


def quantization_request(root: Path, config: Mapping[str, Any], summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """{"method", "config": the raw quantization config} for the check, from where model_card found it; None if unquantized."""
    if not summary:
        return None
    source = str(summary.get("source") or "")
    raw: Any = None
    if source.startswith("config.json text_config"):
        raw = (config.get("text_config") or {}).get("quantization_config")
    elif source.startswith("config.json "):
        raw = config.get(source.split(" ", 1)[1])
    elif source and "/" not in source:
        try:
            raw = json.loads((root / PurePosixPath(source).name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = None
        if isinstance(raw, dict) and isinstance(raw.get("quantization"), dict):  # hf_quant_config.json
            raw = raw["quantization"]
    return {"method": str(summary.get("method") or "unknown"), "config": raw if isinstance(raw, dict) else {}}


def unchecked(reason: str) -> dict[str, Any]:
    return {"status": "unchecked", "reason": reason}


def _names(items: list[str], count: int) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {count - SHOWN} more" if count > SHOWN else "")


def _problem(record: Mapping[str, Any]) -> str:
    """'2 of the 21 tensors LlamaForCausalLM declares are missing (a, b); 1 has the wrong shape or dtype (c ...)'."""
    parts = []
    cls = record.get("model_class") or "the architecture"
    if record.get("missing_count"):
        n = record["missing_count"]
        parts.append(f"{n} of the {record.get('expected', '?')} tensors {cls} declares "
                     f"{'is' if n == 1 else 'are'} missing ({_names(record['missing'], n)})")
    if record.get("mismatched_count"):
        n = record["mismatched_count"]
        parts.append(f"{n} {'has' if n == 1 else 'have'} the wrong shape or dtype ({_names(record['mismatched'], n)})")
    return "; ".join(parts)


def judge(verdict: Mapping[str, Any] | None, *, root: Path, allow_missing: bool) -> tuple[dict[str, Any], list[str], UserError | None]:
    """(the record, warnings to print, the refusal or None) for the child's verdict."""
    if not verdict:
        record = unchecked("the check gave no answer")
    else:
        record = {k: verdict[k] for k in _RECORD_KEYS if k in verdict}
    warnings: list[str] = []
    status = record.get("status")
    if status == "unchecked":
        warnings.append(f"tensors unchecked: {record.get('reason')}")
    if record.get("unexpected_count"):
        n = record["unexpected_count"]
        warnings.append(f"{n} tensor{'s' if n != 1 else ''} in the checkpoint {'are' if n != 1 else 'is'} not part of "
                        f"{record.get('model_class') or 'the model'} and ignored when it loads: "
                        f"{_names(record['unexpected'], n)} (an adapter, or another model's part such as a vision tower?)")
    if status != "incomplete":
        return record, warnings, None
    if allow_missing:
        record["allowed_by"] = ALLOW_FLAG
        warnings.append(f"not a whole model: {_problem(record)}; imported anyway ({ALLOW_FLAG}): transformers fills "
                        "what is missing with random weights")
        return record, warnings, None
    return record, warnings, UserError(
        f"{root} is not a whole model: {_problem(record)}; nothing was written",
        hint=f"get the complete checkpoint (a lost file or a merge step that dropped them?); {ALLOW_FLAG} imports "
             "it anyway, and transformers then fills what is missing with random weights",
    )


def summary_value(record: Mapping[str, Any] | None) -> str | None:
    """The `tensors` row of import's summary, or None when there was no check."""
    if not record:
        return None
    status = record.get("status")
    if status == "unchecked":
        return f"unchecked: {record.get('reason')}"
    by = f" ({record['by']})" if record.get("by") else ""
    extra = f"; {record['unexpected_count']} more in the checkpoint, ignored" if record.get("unexpected_count") else ""
    if status == "complete":
        return f"all {record.get('expected')} that {record.get('model_class') or 'the architecture'} declares{by}{extra}"
    return f"NOT WHOLE: {_problem(record)}; imported with {record.get('allowed_by') or ALLOW_FLAG}{extra}"


def build_line(record: Mapping[str, Any] | None) -> str | None:
    """A line for the build summary when the stored model's tensors are not known to be whole; None when they are."""
    if not record or record.get("status") == "complete":
        return None
    if record.get("status") == "unchecked":
        return f"tensors unchecked at import: {record.get('reason')}"
    return (f"tensors: {_problem(record)}; imported with {record.get('allowed_by') or ALLOW_FLAG}: transformers fills "
            "what is missing with random weights")
