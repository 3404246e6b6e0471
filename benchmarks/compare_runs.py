"""Several `bench_reward.py` runs on the same test pairs, side by side: each run's per-seed test accuracy, its
mean, its gap to the first run (a paired bootstrap over the test pairs, on the seeds both have), its training
time and test ECE, as a Markdown table.

Each argument is a results file (`--json-out`) and a per-seed section in it, `FILE:SECTION` (trl, full, fast, or
such a section merged in under another name; fast mode's first seed is timed from an empty feature cache, the
others as cached retrains), with an optional label after a second colon:

    python benchmarks/compare_runs.py trl-A.json:trl full-A.json:full:"full mode" eager-A.json:full:"eager"

Files joined with + (runs on different test slices) count as one run over all their test pairs: each seed's
pairs one slice after another, on the seeds every file has.

    python benchmarks/compare_runs.py trl-A.json+trl-C.json:trl:TRL full-A.json+full-C.json:full
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_reward import paired_gap  # noqa: E402


def read_run(spec: str) -> tuple[str, dict]:
    """(label, {seed: result}) from FILE[+FILE...]:SECTION[:LABEL]; several files' results joined per seed."""
    files, section, *label = spec.split(":", 2)
    paths = [Path(file) for file in files.split("+")]
    slices = []
    for path in paths:
        results = json.loads(path.read_text())
        if section not in results:
            raise SystemExit(f"{path} has no section {section!r} (it has: {', '.join(sorted(results))})")
        rows = results[section]
        if isinstance(rows, dict):  # fast mode: the first seed's time from an empty feature cache, then retrains
            rows = [{**r, "seconds": rows["seconds"] if i == 0 else rows["retrain_seconds"]}
                    for i, r in enumerate(rows["seeds"])]
        slices.append({r["seed"]: r for r in rows})
    seeds = sorted(set.intersection(*(set(rows) for rows in slices)))
    if not seeds:
        raise SystemExit(f"{files}:{section}: no seed was run in every file")
    name = "+".join(path.stem for path in paths)
    return (label[0] if label else f"{name}:{section}"), {s: joined([rows[s] for rows in slices]) for s in seeds}


def joined(results: list[dict]) -> dict:
    """One seed's results on several test slices as one result: all their test pairs, each slice's time and ECE."""
    correct = [c for r in results for c in r["correct"]]
    return {"accuracy": sum(correct) / len(correct), "correct": correct, "seconds": [r["seconds"] for r in results],
            "ece": [r["ece"] for r in results if r.get("ece") is not None]}


def span(values, fmt: str) -> str:
    return f"{min(values):{fmt}}-{max(values):{fmt}}" if values else ""


def table(runs: list[tuple[str, dict]]) -> list[str]:
    seeds = sorted({s for _, rows in runs for s in rows})
    lines = [f"| run | {' | '.join(f'seed {s}' for s in seeds)} | mean | - {runs[0][0]} [95% paired CI] "
             "| train time (s) | test ECE |", "|---" * (len(seeds) + 5) + "|"]
    reference = runs[0][1]
    for i, (label, rows) in enumerate(runs):
        accs = [f"{rows[s]['accuracy']:.1%}" if s in rows else "" for s in seeds]
        mean = sum(r["accuracy"] for r in rows.values()) / len(rows)
        gap = ""
        shared = sorted(set(rows) & set(reference))
        if i and shared:
            g = paired_gap([rows[s]["correct"] for s in shared], [reference[s]["correct"] for s in shared])
            gap = f"{100 * g['gap']:+.2f} [{100 * g['ci_low']:+.2f}, {100 * g['ci_high']:+.2f}]"
            if len(shared) < len(rows) or len(shared) < len(reference):
                gap += f" (seeds {', '.join(map(str, shared))})"
        lines.append(f"| {label} | {' | '.join(accs)} | {mean:.1%} | {gap} | "
                     f"{span([t for r in rows.values() for t in r['seconds']], '.0f')} | "
                     f"{span([e for r in rows.values() for e in r['ece']], '.3f')} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="FILE:SECTION[:LABEL]",
                        help="results of bench_reward.py --json-out and a section; the first is the reference")
    args = parser.parse_args()
    print("\n".join(table([read_run(spec) for spec in args.runs])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
