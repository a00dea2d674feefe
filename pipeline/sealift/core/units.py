"""Human units for sizes and parameter counts, as every summary and progress line shows them."""

from __future__ import annotations

import re

__all__ = ["fmt_bytes", "fmt_params", "parse_size"]


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



_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'64K' -> 65536, '4G' -> 4 GiB, '120GB' / '1.5GiB' too (binary units; B and iB optional); ValueError else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"{text!r} is not a size (like 64K, 512M, 4G)")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return value
