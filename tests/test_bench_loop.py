"""The simulated tuning loop runs end to end on tiny models (its figures are not checked: a benchmark that
crashes after an hour of tuning wastes the hour)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from conftest import ROOT
from tiny_models import tiny_causal_lm, tiny_encoder


@pytest.mark.slow
def test_bench_loop_runs_its_rounds_and_the_flipped_control(tmp_path):
    rng = random.Random(0)
    words = "the sea wind sky poem capital France Paris".split()
    lines = []
    for _ in range(60):
        prompt = "\n\nHuman: " + " ".join(rng.choices(words, k=5)) + "?\n\nAssistant:"
        lines.append(json.dumps({"chosen": f"{prompt} Paris.", "rejected": f"{prompt} No."}))
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_loop.py"), "--data", str(data), "--out", str(out),
         "--generator", str(tiny_causal_lm(tmp_path / "llama")), "--judge-base", str(tiny_encoder(tmp_path / "bert")),
         "--rounds", "2", "--policy-prompts", "8", "--eval-prompts", "12", "--judge-pairs", "16",
         "--max-new-tokens", "8", "--learning-rate", "0.01", "--threads", "1"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "loop.json").read_text())
    assert [r["round"] for r in result["rounds"]] == ["round 1", "round 2", "flipped labels"]
    assert result["parts"] == {"gold": 16, "eval_judge": 16, "eval": 12, "policy": 16}
    assert sorted(p.name for p in (out / "bench" / "generator").glob("v*")) == ["v1", "v2", "v3"]
    assert json.loads((out / "bench/generator/v2/tuning.json").read_text())["tuned_from"].endswith("v1")
    assert "| round 2 |" in proc.stdout and (out / "loop.png").is_file()
