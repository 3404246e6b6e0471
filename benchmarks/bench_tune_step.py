"""What a DPO tuning step costs, per way of running it, side by side on the same pairs in the same order.

Each configuration tunes the generator (model/tuning.py: tune) on the first --pairs pairs of --data, one epoch,
in a process of its own (so each peak memory is its own), and reports the mean seconds per optimizer step
after the first (which warms up), seconds per pair, the time that rate gives for --project pairs, and the
process's peak resident memory:
- `trl`: TRL's DPOTrainer as it comes: two rows a pair (the prompt read twice), the adapter on every layer,
  one pair per forward pass (the CPU default before packing);
- `packed`: a pair as one row, its prompt read once (model/tuning_packed.py), the adapter on every layer,
  two pairs per forward pass (the CPU default until the adapter went on the top third by default);
- `packed-top`: the same with the adapter on the top --top-layers layers only (10: a third of SmolLM2's), the
  reference reusing the layers below, four pairs per forward pass.

    python benchmarks/bench_tune_step.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVERY_LAYER = 10_000  # lora_layers at or above the model's layer count: the adapter on every layer
CONFIGS = {"trl": {"packed": False, "micro_batch_size": 1, "lora_layers": EVERY_LAYER},
           "packed": {"lora_layers": EVERY_LAYER},
           "packed-top": {"micro_batch_size": 4}}  # and lora_layers=--top-layers


def run_one(args) -> dict:
    """Tune once with configuration `args.one` and return its figures (runs in the child process)."""
    from model.pairs import read_pairs
    from model.tuning import TuneConfig, tune, usable_pairs

    pairs = usable_pairs(read_pairs(args.data))[:args.pairs]
    ends = []
    top = {"lora_layers": args.top_layers} if args.one == "packed-top" else {}
    config = TuneConfig(threads=args.threads, seed=args.seed, **CONFIGS[args.one], **top)
    with tempfile.TemporaryDirectory() as out:
        record = tune(pairs, args.base, out, config,
                      lambda fraction, message: ends.append(time.monotonic()) if message.startswith("step") else None)
    steps = [b - a for a, b in zip(ends, ends[1:])]
    per_step = sum(steps) / len(steps)
    return {"config": args.one, "pairs": len(pairs), "steps": record["steps"], "seconds_per_step": round(per_step, 2),
            "seconds_per_pair": round(per_step / config.batch_size, 3), "lora_layers": record["lora_layers"],
            "micro_batch_size": record["micro_batch_size"], "precision": record["precision"],
            "peak_rss_gib": record["peak_rss_gib"], "total_seconds": record["seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="pairs file (hh-rlhf JSONL or any form `tune` reads)")
    p.add_argument("--pairs", type=int, default=96, help="pairs each configuration tunes on (default 96: 12 steps)")
    p.add_argument("--project", type=int, default=1000, help="pairs to project the time of a round for")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--base", default="smollm2", help="generator to tune (default smollm2)")
    p.add_argument("--top-layers", type=int, default=10, help="packed-top's adapter layers (default 10)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, help="write the rows here too")
    p.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # the child process's own configuration
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return 0

    rows = []
    for name in args.configs.split(","):
        child = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"| configuration | adapter layers | pairs per pass | s / step of 8 | s / pair | {args.project:,} pairs (min) "
          "| peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['lora_layers']} | {r['micro_batch_size']} | {r['seconds_per_step']} | "
              f"{r['seconds_per_pair']} | {r['seconds_per_pair'] * args.project / 60:.1f} | {r['peak_rss_gib']} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
