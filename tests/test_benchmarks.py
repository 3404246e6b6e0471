"""The reward benchmarks run end to end (tiny model, tiny hh-rlhf-style data): a benchmark that crashes
after minutes of training wastes them, so its whole path is checked here, not its figures; and what the
members benchmark scores is what a training with that many members saves."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
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
               "--average-epochs", "1.5", "--json-out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads(out.read_text())
    assert [r["seed"] for r in results["trl"]] == [1, 2] and [r["seed"] for r in results["full"]] == [1, 2]
    assert all(r["members"] == 2 and r["average_epochs"] == 1.5 and 0 <= r["accuracy"] <= 1 for r in results["full"])
    assert results["full_minus_trl"]["seeds"] == [1, 2]
    assert "| full mode (1 epochs x 2 averaged" in done.stdout and "full - TRL =" in done.stdout


def test_bench_members_scores_each_prefix_average_as_a_training_with_that_many_members_saves_it(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_reward import saved_margins

    from model.pairs import read_pairs
    from model.reward.config import TrainConfig
    from model.reward.train import train_reward_model

    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(40)) + "\n")
    encoder = str(tiny_encoder(tmp_path / "enc"))
    common = ["--data", str(data), "--train", "30", "--test", "10", "--base-model", encoder,
              "--max-length", "128", "--threads", "1", "--seeds", "1"]
    members_json, trl_json, plot = tmp_path / "members.json", tmp_path / "trl.json", tmp_path / "members.png"
    done = subprocess.run([sys.executable, "benchmarks/bench_members.py", *common, "--members", "3",
                           "--json-out", str(members_json)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = json.loads(members_json.read_text())
    assert len(run["member"]) == len(run["averaged"]) == len(run["ensemble"]) == 3

    pairs = read_pairs(data)
    out = tmp_path / "two"
    out.mkdir()
    train_reward_model(pairs[:30], TrainConfig(mode="full", base_model=encoder, max_length=128, threads=1, seed=1,
                                               members=2), out)
    saved = saved_margins(out, pairs[-10:])
    # a real two-member training saves exactly the average the benchmark scored for its first two members
    assert saved == pytest.approx(run["averaged"][1]["margins"], rel=1e-4, abs=1e-7)
    assert saved != pytest.approx(run["member"][0]["margins"], rel=1e-4, abs=1e-7)

    done = subprocess.run([sys.executable, "benchmarks/bench_reward.py", *common, "--only", "trl",
                           "--json-out", str(trl_json)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "benchmarks/bench_members.py", "--results", str(members_json),
                           "--trl", str(trl_json), "--plot", str(plot)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 3 |" in done.stdout and plot.stat().st_size > 0


def test_bench_rl_scoring_compares_both_ways_and_counts_the_texts_trl_cannot_score(tmp_path):
    lines = hh_style_lines(40)
    long = json.loads(lines[-1])  # a test pair past the encoder's 512 positions
    filler = " ".join(["tea"] * 600)
    lines[-1] = json.dumps({k: v.replace("\n\nHuman: ", f"\n\nHuman: {filler} ", 1) for k, v in long.items()})
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(lines) + "\n")
    command = [sys.executable, "benchmarks/bench_rl_scoring.py", "--data", str(data), "--train", "30",
               "--test", "10", "--base-model", str(tiny_encoder(tmp_path / "enc")), "--max-length", "128",
               "--threads", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TRL's way cannot score 1 of them" in done.stdout
    assert "| trl_reward_function: (prompt, answer) pair, as trained | 10 |" in done.stdout
    assert "| TRL given the folder: prompt + completion as one text | 9 |" in done.stdout
