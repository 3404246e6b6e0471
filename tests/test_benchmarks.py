"""The reward benchmark runs end to end (tiny model, tiny hh-rlhf-style data): a benchmark that crashes
after minutes of training wastes them, so its whole path is checked here, not its figures."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from conftest import ROOT
from tiny_models import tiny_encoder


def hh_style_lines(n: int, seed: int = 0) -> list[str]:
    """hh-rlhf's form: chosen and rejected are whole conversations sharing the prompt as their prefix."""
    rng = random.Random(seed)
    words = "the sea wind sky poem capital France Paris tea bicycle".split()
    lines = []
    for _ in range(n):
        prompt = "\n\nHuman: " + " ".join(rng.choices(words, k=5)) + "?\n\nAssistant:"
        content = " ".join(rng.choices(words, k=6))
        lines.append(json.dumps({"chosen": f"{prompt} Gladly: {content}.", "rejected": f"{prompt} No."}))
    return lines


def test_bench_reward_runs_every_section_and_keeps_each_seed(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(40)) + "\n")
    out = tmp_path / "results.json"
    command = [sys.executable, "benchmarks/bench_reward.py", "--data", str(data), "--train", "30", "--test", "10",
               "--base-model", str(tiny_encoder(tmp_path / "enc")), "--max-length", "128", "--threads", "1",
               "--only", "fast,trl,full", "--seeds", "1,2", "--full-epochs", "1", "--full-members", "2",
               "--json-out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads(out.read_text())
    assert [r["seed"] for r in results["trl"]] == [1, 2] and [r["seed"] for r in results["full"]] == [1, 2]
    assert all(r["members"] == 2 and 0 <= r["accuracy"] <= 1 for r in results["full"])
    assert results["full_minus_trl"]["seeds"] == [1, 2]
    assert "| full mode (1 epochs x 2 averaged" in done.stdout and "full - TRL =" in done.stdout
