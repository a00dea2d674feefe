"""The summary and the table of scripts/bench_serve.py: pure functions of the rounds it measured.

A round is a dict: {"order": [engines in the order measured], "raw_tok_s": float (unless --no-raw),
ENGINE: {"tok_s_N": float, "ttft_N": [seconds, ...], "constrained_tok_s_N": float (with --structured)}}
for each ENGINE measured ("transformers", "vllm") and each level N (clients; 1 is the single stream).
"""

from __future__ import annotations

import argparse
import statistics


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def best_and_median(values: list[float]) -> dict[str, float]:
    return {"best": max(values), "median": statistics.median(values)}


def summarise_backend(rounds: list[dict], backend: str, levels: list[int]) -> dict:
    """One engine's rounds: tok/s per level, over its own single stream, TTFT (rounds pooled), over raw generate."""
    rows = [r[backend] for r in rounds]
    single = max(r["tok_s_1"] for r in rows)
    table = []
    for n in levels:
        ttft = [t for r in rows for t in r[f"ttft_{n}"]]
        tok_s = best_and_median([r[f"tok_s_{n}"] for r in rows])
        entry = {
            "clients": n,
            "best_tok_s": tok_s["best"],
            "median_tok_s": tok_s["median"],
            "best_over_single": tok_s["best"] / single,
            "median_over_single": statistics.median(r[f"tok_s_{n}"] / r["tok_s_1"] for r in rows),
            "ttft_p50_s": percentile(ttft, 0.5),
            "ttft_p95_s": percentile(ttft, 0.95),
            "ttft_p99_s": percentile(ttft, 0.99),
        }
        if f"constrained_tok_s_{n}" in rows[0]:
            entry["constrained_best_tok_s"] = max(r[f"constrained_tok_s_{n}"] for r in rows)
            entry["constrained_cost"] = entry["best_tok_s"] / entry["constrained_best_tok_s"]
        table.append(entry)
    out: dict = {"levels": table}
    if all("raw_tok_s" in r for r in rounds):
        out["single_over_raw"] = {
            "best": single / max(r["raw_tok_s"] for r in rounds),
            "median": statistics.median(r[backend]["tok_s_1"] / r["raw_tok_s"] for r in rounds),
        }
    return out


def compare(rounds: list[dict], levels: list[int], top: str = "vllm", base: str = "transformers") -> list[dict]:
    """`top` over `base` per level: best tok/s over best tok/s, and the median of the ratios within a round
    (both engines measured minutes apart under the same load); each engine over its own single stream beside."""
    rows = []
    for n in levels:
        key = f"tok_s_{n}"
        best = {b: max(r[b][key] for r in rounds) for b in (top, base)}
        rows.append({
            "clients": n,
            f"{top}_tok_s": best[top],
            f"{base}_tok_s": best[base],
            f"{top}_over_single": best[top] / max(r[top]["tok_s_1"] for r in rounds),
            f"{base}_over_single": best[base] / max(r[base]["tok_s_1"] for r in rounds),
            "best": best[top] / best[base],
            "median": statistics.median(r[top][key] / r[base][key] for r in rounds),
        })
    return rows


def summarise(a: argparse.Namespace, levels: list[int], *, rounds: list[dict], hows: dict[str, str],
              memory: dict[str, dict], params: int, compile_s: tuple | None = None) -> dict:
    generated = f"generated llama hidden={a.hidden_size} layers={a.layers} head_dim={a.head_dim}"
    result: dict = {
        "model": str(a.model or generated),
        "params": params,
        "dtype": a.dtype,
        "max_tokens": a.max_tokens,
        "max_batch": a.max_batch,
        "rounds": rounds,
        "raw_tok_s": best_and_median([r["raw_tok_s"] for r in rounds]) if rounds and "raw_tok_s" in rounds[0] else None,
        "backends": {b: {"how": hows[b], **summarise_backend(rounds, b, levels), "server_memory_bytes": memory[b]}
                     for b in hows},
    }
    if len(hows) == 2:
        result["vllm_over_transformers"] = compare(rounds, levels)
    if compile_s:
        result["compile_50_fields_s"] = compile_s
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def print_table(a: argparse.Namespace, result: dict) -> None:
    print(f"{result['model']} ({result['params'] / 1e6:.{0 if result['params'] >= 1e7 else 2}f} M parameters, {result['dtype']}); {a.max_tokens} "
          f"tokens a request, max batch {a.max_batch or 'server default'}, {a.rounds} rounds: best (median)")
    raw = result["raw_tok_s"]
    if raw:
        print(f"  raw generate, one prompt at a time   {raw['best']:8.1f} ({raw['median']:8.1f}) tok/s")
    for backend, s in result["backends"].items():
        print(f"{backend}: {s['how']}")
        print(f"  {'clients':>7}  {'tok/s':>18}  {'x single':>13}  {'ttft p50':>9}  {'ttft p95':>9}  {'ttft p99':>9}")
        for row in s["levels"]:
            print(f"  {row['clients']:7d}  {row['best_tok_s']:8.1f} ({row['median_tok_s']:7.1f})  "
                  f"{row['best_over_single']:5.2f} ({row['median_over_single']:5.2f})  "
                  f"{row['ttft_p50_s'] * 1000:7.0f}ms  {row['ttft_p95_s'] * 1000:7.0f}ms  "
                  f"{row['ttft_p99_s'] * 1000:7.0f}ms")
        sr = s.get("single_over_raw")
        goals = backend == "transformers"  # sealift's own batcher's goals
        if sr:
            print(f"  single stream / raw generate: {sr['best']:.2f} ({sr['median']:.2f})"
                  + (f"  goal >= 0.9: {'met' if sr['best'] >= 0.9 else 'NOT met'}" if goals else ""))
        at8 = next((r for r in s["levels"] if r["clients"] == 8), None)
        if at8 and goals:
            print(f"  8 concurrent / single stream: {at8['best_over_single']:.2f} ({at8['median_over_single']:.2f})  "
                  f"goal >= 3: {'met' if at8['best_over_single'] >= 3 else 'NOT met'}")
        for row in s["levels"]:
            if "constrained_cost" in row:
                print(f"  constrained, {row['clients']} clients: {row['constrained_best_tok_s']:8.1f} tok/s; "
                      f"per-token cost {row['constrained_cost']:.2f}x of free  goal <= 1.15: "
                      f"{'met' if row['constrained_cost'] <= 1.15 else 'NOT met'}")
        mem = s["server_memory_bytes"]
        print(f"  server memory: {_mib(mem['after_warmup']['rss'])} after warm-up, "
              f"{_mib(mem['after_first_round']['rss'])} after round 1, {_mib(mem['end']['rss'])} at the end "
              f"(resident; {_mib(mem['end']['pss'])} proportional, {mem['end']['processes']} processes)")
    if "vllm_over_transformers" in result:
        print("vLLM over transformers, same model, same rounds: best (median of the ratios within a round)")
        print(f"  {'clients':>7}  {'vllm tok/s':>10}  {'transformers':>12}  {'vllm/transformers':>17}  "
              f"{'x single: vllm':>14}  {'transformers':>12}")
        for row in result["vllm_over_transformers"]:
            print(f"  {row['clients']:7d}  {row['vllm_tok_s']:10.1f}  {row['transformers_tok_s']:12.1f}  "
                  f"{row['best']:8.2f} ({row['median']:5.2f})  {row['vllm_over_single']:14.2f}  "
                  f"{row['transformers_over_single']:12.2f}")
        for backend, s in result["backends"].items():
            at8 = next((r for r in s["levels"] if r["clients"] == 8), None)
            end = s["server_memory_bytes"]["end"]
            print(f"  {backend:>12}: " + (f"TTFT at 8 clients p50 {at8['ttft_p50_s'] * 1000:.0f} ms, p99 "
                                          f"{at8['ttft_p99_s'] * 1000:.0f} ms; " if at8 else "")
                  + f"server memory {_mib(end['rss'])} resident, {_mib(end['pss'])} proportional")
    if "compile_50_fields_s" in result:
        first, cached, vocab = result["compile_50_fields_s"]
        print(f"50-field JSON schema compile: {first * 1000:.1f} ms first, {cached * 1000:.2f} ms cached (vocab {vocab})")
