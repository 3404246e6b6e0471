"""The reward benchmarks run end to end (tiny model, tiny hh-rlhf-style data): a benchmark that crashes
after minutes of training wastes them, so its whole path is checked here, not its figures; and what the
members benchmark scores is what a training with that many members saves."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from tiny_models import tiny_causal_lm, tiny_encoder


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


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_starts(script):
    """Its imports resolve and its options parse: a helper renamed elsewhere once left bench_retrain.py
    failing at its first line, unnoticed until the next run."""
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]


def run_bench_reward(tmp_path, *options) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """bench_reward.py on 40 hh-style pairs (30 train, 10 test), one thread: (its run, its results, their file)."""
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(40)) + "\n")
    out = tmp_path / "results.json"
    command = [sys.executable, "benchmarks/bench_reward.py", "--data", str(data), "--train", "30", "--test", "10",
               "--threads", "1", *options, "--json-out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text()), out


@pytest.mark.slow
def test_bench_reward_runs_every_section_and_keeps_each_seed(tmp_path):
    done, results, _ = run_bench_reward(
        tmp_path, "--base-model", str(tiny_encoder(tmp_path / "enc")), "--max-length", "128", "--only",
        "fast,trl,full", "--seeds", "1,2", "--full-epochs", "1", "--full-members", "2", "--full-batch-size", "4",
        "--average-epochs", "1.5")
    assert [r["seed"] for r in results["trl"]] == [1, 2] and [r["seed"] for r in results["full"]] == [1, 2]
    assert [r["seed"] for r in results["fast"]["seeds"]] == [1, 2] and results["fast"]["retrain_seconds"] > 0
    assert all(r["members"] == 2 and r["average_epochs"] == 1.5 and r["batch_size"] == 4 and 0 <= r["accuracy"] <= 1
               for r in results["full"])
    assert results["full_minus_trl"]["seeds"] == [1, 2]
    assert "| full mode (1 epochs x 2 averaged, lr 0.0001, 4 pairs a step" in done.stdout
    assert "full - TRL =" in done.stdout
    for r in results["full"] + results["trl"]:  # each test pair's margin is kept, its sign is the correctness
        signs = [1.0 if m > 0 else 0.0 if m < 0 else 0.5 for m in r["margins"]]
        assert len(r["margins"]) == 10 and r["correct"] == signs


def test_epoch_rules_keeps_each_rules_point_and_scores_it_as_served(tmp_path):
    """Epoch 1: modest held-out margins, 60% right; epoch 2: overconfident ones, 70% right. The plain loss keeps
    epoch 1, the calibrated loss epoch 2, and each row scores the test margins of the point it keeps."""
    def point(epoch, right, size, test_right):
        return {"epoch": epoch, "val_weights": [1.0] * 20,
                "val_margins": [size if i % 10 < right else -size for i in range(20)],
                "test_margins": [1.0 if i < test_right else -1.0 for i in range(10)]}

    full = [{"seed": 1, "diag": [point(1, 6, 0.3, 5), point(2, 7, 3.0, 8)]}]
    trl = [{"seed": 1, "correct": [1.0] * 6 + [0.0] * 4}]
    runs, results = tmp_path / "runs.json", tmp_path / "trl.json"
    runs.write_text(json.dumps({"full": full})), results.write_text(json.dumps({"trl": trl}))
    done = subprocess.run([sys.executable, "benchmarks/epoch_rules.py", str(runs), "--trl", str(results)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:4] for line in done.stdout.splitlines()[2:]}
    assert rows["plain held-out loss (before)"] == ["1", "50.0%", "50.0%"]
    assert rows["held-out loss after temperature scaling (now)"] == ["2", "80.0%", "80.0%"]
    assert "+20.0" in done.stdout  # 80% against TRL's 60%, paired


def test_compare_runs_pairs_each_run_with_the_first_on_their_shared_seeds(tmp_path):
    def result(seed, correct, seconds):
        return {"seed": seed, "accuracy": sum(correct) / len(correct), "correct": correct, "seconds": seconds,
                "ece": 0.04}

    (tmp_path / "trl.json").write_text(json.dumps({"trl": [result(1, [1.0, 1.0, 0.0, 0.0], 200),
                                                             result(2, [1.0, 0.0, 0.0, 0.0], 210)]}))
    (tmp_path / "full.json").write_text(json.dumps({"full": [result(1, [1.0, 1.0, 1.0, 0.0], 190)]}))
    done = subprocess.run([sys.executable, "benchmarks/compare_runs.py", f"{tmp_path}/trl.json:trl:TRL",
                           f"{tmp_path}/full.json:full:full mode"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in done.stdout.splitlines()[2:]}
    assert rows["TRL"][:3] == ["50.0%", "25.0%", "37.5%"] and rows["TRL"][4] == "200-210"
    assert rows["full mode"][:3] == ["75.0%", "", "75.0%"]
    assert rows["full mode"][3].startswith("+25.00 [") and rows["full mode"][3].endswith("(seeds 1)")
    missing = subprocess.run([sys.executable, "benchmarks/compare_runs.py", f"{tmp_path}/trl.json:full"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "has no section 'full'" in missing.stderr


def test_compare_runs_joins_test_slices_into_one_run_per_seed(tmp_path):
    def results(section, per_seed):
        return json.dumps({section: [{"seed": seed, "accuracy": sum(c) / len(c), "correct": c, "seconds": t,
                                      "ece": 0.03} for seed, c, t in per_seed]})

    (tmp_path / "trl-A.json").write_text(results("trl", [(1, [1.0, 0.0], 200), (2, [0.0, 0.0], 210)]))
    (tmp_path / "trl-C.json").write_text(results("trl", [(1, [0.0, 0.0, 0.0, 1.0], 190)]))  # seed 2 not run
    (tmp_path / "full-A.json").write_text(results("full", [(1, [1.0, 1.0], 150), (2, [1.0, 0.0], 160)]))
    (tmp_path / "full-C.json").write_text(results("full", [(1, [1.0, 1.0, 1.0, 1.0], 170)]))
    done = subprocess.run([sys.executable, "benchmarks/compare_runs.py",
                           f"{tmp_path}/trl-A.json+{tmp_path}/trl-C.json:trl:TRL",
                           f"{tmp_path}/full-A.json+{tmp_path}/full-C.json:full:full mode"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in done.stdout.splitlines()[2:]}
    # seed 1 only (the one both slices have), its six test pairs together: 2 of 6 against 6 of 6
    assert "seed 2" not in done.stdout and rows["TRL"][:2] == ["33.3%", "33.3%"] and rows["TRL"][3] == "190-200"
    assert rows["full mode"][:2] == ["100.0%", "100.0%"] and rows["full mode"][2].startswith("+66.67 [")
    assert rows["full mode"][3] == "150-170"
    (tmp_path / "full-B.json").write_text(results("full", [(3, [1.0], 100)]))
    disjoint = subprocess.run([sys.executable, "benchmarks/compare_runs.py",
                               f"{tmp_path}/full-A.json+{tmp_path}/full-B.json:full"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert disjoint.returncode != 0 and "no seed was run in every file" in disjoint.stderr


@pytest.mark.slow
def test_bench_train_step_times_real_batches_five_ways_each_in_its_own_process(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(40)) + "\n")
    command = [sys.executable, "benchmarks/bench_train_step.py", "--data", str(data), "--steps", "2",
               "--base-model", str(tiny_encoder(tmp_path / "enc")), "--threads", "1", "--prompt-tokens", "4"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "seconds" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| stock forward, one pass",
                                                     "| pooling layer at the first token, one pass",
                                                     "| pooling layer at the first token, two passes",
                                                     "| the same, eager attention where bf16",
                                                     "| the same, padded to a multiple of 16 tokens where bf16"]
    assert "last 4 tokens" in done.stdout and "each way in a process of its own" in done.stdout


def test_the_second_held_out_slice_is_the_first_lines_and_trains_on_the_rest(tmp_path):
    import argparse

    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_reward import add_split_arguments, read_split

    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(40)) + "\n")
    parser = argparse.ArgumentParser()
    add_split_arguments(parser)
    usual = read_split(parser, parser.parse_args(["--data", str(data), "--train", "25", "--test", "10"]))
    second = read_split(parser, parser.parse_args(["--data", str(data), "--train", "25", "--test", "10", "--test-first"]))
    assert usual[1] == second[0][-10:] and usual[0][:10] == second[1]  # the usual test pairs train; its first ten test
    assert not set(second[0]) & set(second[1]) and (len(second[0]), len(second[1])) == (25, 10)


def test_a_held_out_slice_from_a_given_line_trains_on_the_lines_around_it(tmp_path):
    import argparse

    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_reward import add_split_arguments, read_split
    from model.pairs import read_pairs

    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(40)) + "\n")
    pairs = read_pairs(data)
    parser = argparse.ArgumentParser()
    add_split_arguments(parser)
    train, test = read_split(parser, parser.parse_args(["--data", str(data), "--train", "25", "--test", "10",
                                                        "--test-start", "12"]))
    assert test == pairs[12:22] and train == pairs[:12] + pairs[22:35]
    with pytest.raises(SystemExit):  # a slice that runs past the data is refused
        read_split(parser, parser.parse_args(["--data", str(data), "--train", "25", "--test", "10",
                                              "--test-start", "31"]))


@pytest.mark.slow
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
    done = subprocess.run([sys.executable, "benchmarks/bench_members.py", *common, "--members", "3", "--epochs", "1",
                           "--by-part", "--json-out", str(members_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = json.loads(members_json.read_text())
    assert len(run["member"]) == len(run["averaged"]) == len(run["ensemble"]) == 3
    # every part variant mixes member 1 with something else: it scores like neither member 1 nor the average
    assert len(run["by_part"]) == 6
    for part, scored in run["by_part"].items():
        assert scored["margins"] != pytest.approx(run["member"][0]["margins"], rel=1e-4, abs=1e-7), part
        assert scored["margins"] != pytest.approx(run["averaged"][2]["margins"], rel=1e-4, abs=1e-7), part

    pairs = read_pairs(data)
    out = tmp_path / "two"
    out.mkdir()
    train_reward_model(pairs[:30], TrainConfig(mode="full", base_model=encoder, max_length=128, threads=1, seed=1,
                                               members=2, epochs=1, calibrate=False), out)
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
    assert "| 3 |" in done.stdout and "| embeddings averaged |" in done.stdout and plot.stat().st_size > 0


@pytest.mark.slow
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


@pytest.mark.e2e
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_bench_scale_runs_end_to_end(tmp_path, db):
    """bench_scale.py's whole path at a tiny N: Label Studio 1.23.2 (SQLite; PostgreSQL where one answers),
    a private Redis, the real serve and worker processes on a tiny encoder. Checks what it records, never
    how fast."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_scale import Postgres

    if db == "postgres":
        why = Postgres.available("127.0.0.1", 5432, "postgres", "")
        if why:
            pytest.skip(why)
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(25)) + "\n")  # 40 tasks: the file is cycled
    out = tmp_path / "scale.json"
    command = [sys.executable, "benchmarks/bench_scale.py", "--data", str(data), "--n", "40", "--labelled", "12",
               "--events", "2", "--burst", "3", "--db", db, "--reward-model", str(tiny_encoder(tmp_path / "enc")),
               "--json-out", str(out), "--timeout", "600"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-5000:]

    results = json.loads(out.read_text())
    assert results["args"]["db"] == db and results["backend"]["source"] == str(ROOT)
    start = results["starting_point"]
    assert start["annotations"] == 12 and start["first_refresh"]["result"]["status"] in ("done", "superseded")
    assert [e["event"] for e in results["events"]] == [1, 2]
    for event in results["events"]:
        assert event["version_trained_on_all"] and event["retrains"] >= 1
        assert event["burst_to_served_seconds"] >= 0 and event["served_to_predicted_seconds"] >= 0
        assert event["label_studio_calls_reported"] > 0 and event["label_studio_calls_in_log"]["total"] > 0
        assert event["jobs"]["train"]["jobs"] >= 1 and event["jobs"]["refresh"]["jobs"] >= 1
    final = results["final"]
    assert final["labelled"] == 18 and final["unlabelled_without_current"] == 0
    assert sum(final["prediction_rows_by_version"].values()) == final["prediction_rows"]
    assert isinstance(final["tasks_with_several_predictions"], int) and results["memory_mib"]["worker_peak"] > 0
    assert "| target | measured | met |" in done.stdout and "| 2 |" in done.stdout


def test_memory_by_n_measures_each_size_in_its_own_process(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(30)) + "\n")
    done = subprocess.run([sys.executable, "benchmarks/memory_by_n.py", "--data", str(data), "--n", "200", "40000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| 200") or
            line.startswith("| 40,000")]
    assert [r[0].strip() for r in rows] == ["200", "40,000"]
    small, large = (int(r[4]) for r in rows)
    assert large > small + 100  # 80,000 feature rows of 1.5 KiB alone are ~117 MiB


def test_bench_heap_measures_each_threshold(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(20)) + "\n")
    done = subprocess.run([sys.executable, "benchmarks/bench_heap.py", "--data", str(data), "--pairs", "20",
                           "--thresholds", "0", "131072", "--repeats", "1", "--threads", "1",
                           "--base-model", str(tiny_encoder(tmp_path / "enc"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| glibc's default") or
            line.startswith("| 128 KiB")]
    assert len(rows) == 2
    for row in rows:
        seconds, rss, peak = (cell.strip().split("-")[0].replace(",", "") for cell in row.split("|")[2:5])
        assert float(seconds) >= 0 and 100 < int(rss) <= int(peak)  # torch alone is ~280 MiB


def test_bench_tune_step_runs_every_configuration_on_the_same_pairs(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(30)) + "\n")
    out = tmp_path / "steps.json"
    command = [sys.executable, "benchmarks/bench_tune_step.py", "--data", str(data), "--pairs", "24",
               "--base", str(tiny_causal_lm(tmp_path / "llama", layers=3)), "--top-layers", "1", "--threads", "1",
               "--json-out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert {name: (r["lora_layers"], r["micro_batch_size"], r["pairs"], r["steps"]) for name, r in rows.items()} == {
        "trl": (3, 1, 24, 3), "packed": (3, 2, 24, 3), "packed-top": (1, 4, 24, 3)}
    assert all(r["seconds_per_step"] > 0 and r["peak_rss_gib"] > 0 for r in rows.values())
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and table[3].startswith("| packed-top | 1 | 4 |")  # the header, a row per configuration


@pytest.mark.slow
def test_bench_reward_reads_fast_mode_off_a_causal_lm_and_compare_runs_takes_its_seeds(tmp_path):
    done, results, out = run_bench_reward(
        tmp_path, "--fast-base-model", str(tiny_causal_lm(tmp_path / "lm", layers=4)), "--only", "fast", "--seeds",
        "1,2")
    fast = results["fast"]
    assert fast["pooling"] == "decoder" and fast["base_model"].endswith("lm") and fast["folds"] == 3
    assert [r["seed"] for r in fast["seeds"]] == [1, 2] and all("l2" in r for r in fast["seeds"])
    assert "middle layer's answer mean" in done.stdout

    table = subprocess.run([sys.executable, "benchmarks/compare_runs.py", f"{out}:fast:TRL-less",
                            f"{out}:fast:again"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    first_seed_time, retrain_time = fast["seconds"], fast["retrain_seconds"]
    row = next(line for line in table.stdout.splitlines() if line.startswith("| again |"))
    low, high = sorted([first_seed_time, retrain_time])  # the first seed timed cold, the second as a retrain
    assert row.split(" | ")[-2] == f"{low:.0f}-{high:.0f}"


@pytest.mark.slow
def test_bench_decoder_layers_scores_each_layer_on_three_slices(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(hh_style_lines(1500)) + "\n")
    out = tmp_path / "layers.json"
    command = [sys.executable, "benchmarks/bench_decoder_layers.py", "--data", str(data), "--threads", "1",
               "--base-model", str(tiny_causal_lm(tmp_path / "lm", layers=4)), "--layers", "1,2,4",
               "--json-out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = json.loads(out.read_text())["accuracy"]
    assert sorted(accuracy) == ["1", "2", "4"] and all(sorted(a) == ["A", "B", "C"] for a in accuracy.values())
    assert all(a["A"] > 0.9 for a in accuracy.values())  # "Gladly: ..." against "No.": any layer tells them apart
    assert "| 2 |" in done.stdout
