"""Which files of a downloaded checkpoint the store gets: leave out what the serving stack never reads.

Hub repos downloaded whole carry the weights more than once. When a complete
safetensors set covers the weights -- `model.safetensors.index.json` names
every tensor of the shards it lists, or a single `model.safetensors` holds
them (the two layouts transformers and vLLM read) -- these are left out by
default:

- `original/`: Meta's reference checkpoint (`consolidated.00.pth`,
  `params.json`, its `tokenizer.model`); transformers never reads it and vLLM
  ignores `original/**/*`.
- safetensors files beside the set that no index names (Mistral's
  `consolidated.safetensors`: the same weights again under other names;
  vLLM's own loader drops them too, and with no index it would load them).
- pickle copies of the weights (`pytorch_model*.bin`, `model*.bin|.pt|.pth`,
  `consolidated*.pth` and their `*.bin.index.json`), and trainer state
  (`training_args.bin`, `optimizer.pt`, `scheduler.pt`, `rng_state*.pth`,
  `scaler.pt`): transformers and vLLM read safetensors when they are there.
- other frameworks' copies (`flax_model*.msgpack`, `tf_model*.h5`).

A file the model's own Python code names (a string in its source) is kept.

The decision reads file names, the index JSON and safetensors headers only;
nothing is ever unpickled. `--include PATTERN` keeps what matches, `--exclude
PATTERN` leaves out what matches, with `hf download`'s matching (fnmatch on
the relative path, `*` crosses `/`, a pattern ending in `/` matches the whole
folder); --exclude wins over --include, as in `hf download`. The plan is
frozen: the import prints one line from it and records it in the manifest.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sealift.core.safetensors_header import HeaderError, read_safetensors_header
from sealift.core.units import fmt_bytes

__all__ = ["LeaveOut", "LeftOut", "plan_leave_out", "matches"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
ORIGINAL_DIR = "original/"

#: Pickle checkpoints of the weights, by file name (transformers' and Meta's names).
PICKLE_WEIGHTS = re.compile(
    r"^(pytorch_model|model|consolidated)([-._].*)?\.(bin|pt|pth)$|^(pytorch_model|model)(-[^/]*)?\.bin\.index\.json$"
)
#: Trainer state saved beside a fine-tuned model (transformers' Trainer names); no server reads it.
TRAINER_STATE = re.compile(r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")
#: Weights for other frameworks (transformers' FLAX_WEIGHTS_NAME / TF2_WEIGHTS_NAME, sharded or not).
OTHER_FRAMEWORKS = re.compile(r"^(flax_model([-.][^/]*)?\.msgpack(\.index\.json)?|tf_model([-.][^/]*)?\.h5(\.index\.json)?)$")

WHY_ORIGINAL = "Meta reference checkpoint"
WHY_UNINDEXED = "safetensors no index names"
WHY_PICKLE = "pickle copy of the safetensors weights"
WHY_TRAINER = "trainer state"
WHY_FRAMEWORK = "Flax/TensorFlow copy"


def _pattern(p: str) -> str:
    return p + "*" if p.endswith("/") else p  # huggingface_hub's _add_wildcard_to_directories


def matches(rel: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that `rel` matches (hf download's fnmatch rules), or None."""
    for p in patterns:
        if fnmatch.fnmatch(rel, _pattern(p)):
            return p
    return None


@dataclass(frozen=True)
class LeftOut:
    """One group of files left out: `name` as the line shows it, their bytes, why."""

    name: str
    files: tuple[str, ...]
    bytes: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "files": list(self.files), "bytes": self.bytes, "reason": self.reason}


@dataclass(frozen=True)
class LeaveOut:
    """The plan: which files stay out of the store, and on what grounds."""

    groups: tuple[LeftOut, ...] = ()
    #: What covers the weights ("model.safetensors.index.json", "model.safetensors"), or None.
    covered_by: str | None = None
    #: Why no default leave-out happened though there were candidates (an incomplete index ...).
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def files(self) -> set[str]:
        return {f for g in self.groups for f in g.files}

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.groups)

    def line(self) -> str | None:
        """'left out 16.1 GB the server never reads: original/ (Meta reference checkpoint), ...' or None."""
        if not self.groups:
            return None
        parts = [f"{g.name} ({g.reason}, {fmt_bytes(g.bytes)})" for g in self.groups]
        return f"left out {fmt_bytes(self.bytes)} the server never reads: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "covered_by": self.covered_by,
            "groups": [g.to_dict() for g in self.groups],
        }


# --------------------------------------------------------------------------- what covers the weights


def _header_tensors(path: Path) -> set[str] | None:
    """Tensor names of a safetensors file from its header (8 bytes + JSON), None if unreadable."""
    try:
        return set(read_safetensors_header(path).tensors)
    except HeaderError:
        return None


def _complete_set(root: Path, files: Mapping[str, int]) -> tuple[str | None, set[str], str | None]:
    """(what covers the weights, the root files that hold them, why not) from the index or model.safetensors.

    An index covers the weights when every shard it lists is there, every
    tensor it names is in the shard it points at, and each of those shards
    holds no tensor it leaves unnamed.
    """
    if INDEX_NAME in files:
        try:
            doc = json.loads((root / INDEX_NAME).read_text(encoding="utf-8"))
            wmap = doc["weight_map"]
            assert isinstance(wmap, dict) and wmap
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return None, set(), f"{INDEX_NAME} is unreadable"
        by_shard: dict[str, set[str]] = {}
        for tensor, shard in wmap.items():
            by_shard.setdefault(str(shard), set()).add(str(tensor))
        for shard, named in sorted(by_shard.items()):
            if shard not in files or "/" in shard:
                return None, set(), f"{INDEX_NAME} lists {shard}, which is not there"
            held = _header_tensors(root / shard)
            if held is None:
                return None, set(), f"{shard} has an unreadable header"
            if named - held:
                return None, set(), f"{INDEX_NAME} names {len(named - held)} tensors that {shard} lacks"
            if held - named:
                return None, set(), f"{shard} holds {len(held - named)} tensors {INDEX_NAME} does not name"
        return INDEX_NAME, set(by_shard) | {INDEX_NAME}, None
    if SINGLE_NAME in files:
        if _header_tensors(root / SINGLE_NAME) is None:
            return None, set(), f"{SINGLE_NAME} has an unreadable header"
        return SINGLE_NAME, {SINGLE_NAME}, None
    return None, set(), None


# --------------------------------------------------------------------------- the plan


def _named_safetensors(root: Path, files: Mapping[str, int]) -> set[str]:
    """Every safetensors file some `*.safetensors.index.json` names (relative to the index's folder)."""
    named: set[str] = set()
    for rel in files:
        if not rel.endswith(".safetensors.index.json"):
            continue
        try:
            wmap = json.loads((root / rel).read_text(encoding="utf-8")).get("weight_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        base = PurePosixPath(rel).parent
        named.update((base / str(s)).as_posix() for s in wmap.values())
    return named


def _default_reason(rel: str, named: set[str], covered_files: set[str]) -> str | None:
    if rel.startswith(ORIGINAL_DIR):
        return WHY_ORIGINAL
    if "/" in rel:
        return None  # other folders (a vision tower, an adapter) are the model's own business
    if rel.endswith(".safetensors") and rel not in named and rel not in covered_files:
        return WHY_UNINDEXED
    if PICKLE_WEIGHTS.match(rel):
        return WHY_PICKLE
    if TRAINER_STATE.match(rel):
        return WHY_TRAINER
    if OTHER_FRAMEWORKS.match(rel):
        return WHY_FRAMEWORK
    return None


def _named_by_code(root: Path, code_files: Iterable[str]) -> str:
    """The text of the model's own Python files: a file named there is kept (its code may read it)."""
    texts = []
    for rel in code_files:
        try:
            texts.append((root / rel).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            pass
    return "\n".join(texts)


def _group(left: dict[str, tuple[str, int]]) -> tuple[LeftOut, ...]:
    """original/ as one group; other files one group per reason, named by its files (first three)."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    for rel, (reason, _) in sorted(left.items()):
        key = (ORIGINAL_DIR if rel.startswith(ORIGINAL_DIR) and reason == WHY_ORIGINAL else "", reason)
        by_reason.setdefault(key, []).append(rel)
    groups = []
    for (folder, reason), rels in by_reason.items():
        if folder:
            name = folder
        elif len(rels) <= 3:
            name = ", ".join(rels)
        else:
            name = f"{', '.join(rels[:2])} and {len(rels) - 2} more"
        groups.append(LeftOut(name, tuple(rels), sum(left[r][1] for r in rels), reason))
    return tuple(groups)


def plan_leave_out(
    root: str | Path,
    files: Mapping[str, int],
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    code_files: Iterable[str] = (),
) -> LeaveOut:
    """What to leave out of `files` (relative path -> size) of the model at `root`.

    The default (see the module doc) applies only when a complete safetensors
    set covers the weights; `include` patterns keep files the default would
    leave out, `exclude` patterns leave out any file (and win over include).
    `code_files`: the model's .py files; a file whose name they mention is kept.
    Reads the index and safetensors headers, never a pickle.
    """
    root = Path(root)
    include, exclude = list(include), list(exclude)
    covered_by, covered_files, why_not = _complete_set(root, files)
    named = _named_safetensors(root, files)
    code_text = _named_by_code(root, code_files)
    left: dict[str, tuple[str, int]] = {}
    candidates = False
    for rel, size in files.items():
        pattern = matches(rel, exclude)
        if pattern is not None:
            left[rel] = (f"--exclude {pattern}", size)
            continue
        reason = _default_reason(rel, named, covered_files)
        if reason is None:
            continue
        candidates = True
        if covered_by is None or matches(rel, include) is not None:
            continue
        if reason != WHY_ORIGINAL and PurePosixPath(rel).name in code_text:
            continue
        left[rel] = (reason, size)
    notes = ()
    if candidates and why_not:  # a safetensors set is there but does not cover the weights: say why all stays
        notes = (f"kept every weight file, as the safetensors set may not cover the weights: {why_not}",)
    return LeaveOut(_group(left), covered_by, notes)
