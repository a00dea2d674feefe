"""The inspection child's tensor check: safetensors headers held against the model class built on the meta device.

    verdict = check_tensors(root, files=[...], architectures=[...], auto_map={...}, trust_remote_code=False,
                            quantization={"method": "gptq", "config": {...}} or None)

Runs in sealift.model._inspection_child (it imports torch and transformers and,
with trust_remote_code only, the model's own modeling code). No weight is read:
each tensor of the headers becomes an empty tensor on torch's meta device, the
class AutoModelForCausalLM would load is built on the meta device from
config.json, and transformers' own loading steps decide what matches:
`get_model_conversion_mapping` + `convert_and_load_state_dict_in_model` (key
renames and conversions, the base-model prefix, shapes), then
`mark_tied_weights_as_initialized`, `tie_weights` and
`_adjust_missing_and_unexpected_keys` (tied embeddings,
`_keys_to_ignore_on_load_missing/unexpected`, rotary caches), as
`from_pretrained` runs them. Buffers a checkpoint may lack (computed ones) are
not counted missing. GPTQ and AWQ (gemm) checkpoints are held against the
packed tensors their config implies; other quantizations, and anything this
cannot build, come back "unchecked" with the reason, never as an error.

The verdict is a JSON-able dict: status (complete | incomplete | unchecked), reason,
expected, found, missing, mismatched, unexpected (each a list, the first
LIST_MAX, with *_count), by (the transformers version) and seconds.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any

from sealift.core.safetensors_header import ST_DTYPES, HeaderError, read_safetensors_header

__all__ = ["LIST_MAX", "check_tensors"]

#: At most this many names per list in the verdict (the counts say how many in all).
LIST_MAX = 20
#: config.json keys that mean a mixture of experts (quantized MoE layouts differ by tool: unchecked).
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def check_tensors(
    root: Path,
    *,
    files: list[str],
    architectures: list[str],
    auto_map: dict[str, Any],
    trust_remote_code: bool,
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The verdict (see the module docstring); never raises for a model it cannot judge."""
    t0 = time.perf_counter()
    try:
        verdict = _check(root, files, architectures, auto_map, trust_remote_code, quantization)
    except _Unchecked as why:
        verdict = {"status": "unchecked", "reason": str(why)}
    except Exception as exc:  # a model class that will not build on meta, a config transformers refuses: say so
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        verdict = {"status": "unchecked", "reason": f"the check failed: {type(exc).__name__}: {text}"}
    verdict.setdefault("seconds", {})["total"] = round(time.perf_counter() - t0, 3)
    try:
        import transformers

        verdict["by"] = f"transformers {transformers.__version__}"
    except ImportError:
        pass
    return verdict


class _Unchecked(Exception):
    """The check cannot judge this model; the message says why (one line)."""


def _check(root: Path, files: list[str], architectures: list[str], auto_map: dict[str, Any], trust: bool,
           quantization: dict[str, Any] | None) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"  # convert_and_load: no thread pool for meta tensors
    try:
        import torch
    except ImportError:
        raise _Unchecked("torch is not installed here") from None
    seconds["torch"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    seconds["transformers"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    state = _meta_state(torch, root, files)
    seconds["headers"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    config = AutoConfig.from_pretrained(str(root), local_files_only=True, trust_remote_code=trust)
    cls, config = _model_class(transformers, config, root, architectures, auto_map, trust)
    model = _build_on_meta(torch, cls, config)
    seconds["build"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    if quantization:
        _pack_for_quantization(torch, model, config, quantization)
    verdict = _compare(torch, model, state)
    seconds["compare"] = round(time.perf_counter() - t, 3)
    verdict["seconds"] = seconds
    verdict["model_class"] = cls.__name__
    return verdict


# --------------------------------------------------------------------------- the checkpoint side


def _torch_dtype(torch: Any, code: str) -> Any:
    name = ST_DTYPES.get(code, (None, 0))[0]
    dtype = getattr(torch, name, None) if name else None
    return dtype if isinstance(dtype, torch.dtype) else torch.uint8  # packed kinds: the shape still counts


def _meta_state(torch: Any, root: Path, files: list[str]) -> dict[str, Any]:
    """Every tensor the headers name, as an empty meta tensor of its shape and dtype (nothing read but headers)."""
    state: dict[str, Any] = {}
    for rel in files:
        try:
            header = read_safetensors_header(root / rel)
        except HeaderError as exc:  # the inspection refused such files already; here only if it changed since
            raise _Unchecked(f"{rel} {exc}") from None
        for name, t in header.tensors.items():
            state[name] = torch.empty(t.shape, dtype=_torch_dtype(torch, t.dtype), device="meta")
    if not state:
        raise _Unchecked("the safetensors files hold no tensors")
    return state


# --------------------------------------------------------------------------- the architecture side


def _model_class(transformers: Any, config: Any, root: Path, architectures: list[str], auto_map: dict[str, Any],
                 trust: bool) -> tuple[Any, Any]:
    """The class AutoModelForCausalLM.from_pretrained would build (its own resolution), else architectures[0]'s."""
    from transformers import AutoModelForCausalLM

    ref = auto_map.get("AutoModelForCausalLM")
    if isinstance(ref, str) and not trust:
        raise _Unchecked("the model's class is its own code, which runs only with --trust-remote-code")
    if isinstance(ref, str):
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        repo = str(root)
        if "--" in ref:
            repo, ref = ref.split("--", 1)
        return get_class_from_dynamic_module(ref, repo, local_files_only=True), config
    mapping = AutoModelForCausalLM._model_mapping
    if type(config) in mapping:
        from transformers.models.auto.auto_factory import _get_model_class

        cls = _get_model_class(config, mapping)
        text_config_class = getattr(config, "sub_configs", {}).get("text_config")
        if text_config_class is not None and getattr(cls, "config_class", None) == text_config_class:
            config = config.get_text_config()  # as from_config / from_pretrained do for a text-only class
        return cls, config
    for arch in architectures:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls, config
        for key, value in auto_map.items():
            if isinstance(value, str) and value.rsplit(".", 1)[-1] == arch and key.startswith("AutoModel"):
                if not trust:
                    raise _Unchecked("the model's class is its own code, which runs only with --trust-remote-code")
                from transformers.dynamic_module_utils import get_class_from_dynamic_module

                return get_class_from_dynamic_module(value, str(root), local_files_only=True), config
    raise _Unchecked(f"transformers has no model class for {', '.join(architectures) or type(config).__name__}")


def _build_on_meta(torch: Any, cls: Any, config: Any) -> Any:
    """cls(config) with every parameter on the meta device, as from_pretrained builds it (its init contexts)."""
    from transformers.utils import ContextManagers

    try:
        contexts = cls.get_init_context(torch.float32, False, False, None)
    except (AttributeError, TypeError):  # another transformers: the plain meta device
        contexts = [torch.device("meta")]
    with ContextManagers(contexts):
        return cls(config)


# --------------------------------------------------------------------------- quantized layouts


def _packed_shapes(torch: Any, method: str, qc: dict[str, Any], in_f: int, out_f: int, bias: bool) -> dict[str, Any]:
    """The tensors one quantized linear layer holds in a GPTQ or AWQ (gemm) checkpoint."""
    bits = int(qc.get("bits") or qc.get("w_bit") or 0)
    group = int(qc.get("group_size") or qc.get("q_group_size") or -1)
    group = in_f if group in (-1, 0) else group
    i32, f16 = torch.int32, torch.float16
    if method == "gptq":  # AutoGPTQ / GPTQModel QuantLinear
        shapes = {"qweight": ((in_f * bits // 32, out_f), i32), "qzeros": ((math.ceil(in_f / group), out_f * bits // 32), i32),
                  "scales": ((math.ceil(in_f / group), out_f), f16), "g_idx": ((in_f,), i32)}
    else:  # AutoAWQ WQLinear_GEMM
        if in_f % group:
            raise _Unchecked(f"awq group size {group} does not divide a layer of {in_f} inputs")
        shapes = {"qweight": ((in_f, out_f * bits // 32), i32), "qzeros": ((in_f // group, out_f * bits // 32), i32),
                  "scales": ((in_f // group, out_f), f16)}
    if bias:
        shapes["bias"] = ((out_f,), f16)
    return shapes


def _quant_plan(quantization: dict[str, Any], config: Any) -> tuple[str, dict[str, Any]]:
    """(method, raw config) when sealift knows the packed layout; _Unchecked with the reason otherwise."""
    method = str(quantization.get("method") or "unknown").lower()
    qc = quantization.get("config") if isinstance(quantization.get("config"), dict) else {}
    if method not in ("gptq", "awq"):
        raise _Unchecked(f"quantized with {method}: which tensors its layers hold depends on the tool, not checked")
    bits = qc.get("bits") or qc.get("w_bit")
    if bits not in (2, 3, 4, 8):
        raise _Unchecked(f"{method} with {bits!r} bits: a packing sealift does not know")
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if method == "gptq" and (fmt not in ("gptq", "gptq_v2") or qc.get("dynamic") or qc.get("modules_in_block_to_quantize")):
        raise _Unchecked(f"gptq in the {fmt!r} format or with per-module rules: a layout sealift does not know")
    if method == "awq" and str(qc.get("version") or "gemm").lower() != "gemm":
        raise _Unchecked(f"awq version {qc.get('version')!r}: only the gemm layout is known")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, key, None) for key in _MOE_KEYS):
        raise _Unchecked(f"a quantized mixture of experts ({method}): its experts' layout depends on the tool")
    return method, qc


def _pack_for_quantization(torch: Any, model: Any, config: Any, quantization: dict[str, Any]) -> None:
    """Swap each linear layer the quantization covers for one holding its packed tensors (as the quantizer would)."""
    method, qc = _quant_plan(quantization, config)
    nn = torch.nn
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise _Unchecked(f"{method}: no repeated blocks found to quantize")
    blocks, block_list = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
    skip = [str(s) for s in (qc.get("modules_to_not_convert") or []) if s]
    targets = []
    for name, module in block_list.named_modules(prefix=blocks):
        own = list(module.named_parameters(recurse=False))
        if isinstance(module, nn.Linear):
            if not any(s in name for s in skip):
                targets.append((name, module))
        elif any(p.dim() >= 2 for _, p in own):
            raise _Unchecked(f"{method}: {name} is not a plain linear layer; its packed layout is not known")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if method == "gptq" and qc.get("lm_head") and isinstance(head, nn.Linear):
        targets += [(n, m) for n, m in model.named_modules() if m is head]
    if not targets:
        raise _Unchecked(f"{method}: no linear layers to quantize were found")

    class Packed(nn.Module):
        def __init__(self, shapes: dict[str, Any]) -> None:
            super().__init__()
            for key, (shape, dtype) in shapes.items():
                self.register_parameter(key, nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"),
                                                          requires_grad=False))

    for name, linear in targets:
        parent, _, child = name.rpartition(".")
        shapes = _packed_shapes(torch, method, qc, linear.in_features, linear.out_features, linear.bias is not None)
        setattr(model.get_submodule(parent) if parent else model, child, Packed(shapes))


# --------------------------------------------------------------------------- the comparison


def _kind(torch: Any, dtype: Any) -> str:
    return "float" if dtype.is_floating_point else ("bool" if dtype == torch.bool else "int")


def _compare(torch: Any, model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """transformers' own loading steps on meta tensors; missing (less computed buffers), mismatched, unexpected."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import (
        WeightConverter,
        WeightRenaming,
        convert_and_load_state_dict_in_model,
        rename_source_key,
    )
    from transformers.modeling_utils import LoadStateDictConfig

    expected = {k: v for k, v in model.state_dict().items()}
    buffers = {name for name, _ in model.named_buffers()}
    mapping = get_model_conversion_mapping(model, None, None)
    # dtypes: a tensor loaded by name (renamed at most) whose kind (float / int / bool) is not the model's would be
    # cast into nonsense; shapes are judged by transformers below
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    wrong_dtype = []
    for key, tensor in state.items():
        target, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, expected)
        ref = expected.get(target) if pattern is None else None
        if ref is not None and tuple(ref.shape) == tuple(tensor.shape) and _kind(torch, ref.dtype) != _kind(torch, tensor.dtype):
            wrong_dtype.append(f"{key} is {str(tensor.dtype).removeprefix('torch.')}, "
                               f"expected {str(ref.dtype).removeprefix('torch.')}")
    load_config = LoadStateDictConfig(device_map={"": "meta"}, weight_mapping=mapping)
    info, _ = convert_and_load_state_dict_in_model(model, dict(state), load_config)
    model.mark_tied_weights_as_initialized(info)
    try:
        model.tie_weights(missing_keys=info.missing_keys, recompute_mapping=False)
    except TypeError:  # another transformers
        model.tie_weights()
    model._adjust_missing_and_unexpected_keys(info)

    missing = sorted((k for k in info.missing_keys if k not in buffers), key=_natural)
    mismatched = sorted((f"{name} is {_shape(found)}, expected {_shape(want)}" for name, found, want in info.mismatched_keys),
                        key=_natural)
    mismatched += [f"{name} could not be converted" for name in sorted(info.conversion_errors, key=_natural)]
    mismatched += sorted(wrong_dtype, key=_natural)
    unexpected = sorted(info.unexpected_keys, key=_natural)
    verdict: dict[str, Any] = {
        "status": "incomplete" if missing or mismatched else "complete",
        "expected": len([k for k in expected if k not in buffers]),
        "found": len(state),
    }
    for key, items in (("missing", missing), ("mismatched", mismatched), ("unexpected", unexpected)):
        verdict[key] = items[:LIST_MAX]
        verdict[f"{key}_count"] = len(items)
    return verdict


def _shape(shape: Any) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _natural(name: str) -> list[Any]:
    """model.layers.2 before model.layers.10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"\.", name)]
