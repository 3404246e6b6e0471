"""`export`, `train` and `eval` through the same argparse wiring and handler call as backend/cli.py."""

import argparse
import json
import random
from pathlib import Path

import pytest
from tiny_models import tiny_encoder

from backend import cli_reward
from backend.config import load_settings
from model.pairs import PreferencePair, read_pairs, write_trl_jsonl
from model.store import VersionStore

FIXTURES = Path(__file__).parent / "fixtures"


def run(argv, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="rlhf-backend")
    cli_reward.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    settings = load_settings({"MODEL_DIR": str(tmp_path / "models"), "TORCH_THREADS": "1"})
    code = args.handler(args, settings)
    return code, capsys.readouterr()


def synthetic(n, seed=0):
    rng = random.Random(seed)
    words = "the quick brown fox sea wind sky poem".split()
    return [PreferencePair(" ".join(rng.choices(words, k=4)), "politely and helpfully " + w, "no " + w)
            for w in (" ".join(rng.choices(words, k=5)) for _ in range(n))]


def test_export_from_a_captured_export(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    code, io = run(["export", "--from", str(FIXTURES / "ls-1.23.2-export-JSON.json"), "-o", str(out)],
                   tmp_path, capsys)
    assert code == 0 and "wrote 2 preference pairs" in io.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"prompt": "What is 2+2?", "chosen": "changed too", "rejected": "changed", "both_bad": False}


def test_export_with_renamed_fields_from_a_label_config(tmp_path, capsys):
    config = tmp_path / "config.xml"
    config.write_text('<View><Text name="q" value="$question"/><Text name="x" value="$first"/>'
                      '<Text name="y" value="$second"/><Pairwise name="pick" toName="x,y"/></View>')
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 1, "data": {"question": "Q", "first": "A", "second": "B"},
                                   "annotations": [{"id": 1, "result": [{"from_name": "pick", "to_name": "x",
                                                                         "type": "pairwise",
                                                                         "value": {"selected": "right"}}]}]}]))
    out = tmp_path / "pairs.jsonl"
    code, _ = run(["export", "--from", str(export), "--label-config", str(config), "-o", str(out)], tmp_path, capsys)
    assert code == 0 and json.loads(out.read_text()) == {"prompt": "Q", "chosen": "B", "rejected": "A", "both_bad": False}


@pytest.mark.slow
def test_train_then_eval(tmp_path, capsys, monkeypatch):
    encoder = tiny_encoder(tmp_path / "enc")
    data = tmp_path / "train.jsonl"
    write_trl_jsonl(synthetic(80), data)
    code, io = run(["train", "--data", str(data), "--out", str(tmp_path / "store"), "--mode", "fast",
                    "--base-model", str(encoder), "--max-length", "32", "--epochs", "30",
                    "--learning-rate", "0.01"], tmp_path, capsys)
    assert code == 0
    version = Path(io.out.strip().splitlines()[-1])
    store = VersionStore(tmp_path / "store")
    assert version == store.path("cli", store.current("cli")) and (version / "metrics.json").is_file()
    assert "held-out accuracy" in io.err

    test = tmp_path / "test.jsonl"
    write_trl_jsonl(synthetic(40, seed=1), test)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    # The store `train --out` wrote names its current version; the plot goes beside the version's metrics.
    code, io = run(["eval", "--data", str(test), "--model", str(tmp_path / "store"), "--json"], tmp_path, capsys)
    result = json.loads(io.out)
    assert code == 0 and result["n"] == 40 and result["ci_low"] <= result["accuracy"] <= result["ci_high"]
    assert result["accuracy"] > 0.9 and 0 <= result["ece"] <= 1 and result["model"] == str(version)
    plot = version / "reliability-test.png"
    assert result["reliability_plot"] == str(plot) and plot.read_bytes()[:4] == b"\x89PNG"
    assert (version / "reliability.png").is_file() and f"scoring with {version}" in io.err  # training's stays
    assert list(Path.cwd().iterdir()) == []  # nothing in the working directory

    code, io = run(["eval", "--data", str(test), "--model", str(version), "--plots", str(tmp_path / "plots")],
                   tmp_path, capsys)
    assert code == 0 and (tmp_path / "plots" / "reliability-test.png").is_file()
    assert f"reliability diagram: {tmp_path / 'plots' / 'reliability-test.png'}" in io.out


@pytest.mark.slow
def test_train_options_reach_the_training(tmp_path, capsys):
    """`--mode full` on a deployment whose TRAIN_MODE is fast (the default) trains with full mode's defaults,
    `--prompt-tokens` reaches full mode and the saved model, and `--folds` / `--no-calibrate` reach fast
    mode's head; `--prompt-tokens` in fast mode is refused."""
    from backend.config import ConfigError
    from model.reward.model import RewardModel

    encoder = tiny_encoder(tmp_path / "enc")
    data = tmp_path / "train.jsonl"
    write_trl_jsonl(synthetic(40), data)
    common = ["--data", str(data), "--out", str(tmp_path / "store"), "--base-model", str(encoder), "--max-length", "32"]
    code, io = run(["train", *common, "--mode", "full", "--prompt-tokens", "3"], tmp_path, capsys)
    version = Path(io.out.strip().splitlines()[-1])
    full = json.loads((version / "metrics.json").read_text())
    assert code == 0 and (full["mode"], full["epochs"], full["learning_rate"]) == ("full", 2, 1e-4)
    assert full["temperature"] > 0  # calibrated by default
    assert full["prompt_tokens"] == 3 and RewardModel.load(version).prompt_tokens == 3
    with pytest.raises(ConfigError, match="full-mode setting"):
        run(["train", *common, "--mode", "fast", "--prompt-tokens", "3"], tmp_path, capsys)
    code, io = run(["train", *common, "--mode", "fast", "--folds", "2", "--no-calibrate", "--epochs", "3"],
                   tmp_path, capsys)
    fast = json.loads((Path(io.out.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert code == 0 and (fast["mode"], fast["epochs"], fast["folds"]) == ("fast", 3, 2) and "temperature" not in fast


def test_eval_of_something_that_is_no_reward_model_says_what_was_expected_in_one_line(tmp_path, capsys, monkeypatch):
    from backend.cli import main

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("backend.cli.setup_logging", lambda *args: None)  # leave pytest's logging alone
    data = tmp_path / "test.jsonl"
    write_trl_jsonl(synthetic(4), data)
    (tmp_path / "notes").mkdir()
    code = main(["eval", "--data", str(data), "--model", str(tmp_path / "notes")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"rlhf-backend: eval --model: {tmp_path / 'notes'} holds no model") and "expected" in err


@pytest.mark.slow
def test_train_without_out_writes_into_model_dir(tmp_path, capsys):
    encoder = tiny_encoder(tmp_path / "enc")
    data = tmp_path / "train.jsonl"
    write_trl_jsonl(synthetic(6), data)
    code, io = run(["train", "--data", str(data), "--base-model", str(encoder), "--epochs", "2",
                    "--project", "7"], tmp_path, capsys)
    assert code == 0 and io.out.strip().splitlines()[-1] == str(tmp_path / "models" / "7" / "v1")
    assert "no held-out split" in io.err and len(read_pairs(data)) == 6


@pytest.mark.slow
def test_train_full_mode_options_reach_the_training(tmp_path, capsys):
    encoder = tiny_encoder(tmp_path / "enc")
    data = tmp_path / "train.jsonl"
    write_trl_jsonl(synthetic(24), data)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "store"), "--mode", "full", "--base-model",
            str(encoder), "--max-length", "32", "--epochs", "1"]
    for extra, expected in (([], (0.7, False, 1)),
                            (["--average-epochs", "0", "--dropout", "--members", "2"], (None, True, 2))):
        code, io = run(argv + extra, tmp_path, capsys)
        metrics = json.loads((Path(io.out.strip().splitlines()[-1]) / "metrics.json").read_text())
        assert code == 0 and (metrics["average_epochs"], metrics["dropout"], metrics["members"]) == expected


def test_help_texts(capsys):
    parser = argparse.ArgumentParser(prog="rlhf-backend")
    cli_reward.register(parser.add_subparsers(dest="command"))
    for command in ("export", "train", "eval"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "--data" in capsys.readouterr().out or command == "export"


@pytest.mark.parametrize("option", ["--members", "--epochs", "--batch-size", "--max-length", "--train-layers"])
def test_train_counts_below_one_are_refused_before_any_work(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_:
        run(["train", "--data", str(tmp_path / "none.jsonl"), option, "0"], tmp_path, capsys)
    assert exit_.value.code == 2 and f"{option}: must be a whole number of at least 1, not 0" in capsys.readouterr().err
