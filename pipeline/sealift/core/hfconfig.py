"""What a Hugging Face config.json says about context length: the keys, read in one place.

inspection (at import) and the transformers backend (at serve time) both read
the context length through these keys.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONTEXT_KEYS", "context_length"]

#: config.json keys that hold the context length, in the order they are tried.
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "n_ctx",
    "model_max_length",
)


def context_length(config: dict[str, Any]) -> int | None:
    """The context length a config declares: its own keys, then text_config's and llm_config's (wrappers)."""
    for cfg in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        for key in CONTEXT_KEYS:
            v = cfg.get(key)
            if isinstance(v, int) and v > 0:
                return v
    return None
