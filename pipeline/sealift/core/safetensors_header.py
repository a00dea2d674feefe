"""Safetensors headers: the 8-byte length and the JSON header, checked against the file, never the tensors."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HeaderError", "MAX_HEADER", "ST_DTYPES", "SafetensorsHeader", "TensorInfo", "read_safetensors_header"]

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

