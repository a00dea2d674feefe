#!/usr/bin/env python3
"""Time the golden recording (sealift.bento.golden.record) against plain `generate` of the same prompts, in one run.

    python scripts/bench_golden.py [--size-gb 1] [--workdir /tmp] [--keep] [--old]

Makes a complete Llama-shaped bf16 checkpoint of about SIZE GB (every tensor
present, random values, the trained tokenizer and chat template of
make_tiny_model), then measures, in this process, with torch on every core:

  child start   a fresh `python -c "import torch, transformers"` (what the build's child pays first)
  load          from_pretrained in float32 (bf16 on disk: the conversion is in it), and in bfloat16
  prefill       one forward of the long prompt (LONG_PROMPT_MAX tokens), float32: GFLOP/s
  decode        seconds a generated token (generate 9 tokens minus generate 1, short prompt): GB/s of weights
  baseline      plain greedy `model.generate` of the recording's prompts and lengths (same dtype, no scores)
  record        sealift.bento.golden.record with today's settings (and, with --old, the old 16/16/2048 ones)

and prints seconds, the ratios record / baseline (what the top-k logprob
extraction and detokenising add) and an estimate for a 7B model from the
measured GFLOP/s and GB/s. Note that bench_import's make_big_model writes
only up_proj tensors: transformers fills every missing weight at random, so
its "1 GB" model is a ~4.3B-parameter model in memory (printed with --old).
This machine is shared: the numbers are noisy, compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "pipeline"))


def make_complete_model(out: Path, size_bytes: int) -> tuple[int, int]:
    """A complete bf16 Llama checkpoint of about size_bytes; returns (bytes on disk, parameters)."""
    import torch
    from make_tiny_model import CHAT_TEMPLATE, train_tokenizer
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    tok = train_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    hidden, inter, heads, kv = 2048, 5504, 16, 4
    per_layer = 2 * hidden * hidden + 2 * hidden * (hidden // heads * kv) + 3 * hidden * inter + 2 * hidden
    layers = max(1, round(size_bytes / 2 / per_layer))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False, dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]  # what a hub config.json names (sealift import requires it)
    out.mkdir(parents=True)
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    tok.save_pretrained(out)
    params = sum(t.numel() for t in tensors.values())
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file()), params


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - started, result


def bench_import_params(size_bytes: int) -> int:
    """Parameters transformers builds for bench_import's make_big_model of size_bytes (meta device, no weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    layers = max(1, (size_bytes // 8) // (2048 * 4096 * 2)) * 8  # 8 shards of 16 MiB up_proj tensors
    config = LlamaConfig(hidden_size=4096, intermediate_size=2048, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=512)
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--old", action="store_true", help="also time the old settings (16 tokens, 2048-token prompt)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sealift.bento import golden

    work = Path(tempfile.mkdtemp(prefix="bench-golden-", dir=args.workdir))
    try:
        model_dir = work / "model"
        t_make, (disk, params) = timed(make_complete_model, model_dir, int(args.size_gb * 1024**3))
        threads = golden.recording_threads()
        torch.set_num_threads(threads)
        print(f"model: {disk / 1e9:.2f} GB bf16, {params / 1e9:.3f} B parameters (made in {t_make:.1f} s); "
              f"{threads} torch threads")
        rows: dict[str, float] = {}

        rows["child start (python -c 'import torch, transformers')"], _ = timed(
            subprocess.run, [sys.executable, "-c", "import torch, transformers"], check=True)
        tok = AutoTokenizer.from_pretrained(model_dir)
        rows["load float32"], model = timed(AutoModelForCausalLM.from_pretrained, model_dir, dtype=torch.float32)
        model.eval()
        rows["load bfloat16"], model16 = timed(AutoModelForCausalLM.from_pretrained, model_dir, dtype=torch.bfloat16)
        model16.eval()

        def gen(m, ids, n):
            t = torch.tensor([ids])
            with torch.inference_mode():
                return m.generate(input_ids=t, attention_mask=torch.ones_like(t), max_new_tokens=n, do_sample=False,
                                  pad_token_id=tok.eos_token_id)

        long_ids = (tok(golden.LONG_FILLER)["input_ids"] * 200)[: golden.LONG_PROMPT_MAX]
        short_ids = tok("The quick brown fox")["input_ids"]
        gen(model, short_ids, 1)  # warm-up
        t_prefill, _ = timed(gen, model, long_ids, 1)
        t1, _ = timed(gen, model, short_ids, 1)
        t9, _ = timed(gen, model, short_ids, 9)
        per_token = max(1e-9, (t9 - t1) / 8)
        gflops = 2 * params * len(long_ids) / t_prefill / 1e9
        gbps = 4 * params / per_token / 1e9
        rows[f"prefill {len(long_ids)} tokens float32"] = t_prefill
        rows["decode, a token, float32"] = per_token
        t16_1, _ = timed(gen, model16, short_ids, 1)
        t16_9, _ = timed(gen, model16, short_ids, 9)
        rows["decode, a token, bfloat16"] = max(1e-9, (t16_9 - t16_1) / 8)
        rows[f"prefill {len(long_ids)} tokens bfloat16"], _ = timed(gen, model16, long_ids, 1)
        del model16

        # baseline: plain generate of the recording's prompts with today's lengths, float32
        prompts = []
        for _, kind, content in golden.PROMPTS:
            if kind == "chat":
                text = tok.apply_chat_template(content, add_generation_prompt=True, tokenize=False)
                prompts.append((tok(text, add_special_tokens=False)["input_ids"], golden.MAX_NEW_TOKENS))
            else:
                prompts.append((tok(content)["input_ids"], golden.MAX_NEW_TOKENS))
        prompts.append((long_ids[: golden.LONG_PROMPT_MAX], golden.LONG_NEW_TOKENS))
        started = time.monotonic()
        for ids, n in prompts:
            gen(model, ids, n)
        baseline = time.monotonic() - started
        rows["baseline: plain generate of the prompts"] = baseline
        del model

        phases: dict[str, float] = {}
        rows["record (today's settings), whole"], _ = timed(golden.record, model_dir, phases=phases)
        record_gen = phases.get("short", 0) + phases.get("long", 0)
        rows["record: its generate + logprobs"] = record_gen
        old_gen = None
        if args.old:
            old: dict[str, float] = {}
            rows["record (old: 16 tokens, 2048-token prompt), whole"], _ = timed(
                golden.record, model_dir, phases=old, max_new_tokens=16, long_new_tokens=16, long_prompt_max=2048)
            old_gen = old.get("short", 0) + old.get("long", 0)
            rows["record (old): its generate + logprobs"] = old_gen

        for name, secs in rows.items():
            print(f"  {name:<52} {secs:8.2f} s")
        print(f"ratio record generate+logprobs / baseline generate: {record_gen / baseline:.2f}x")
        if old_gen is not None:
            print(f"ratio old settings / today's (generate+logprobs): {old_gen / record_gen:.2f}x")
            print(f"bench_import's make_big_model of {args.size_gb:g} GB builds "
                  f"{bench_import_params(int(args.size_gb * 1024**3)) / 1e9:.2f} B parameters in transformers "
                  "(only up_proj is on disk; the rest is initialised at random at every load)")
        print(f"measured: {gflops:.0f} GFLOP/s float32 prefill, {gbps:.1f} GB/s float32 decode (weights read a token)")
        p7 = 7e9
        tokens = (len(golden.PROMPTS)) * golden.MAX_NEW_TOKENS + golden.LONG_NEW_TOKENS
        est = 2 * p7 * golden.LONG_PROMPT_MAX / (gflops * 1e9) + tokens * 4 * p7 / (gbps * 1e9)
        print(f"7B estimate here (float32, today's settings, excluding load): prefill + {tokens} decode steps = "
              f"{est:.0f} s; load ~ {rows['load float32'] * p7 / params:.0f} s")
        print("machine: shared and loaded (load average "
              f"{' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}); the numbers are noisy")
        print(json.dumps({k: round(v, 3) for k, v in rows.items()}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
