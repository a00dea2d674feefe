"""The inspection's child process: the checks that need transformers, run apart from sealift.

    python -c "from sealift.model._inspection_child import main; main()" REQUEST_JSON

It imports transformers (and torch unless hidden: `_hide_torch` makes torch
look absent, as on a torch-less build host, which takes seconds off) and, with
trust_remote_code, runs the model's tokenizer code here, never in sealift's
own process. With a "tensors" request it also holds the safetensors headers
against the model class built on the meta device (sealift.model._tensor_check;
the model's own class only with trust_remote_code); "checks": false runs that
alone (Inspection starts one child for the tokenizer, torch hidden, and one for
the tensors, side by side). It prints one JSON line last: {"problems": [...],
"tokenizer_class": ..., "tensors": {...} or null}, and exits at once.
sealift.model.inspection.Inspection starts it and reads that answer.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from sealift.core.codescan import auto_map_refs

__all__ = ["child_env", "main", "transformers_checks"]


def _known_architectures() -> set[str]:
    """Every model class name transformers can build from a config (its auto mappings + exports)."""
    import transformers
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for key, mapping in vars(modeling_auto).items():
        if key.endswith("_MAPPING_NAMES") and isinstance(mapping, dict):
            for v in mapping.values():
                names.update([v] if isinstance(v, str) else [x for x in v if x])
    names.update(n for n in dir(transformers) if n[:1].isupper())
    return names




def _load_tokenizer(root: Path, trust_remote_code: bool) -> str:
    """Load the tokenizer offline; returns its class name. Raises whatever transformers raises."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True, trust_remote_code=trust_remote_code)
    return type(tok).__name__




def _hide_torch() -> None:
    """Make torch look absent in this process, as on a torch-less build host.

    transformers then skips importing it (seconds), and tokenizers and configs
    still load: they never needed it.
    """
    import importlib.util

    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None):
        if name == "torch" or name.startswith("torch."):
            return None
        return real_find_spec(name, package)

    importlib.util.find_spec = find_spec  # transformers asks find_spec whether torch is installed


def child_env() -> dict[str, str]:
    """The checker's environment: offline, quiet, and able to import this package."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.update(HF_HUB_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *filter(None, [env.get("PYTHONPATH")])])
    return env


def main() -> None:
    """Entry of the checker process: argv[1] is the request (JSON); prints the answer (JSON) last."""
    import io

    # Inspection._request: transformers_checks' arguments, plus hide_torch, tensors (the tensor check's files and
    # quantization, or None) and checks (False: the tensor check alone, for a converted checkpoint)
    req = json.loads(sys.argv[-1])
    if req.pop("hide_torch", False):
        _hide_torch()
    tensors = req.pop("tensors", None)
    run_checks = req.pop("checks", True)
    root = Path(req.pop("path"))
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()  # the model's own code may print; keep our answer the last line
    problems: list[str] = []
    tokenizer_class = verdict = None
    try:
        if run_checks:
            problems, tokenizer_class = transformers_checks(root, **req)
        if tensors is not None and not problems:
            from sealift.model._tensor_check import check_tensors

            verdict = check_tensors(root, files=tensors["files"], architectures=req["architectures"],
                                    auto_map=req["auto_map"], trust_remote_code=req["trust_remote_code"],
                                    quantization=tensors.get("quantization"))
    finally:
        sys.stdout = real_stdout
    print(json.dumps({"problems": problems, "tokenizer_class": tokenizer_class, "tensors": verdict}), flush=True)
    sys.stderr.flush()
    os._exit(0)  # the answer is out: skip the interpreter's teardown with torch loaded (about a second)


def transformers_checks(
    root: Path,
    *,
    model_type: str | None,
    architectures: list[str],
    auto_map: dict[str, Any],
    tokenizer_files: list[str],
    trust_remote_code: bool,
) -> tuple[list[str], str | None]:
    """model_type and architectures known to transformers (or given by auto_map code); the tokenizer loads offline.

    Runs in a child process (see Inspection): it imports transformers and torch,
    and with trust_remote_code it runs the model's tokenizer code.
    Returns (problems, tokenizer class name).
    """
    problems: list[str] = []
    if "AutoConfig" not in auto_map:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type not in CONFIG_MAPPING_NAMES:
            problems.append(f"config.json model_type {model_type!r} unknown to transformers (and no auto_map code)")
    custom_classes = {ref.rpartition("--")[2].rsplit(".", 1)[-1] for ref in auto_map_refs(auto_map)}
    known = _known_architectures()
    for arch in architectures:
        if arch not in known and arch not in custom_classes:
            problems.append(f"config.json architecture {arch!r} unknown to transformers (and no auto_map code)")
    if problems:
        return problems, None
    try:
        return [], _load_tokenizer(root, trust_remote_code)
    except Exception as exc:  # transformers raises many kinds; all mean "cannot load"
        text = str(exc).strip()
        msg = text.splitlines()[0][:160] if text else type(exc).__name__
        return [f"tokenizer ({', '.join(tokenizer_files)}) does not load offline: {msg}"], None


