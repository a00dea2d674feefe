#!/usr/bin/env python3
"""Write a tiny but real causal LM directory, offline.

    python scripts/make_tiny_model.py OUT [--arch llama|qwen2] [--custom-code]
                                          [--shards N] [--hidden-size H] [--layers L]

The model has random weights in safetensors, a byte-level BPE tokenizer trained
with `tokenizers` on a few lines of text, a ChatML chat template and a
generation_config.json: everything `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` need with `local_files_only=True`.

`--custom-code` writes a trust_remote_code model instead: config.json has an
`auto_map` that points at its own configuration_tiny.py and modeling_tiny.py;
modeling_tiny.py imports configuration_tiny.py and a third local module,
tiny_layers.py. `--shards N` splits the weights into N safetensors files with a
model.safetensors.index.json.

Tests import `make_model` from here; nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "An air-gapped server never reaches the internet.",
    "Every byte that arrives must be the byte that left.",
    "sealift carries a language model across the gap on a USB disk.",
    "Hello, how are you today? I am fine, thank you.",
    "What is the capital of France? Paris is the capital of France.",
    "Banks, hospitals and factories run models on their own GPUs.",
    "user assistant system: answer briefly and truthfully.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Qwen2.5's tool-calling chat template, trimmed: tools in the system turn, calls as <tool_call>{...}</tool_call>,
#: tool results as <tool_response> in a user turn (what `detect_tool_parser` reads as "hermes").
TOOLS_CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{%- else %}You are a helpful assistant."
    "{%- endif %}\n\n# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\nFor each function call, "
    "return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant"
    "{%- if message.content %}\n{{ message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}"
    "\n<tool_call>\n{\"name\": \"{{ tool_call.name }}\", \"arguments\": {{ tool_call.arguments | tojson }}}"
    "\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

CONFIGURATION_TINY = '''\
"""Configuration of the tiny custom-code model (trust_remote_code)."""
from transformers import LlamaConfig


class TinyConfig(LlamaConfig):
    model_type = "tiny-custom"
'''

TINY_LAYERS = '''\
"""A local helper module that modeling_tiny.py imports."""


def describe(config) -> str:
    return f"tiny-custom with {config.num_hidden_layers} layers"
'''

MODELING_TINY = '''\
"""Modeling code of the tiny custom-code model (trust_remote_code)."""
from transformers import LlamaForCausalLM

from .configuration_tiny import TinyConfig
from .tiny_layers import describe


class TinyForCausalLM(LlamaForCausalLM):
    config_class = TinyConfig

    def sealift_describe(self) -> str:
        return describe(self.config)
'''


def train_tokenizer(vocab_size: int = 512, *, tools: bool = False):
    """A byte-level BPE tokenizer trained on CORPUS, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    if tools:  # Qwen2.5's markers: added tokens that are not special (decoding keeps them)
        fast.add_tokens(["<tool_call>", "</tool_call>"])
        fast.chat_template = TOOLS_CHAT_TEMPLATE
    return fast


def _config(arch: str, vocab_size: int, hidden: int, layers: int, ctx: int, eos: int, pad: int, head_dim: int = 16):
    from transformers import LlamaConfig, Qwen2Config

    # head_dim 16 keeps the tests' models tiny; vLLM's CPU attention needs 32 or more (64 is what its tests use)
    heads = max(2, hidden // head_dim)
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=ctx,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    if arch == "qwen2":
        return Qwen2Config(**kwargs)
    if arch == "llama":
        return LlamaConfig(**kwargs)
    raise ValueError(f"unknown arch {arch!r}: use llama or qwen2")


def make_model(
    out: str | Path,
    *,
    arch: str = "llama",
    custom_code: bool = False,
    shards: int = 1,
    hidden_size: int = 64,
    layers: int = 2,
    context: int = 256,
    seed: int = 0,
    dtype: str = "float32",
    head_dim: int = 16,
    tools: bool = False,
) -> Path:
    """Write the model directory OUT and return it."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tools=tools)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    vocab = len(tokenizer)
    config = _config(arch, vocab, hidden_size, layers, context, eos, pad, head_dim)
    torch.manual_seed(seed)

    if custom_code:
        import importlib
        import sys
        import tempfile

        # Materialise the custom classes from the same source we ship, so the
        # saved weights are exactly what the shipped code loads.
        pkg_dir = Path(tempfile.mkdtemp(prefix="tinycode-"))
        pkg = pkg_dir / "sealift_tiny_custom"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "configuration_tiny.py").write_text(CONFIGURATION_TINY)
        (pkg / "tiny_layers.py").write_text(TINY_LAYERS)
        (pkg / "modeling_tiny.py").write_text(MODELING_TINY)
        sys.path.insert(0, str(pkg_dir))
        try:
            cfg_mod = importlib.import_module("sealift_tiny_custom.configuration_tiny")
            mdl_mod = importlib.import_module("sealift_tiny_custom.modeling_tiny")
        finally:
            sys.path.remove(str(pkg_dir))
        config = cfg_mod.TinyConfig(**config.to_dict())
        model = mdl_mod.TinyForCausalLM(config)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)

    model = model.to(getattr(torch, dtype)).eval()
    if shards > 1:
        total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        max_shard = max(1, math.ceil(total / shards / 1024)) * 1024
        model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard)
    else:
        model.save_pretrained(out, safe_serialization=True, max_shard_size="100GB")
    tokenizer.save_pretrained(out)

    gen = {"eos_token_id": eos, "pad_token_id": pad, "do_sample": False, "max_new_tokens": 32}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    if custom_code:
        (out / "configuration_tiny.py").write_text(CONFIGURATION_TINY)
        (out / "tiny_layers.py").write_text(TINY_LAYERS)
        (out / "modeling_tiny.py").write_text(MODELING_TINY)
        cfg = json.loads((out / "config.json").read_text())
        cfg["model_type"] = "tiny-custom"
        cfg["architectures"] = ["TinyForCausalLM"]
        cfg["auto_map"] = {
            "AutoConfig": "configuration_tiny.TinyConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM",
        }
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").strip().splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    p.add_argument("--custom-code", action="store_true", help="trust_remote_code model with auto_map")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head-dim", type=int, default=16, help="16 (tiny); 64 for vLLM's CPU attention")
    p.add_argument("--tools", action="store_true", help="a Qwen2.5-style chat template that renders tools")
    a = p.parse_args(argv)
    out = make_model(
        a.out, arch=a.arch, custom_code=a.custom_code, shards=a.shards, hidden_size=a.hidden_size,
        layers=a.layers, context=a.context, seed=a.seed, dtype=a.dtype, head_dim=a.head_dim, tools=a.tools,
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
