"""Scoring in the RL step: a saved reward model as TRL's GRPOTrainer/RLOOTrainer score with it when handed
the folder (`reward_funcs=path`: `prompt + completion` as one text, no special tokens, no truncation) against
`model.reward.model.trl_reward_function` (the (prompt, answer) pair the model was trained on), on the same test
pairs, in one run.

    python benchmarks/bench_rl_scoring.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl
    python benchmarks/bench_rl_scoring.py --data ... --model rlhf-models/cli/v3   # a version already trained

Without --model it first trains one (--mode fast or full) on the first --train pairs. TRL's way fails outright on a
text longer than the encoder's positions (512 for BERT); those pairs are counted, and both ways are compared
on the pairs TRL's way can score.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_reward import add_split_arguments, paired_gap, read_split  # noqa: E402


def trl_text_rewards(folder: Path, prompts: list[str], completions: list[str], batch_size: int = 16):
    """Rewards as TRL 1.16's GRPOTrainer computes them for a model given by path (`_calculate_rewards`);
    None for a text longer than the model's positions, where that raises."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    limit = model.config.max_position_embeddings
    texts = [p + c for p, c in zip(prompts, completions)]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    fits = [i for i, n in enumerate(lengths) if n <= limit]
    rewards: list = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(fits), batch_size):
            idx = fits[start:start + batch_size]
            enc = tok(text=[texts[i] for i in idx], return_tensors="pt", padding=True, padding_side="right",
                      add_special_tokens=False)
            for i, r in zip(idx, model(**enc).logits[:, 0].tolist()):
                rewards[i] = r
    return rewards


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_split_arguments(parser)
    parser.add_argument("--model", type=Path, help="a saved version folder (default: train one with --mode)")
    parser.add_argument("--mode", choices=("fast", "full"), default="fast", help="training mode without --model")
    args = parser.parse_args(argv)
    train, test = read_split(parser, args)

    import torch

    from model.evaluation import accuracy_ci
    from model.reward.config import TrainConfig
    from model.reward.model import trl_reward_function
    from model.reward.train import train_reward_model

    torch.set_num_threads(args.threads)
    folder = args.model
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="rl-scoring-"))
        print(f"training a {args.mode}-mode model on {len(train)} pairs into {folder} ...", file=sys.stderr)
        train_reward_model(train, TrainConfig(mode=args.mode, base_model=args.base_model, max_length=args.max_length,
                                              threads=args.threads), folder)
    prompts = [p.prompt for p in test] * 2
    answers = [p.chosen for p in test] + [p.rejected for p in test]
    n = len(test)
    ours = trl_reward_function(folder, device="cpu")(prompts=prompts, completions=answers)
    theirs = trl_text_rewards(folder, prompts, answers)
    scorable = [i for i in range(n) if theirs[i] is not None and theirs[n + i] is not None]

    def correct(r, idx):
        return [1.0 if r[i] > r[n + i] else 0.5 if r[i] == r[n + i] else 0.0 for i in idx]

    print(f"\n{n} test pairs of {args.data.name}, model {folder}; TRL's way cannot score "
          f"{n - len(scorable)} of them (a text past the encoder's positions raises)")
    print("\n| scored as | pairs | accuracy [95% CI] |\n|---|---|---|")
    for name, rewards, idx in (("trl_reward_function: (prompt, answer) pair, as trained", ours, range(n)),
                               ("trl_reward_function, on the pairs TRL's way can score", ours, scorable),
                               ("TRL given the folder: prompt + completion as one text", theirs, scorable)):
        acc, lo, hi = accuracy_ci(correct(rewards, idx))
        print(f"| {name} | {len(idx)} | {100 * acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] |")
    gap = paired_gap([correct(ours, scorable)], [correct(theirs, scorable)])
    print(f"\npaired gap (pair - one text) on those pairs: {100 * gap['gap']:+.1f} points "
          f"[{100 * gap['ci_low']:+.1f}, {100 * gap['ci_high']:+.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
