"""A checkpoint's facts beyond its weights, gathered once at import and recorded with the model.

    facts = read_checkpoint(root, files, config=..., tokenizer_config=..., code_files=..., code_external=...,
                            left_out=plan)

`CheckpointFacts` holds what sealift.model.weights_select left out, the license and
quantization (sealift.model.model_card), the runtime imports (sealift.model.model_deps)
and the tensor check's verdict (sealift.model.tensors; set once the inspection finishes).
The importer puts `to_record()` in the model's bentoml metadata (key
`checkpoint`) and in sealift-manifest.json; `sealift build` reads it back
with `from_record` to add the model's packages, refuse what the target cannot
run and hand vLLM its `--quantization`; `sealift list` shows license and
quantization.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealift.model import model_card, model_deps, tensors as tensor_check
from sealift.model.weights_select import LeaveOut

__all__ = ["CheckpointFacts", "read_checkpoint", "RECORD_KEY"]

#: The key in the model's metadata and in sealift-manifest.json.
RECORD_KEY = "checkpoint"


@dataclass(frozen=True)
class CheckpointFacts:
    left_out: dict[str, Any] = field(default_factory=dict)  # LeaveOut.to_dict(); empty when nothing was
    license: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    runtime_imports: dict[str, str] = field(default_factory=dict)  # import name -> why
    left_out_line: str | None = None
    warnings: tuple[str, ...] = ()
    tensors: dict[str, Any] = field(default_factory=dict)  # sealift.model.tensors record; empty: not checked

    @property
    def quantization_method(self) -> str | None:
        return str(self.quantization["method"]) if self.quantization else None

    def to_record(self) -> dict[str, Any]:
        """For metadata and the manifest (no None values: bentoml refuses them)."""
        out: dict[str, Any] = {"runtime_imports": dict(self.runtime_imports)}
        if self.left_out.get("groups"):
            out["left_out"] = {k: v for k, v in self.left_out.items() if v is not None}
        if self.license:
            out["license"] = dict(self.license)
        if self.quantization:
            out["quantization"] = dict(self.quantization)
        if self.tensors:
            out["tensors"] = dict(self.tensors)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> CheckpointFacts:
        record = record or {}
        return cls(
            left_out=dict(record.get("left_out") or {}),
            license=dict(record["license"]) if record.get("license") else None,
            quantization=dict(record["quantization"]) if record.get("quantization") else None,
            runtime_imports=dict(record.get("runtime_imports") or {}),
            tensors=dict(record.get("tensors") or {}),
        )

    def to_result(self) -> dict[str, Any]:
        """Keys for `sealift import --json`."""
        return {
            "left_out": self.left_out.get("groups", []),
            "left_out_bytes": self.left_out.get("bytes", 0),
            "license": self.license,
            "quantization_config": self.quantization,
            "runtime_imports": self.runtime_imports,
            "tensors": self.tensors or None,
        }

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [("license", model_card.license_str(self.license))]
        if self.runtime_imports:
            rows.append(("needs", ", ".join(f"{k} ({v})" for k, v in self.runtime_imports.items())))
        if self.left_out_line:
            rows.append(("left out", self.left_out_line.split(": ", 1)[-1]))
        tensors = tensor_check.summary_value(self.tensors)
        if tensors:
            rows.append(("tensors", tensors))
        return rows


def read_checkpoint(
    root: Path,
    files: Mapping[str, int],
    *,
    config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any] | None,
    code_files: Iterable[str],
    code_external: Iterable[str],
    left_out: LeaveOut,
) -> CheckpointFacts:
    """Gather the facts from the files that stay (`files`), the parsed configs and the code scan."""
    lic, warnings = model_card.read_license(root, files)
    quant = model_card.read_quantization(root, config, files)
    imports = model_deps.code_imports(root, code_files, code_external)
    for name, why in {**model_deps.tokenizer_imports(files, tokenizer_config),
                      **model_deps.quantization_imports(quant["method"] if quant else None)}.items():
        imports.setdefault(name, why)
    warnings += list(left_out.notes)
    return CheckpointFacts(
        left_out=left_out.to_dict() if left_out.groups else {},
        license=lic,
        quantization=quant,
        runtime_imports=dict(sorted(imports.items())),
        left_out_line=left_out.line(),
        warnings=tuple(warnings),
    )
