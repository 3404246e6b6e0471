"""Which of a full-mode run's epochs each held-out rule keeps, and what the kept point scores on the test pairs.

Reads `bench_reward.py` results whose full-mode seeds also carry `diag`: for every epoch, the held-out pairs'
margins and weights and the test pairs' margins, recorded by an instrumented copy of full mode
(BENCHMARKS.md, 2026-12-05). Training is deterministic on one CPU, so each rule's row is what a run keeping
that rule's point would score. Rules: the plain held-out loss (full mode until 2026-12-05), the loss after
temperature scaling (full mode now), held-out accuracy, the last epoch, the first.

    python benchmarks/epoch_rules.py benchmarks/results/full-epochs-prompt32-bf16-seeds1-4-2026-12-05.json \
        --trl benchmarks/results/full-prompt32-vs-trl-bf16-seeds1-4-2026-12-05.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_reward import paired_gap, test_accuracy  # noqa: E402

from model.reward.calibration import calibrated_loss, fit_temperature  # noqa: E402
from model.reward.config import TrainConfig  # noqa: E402
from model.reward.objective import margin_loss  # noqa: E402


def plain_loss(point) -> float:
    return margin_loss(point["val_margins"], TrainConfig(mode="full"), point["val_weights"])


RULES = {
    "plain held-out loss (before)": plain_loss,
    "held-out loss after temperature scaling (now)": lambda p: calibrated_loss(p["val_margins"], p["val_weights"]),
    "held-out accuracy": lambda p: -sum(m > 0 for m in p["val_margins"]) / len(p["val_margins"]),
    "last epoch": lambda p: -p["epoch"],
    "first epoch": lambda p: p["epoch"],
}


def kept(point) -> dict:
    """The test figures of a kept point as the saved model would serve it: margins over the held-out temperature."""
    t = fit_temperature(point["val_margins"], point["val_weights"])
    return test_accuracy([m / t for m in point["test_margins"]])


def rows(runs: dict, trl: dict) -> list[str]:
    seeds = sorted(runs)
    out = []
    for name, rule in RULES.items():
        points = [min(runs[s]["diag"], key=rule) for s in seeds]
        scored = [kept(p) for p in points]
        cells = [f"{r['accuracy']:.1%}" for r in scored]
        mean = sum(r["accuracy"] for r in scored) / len(scored)
        gap = ""
        if trl and all(s in trl for s in seeds):
            g = paired_gap([r["correct"] for r in scored], [trl[s]["correct"] for s in seeds])
            gap = f"{g['gap'] * 100:+.1f} [{g['ci_low'] * 100:+.1f}, {g['ci_high'] * 100:+.1f}]"
        eces = [r["ece"] for r in scored]
        out.append(f"| {name} | {', '.join(str(p['epoch']) for p in points)} | {' | '.join(cells)} | {mean:.1%} | "
                   f"{gap} | {min(eces):.3f}-{max(eces):.3f} |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bench_reward.py results with per-epoch `diag`")
    parser.add_argument("--trl", type=Path, help="bench_reward.py results with TRL's seeds, for the paired gap")
    args = parser.parse_args()
    runs = {}
    for path in args.runs:
        runs.update({r["seed"]: r for r in json.loads(path.read_text())["full"] if r.get("diag")})
    if not runs:
        parser.error("no full-mode seed with per-epoch `diag` in the files given")
    trl = {r["seed"]: r for r in json.loads(args.trl.read_text())["trl"]} if args.trl else {}
    seeds = sorted(runs)
    print(f"| rule | epochs kept | {' | '.join(f'seed {s}' for s in seeds)} | mean | - TRL [95% paired CI] | test ECE |")
    print("|---|---|" + "---|" * len(seeds) + "---|---|---|")
    print("\n".join(rows(runs, trl)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
