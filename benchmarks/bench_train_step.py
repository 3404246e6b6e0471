"""One full-mode training step (forward and backward over chosen + rejected) of the reward model, in fp32
and in bf16 autocast, on this machine's CPU. Shows why full mode uses bf16 only where it is native: on a
CPU without AVX-512 bf16 or AMX, torch emulates it and the step is many times slower than in fp32.

    python benchmarks/bench_train_step.py [--pairs 8] [--tokens 200] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step (full mode's default batch: 8)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from model.hardware import cpu_has_fast_bf16
    from model.reward.model import load_reward_base
    from model.reward.model import resolve_base_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _, _ = load_reward_base(resolve_base_model(args.base_model), "mean")
    ids = torch.randint(1000, 20000, (2 * args.pairs, args.tokens))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rows = []
    for bf16 in (False, True):
        times = []
        for step in range(args.steps + 1):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                rewards = model(input_ids=ids).logits[:, 0].float()
            loss = -torch.nn.functional.logsigmoid(rewards[:args.pairs] - rewards[args.pairs:]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up
                times.append(time.perf_counter() - started)
        rows.append(("bf16 autocast" if bf16 else "fp32", statistics.median(times)))

    print(f"\n{args.base_model}, {args.pairs} pairs x {args.tokens} tokens per step, {args.threads} threads, "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_fast_bf16()}\n")
    print("| precision | seconds per step (median) | relative to fp32 |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / rows[0][1]:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
