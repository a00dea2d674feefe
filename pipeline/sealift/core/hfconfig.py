"""What a Hugging Face config.json says about context length and attention shape, read in one place.

inspection (at import) and the transformers backend (at serve time) read the context length through
these keys; the engine choice (head size), the target's memory needs, vLLM's CPU KV cache and the
batcher's budget read the attention shape through `attention_shape`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONTEXT_KEYS", "AttentionShape", "attention_shape", "checkpoint_bytes", "context_length", "text_config"]

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


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config.json: its text_config where it wraps one, else itself."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


@dataclass(frozen=True)
class AttentionShape:
    """What the KV cache of a decoder is made of."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of keys and values one token takes over all layers: 2 (K, V) x layers x kv heads x head dim x dtype."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def attention_shape(config: Any) -> AttentionShape | None:
    """The attention shape of a config.json dict or a transformers config object (its text part), or None
    where it does not say (no num_attention_heads, no hidden_size or head_dim, no num_hidden_layers)."""
    if isinstance(config, dict):
        text = text_config(config)
        get = text.get
    else:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        def get(key: str, default: Any = None) -> Any:
            return getattr(text, key, default)
    try:
        heads = int(get("num_attention_heads"))
        kv_heads = int(get("num_key_value_heads") or heads)
        head_dim = int(get("head_dim") or int(get("hidden_size")) // heads)
        layers = int(get("num_hidden_layers"))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if min(heads, kv_heads, head_dim, layers) <= 0:
        return None
    return AttentionShape(layers, heads, kv_heads, head_dim)


def checkpoint_bytes(model_dir: str | Path) -> int:
    """Bytes of the weight files in a model folder: its *.safetensors, else its *.bin (0 where it has neither)."""
    root = Path(model_dir)
    return sum(f.stat().st_size for f in root.glob("*.safetensors")) or sum(f.stat().st_size for f in root.glob("*.bin"))
