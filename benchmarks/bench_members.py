"""How full mode's test accuracy grows with the number of averaged members (WARM), on real hh-rlhf pairs.

Per seed, one full-mode training with --members M (exactly what `TRAIN_MEMBERS=M` / `train --members M`
runs); each member's kept weights are recorded as it finishes, so the weight average of the first m members
is scored for every m = 1..M from the same M runs (m = 1 is the default full mode; the saved model of an
m-member training is the m-prefix average, as members are seeded seed, seed+1, ...). Also scored: each
member alone, and the ensemble of the first m members' predictions (their margins averaged: what weight
averaging approximates with one model's cost at serving). With --by-part, also the M-member average of one
part of the network with member 1's weights everywhere else, and member 1 with its embeddings put back at
the start: which part's averaging carries the gain. Split and scoring as in bench_reward.py.

    python benchmarks/bench_members.py --data hh.jsonl --seeds 1 --members 5 --threads 1 --json-out s1.json [--by-part]
    python benchmarks/bench_members.py --results s1.json s2.json --trl trl.json --plot members.png

--results prints the table from earlier --json-out files (one or several seeds each) without training;
--trl takes bench_reward.py --json-out files with TRL sections and adds the paired gap over TRL.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_reward import (add_split_arguments, log, paired_gap, read_split,  # noqa: E402
                                     saved_margins, test_accuracy)


def run_seed(train, test, args, seed: int, work: Path) -> dict:
    import torch

    import model.reward.full as full
    from model.reward.config import TrainConfig
    from model.reward.train import train_reward_model
    from model.reward.model import load_classifier, quiet_transformers

    kept, start = [], {}
    fine_tune = full._fine_tune

    def recording(model, *a, **k):  # instrumentation only: the training itself runs unchanged
        if not start:
            start.update({n: p.detach().clone() for n, p in model.named_parameters()})
        run = fine_tune(model, *a, **k)
        kept.append({n: w.clone() for n, w in run["weights"].items()})
        return run

    full._fine_tune = recording
    out = Path(tempfile.mkdtemp(dir=work, prefix="members-"))
    try:
        # uncalibrated: the members' weights are scored as they trained (a temperature ranks nothing anew)
        config = TrainConfig(mode="full", base_model=args.base_model, max_length=args.max_length,
                             threads=args.threads, seed=seed, members=args.members, epochs=args.epochs,
                             calibrate=False)
        last = [0.0]

        def progress(fraction, message):
            if fraction - last[0] >= 0.05 or fraction == 1.0:
                last[0] = fraction
                log(f"seed {seed}: {fraction:.0%} {message}")

        metrics = train_reward_model(train, config, out, progress=progress)
    finally:
        full._fine_tune = fine_tune

    def scored(weights) -> list[float]:
        model = load_classifier(str(out))
        model.load_state_dict(weights, strict=False)
        with quiet_transformers():
            model.save_pretrained(out)  # tokenizer and reward config stay beside it
        return saved_margins(out, test)

    members = [scored(w) for w in kept]
    prefix = [members[0]] + [scored({n: torch.stack([w[n] for w in kept[:m]]).mean(0) for n in kept[0]})
                             for m in range(2, len(kept) + 1)]
    if args.by_part:
        from transformers import AutoConfig

        parts = {name: scored(w) for name, w in part_averages(kept, start, AutoConfig.from_pretrained(out)).items()}
    else:
        parts = {}
    shutil.rmtree(out, ignore_errors=True)
    ensemble = [[sum(col) / m for col in zip(*members[:m])] for m in range(1, len(members) + 1)]

    def scores(margins):
        return [{**test_accuracy(x), "margins": x} for x in margins]

    return {"seed": seed, "seconds": metrics["train_seconds"], "best_epoch": metrics["best_epoch"],
            "member": scores(members), "averaged": scores(prefix), "ensemble": scores(ensemble),
            **({"by_part": dict(zip(parts, scores(parts.values())))} if parts else {})}


def part_averages(kept: list[dict], start: dict, config) -> dict[str, dict]:
    """Member 1's weights with one part replaced: by the members' average, or (embeddings) by the start."""
    import torch

    from model.reward.pooling import MARKER

    layers = config.num_hidden_layers - bool(getattr(config, MARKER, False))  # the pooling layer is not one

    def part(name: str) -> str:
        if "embeddings" in name:
            return "embeddings"
        index = re.search(r"\.layer\.(\d+)\.", name)
        if index and int(index[1]) < layers:
            return "lower layers" if int(index[1]) < layers // 2 else "upper layers"
        return "pooling and head"

    average = {n: torch.stack([w[n] for w in kept]).mean(0) for n in kept[0]}
    first = kept[0]

    def averaged(*chosen):
        return {n: average[n] if part(n) in chosen else first[n] for n in first}

    return {"embeddings averaged": averaged("embeddings"),
            "lower layers averaged": averaged("lower layers"),
            "upper layers averaged": averaged("upper layers"),
            "pooling and head averaged": averaged("pooling and head"),
            "all but the embeddings averaged": averaged("lower layers", "upper layers", "pooling and head"),
            "member 1, embeddings at the start": {n: start[n] if part(n) == "embeddings" else first[n] for n in first}}


def report(runs: list[dict], trl: list[dict] | None, plot: Path | None) -> None:
    import numpy as np

    n = min(len(r["averaged"]) for r in runs)
    seeds = ",".join(str(r["seed"]) for r in runs)
    print(f"\nfull mode, members averaged, seeds {seeds} ({len(runs)} runs), mean test accuracy over seeds\n")
    print("| members m | weight average of the first m | vs m = 1 | vs TRL | ensemble of m (margins averaged) |"
          "\n|---|---|---|---|---|")

    def mean_acc(kind, m):
        return float(np.mean([r[kind][m - 1]["accuracy"] for r in runs]))

    def correct(kind, m):
        return [r[kind][m - 1]["correct"] for r in runs]

    def gap(g):
        return f"{g['gap']:+.1%} [{g['ci_low']:+.1%}, {g['ci_high']:+.1%}]".replace("%", "")

    trl_correct = None
    if trl:
        by_seed = {r["seed"]: r["correct"] for r in trl}
        missing = [r["seed"] for r in runs if r["seed"] not in by_seed]
        if missing:
            raise SystemExit(f"--trl has no run for seed(s) {missing}")
        trl_correct = [by_seed[r["seed"]] for r in runs]
    for m in range(1, n + 1):
        vs_one = gap(paired_gap(correct("averaged", m), correct("averaged", 1))) if m > 1 else "-"
        vs_trl = gap(paired_gap(correct("averaged", m), trl_correct)) if trl_correct else "-"
        print(f"| {m} | {mean_acc('averaged', m):.1%} | {vs_one} | {vs_trl} | {mean_acc('ensemble', m):.1%} |")
    singles = [x["accuracy"] for r in runs for x in r["member"][:n]]
    print(f"\nmembers alone: {np.mean(singles):.1%} mean, {min(singles):.1%} to {max(singles):.1%} "
          f"({len(singles)} runs); training time {np.mean([r['seconds'] for r in runs]):.0f} s per seed "
          f"for {n} members")
    if all("by_part" in r for r in runs):
        print(f"\none part of the network averaged over the {n} members, member 1's weights elsewhere\n")
        print(f"| weights | accuracy | vs member 1 | vs all {n} averaged |\n|---|---|---|---|")
        for part in runs[0]["by_part"]:
            got = [r["by_part"][part]["correct"] for r in runs]
            vs_one, vs_all = (gap(paired_gap(got, correct("averaged", m))) for m in (1, n))
            print(f"| {part} | {np.mean([np.mean(c) for c in got]):.1%} | {vs_one} | {vs_all} |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ms = list(range(1, n + 1))
        fig, ax = plt.subplots(figsize=(8.5, 4))
        for r in runs:
            ax.plot(ms, [r["averaged"][m - 1]["accuracy"] for m in ms], color="0.8", lw=1)
        ax.plot(ms, [mean_acc("averaged", m) for m in ms], "o-", label="weight average (saved model)")
        ax.plot(ms, [mean_acc("ensemble", m) for m in ms], "s--", label="ensemble of predictions")
        ax.axhline(float(np.mean(singles)), color="0.5", ls="--", label="members alone (mean)")
        if trl:
            ax.axhline(float(np.mean([np.mean(c) for c in trl_correct])), color="k", ls=":", label="TRL RewardTrainer")
        ax.set_xlabel("members")
        ax.set_ylabel("test accuracy (mean over seeds; grey: each seed)")
        ax.set_xticks(ms)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=9)
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        print(f"plot: {plot}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_split_arguments(parser)
    parser.add_argument("--members", type=int, default=5, help="members per seed (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per member (default: full mode's, 2)")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[1],
                        help="comma-separated seeds, one training each (default 1)")
    parser.add_argument("--json-out", type=Path, help="write the per-seed results here")
    parser.add_argument("--results", type=Path, nargs="+", help="report earlier --json-out files; no training")
    parser.add_argument("--trl", type=Path, nargs="+",
                        help="bench_reward.py --json-out file(s) with TRL runs of these seeds")
    parser.add_argument("--plot", type=Path, help="write accuracy against members as a PNG here")
    parser.add_argument("--by-part", action="store_true",
                        help="also score the M-member average of each part alone (embeddings, lower or upper "
                             "half of the layers, pooling and head) and member 1 with the start's embeddings")
    args = parser.parse_args()
    trl = [r for f in args.trl for r in json.loads(f.read_text()).get("trl", [])] if args.trl else None
    if args.results:
        runs = [r for f in args.results for r in json.loads(f.read_text())]
        report(sorted(runs, key=lambda r: r["seed"]), trl, args.plot)
        return 0
    if args.members < 2:
        parser.error("--members must be at least 2")
    import torch

    torch.set_num_threads(args.threads)
    train, test = read_split(parser, args)
    work = Path(tempfile.mkdtemp(prefix="bench-members-"))
    runs = []
    try:
        for seed in args.seeds:
            runs.append(run_seed(train, test, args, seed, work))
            log(f"seed {seed}: averaged {[round(a['accuracy'], 3) for a in runs[-1]['averaged']]}")
            if args.json_out:
                args.json_out.write_text(json.dumps(runs, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, trl, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
