"""Where one full-mode training step's time goes (forward, backward, optimizer step), on this machine's CPU:
in fp32 and in bf16 autocast, with AdamW's loop (foreach) implementation and its fused one. Shows why full
mode uses bf16 only where it is native (emulated bf16 is many times slower than fp32) and fused AdamW (the
loop version's step over MiniLM's 23M weights, most of them the embedding matrix, cost a fifth of a step).

    python benchmarks/bench_train_step.py [--pairs 8] [--tokens 136] [--steps 3] [--threads 2]
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
    parser.add_argument("--tokens", type=int, default=136,
                        help="tokens per sequence (136: hh-rlhf's mean at max_length 256)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from model.hardware import cpu_has_fast_bf16
    from model.reward.model import load_reward_base, resolve_base_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _, _ = load_reward_base(resolve_base_model(args.base_model), "mean")
    ids = torch.randint(1000, 20000, (2 * args.pairs, args.tokens))
    rows = []
    for bf16 in (False, True):
        for fused in (False, True):
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=fused)
            passes, updates = [], []
            for step in range(args.steps + 1):
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    rewards = model(input_ids=ids).logits[:, 0].float()
                loss = -torch.nn.functional.logsigmoid(rewards[:args.pairs] - rewards[args.pairs:]).mean()
                optimizer.zero_grad()
                loss.backward()
                middle = time.perf_counter()
                optimizer.step()
                if step:  # the first step warms up
                    passes.append(middle - started)
                    updates.append(time.perf_counter() - middle)
            rows.append(("bf16 autocast" if bf16 else "fp32", "fused" if fused else "foreach (loop)",
                         statistics.median(passes), statistics.median(updates)))

    print(f"\n{args.base_model}, {args.pairs} pairs x {args.tokens} tokens per step, {args.threads} threads, "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_fast_bf16()}\n")
    print("| precision | AdamW | forward + backward (s) | optimizer step (s) | whole step (s) | relative |\n"
          "|---|---|---|---|---|---|")
    first = rows[0][2] + rows[0][3]
    for precision, optimizer, passes, update in rows:
        print(f"| {precision} | {optimizer} | {passes:.2f} | {update:.3f} | {passes + update:.2f} | "
              f"{(passes + update) / first:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
