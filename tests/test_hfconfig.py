"""sealift.core.hfconfig: the attention shape read once for the engine choice, the target's needs, vLLM's CPU
KV cache and the batcher's memory budget, from a config.json dict or a transformers config object alike."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, Qwen2Config

from sealift.bento.engine import cpu_blocker
from sealift.bundle.target import kv_cache_bytes
from sealift.core.hfconfig import AttentionShape, attention_shape, text_config
from sealift.serving.batching import kv_bytes_per_token

LLAMA = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_attention_heads": 32,
         "num_key_value_heads": 8, "num_hidden_layers": 32, "max_position_embeddings": 8192}


def test_a_config_json_and_its_transformers_object_give_one_shape():
    from_dict = attention_shape(LLAMA)
    from_object = attention_shape(LlamaConfig(**{k: v for k, v in LLAMA.items() if k != "architectures"}))
    assert from_dict == from_object == AttentionShape(layers=32, heads=32, kv_heads=8, head_dim=128)
    # Llama 3 8B: 128 KiB of keys and values a token in 16 bits
    assert from_dict.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131072


def test_head_dim_given_wins_over_hidden_size_over_heads():
    qwen3 = {**LLAMA, "hidden_size": 2048, "num_attention_heads": 16, "head_dim": 128}  # 2048 / 16 would say 128 too
    assert attention_shape(qwen3).head_dim == 128
    odd = {**LLAMA, "hidden_size": 1024, "num_attention_heads": 16, "head_dim": 256}
    assert attention_shape(odd).head_dim == 256
    cfg = Qwen2Config(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2)
    assert attention_shape(cfg) == AttentionShape(layers=2, heads=2, kv_heads=1, head_dim=64)


def test_a_wrapper_is_read_through_its_text_config():
    wrapped = {"architectures": ["LlavaForConditionalGeneration"], "text_config": dict(LLAMA)}
    assert text_config(wrapped) is wrapped["text_config"]
    assert attention_shape(wrapped) == attention_shape(LLAMA)


@pytest.mark.parametrize("drop", ["num_attention_heads", "num_hidden_layers", "hidden_size"])
def test_a_config_that_does_not_say_has_no_shape_and_each_user_says_so(drop):
    config = {k: v for k, v in LLAMA.items() if k != drop}
    assert attention_shape(config) is None
    assert kv_cache_bytes(config, tokens=1000) is None
    assert "no head size" in cpu_blocker(config)


def test_zero_or_garbage_is_no_shape():
    assert attention_shape({**LLAMA, "num_attention_heads": 0}) is None
    assert attention_shape({**LLAMA, "num_hidden_layers": "many"}) is None
    assert attention_shape({**LLAMA, "num_key_value_heads": None}).kv_heads == 32  # None: as many as heads


def test_the_users_agree_on_the_bytes():
    shape = attention_shape(LLAMA)
    assert kv_cache_bytes(LLAMA, tokens=8192) == shape.kv_bytes_per_token(2) * 8192 == 2**30
    obj = LlamaConfig(**{k: v for k, v in LLAMA.items() if k != "architectures"})
    assert kv_bytes_per_token(obj, 4) == shape.kv_bytes_per_token(4)
    assert cpu_blocker(LLAMA) is None  # head size 128 runs on vLLM's CPU attention
    assert "head size is 48" in cpu_blocker({**LLAMA, "hidden_size": 1536})
