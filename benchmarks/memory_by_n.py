"""What grows with a project's size in a worker: a full read's task dicts, the unlabelled-task index and the
feature cache (one 384-float row per answer), measured in a fresh process per N, without Label Studio.

The scale benchmark (bench_scale.py) measures a real worker at N = 10,000; this says what N = 50,000 adds to it
without a 50,000-task Label Studio and the hour its cold first refresh takes on two cores.

    python benchmarks/memory_by_n.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl --n 10000 50000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

from backend.heap import return_freed_memory
return_freed_memory()
import torch
from backend.labels import parse_label_config
from backend.task_index import feature_keys
from model.pairs import read_pairs
from model.reward.features import FeatureCache

fields = parse_label_config(Path({config!r}).read_text())
pairs = read_pairs({data!r})
n = {n}
start = rss_mib()
tasks = []  # as a full read returns them (fields=task_only); every text its own string, as parsed JSON's are
for i in range(n):
    p = pairs[i % len(pairs)]
    tasks.append({{"id": i + 1, "data": {{"prompt": p.prompt + f" ({{i}})", "answer1": p.chosen + f" ({{i}})",
                  "answer2": p.rejected + f" ({{i}})"}}, "updated_at": "2026-12-04T17:00:00.000000Z",
                  "total_annotations": 0, "total_predictions": 1, "inner_id": i + 1}})
read = rss_mib()
index = {{t["id"]: keys for t in tasks if (keys := feature_keys(t, fields))}}
indexed = rss_mib()
cache = FeatureCache("probe", 256, "cls", None)
cache.features.update(zip([k for keys in index.values() for k in keys.values()], torch.randn(2 * len(index), 384)))
cached = rss_mib()
print(json.dumps({{"n": n, "tasks": read - start, "index": indexed - read, "features": cached - indexed,
                  "total": cached - start}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="hh-rlhf JSONL (or any pairs file): the tasks' texts")
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000], help="project sizes")
    args = p.parse_args()
    rows = []
    for n in args.n:
        code = PROBE.format(root=str(ROOT), config=str(ROOT / "label_config.xml"), data=str(args.data), n=n)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| N | task dicts (a full read) MiB | index entries MiB | feature cache MiB | together MiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['tasks']} | {r['index']} | {r['features']} | {r['total']} |")


if __name__ == "__main__":
    main()
