"""What a model directory is, and whether it is complete, before a byte is written.

`inspect_model(path)` reads config.json, every `*.index.json`, every
safetensors header (8-byte length + JSON, never the tensors; see
sealift.core.safetensors_header) and the model's own Python code (parsed with `ast`,
never run unless --trust-remote-code; see sealift.core.codescan). Everything broken
is collected and refused in one UserError line naming every missing or broken
file; a model that needs custom code or holds pickle weights is refused unless
the caller allows it. What needs transformers (the architecture is known, the
tokenizer loads offline with local_files_only, and the safetensors headers hold
every tensor the architecture declares, in its shape: sealift.model.tensors)
runs in a child process (sealift.model._inspection_child), so an import
overlaps it with copying.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sealift.model._inspection_child import child_env
from sealift.model.checkpoint import CheckpointFacts, read_checkpoint
from sealift.core.codescan import auto_map_modules, scan_code
from sealift.core.errors import Failure, UserError
from sealift.core.hfconfig import context_length
from sealift.model import tensors as tensor_check
from sealift.model.manifest import hash_file, walk_files
from sealift.core.safetensors_header import ST_DTYPES, HeaderError, SafetensorsHeader, read_safetensors_header
from sealift.core.units import fmt_bytes, fmt_params

__all__ = ["Inspection", "ModelInfo", "PICKLE_SUFFIXES", "TOKENIZER_FILES", "inspect_model"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "qwen.tiktoken",
    "tokenizer.tiktoken",
)


@dataclass
class ModelInfo:
    """What inspect found: identity, size, weights, tokenizer, code, warnings."""

    path: Path
    model_type: str | None
    architectures: list[str]
    params: int | None
    dtype: str | None
    dtypes: dict[str, int]
    context_length: int | None
    weights_bytes: int
    gpu_memory_bytes: int
    files: dict[str, int]  # relative path -> size
    weight_files: list[str]
    pickle_files: list[str]
    tokenizer_files: list[str]
    tokenizer_class: str | None
    chat_template: bool
    custom_code: bool
    code_files: dict[str, str]  # relative path -> sha256
    quantization: str | None
    warnings: list[str] = field(default_factory=list)
    checkpoint: CheckpointFacts = field(default_factory=CheckpointFacts)  # left out, license, deps (issue 15)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def architecture(self) -> str:
        return self.architectures[0] if self.architectures else (self.model_type or "unknown")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["total_bytes"] = self.total_bytes
        d["files"] = len(self.files)
        return d

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a human summary."""
        rows = [
            ("architecture", f"{self.architecture} ({self.model_type})"),
            ("parameters", f"{fmt_params(self.params)}" + (f" ({self.params:,})" if self.params else "")),
            ("dtype", self.dtype or "-"),
            ("context", f"{self.context_length:,} tokens" if self.context_length else "-"),
            ("GPU memory", f"~{fmt_bytes(self.gpu_memory_bytes)} for the weights"),
        ]
        if self.quantization:
            rows.append(("quantization", self.quantization))
        rows.append(("tokenizer", f"{self.tokenizer_class or '?'} ({', '.join(self.tokenizer_files)})"))
        rows.append(("chat template", "yes" if self.chat_template else "no"))
        return rows + self.checkpoint.summary_rows()

    def print_human(self) -> None:
        from sealift.core.console import out

        for label, value in self.summary_rows():
            out.print(f"  {label:<14} {value}", soft_wrap=True)
        for rel, digest in self.code_files.items():
            out.print(f"  code           {rel}  sha256:{digest}", soft_wrap=True)



def _read_json(root: Path, rel: str, problems: list[str]) -> dict[str, Any] | None:
    p = root / rel
    if not p.exists():
        return None
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{rel} does not parse ({exc.__class__.__name__}: {str(exc).splitlines()[0][:80]})")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{rel} is not a JSON object")
        return None
    return doc




def _has_chat_template(root: Path, tok_cfg: dict[str, Any] | None) -> bool:
    if (root / "chat_template.jinja").is_file() or (root / "chat_template.json").is_file():
        return True
    if (root / "additional_chat_templates").is_dir():
        return True
    return bool(tok_cfg and tok_cfg.get("chat_template"))


def _looks_like_chat(root: Path, tok_json: dict[str, Any] | None) -> str | None:
    """Why this looks like a chat model (its name, chat special tokens in tokenizer.json), or None."""
    name = root.name.lower()
    parent = root.parent.parent.name.lower() if root.parent.name == "snapshots" else ""
    for word in ("instruct", "chat", "-it", "assistant"):
        if word in name or word in parent:
            return f"its name says {word.strip('-')!r}"
    added = tok_json.get("added_tokens") if tok_json else None
    if not isinstance(added, list):
        return None
    contents = {t.get("content") for t in added if isinstance(t, dict)}
    for marker in ("<|im_start|>", "[INST]", "<start_of_turn>", "<|start_header_id|>", "<|user|>"):
        if marker in contents:
            return f"its tokenizer has {marker}"
    return None


def _weights(root: Path, files: dict[str, int], problems: list[str]) -> tuple[list[str], list[SafetensorsHeader]]:
    """Check every index's shards exist and every safetensors header fits its file."""
    weight_files: set[str] = set()
    for rel in sorted(f for f in files if f.endswith(".index.json")):
        doc = _read_json(root, rel, problems)
        if doc is None:
            continue
        wmap = doc.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            problems.append(f"{rel} has no weight_map")
            continue
        base = Path(rel).parent
        for shard in sorted(set(map(str, wmap.values()))):
            shard_rel = (base / shard).as_posix()
            weight_files.add(shard_rel)
            if shard_rel not in files or not (root / shard_rel).is_file():
                problems.append(f"{shard_rel} missing (listed in {rel})")
    headers: list[SafetensorsHeader] = []
    for rel in sorted(f for f in files if f.endswith(".safetensors")):
        p = root / rel
        if not p.is_file():
            if rel not in weight_files:
                problems.append(f"{rel} missing (a dangling link)")
            continue
        weight_files.add(rel)
        try:
            headers.append(read_safetensors_header(p))
        except HeaderError as exc:
            problems.append(f"{rel} {exc}")
    for rel in files:
        if rel.endswith(PICKLE_SUFFIXES) and Path(rel).name.startswith(("pytorch_model", "model", "consolidated")):
            weight_files.add(rel)
    if not weight_files:
        problems.append("no weights (*.safetensors or pytorch_model*.bin)")
    return sorted(weight_files), headers


#: At most this many problems are named in the one-line refusal; the rest are counted.
MAX_PROBLEMS = 12


def _incomplete(root: Path, problems: list[str]) -> UserError:
    shown = problems[:MAX_PROBLEMS]
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"and {len(problems) - MAX_PROBLEMS} more")
    return UserError(
        f"{root} is incomplete: " + "; ".join(shown),
        hint="fetch the missing or broken files again; nothing was written",
    )


class Inspection:
    """inspect_model in two parts, so an import can overlap the slow part with copying.

    The constructor runs every check that reads the directory (config, index,
    safetensors headers, code closure, tokenizer files present and parsable,
    the custom-code and pickle refusals) and raises UserError before anything
    is written. The checks that need transformers (model_type and
    architectures known, the tokenizer loads offline; and in a second child
    beside it, the tensor check of sealift.model.tensors) run in a child process:
    importing transformers and torch takes seconds of GIL-bound Python, which
    a separate process overlaps with copying, and the model's tokenizer code
    (with trust_remote_code) runs there, not in sealift. `finish()` waits for
    it and raises the same one-line UserError if it failed; `failed` is set
    the moment it does, so a copy in progress can stop.
    """

    def __init__(
        self, path: str | Path, *, trust_remote_code: bool, allow_pickle: bool, with_transformers: bool = True,
        include: tuple[str, ...] | list[str] = (), exclude: tuple[str, ...] | list[str] = (),
        allow_missing_tensors: bool = False, converting: bool = False,
    ) -> None:
        self.root = root = Path(path)
        self.trust_remote_code = trust_remote_code
        self.allow_missing_tensors = allow_missing_tensors
        if not root.is_dir():
            raise UserError(f"{root} is not a directory")
        if not (root / "config.json").is_file():  # before walking: SRC may be a big tree that is no model at all
            raise UserError(
                f"{root} is incomplete: config.json missing; nothing was written",
                hint="give the directory that holds the model's config.json, weights and tokenizer",
            )
        file_list = walk_files(root)
        files = {rel: (root / rel).stat().st_size if (root / rel).exists() else 0 for rel in file_list}
        from sealift.model.weights_select import plan_leave_out  # what the server never reads stays out (issue 15)

        self.left_out = plan_leave_out(root, files, include=include, exclude=exclude,
                                       code_files=[f for f in files if f.endswith(".py")])
        file_list = [rel for rel in file_list if rel not in self.left_out.files]
        files = {rel: files[rel] for rel in file_list}
        problems: list[str] = []
        warnings: list[str] = []
        for rel in file_list:
            if not (root / rel).exists() and not rel.endswith(".safetensors"):
                problems.append(f"{rel} missing (a dangling link)")

        # config.json
        config: dict[str, Any] = _read_json(root, "config.json", problems) or {}
        model_type = config.get("model_type")
        architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
        auto_map = config.get("auto_map") or {}
        tok_cfg = _read_json(root, "tokenizer_config.json", problems) if "tokenizer_config.json" in files else None
        tok_modules = auto_map_modules((tok_cfg or {}).get("auto_map"))
        modules = list(dict.fromkeys(auto_map_modules(auto_map) + tok_modules))
        custom_code = bool(modules)
        if config:
            if not isinstance(model_type, str) or not model_type:
                problems.append("config.json has no model_type")
            if not architectures:
                problems.append("config.json has no architectures")

        # weights
        weight_files, headers = _weights(root, files, problems)
        pickle_files = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))

        # custom code
        scan = scan_code(root, modules)
        problems.extend(scan.missing)

        # tokenizer files
        tok_files = [f for f in TOKENIZER_FILES if f in files]
        tok_json: dict[str, Any] | None = None  # parsed once: it can be tens of MB
        if not tok_files:
            problems.append("tokenizer missing (no tokenizer.json, tokenizer.model or vocab files)")
        elif "tokenizer.json" in files:
            tok_json = _read_json(root, "tokenizer.json", problems)

        if problems:
            raise _incomplete(root, problems)

        # refusals the caller may lift
        py_files = {f for f in files if f.endswith(".py")}
        code_files = {rel: hash_file(root / rel) for rel in sorted(set(scan.files) | py_files)}
        if custom_code and not trust_remote_code:
            listing = ", ".join(f"{rel} (sha256:{code_files[rel][:12]})" for rel in scan.files)
            raise UserError(
                f"{root} needs its own Python code to load: {listing}",
                hint="read those files, then import with --trust-remote-code",
            )
        if pickle_files and not allow_pickle:
            raise UserError(
                f"{root} has pickle files, which can run code when loaded: {', '.join(pickle_files)}",
                hint="--to-safetensors converts them; --allow-pickle keeps them as they are; --exclude PATTERN leaves "
                     "them out" + "".join(f"; {note}" for note in self.left_out.notes),
            )

        missing_pkgs = sorted(p for p in scan.external if not _importable(p))
        if missing_pkgs:
            warnings.append(
                f"the model's code imports {', '.join(missing_pkgs)}, not installed here; the serving host needs them "
                "(`sealift build` adds their packages to the bento's requirements)"
            )

        # sizes, params, dtype: from the headers only
        dtypes: dict[str, int] = {}
        dtype_bytes: dict[str, int] = {}
        weights_bytes = 0
        for h in headers:
            for t in h.tensors.values():
                name = ST_DTYPES.get(t.dtype, (t.dtype.lower(), 0))[0]
                dtypes[name] = dtypes.get(name, 0) + t.numel
                dtype_bytes[name] = dtype_bytes.get(name, 0) + (t.end - t.start)
                weights_bytes += t.end - t.start
        params = sum(dtypes.values()) if headers else None
        dtype = max(dtype_bytes, key=lambda k: dtype_bytes[k]) if dtype_bytes else None
        if not headers:  # pickle weights only: their size is the estimate, the config names the dtype
            weights_bytes = sum(files[f] for f in weight_files if f in files)
            dtype = config.get("torch_dtype") or config.get("dtype")
        quant = config.get("quantization_config")
        quantization = (quant.get("quant_method") if isinstance(quant, dict) else None) or None
        checkpoint = read_checkpoint(root, files, config=config, tokenizer_config=tok_cfg, code_files=scan.files,
                                     code_external=scan.external, left_out=self.left_out)
        quantization = quantization or checkpoint.quantization_method
        warnings.extend(checkpoint.warnings)

        chat_template = _has_chat_template(root, tok_cfg)
        if not chat_template:
            why = _looks_like_chat(root, tok_json)
            warnings.append(
                f"no chat template{f' though it looks like a chat model ({why})' if why else ''}: "
                "/v1/chat/completions will refuse requests; /v1/completions works"
            )

        self.info = ModelInfo(
            path=root,
            model_type=model_type,
            architectures=architectures,
            params=params,
            dtype=str(dtype) if dtype else None,
            dtypes=dtypes,
            context_length=context_length(config),
            weights_bytes=weights_bytes,
            gpu_memory_bytes=weights_bytes,
            files=files,
            weight_files=weight_files,
            pickle_files=pickle_files,
            tokenizer_files=tok_files,
            tokenizer_class=None,
            chat_template=chat_template,
            custom_code=custom_code,
            code_files=code_files,
            quantization=str(quantization) if quantization else None,
            warnings=warnings,
            checkpoint=checkpoint,
        )
        self._deep_problems: list[str] = []
        self._deep_error: BaseException | None = None
        self._tensors: tuple[dict[str, Any], list[str], UserError | None] | None = None  # tensor_check.judge's answer
        self.failed = threading.Event()  # set as soon as the background checks fail: callers stop copying
        self._request: dict[str, Any] = {  # transformers_checks' arguments, for the child process
            "path": str(root),
            "model_type": model_type,
            "architectures": architectures,
            "auto_map": auto_map,
            "tokenizer_files": tok_files,
            "trust_remote_code": trust_remote_code,
        }
        self._quantization = tensor_check.quantization_request(root, config, checkpoint.quantization)
        st_files = tensor_check.tensor_files(root, files)
        why = None
        if st_files and not _importable("torch"):
            why = "torch is not installed here"
        elif st_files:
            self._request["tensors"] = {"files": st_files, "quantization": self._quantization}
        elif not converting:  # pickles only; the importer checks what --to-safetensors writes (recheck_tensors)
            why = "pickle weights, and nothing is unpickled to check them (--to-safetensors converts and checks them)"
        if why and with_transformers:
            self._tensors = tensor_check.judge(tensor_check.unchecked(why), root=root, allow_missing=allow_missing_tensors)
        self._lock = threading.Lock()
        self._closed = False
        self._children: list[subprocess.Popen[bytes]] = []
        # two children side by side: the tokenizer's (torch hidden: seconds faster) and the tensor check's (torch)
        targets = [self._run_checks, self._run_tensor_check] if with_transformers else []
        self._threads = [threading.Thread(target=t, name="sealift-inspect", daemon=True) for t in targets]
        for thread in self._threads:
            thread.start()

    def _spawn(self, request: dict[str, Any]) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._closed:
                return None
            child = subprocess.Popen(
                [sys.executable, "-c", "from sealift.model._inspection_child import main; main()",
                 json.dumps(request)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env(),
            )
            self._children.append(child)
            return child

    def _ask(self, request: dict[str, Any]) -> tuple[dict[str, Any] | None, str] | None:
        """Run the child on `request`: (its answer or None if it gave none, the last line of its stderr); None
        if the inspection was closed."""
        child = self._spawn(request)
        if child is None:
            return None
        out, err = child.communicate()
        last = (err.decode(errors="replace").strip().splitlines() or [f"exit code {child.returncode}"])[-1]
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None, last
        return (answer, last) if isinstance(answer, dict) and isinstance(answer.get("problems"), list) else (None, last)

    def _take(self, asked: tuple[dict[str, Any] | None, str]) -> bool:
        """Keep the child's answer; True if it passed every check."""
        answer, last = asked
        self._deep_error = None
        if answer is None:
            self._deep_error = Failure(f"the transformers check of {self.root} crashed: {last[:300]}")
            return False
        self._deep_problems = list(answer["problems"])
        self.info.tokenizer_class = answer.get("tokenizer_class")
        return not self._deep_problems

    def _run_checks(self) -> None:
        """The checker without the tensors: first with torch hidden (a tokenizer and a config need no torch:
        seconds faster, and what a torch-less host sees), then, only if that fails, with torch."""
        plain = {k: v for k, v in self._request.items() if k != "tensors"}
        for hide_torch in (True, False):
            asked = self._ask({**plain, "hide_torch": hide_torch})
            if asked is None:
                return
            if self._take(asked):
                return
        self._fail()

    def _run_tensor_check(self) -> None:
        """The tensor check alone, in its own child beside the other (it needs torch); should it give no answer,
        the tensors go unchecked: never a false error."""
        if "tensors" not in self._request:
            return
        asked = self._ask({**self._request, "checks": False, "hide_torch": False})
        if asked is None:
            return
        answer, last = asked
        verdict = answer.get("tensors") if answer else tensor_check.unchecked(f"the check crashed: {last[:200]}")
        self._tensors = tensor_check.judge(verdict, root=self.root, allow_missing=self.allow_missing_tensors)
        if self._tensors[2] is not None:
            self._fail()

    def _fail(self) -> None:
        with self._lock:
            if not self._closed:
                self.failed.set()

    def finish(self) -> ModelInfo:
        """Wait for the transformers checks; UserError (exit 2) if they failed. Returns the ModelInfo."""
        try:
            for thread in self._threads:  # the tokenizer's first: if it failed, the tensors' verdict is moot
                while thread.is_alive():
                    thread.join(0.1)  # short joins keep Ctrl-C responsive
                if self._deep_error is not None or self._deep_problems:
                    self.close()
                    break
        except BaseException:
            self.close()
            raise
        if self._deep_error is not None:
            raise self._deep_error
        if self._deep_problems:
            raise _incomplete(self.root, self._deep_problems)
        if self._tensors is not None:
            self._apply_tensors(*self._tensors)
        return self.info

    def _apply_tensors(self, record: dict[str, Any], warnings: list[str], error: UserError | None) -> None:
        if error is not None:
            raise error
        self.info.checkpoint = replace(self.info.checkpoint, tensors=record)
        self.info.warnings.extend(w for w in warnings if w not in self.info.warnings)
        self._tensors = None  # applied once

    def recheck_tensors(self, root: Path, files: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The tensor check alone on `root` (the files --to-safetensors wrote, staged with the rest), in the
        child: (the record, warnings); UserError as finish() for a checkpoint that is not whole."""
        st_files = tensor_check.tensor_files(root, dict.fromkeys(files, 0))
        if not st_files or not _importable("torch"):
            verdict = tensor_check.unchecked("torch is not installed here" if st_files else "no safetensors")
            return tensor_check.judge(verdict, root=self.root, allow_missing=self.allow_missing_tensors)[:2]
        request = {**{k: v for k, v in self._request.items() if k != "tensors"}, "path": str(root), "checks": False,
                   "tensors": {"files": st_files, "quantization": self._quantization}, "hide_torch": False}
        answer, last = self._ask(request) or (None, "stopped")
        verdict = answer.get("tensors") if answer else tensor_check.unchecked(f"the check crashed: {last[:200]}")
        record, warnings, error = tensor_check.judge(verdict, root=self.root, allow_missing=self.allow_missing_tensors)
        if error is not None:
            raise error
        return record, warnings

    def close(self) -> None:
        """Stop the background check if it still runs (on Ctrl-C, another failure, or when it is not needed)."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()




def inspect_model(
    path: str | Path, *, trust_remote_code: bool, allow_pickle: bool, with_transformers: bool = True,
    include: tuple[str, ...] | list[str] = (), exclude: tuple[str, ...] | list[str] = (),
    allow_missing_tensors: bool = False,
) -> ModelInfo:
    """Inspect a model directory; UserError (exit 2) naming every missing/broken file.

    Also refuses custom code without trust_remote_code and pickle files without
    allow_pickle. Reads headers, never tensors. with_transformers (default)
    also checks, in a child process, that transformers knows the architecture
    and that the tokenizer loads offline (its code runs only when
    trust_remote_code allows it), and holds the safetensors headers against the
    architecture (UserError for missing tensors or wrong shapes unless
    allow_missing_tensors); without it the answer takes milliseconds,
    `tokenizer_class` stays None and the tensors unchecked (no record).
    """
    return Inspection(
        path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, with_transformers=with_transformers,
        include=include, exclude=exclude, allow_missing_tensors=allow_missing_tensors,
    ).finish()



def _importable(top: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False
