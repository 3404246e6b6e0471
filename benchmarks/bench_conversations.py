"""Multi-turn prompts: the conversation given to the chat template turn by turn (what the generator does)
against the whole transcript pasted into one user message (what it did before), with the same model,
prompts and sampling, side by side in one run.

An answer "writes a role cue" when it contains one of its own ("Human:", "Assistant:", "User:"): the model
took the transcript for text to imitate or continue, not for a conversation to answer. A few prompts are
printed with both answers, for reading.

    python benchmarks/bench_conversations.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl --prompts 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLE_CUE = re.compile(r"\b(Human|Assistant|User)\s*:")


def multi_turn_prompts(path: Path, limit: int, min_turns: int) -> list[str]:
    """hh-rlhf records' prompts (the shared transcript up to the last assistant cue) with at least
    `min_turns` human turns."""
    from model.pairs import split_hh

    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            prompt = split_hh(record["chosen"], record["rejected"]).prompt
            if prompt.count("\n\nHuman:") >= min_turns:
                prompts.append(prompt)
        if len(prompts) == limit:
            break
    return prompts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="hh-rlhf JSONL ({chosen, rejected} transcripts)")
    parser.add_argument("--prompts", type=int, default=64, help="how many multi-turn prompts")
    parser.add_argument("--min-turns", type=int, default=2, help="human turns a prompt needs at least")
    parser.add_argument("--model", default="smollm2", help="GENERATOR_MODEL: smollm2, an HF id or a folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=3, help="prompts printed with both answers")
    parser.add_argument("--cache-dir", type=Path, default=Path("rlhf-models/generator-cache"),
                        help="where the packaged GGUF is converted once")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    from tqdm import tqdm

    from model.generation import GenerationConfig, load_generator

    prompts = multi_turn_prompts(args.data, args.prompts, args.min_turns)
    generator = load_generator(GenerationConfig(model=args.model, max_new_tokens=args.max_new_tokens,
                                                batch_size=args.batch_size, threads=args.threads,
                                                cache_dir=args.cache_dir, seed=args.seed))
    lm = generator.lm_a
    if not lm.tok.chat_template:
        parser.error(f"{args.model} has no chat template: both sides would be the same text")
    forms = {
        "turns (the chat template gets each message)": [lm.encode(p)[0] for p in prompts],
        "one user message holding the transcript": [lm.tok(lm.tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False)["input_ids"] for p in prompts],
    }
    results = {}
    for name, ids in forms.items():
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        answers = []
        for start in tqdm(range(0, len(ids), args.batch_size), desc=name.split(" (")[0], file=sys.stderr):
            texts, _ = lm.sample(ids[start:start + args.batch_size], 2, generator.config)
            answers += texts
        results[name] = (answers, time.perf_counter() - started)

    turns = [p.count("\n\nHuman:") for p in prompts]
    print(f"\n{len(prompts)} hh-rlhf prompts with {min(turns)}-{max(turns)} human turns (mean "
          f"{sum(turns) / len(turns):.1f}), 2 answers each, {args.model}, max_new_tokens={args.max_new_tokens}, "
          f"temperature {generator.config.temperature}, seed {args.seed}")
    print("\n| prompt given as | answers writing a role cue | mean words per answer | seconds |\n|---|---|---|---|")
    for name, (answers, seconds) in results.items():
        flat = [a for pair in answers for a in pair]
        cued = sum(bool(ROLE_CUE.search(a)) for a in flat)
        words = sum(len(a.split()) for a in flat) / len(flat)
        print(f"| {name} | {cued}/{len(flat)} ({100 * cued / len(flat):.0f}%) | {words:.0f} | {seconds:.0f} |")
    for i in range(min(args.examples, len(prompts))):
        print(f"\n--- prompt {i + 1} (last 300 characters) ---\n...{prompts[i][-300:]}")
        for name, (answers, _) in results.items():
            print(f"[{name.split(' (')[0]}] {answers[i][0][:300]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
