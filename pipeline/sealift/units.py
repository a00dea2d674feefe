"""Human units for sizes and parameter counts, as every summary and progress line shows them."""

from __future__ import annotations

__all__ = ["fmt_bytes", "fmt_params"]


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

