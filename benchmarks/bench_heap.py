"""What backend/heap.py's fixed mmap threshold costs and saves: encoding answers with the reward encoder in a
fresh process per glibc threshold (0: glibc's own dynamic one), seconds and resident memory after and at peak.

    python benchmarks/bench_heap.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
if {threshold}:
    import backend.heap as heap
    heap.THRESHOLD = {threshold}
    assert heap.return_freed_memory()
import torch
torch.set_num_threads({threads})
from model.pairs import read_pairs
from model.reward.features import FeatureCache
from model.reward.model import RewardModel
pairs = read_pairs({data!r})[:{pairs}]
model = RewardModel.zero_shot({base!r}, 256)
started = time.time()
FeatureCache("probe", 256, "cls", None).compute(model.model, model.tokenizer, [p.prompt for p in pairs] * 2,
    [p.chosen for p in pairs] + [p.rejected for p in pairs], 256, 32, lambda fraction, message: None)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({{"seconds": time.time() - started, "rss": int(status["VmRSS"].split()[0]) // 1024,
                  "peak": int(status["VmHWM"].split()[0]) // 1024}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="hh-rlhf JSONL (or any pairs file)")
    p.add_argument("--pairs", type=int, default=600, help="pairs whose two answers are encoded (default 600)")
    p.add_argument("--thresholds", type=int, nargs="+", default=[0, 131072, 1048576, 4194304, 16777216],
                   help="bytes; 0 is glibc's default")
    p.add_argument("--repeats", type=int, default=2, help="rounds over the thresholds, alternating")
    p.add_argument("--base-model", default="minilm")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    runs: dict[int, list[dict]] = {t: [] for t in args.thresholds}
    for _ in range(args.repeats):
        for threshold in args.thresholds:
            code = PROBE.format(root=str(ROOT), threshold=threshold, threads=args.threads, data=str(args.data),
                                pairs=args.pairs, base=args.base_model)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
            runs[threshold].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| glibc mmap threshold | seconds ({2 * args.pairs} answers) | resident after MiB | peak MiB |")
    print("|---|---|---|---|")
    for threshold, rs in runs.items():
        name = "glibc's default (dynamic)" if threshold == 0 else f"{threshold // 1024:,} KiB"
        span = lambda key, fmt: "-".join(sorted({fmt.format(min(r[key] for r in rs)), fmt.format(max(r[key] for r in rs))}))
        print(f"| {name} | {span('seconds', '{:.2f}')} | {span('rss', '{:,}')} | {span('peak', '{:,}')} |")


if __name__ == "__main__":
    main()
