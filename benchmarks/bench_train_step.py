"""Where one full-mode training step's time goes (forward, backward, optimizer step), on this machine's CPU:
in fp32 and in bf16 autocast, with AdamW's loop (foreach) implementation and its fused one. Shows why full
mode uses bf16 only where it is native (emulated bf16 is many times slower than fp32) and fused AdamW (the
loop version's step over MiniLM's 23M weights, most of them the embedding matrix, cost a fifth of a step).

With --data (hh-rlhf pairs), it times whole steps on real batches instead, as full mode forms them, five
ways: the stock forward in one pass; the mean pooling layer read at the first token only; that in two
passes over texts of similar length; that with eager attention where the steps run in bf16; and that with each
pass padded to a multiple of 16 tokens where bf16, AMX or not (full mode's way since 2026-12-06 09:00 UTC, and
since 12:30 only where bf16 runs on AMX tiles or a GPU; in fp32 the last two ways are the third again). Each
way runs in a process of its own: a process compiles a matrix product's kernels for each new shape on first
use, so a way timed after others would run on the shapes they compiled.

    python benchmarks/bench_train_step.py [--pairs 8] [--tokens 136] [--steps 3] [--threads 2]
    python benchmarks/bench_train_step.py --data PAIRS.jsonl [--prompt-tokens 32] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAYS = ("stock forward, one pass", "pooling layer at the first token, one pass",  # of timing real batches
        "pooling layer at the first token, two passes", "the same, eager attention where bf16",
        "the same, padded to a multiple of 16 tokens where bf16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step (full mode's default batch: 8)")
    parser.add_argument("--tokens", type=int, default=136,
                        help="tokens per sequence (136: hh-rlhf's mean at max_length 256)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, help="time real batches of these preference pairs (JSONL)")
    parser.add_argument("--prompt-tokens", type=int, help="with --data: each prompt's last N tokens (default: full "
                        "mode's)")
    parser.add_argument("--way", type=int, help=argparse.SUPPRESS)  # with --data: the child process's own way
    args = parser.parse_args()
    if args.data:
        return time_real_batches(args)

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


def time_real_batches(args) -> int:
    """Seconds per step (forward, backward, fused AdamW) on the same real batches, five ways, each in a
    process of its own."""
    if args.way is None:
        return compare_ways(args)
    import random

    import torch

    from model.hardware import bf16_pays_off, bf16_runs_on_tiles
    from model.pairs import read_pairs
    from model.reward.config import TrainConfig
    from model.reward.full import _length_batches, _pad_multiple, _rewards, _training_attention
    from model.reward.model import (cut_pair_prompts, encode_pairs, load_reward_base, load_tokenizer,
                                    resolve_base_model)
    from model.reward.pooling import reward_logits

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    bf16 = bf16_pays_off(device)
    full = TrainConfig(mode="full", prompt_tokens=args.prompt_tokens)
    max_length = full.max_length
    base = resolve_base_model(args.base_model)
    pairs = cut_pair_prompts(load_tokenizer(base), read_pairs(args.data), full.prompt_tokens)
    batches = _length_batches(pairs, args.pairs, random.Random(0))[:args.steps + 1]  # the same in each process

    def two_passes(model, tok, p, a):
        return _rewards(model, tok, p, a, max_length, groups=2)

    def two_padded_passes(model, tok, p, a):  # padded wherever bf16 runs, AMX or not: what padding does here
        return _rewards(model, tok, p, a, max_length, groups=2, pad_to_multiple_of=_pad_multiple(bf16, max_length))

    ways = [(lambda model, tok, p, a: model(**encode_pairs(tok, p, a, max_length)).logits[:, 0], False),
            (lambda model, tok, p, a: reward_logits(model, encode_pairs(tok, p, a, max_length))[:, 0], False),
            (two_passes, False), (two_passes, True), (two_padded_passes, True)]  # in WAYS' order
    way, (rewards, eager) = WAYS[args.way], ways[args.way]
    torch.manual_seed(0)
    model, tok, _ = load_reward_base(base, "mean")  # each way starts from the same weights
    model.train(False)  # full mode trains without dropout
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    seconds = []
    for chunk in batches:
        started = time.perf_counter()
        attention = _training_attention(model, eager and bf16)
        with attention, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            r = rewards(model, tok, [p.prompt for p in chunk] * 2,
                        [p.chosen for p in chunk] + [p.rejected for p in chunk]).float()
        loss = -torch.nn.functional.logsigmoid(r[:len(chunk)] - r[len(chunk):]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"way": way, "seconds": statistics.mean(seconds[1:]),  # the first step warms up
                      "about": f"each prompt's last {full.prompt_tokens} tokens, {args.threads} threads, "
                               f"{'bf16 autocast' if bf16 else 'fp32'}, AMX tiles: {bf16_runs_on_tiles(device)}, "
                               f"torch {torch.__version__}"}))
    return 0


def compare_ways(args) -> int:
    """Runs each way in a child process (this script with --way) and prints their table."""
    rows = []
    for way in range(len(WAYS)):
        command = [sys.executable, __file__, "--data", str(args.data), "--way", str(way), "--steps", str(args.steps),
                   "--pairs", str(args.pairs), "--threads", str(args.threads), "--base-model", args.base_model]
        if args.prompt_tokens is not None:
            command += ["--prompt-tokens", str(args.prompt_tokens)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n{args.base_model}, {args.steps} real batches of {args.pairs} pairs from {args.data.name}, "
          f"{rows[0]['about']}, each way in a process of its own\n")
    print("| forward | seconds a step | relative |\n|---|---|---|")
    for row in rows:
        print(f"| {row['way']} | {row['seconds']:.3f} | {row['seconds'] / rows[0]['seconds']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
