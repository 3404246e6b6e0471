"""Candidate generation throughput: the tutorial's per-prompt pipeline against the product's batched generator.

Both sides run in this one process, on the same prompts, the same SmolLM2-135M-Instruct weights and the
same sampling (temperature, top_p, max_new_tokens, two answers per prompt, chat template, natural stop at
EOS). New tokens are counted per answer up to and including its EOS: padding and anything generated after
EOS while other rows finish is not counted. The machine is shared, so compare figures from one run.

    python benchmarks/bench_generation.py --batch-size 16
    python benchmarks/bench_generation.py --prompts-file ../shared/data/hh-harmless-base-test-first1800.jsonl \
        --prompts 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "What is the capital of France, and what is it famous for?",
    "Write a haiku about autumn leaves.",
    "Explain recursion to a beginner programmer in a few sentences.",
    "Give me three tips for sleeping better.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Write a short, polite email declining a meeting invitation.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are the health benefits of drinking green tea?",
    "Suggest a name for a small bakery that specializes in sourdough bread.",
    "How does photosynthesis work?",
    "What is the difference between a virus and a bacterium?",
    "Translate 'Good morning, how are you?' into Spanish.",
    "Give me a simple recipe for pancakes.",
    "Why is the sky blue?",
    "What should I pack for a weekend hiking trip in the mountains?",
    "Explain what a reward model is in reinforcement learning from human feedback.",
    "Write a limerick about a cat who loves coffee.",
    "What are some good ways to learn a new language as an adult?",
    "How can I make my home office more comfortable?",
]


def read_prompts(path: Path, limit: int) -> list[str]:
    """Prompts from a file: hh-rlhf JSONL (the first human turn of "chosen"), JSONL with "prompt", or lines."""
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = line
        if isinstance(record, dict) and "chosen" in record:
            record = record["chosen"].split("\n\nHuman:", 1)[-1].split("\n\nAssistant:", 1)[0]
        elif isinstance(record, dict):
            record = record.get("prompt", "")
        if isinstance(record, str) and record.strip() and record.strip() not in prompts:
            prompts.append(record.strip())
        if len(prompts) == limit:
            break
    return prompts


def matmul_rate(threads: int, n: int = 2048, reps: int = 10) -> float:
    """Measured bf16 matmul FLOP/s on `threads` threads: the ceiling generation could approach."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best = min(best, (time.perf_counter() - started) / reps)
    return 2 * n ** 3 / best


def count_answer_tokens(ids, eos: set[int]) -> int:
    """Tokens of one generated answer up to and including its first EOS."""
    for i, token in enumerate(ids):
        if int(token) in eos:
            return i + 1
    return len(ids)


def per_prompt_pipeline(folder: Path, prompts, args) -> tuple[int, float]:
    """The seed tutorial's way: one pipeline call per prompt, two return sequences, default dtype."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    eos_id = pipe.model.generation_config.eos_token_id
    eos = set(eos_id if isinstance(eos_id, list) else [eos_id])
    kwargs = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p,
              "max_new_tokens": args.max_new_tokens, "num_return_sequences": 2, "return_tensors": True}

    def run(prompt):
        messages = [{"role": "user", "content": prompt}]
        prompt_len = len(pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                            tokenize=True)["input_ids"])
        out = pipe(messages, **kwargs)
        return sum(count_answer_tokens(o["generated_token_ids"][prompt_len:], eos) for o in out)

    run(prompts[0])  # warm-up, not timed
    started = time.perf_counter()
    tokens = sum(run(p) for p in prompts)
    return tokens, time.perf_counter() - started


def batched_generator(cache_dir: Path, prompts, args):
    from model.generation import GenerationConfig, load_generator

    generator = load_generator(GenerationConfig(
        cache_dir=cache_dir, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, threads=args.threads,
        dtype=args.dtype, seed=args.seed))
    generator.generate(prompts[:2])  # warm-up, not timed
    generator.new_tokens = 0
    started = time.perf_counter()
    results = generator.generate(prompts)
    seconds = time.perf_counter() - started
    failed = sum(r.answers is None for r in results)
    return generator, generator.new_tokens, seconds, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many prompts")
    parser.add_argument("--prompts-file", type=Path,
                        help="take the prompts from this file instead of the built-in list: hh-rlhf JSONL (first "
                             "human turn), JSONL with a \"prompt\" key, or one prompt per line")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (product side)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="product side: auto, bfloat16, float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path("rlhf-models/generator-cache"),
                        help="where the GGUF is converted once (the default MODEL_DIR's cache)")
    parser.add_argument("--skip-pipeline", action="store_true", help="only run the product side")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    prompts = read_prompts(args.prompts_file, args.prompts) if args.prompts_file else PROMPTS[:args.prompts]

    print("running (b), the product generator ...", file=sys.stderr)
    generator, b_tokens, b_seconds, failed = batched_generator(args.cache_dir, prompts, args)
    print(f"(b): {b_tokens} new tokens in {b_seconds:.1f} s", file=sys.stderr)
    b_rate = b_tokens / b_seconds
    params = sum(p.numel() for p in generator.lm_a.model.parameters())
    flops = matmul_rate(args.threads)
    ceiling = flops / (2 * params)
    folder = next(p for p in args.cache_dir.iterdir() if (p / "config.json").is_file())

    rows = []
    if not args.skip_pipeline:
        print("running (a), the per-prompt pipeline ...", file=sys.stderr)
        torch.manual_seed(args.seed)
        a_tokens, a_seconds = per_prompt_pipeline(folder, prompts, args)
        rows.append(("(a) pipeline, one prompt per call, default dtype (fp32)", a_tokens, a_seconds))
    rows.append((f"(b) product generator, batch {args.batch_size}, {generator.describe()['dtype']}",
                 b_tokens, b_seconds))

    print(f"\n{len(prompts)} prompts x 2 answers, max_new_tokens={args.max_new_tokens}, temperature="
          f"{args.temperature}, top_p={args.top_p}, {args.threads} threads, {params / 1e6:.1f}M parameters")
    print(f"bf16 matmul rate {flops / 1e9:.0f} GFLOP/s -> ceiling {ceiling:.0f} tok/s (2 x params FLOPs/token)"
          + (f"; {failed} prompts failed" if failed else ""))
    print("\n| side | new tokens | seconds | new tok/s | % of ceiling |\n|---|---|---|---|---|")
    for name, tokens, seconds in rows:
        print(f"| {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.0f} | "
              f"{100 * tokens / seconds / ceiling:.0f} % |")
    if not args.skip_pipeline:
        print(f"\nspeed-up (b)/(a): {b_rate / (rows[0][1] / rows[0][2]):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
