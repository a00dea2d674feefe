"""What a model looks like as OCI: the CNCF ModelPack media types, each file's kind, the model config, the shell.

    layer_type("model-00001-of-00002.safetensors") -> WEIGHT_TAR      (weight, weight.config, code or doc)
    model_config(model_dir, manifest, name, version, diff_ids) -> dict  (application/vnd.cncf.model.config.v1+json)
    static_shell(path) -> (bytes, "amd64")                              (busybox-static for the KServe modelcar)

The names follow the ModelPack spec (github.com/modelpack/model-spec, docs/spec.md, docs/config.md): a model
artifact is an OCI image manifest with `artifactType` application/vnd.cncf.model.manifest.v1+json, a config
of media type application/vnd.cncf.model.config.v1+json whose `modelfs.diffIds` are the uncompressed layers'
digests, and one layer per file annotated with `org.cncf.model.filepath`. sealift writes every file layer as an
uncompressed tar holding `models/<path>` (mode 0644, uid/gid 0, mtime 0): the same blob is then a layer of the
KServe modelcar image too (files under /models), so each weight is on the medium once.
"""

from __future__ import annotations

import fnmatch
import json
import struct
from pathlib import Path
from typing import Any

from sealift.core.errors import UserError

__all__ = ["CODE_TAR", "DOC_TAR", "EMPTY_CONFIG", "EMPTY_JSON", "FILEPATH", "IMAGE_CONFIG", "IMAGE_INDEX",
           "IMAGE_MANIFEST", "LAYER_TAR", "MODEL_ARTIFACT", "MODEL_CONFIG", "MODELS_DIR", "REF_NAME", "TITLE",
           "WEIGHT_CONFIG_TAR", "WEIGHT_TAR", "layer_type", "model_config", "static_shell"]

# OCI image spec
IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"

# CNCF ModelPack
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT_TAR = "application/vnd.cncf.model.weight.v1.tar"
WEIGHT_CONFIG_TAR = "application/vnd.cncf.model.weight.config.v1.tar"
CODE_TAR = "application/vnd.cncf.model.code.v1.tar"
DOC_TAR = "application/vnd.cncf.model.doc.v1.tar"
FILEPATH = "org.cncf.model.filepath"

#: Where the files are in every file layer (and so in the modelcar's root: /models, as KServe reads it).
MODELS_DIR = "models"

_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.msgpack", "*.h5",
            "*.npz", "*.pkl")
_CODE = ("*.py", "*.sh", "*.ipynb")
_DOCS = ("readme*", "*.md", "license*", "licence*", "notice*", "copying*", "*.pdf", "*.rst", "*.png", "*.jpg",
         "*.jpeg", "*.gif", "*.svg")
_PRECISIONS = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
               "float8_e4m3fn": "fp8", "int8": "int8"}


def layer_type(relpath: str) -> str:
    """The ModelPack media type of one model file: weight, code, doc, else weight.config (config, tokenizer,
    vocab, templates: what the runtime reads beside the weights)."""
    name = relpath.rsplit("/", 1)[-1].lower()
    if any(fnmatch.fnmatch(name, p) for p in _WEIGHTS) and name not in ("training_args.bin",):
        return WEIGHT_TAR
    if any(fnmatch.fnmatch(name, p) for p in _CODE):
        return CODE_TAR
    if any(fnmatch.fnmatch(name, p) for p in _DOCS):
        return DOC_TAR
    return WEIGHT_CONFIG_TAR


def _param_size(manifest_extra: dict[str, Any], weight_bytes: int, precision: str) -> str:
    """"7.6b" from the tensor check's count when import recorded one, else from the weight bytes and precision."""
    count = None
    for key in ("parameters", "param_count", "params"):
        value = (manifest_extra.get("tensors") or {}).get(key) if isinstance(manifest_extra.get("tensors"), dict) \
            else None
        value = value if value is not None else manifest_extra.get(key)
        if isinstance(value, int) and value > 0:
            count = value
            break
    if count is None:
        per = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "int8": 1}.get(precision)
        if not per or not weight_bytes:
            return ""
        count = weight_bytes // per
    for unit, scale in (("t", 10**12), ("b", 10**9), ("m", 10**6), ("k", 10**3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


def model_config(model_dir: Path, files: list[tuple[str, int]], *, name: str, version: str, license_ids: list[str],
                 diff_ids: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ModelPack config (application/vnd.cncf.model.config.v1+json) of a model directory.

    `files`: (path, size) of every model file in layer order; `diff_ids`: each layer's digest (uncompressed:
    the layer digest itself). Format, precision and quantization come from the files and config.json; nothing is
    read beyond config.json. No timestamp: the same model gives the same config bytes.
    """
    try:
        hf = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        hf = {}
    hf = hf if isinstance(hf, dict) else {}
    names = [p.lower() for p, _ in files]
    fmt = next((f for f, pats in (("safetensors", ("*.safetensors",)), ("gguf", ("*.gguf",)),
                                  ("pytorch", ("*.bin", "*.pt", "*.pth")), ("onnx", ("*.onnx",)))
                if any(fnmatch.fnmatch(n, p) for n in names for p in pats)), "")
    dtype = str(hf.get("torch_dtype") or hf.get("dtype") or (hf.get("text_config") or {}).get("torch_dtype") or "")
    precision = _PRECISIONS.get(dtype.replace("torch.", ""), dtype)
    quant = hf.get("quantization_config") or {}
    quantization = str(quant.get("quant_method") or "") if isinstance(quant, dict) else ""
    weight_bytes = sum(s for p, s in files if layer_type(p) == WEIGHT_TAR)
    config: dict[str, Any] = {"architecture": "transformer" if hf.get("model_type") else ""}
    config.update(format=fmt, paramSize=_param_size(extra or {}, weight_bytes, precision), precision=precision,
                  quantization=quantization)
    descriptor: dict[str, Any] = {"name": name, "version": version}
    if hf.get("model_type"):
        descriptor["family"] = str(hf["model_type"])
    if license_ids:
        descriptor["licenses"] = license_ids
    return {"descriptor": descriptor, "config": {k: v for k, v in config.items() if v},
            "modelfs": {"type": "layers", "diffIds": diff_ids}}


_ELF_MACHINES = {62: "amd64", 183: "arm64", 40: "arm", 243: "riscv64", 21: "ppc64le", 22: "s390x"}
PT_INTERP = 3


def static_shell(path: Path) -> tuple[bytes, str]:
    """The bytes of a static busybox (the modelcar's shell: KServe runs `sh -c 'ln -s /proc/$$/root/models ...'`)
    and its OCI architecture; UserError when it is missing or dynamically linked (it would not run in an image
    that holds nothing else)."""
    hint = "install it (Debian/Ubuntu: apt-get install busybox-static) or name a static busybox with --shell"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"the modelcar's shell {path}: {exc.strerror or exc}", hint=hint) from None
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise UserError(f"{path} is not a 64-bit little-endian ELF executable", hint=hint)
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == PT_INTERP:
            raise UserError(f"{path} is dynamically linked: the modelcar image holds no libc to run it", hint=hint)
    if machine not in _ELF_MACHINES:
        raise UserError(f"{path}: unknown ELF machine {machine}", hint=hint)
    return data, _ELF_MACHINES[machine]
