"""The version of sealift (the one pyproject.toml declares) and the versions of its stack it was tested with."""

from __future__ import annotations

__all__ = ["TESTED", "TESTED_PYTHON", "__version__", "tested_range"]

__version__ = "0.1.0"

#: distribution -> (lowest, newest) version tested. The lowest of each direct dependency is pyproject.toml's
#: floor and `make test-floors` runs the whole path at it (scripts/floors.py); the newest is what `make test`
#: ran with. README's table ("Tested versions") is this one; tests/test_floors.py holds the three together.
#: torch, vllm and openllm are not dependencies: torch is the CPU build `make install` pins, vllm the version a
#: gpu bento pins, openllm the one `sealift install --with-openllm` serves through.
TESTED: dict[str, tuple[str, str]] = {
    "bentoml": ("1.4.24", "1.4.40"),
    "transformers": ("4.56.0", "5.24.0"),
    "torch": ("2.13.0", "2.13.0"),
    "vllm": ("0.32.0", "0.32.0"),
    "openllm": ("0.6.30", "0.6.30"),
    "uv": ("0.6.15", "0.13.9"),
    "huggingface-hub": ("0.34.0", "2.4.0"),
    "tokenizers": ("0.22.0", "0.23.3"),
    "safetensors": ("0.4.3", "0.8.0"),
    "typer": ("0.15.4", "0.29.2"),
    "rich": ("13.7.1", "15.0.0"),
    "jinja2": ("3.1.0", "3.1.6"),
    "cyclonedx-python-lib": ("11.6.0", "11.12.0"),
    "psutil": ("5.0.0", "7.2.2"),
    "tomli": ("1.1.0", "1.1.0"),
}

#: The Pythons the test suite ran on (3.11.7, and Debian 12's own 3.11.2 in tests/test_system_python.py).
#: pyproject.toml allows 3.10 and later; 3.10, 3.12 and 3.13 were not installed where this was measured.
TESTED_PYTHON = ("3.11", "3.11")


def tested_range(dist: str) -> str | None:
    """"4.56.0 - 5.24.0" (or the one version) tested for `dist`; None for one sealift does not track."""
    low, high = TESTED.get(dist, (None, None))
    if low is None:
        return None
    return low if low == high else f"{low} - {high}"
