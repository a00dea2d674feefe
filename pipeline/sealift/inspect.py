"""What a model directory is, and whether it is complete, before a byte is written.

`inspect_model(path)` reads config.json, every `*.index.json`, every
safetensors header (8-byte length + JSON, never the tensors) and the model's
own Python code (parsed with `ast`, never run unless --trust-remote-code).
Everything broken is collected and refused in one UserError line naming every
missing or broken file; a model that needs custom code or holds pickle weights
is refused unless the caller allows it. What needs transformers (the
architecture is known, the tokenizer loads offline with local_files_only)
runs in a child process (`Inspection`), so an import overlaps it with copying.
"""

from __future__ import annotations

import ast
import json
import os
import struct
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.errors import Failure, UserError
from sealift.manifest import hash_file, walk_files

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
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "n_ctx",
    "model_max_length",
)
# safetensors dtype code -> (torch-style name, bytes per element; 0 = packed/fractional)
ST_DTYPES: dict[str, tuple[str, float]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    "F6_E2M3": ("float6_e2m3", 0.75),
    "F6_E3M2": ("float6_e3m2", 0.75),
    "F4": ("float4_e2m1", 0.5),
}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format caps the JSON header at 100 MB


# --------------------------------------------------------------------------- formatting


def fmt_bytes(n: int | float | None) -> str:
    """Decimal units, as the progress bars show them: 1536 -> '1.5 kB'; None -> '-'."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_params(n: int | None) -> str:
    """494032768 -> '494.0M'; None -> '-'."""
    if n is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


# --------------------------------------------------------------------------- safetensors headers


class HeaderError(Exception):
    """A safetensors file whose header is unreadable or does not fit the file."""


@dataclass
class TensorInfo:
    dtype: str
    shape: list[int]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class SafetensorsHeader:
    path: Path
    file_size: int
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Parse a safetensors header and check every tensor's byte range fits the file.

    Reads the 8-byte little-endian header length and the JSON header only, so
    a truncated multi-GB file is caught in microseconds. Raises HeaderError.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise HeaderError(f"truncated ({file_size} bytes, no header)")
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > MAX_HEADER or 8 + hlen > file_size:
                raise HeaderError(f"truncated or not safetensors (header of {hlen} bytes, file of {file_size})")
            header_bytes = f.read(hlen)
    except OSError as exc:
        raise HeaderError(f"unreadable ({exc.strerror or exc})") from None
    try:
        header = json.loads(header_bytes)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeaderError(f"header is not valid JSON ({exc})") from None
    data_start = 8 + hlen
    data_len = file_size - data_start
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    need = 0
    for name, t in header.items():
        try:
            dtype, shape = str(t["dtype"]), [int(d) for d in t["shape"]]
            start, end = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"malformed header entry for tensor {name!r}") from None
        info = TensorInfo(dtype, shape, start, end)
        if start < 0 or end < start:
            raise HeaderError(f"tensor {name!r} has an invalid byte range {start}..{end}")
        elem = ST_DTYPES.get(dtype, (None, 0))[1]
        if elem and float(end - start) != info.numel * elem:
            raise HeaderError(f"tensor {name!r} ({dtype}{shape}) spans {end - start} bytes, expected {int(info.numel * elem)}")
        need = max(need, end)
        tensors[name] = info
    if need > data_len:
        raise HeaderError(f"truncated ({file_size} bytes, the header needs {data_start + need})")
    if need < data_len:  # safetensors itself refuses a buffer its header does not fully index
        raise HeaderError(f"has {data_len - need} bytes after its last tensor ({file_size} bytes, the header covers {data_start + need})")
    return SafetensorsHeader(path, file_size, data_start, tensors, metadata)


# --------------------------------------------------------------------------- custom code


def _auto_map_refs(auto_map: Any) -> list[str]:
    """Every class reference string in an `auto_map`, nested lists and dicts flattened (nulls dropped)."""
    if isinstance(auto_map, str):
        return [auto_map]
    if isinstance(auto_map, (list, tuple)):
        return [ref for v in auto_map for ref in _auto_map_refs(v)]
    if isinstance(auto_map, dict):
        return [ref for v in auto_map.values() for ref in _auto_map_refs(v)]
    return []


def auto_map_modules(auto_map: Any) -> list[tuple[str, str | None]]:
    """(module, repo or None) for every class reference in an `auto_map`.

    Values look like "modeling_x.XForCausalLM", "org/repo--modeling_x.X", or a
    list of those (tokenizers: [slow, fast], either may be null).
    """
    out: list[tuple[str, str | None]] = []
    for ref in _auto_map_refs(auto_map):
        repo, _, rest = ref.rpartition("--")
        module = rest.rsplit(".", 1)[0] if "." in rest else rest
        item = (module, repo or None)
        if module and item not in out:
            out.append(item)
    return out


def _module_file(root: Path, base: Path, dotted: str) -> Path | None:
    """The file for a dotted module relative to base: base/a/b.py or base/a/b/__init__.py (None if neither)."""
    stem = base.joinpath(*dotted.split("."))
    for cand in (stem.with_name(stem.name + ".py"), stem / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _in_try(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            return True
    return False


@dataclass
class CodeScan:
    files: list[str] = field(default_factory=list)  # relative paths, the closure from auto_map
    missing: list[str] = field(default_factory=list)  # "what: why" problems
    external: set[str] = field(default_factory=set)  # top-level packages imported outside try:


def scan_code(root: Path, modules: list[tuple[str, str | None]]) -> CodeScan:
    """Follow auto_map modules and every local module they import (relative, or absolute same-dir)."""
    scan = CodeScan()
    seen: set[Path] = set()
    queue: list[Path] = []
    for module, repo in modules:
        f = _module_file(root, root, module)
        if f is None:
            where = f" (auto_map points at {repo})" if repo else " (named in auto_map)"
            scan.missing.append(f"{module.replace('.', '/')}.py missing{where}")
        else:
            queue.append(f)
    while queue:
        f = queue.pop()
        if f in seen:
            continue
        seen.add(f)
        rel = f.relative_to(root).as_posix()
        scan.files.append(rel)
        try:
            tree = ast.parse(f.read_bytes(), filename=rel)
        except (SyntaxError, ValueError) as exc:
            scan.missing.append(f"{rel} does not parse ({exc.__class__.__name__}: line {getattr(exc, 'lineno', '?')})")
            continue
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            targets: list[tuple[Path, str, str]] = []  # (base dir, dotted module, as written)
            if isinstance(node, ast.ImportFrom) and node.level:
                base = f.parent
                for _ in range(node.level - 1):
                    base = base.parent
                if node.module:
                    targets.append((base, node.module, "." * node.level + node.module))
                else:
                    targets += [(base, a.name, "." * node.level + a.name) for a in node.names]
                for b, dotted, written in targets:
                    mf = _module_file(root, b, dotted)
                    if mf is None and not node.module:
                        continue  # `from . import name` may name an attribute of a package
                    if mf is None:
                        scan.missing.append(f"{dotted.replace('.', '/')}.py missing (imported by {rel} as {written})")
                    elif root in mf.parents or mf.parent == root:
                        queue.append(mf)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for dotted in names:
                    top = dotted.split(".")[0]
                    if not top:
                        continue
                    local = _module_file(root, f.parent, dotted) or _module_file(root, f.parent, top)
                    if local is not None:
                        queue.append(local)
                    elif not _in_try(node, parents) and top not in sys.stdlib_module_names:
                        scan.external.add(top)
    scan.files.sort()
    return scan


def _importable(top: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- the model


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
        return rows

    def print_human(self) -> None:
        from sealift.console import out

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


def _context_length(config: dict[str, Any]) -> int | None:
    for cfg in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        for key in CONTEXT_KEYS:
            v = cfg.get(key)
            if isinstance(v, int) and v > 0:
                return v
    return None


def _load_tokenizer(root: Path, trust_remote_code: bool) -> str:
    """Load the tokenizer offline; returns its class name. Raises whatever transformers raises."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True, trust_remote_code=trust_remote_code)
    return type(tok).__name__


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
    architectures known, the tokenizer loads offline) run in a child process:
    importing transformers and torch takes seconds of GIL-bound Python, which
    a separate process overlaps with copying, and the model's tokenizer code
    (with trust_remote_code) runs there, not in sealift. `finish()` waits for
    it and raises the same one-line UserError if it failed; `failed` is set
    the moment it does, so a copy in progress can stop.
    """

    def __init__(
        self, path: str | Path, *, trust_remote_code: bool, allow_pickle: bool, with_transformers: bool = True
    ) -> None:
        self.root = root = Path(path)
        self.trust_remote_code = trust_remote_code
        if not root.is_dir():
            raise UserError(f"{root} is not a directory")
        if not (root / "config.json").is_file():  # before walking: SRC may be a big tree that is no model at all
            raise UserError(
                f"{root} is incomplete: config.json missing; nothing was written",
                hint="give the directory that holds the model's config.json, weights and tokenizer",
            )
        file_list = walk_files(root)
        files = {rel: (root / rel).stat().st_size if (root / rel).exists() else 0 for rel in file_list}
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
                hint="--to-safetensors converts them; --allow-pickle keeps them as they are",
            )

        missing_pkgs = sorted(p for p in scan.external if not _importable(p))
        if missing_pkgs:
            warnings.append(
                f"the model's code imports {', '.join(missing_pkgs)}, not installed here; the serving host needs them"
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
            context_length=_context_length(config),
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
        )
        self._deep_problems: list[str] = []
        self._deep_error: BaseException | None = None
        self.failed = threading.Event()  # set as soon as the background checks fail: callers stop copying
        self._request = {  # transformers_checks' arguments, for the child process (_child_main)
            "path": str(root),
            "model_type": model_type,
            "architectures": architectures,
            "auto_map": auto_map,
            "tokenizer_files": tok_files,
            "trust_remote_code": trust_remote_code,
        }
        self._lock = threading.Lock()
        self._closed = False
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run_checks if with_transformers else lambda: None,
                                        name="sealift-inspect", daemon=True)
        self._thread.start()

    def _spawn(self, hide_torch: bool) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._closed:
                return None
            self._child = subprocess.Popen(
                [sys.executable, "-c", "from sealift.inspect import _child_main; _child_main()",
                 json.dumps({**self._request, "hide_torch": hide_torch})],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_child_env(),
            )
            return self._child

    def _run_checks(self) -> None:
        """Run the checker: first with torch hidden (a tokenizer and a config need no torch: seconds
        faster, and what a torch-less host sees), then, only if that fails, with torch."""
        for hide_torch in (True, False):
            child = self._spawn(hide_torch)
            if child is None:
                return
            out, err = child.communicate()
            self._deep_error = None
            try:
                answer = json.loads(out.decode().strip().splitlines()[-1])
                self._deep_problems = list(answer["problems"])
                self.info.tokenizer_class = answer.get("tokenizer_class")
            except (ValueError, IndexError, KeyError, TypeError):
                last = (err.decode(errors="replace").strip().splitlines() or [f"exit code {child.returncode}"])[-1]
                self._deep_error = Failure(f"the transformers check of {self.root} crashed: {last[:300]}")
            if not self._deep_problems and self._deep_error is None:
                return
        with self._lock:
            if not self._closed:
                self.failed.set()

    def finish(self) -> ModelInfo:
        """Wait for the transformers checks; UserError (exit 2) if they failed. Returns the ModelInfo."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.1)  # short joins keep Ctrl-C responsive
        except BaseException:
            self.close()
            raise
        if self._deep_error is not None:
            raise self._deep_error
        if self._deep_problems:
            raise _incomplete(self.root, self._deep_problems)
        return self.info

    def close(self) -> None:
        """Stop the background check if it still runs (on Ctrl-C, another failure, or when it is not needed)."""
        with self._lock:
            self._closed = True
            child = self._child
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()


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


def _child_env() -> dict[str, str]:
    """The checker's environment: offline, quiet, and able to import this package."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.update(HF_HUB_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _child_main() -> None:
    """Entry of the checker process: argv[1] is the request (JSON); prints the answer (JSON) last."""
    import io

    req = json.loads(sys.argv[-1])  # Inspection._request: transformers_checks' arguments, plus hide_torch
    if req.pop("hide_torch", False):
        _hide_torch()
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()  # the model's own code may print; keep our answer the last line
    try:
        problems, tokenizer_class = transformers_checks(Path(req.pop("path")), **req)
    finally:
        sys.stdout = real_stdout
    print(json.dumps({"problems": problems, "tokenizer_class": tokenizer_class}), flush=True)


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
    custom_classes = {ref.rpartition("--")[2].rsplit(".", 1)[-1] for ref in _auto_map_refs(auto_map)}
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


def inspect_model(
    path: str | Path, *, trust_remote_code: bool, allow_pickle: bool, with_transformers: bool = True
) -> ModelInfo:
    """Inspect a model directory; UserError (exit 2) naming every missing/broken file.

    Also refuses custom code without trust_remote_code and pickle files without
    allow_pickle. Reads headers, never tensors. with_transformers (default)
    also checks, in a child process, that transformers knows the architecture
    and that the tokenizer loads offline (its code runs only when
    trust_remote_code allows it); without it the answer takes milliseconds
    and `tokenizer_class` stays None.
    """
    return Inspection(
        path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, with_transformers=with_transformers
    ).finish()
