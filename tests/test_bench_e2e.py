"""Issue 26: scripts/bench_e2e.py, the whole trip against the bare baseline. Its own logic only: the table and the
JSON from a made-up set of step records, its refusals, and one smoke trip of the tiny model (no wheels, no
guarantees). No timing is judged here: the numbers are the script's output, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_e2e  # noqa: E402
from bench_e2e import Step, Trip  # noqa: E402


def made_up(guarantees: str = "all", build: float = 50.0) -> Trip:
    steps = [Step("import", 10.0, 1_000_000_000, 1_000_000_000), Step("build (golden outputs)", build, 2_000, 3_000),
             Step("export (the proof)", 25.0), Step("install (runtime venv)", 10.0), Step("start, until ready", 4.0),
             Step("first chat answer", 1.0)]
    base = [Step("cp -r to the medium", 5.0, 1_000_000_000, 1_000_000_000), Step("sha256sum there", 5.0),
            Step("cp -r off the medium", 5.0), Step("sha256sum -c", 5.0), Step("start, until ready", 4.0),
            Step("first chat answer", 1.0)]
    return Trip("big", guarantees, "transformers", steps, base, 1_070_000_000)


def test_summary_has_each_steps_share_the_totals_the_ratio_and_the_biggest_share():
    s = bench_e2e.summarize(made_up())
    assert s["sealift_seconds"] == 100.0 and s["baseline_seconds"] == 25.0
    assert s["ratio"] == 4.0 and s["goal"] == 1.3
    assert [r["share"] for r in s["sealift"]] == [0.1, 0.5, 0.25, 0.1, 0.04, 0.01]
    assert sum(r["share"] for r in s["baseline"]) == pytest.approx(1.0)
    assert s["biggest"] == {"step": "build (golden outputs)", "share": 0.5, "fair_share": round(1 / 6, 4)}
    assert s["sealift"][0]["read"] == 1_000_000_000 and s["sealift"][1]["written"] == 3_000
    json.dumps(s)  # all of it is JSON


def test_table_prints_every_step_the_totals_the_ratio_and_names_the_biggest_share():
    text = bench_e2e.table(made_up())
    lines = text.splitlines()
    assert lines[0] == "big, 1.07 GB, guarantees: all, engine: transformers"
    row = next(line for line in lines if line.strip().startswith("build (golden outputs)"))
    assert row.split()[-4:] == ["50.0", "50%", "0.00", "0.00"]
    assert next(line for line in lines if line.strip().startswith("import")).split()[-2:] == ["1,000", "1,000"]
    assert "sealift, the whole trip" in text and "100.0" in text
    assert "baseline, the whole trip" in text and "25.0" in text
    assert "sealift / baseline = 4.00x (goal <= 1.3x)" in text
    assert "biggest share: build (golden outputs) 50% (over its fair part, 1/6 = 17%)" in text


def test_what_the_guarantees_cost_is_the_difference_between_the_all_and_none_trips():
    costs = bench_e2e.guarantee_costs([made_up("all", 50.0), made_up("none", 10.0)])
    assert costs == ["big: with every guarantee 100.0 s, without golden and proof 60.0 s: the guarantees cost "
                     "40.0 s (1.67x)"]
    assert bench_e2e.guarantee_costs([made_up("all")]) == []


def test_the_io_of_a_finished_child_is_counted(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(b"x" * 3_000_000)
    step = bench_e2e.run_step("cp", ["cp", str(data), str(tmp_path / "copy")])
    assert step.read >= 3_000_000 and step.written >= 3_000_000


@pytest.mark.parametrize("args, says", [(["--model", "huge"], "unknown model or guarantees huge"),
                                        (["--guarantees", "all,some"], "unknown model or guarantees some")])
def test_bad_choices_are_refused_in_one_line_with_exit_2(args, says):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), *args], capture_output=True, text=True)
    assert p.returncode == 2 and says in p.stderr


def test_a_tiny_smoke_trip_measures_both_sides(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--tiny", "--no-wheels",
                        "--guarantees", "none", "--workdir", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    (trip,) = doc["trips"]
    assert [r["name"] for r in trip["sealift"]] == ["import", "build", "export", "install", "start, until ready",
                                                    "first chat answer"]
    assert [r["name"] for r in trip["baseline"]][:4] == ["cp -r to the medium", "sha256sum there",
                                                         "cp -r off the medium", "sha256sum -c"]
    model = trip["model_bytes"]
    cp = trip["baseline"][0]
    assert cp["read"] >= model and cp["written"] >= model  # the children's I/O was counted
    assert trip["baseline"][3]["read"] >= model
    assert trip["ratio"] > 0 and trip["sealift_seconds"] > 0
    assert sum(r["share"] for r in trip["sealift"]) == pytest.approx(1.0, abs=1e-3)
    assert doc["machine"]["cores"] >= 1 and len(doc["machine"]["load_average"]) == 3
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_the_vllm_engine_needs_a_python_with_vllm_for_the_baseline():
    if subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0:
        pytest.skip("this Python has vllm")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--engine", "vllm", "--model", "big",
                        "--vllm-python", sys.executable], capture_output=True, text=True)
    assert p.returncode == 2 and "cannot import vllm" in p.stderr and "--vllm-python" in p.stderr
