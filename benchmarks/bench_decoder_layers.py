"""Which layer of a causal LM reads preferences best, each read as the reward model reads its middle one
(model/reward/decoder.py: the mean of the answer tokens' hidden states through the model's final norm, under a
linear Bradley-Terry head cross-fitted on three folds of the prompts), on three 500-pair test slices of hh-rlhf:
A the last 500 pairs, B the first 500, C pairs 500-999; each trains on 1,300 of the others, as bench_reward.py's
slices. One pass of the whole model gives every layer's states. Prints a Markdown table.

    python benchmarks/bench_decoder_layers.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SLICES = {"A": lambda n: (list(range(n - 500)), list(range(n - 500, n))),
          "B": lambda n: (list(range(500, n)), list(range(500))),
          "C": lambda n: ([i for i in range(n) if not 500 <= i < 1000], list(range(500, 1000)))}


def layer_features(scorer, pairs, layers: list[int], progress) -> dict:
    """{layer: (chosen features, rejected features)} of every pair, from one pass per batch."""
    import torch

    from model.reward.decoder import pair_order
    from model.reward.model import mean_pool

    prompts = [p.prompt for p in pairs] * 2
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    order = sorted(range(len(answers)), key=pair_order(prompts, answers))  # as the feature cache batches them
    depth = scorer.model.config.num_hidden_layers
    features = {layer: torch.empty(len(answers), scorer.model.config.hidden_size) for layer in layers}
    with torch.inference_mode():
        for start in range(0, len(order), scorer.batch_size):
            idx = order[start:start + scorer.batch_size]
            outputs, mask = scorer.answer_states([prompts[i] for i in idx], [answers[i] for i in idx],
                                                 output_hidden_states=True)
            states = outputs.hidden_states  # the embeddings, then each layer's output; the last one through the norm
            for layer in layers:
                hidden = states[layer] if layer == depth else scorer.model.norm(states[layer])
                features[layer][idx] = mean_pool(hidden.float(), mask)
            progress(start + len(idx), len(order))
    n = len(pairs)
    return {layer: (f[:n], f[n:]) for layer, f in features.items()}


def slice_accuracy(chosen, rejected, pairs, train, test, seed: int) -> float:
    """Test accuracy of a head cross-fitted on `train` (indices) as training fits it, on `test`."""
    import torch

    from model.reward.config import TrainConfig
    from model.reward.decoder import fit_head
    from model.reward.objective import pair_weights
    from model.reward.splits import prompt_folds

    head = torch.nn.Linear(chosen.shape[1], 1)
    folds = prompt_folds([pairs[i] for i in train], TrainConfig(seed=seed))
    t = torch.tensor(train)
    splits = [(torch.tensor(sorted(set(range(len(train))) - set(f))), torch.tensor(sorted(f))) for f in folds]
    fit_head(head, chosen[t], rejected[t], pair_weights([pairs[i] for i in train]), splits, lambda f, m: None, {})
    with torch.no_grad():
        margins = head(chosen[test])[:, 0] - head(rejected[test])[:, 0]
    return ((margins > 0).float() + 0.5 * (margins == 0).float()).mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="hh-rlhf JSONL of at least 1,500 pairs")
    parser.add_argument("--base-model", default="smollm2", help="a causal LM (default: the packaged generator)")
    parser.add_argument("--layers", default="6,10,12,15,18,20,24,30",
                        help="comma-separated layers to read (1 = the first layer's output)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="each prompt's last N tokens (0: all)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1, help="the folds' seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    import torch

    from model.pairs import read_pairs
    from model.reward.decoder import load_decoder_base

    torch.set_num_threads(args.threads)
    pairs = read_pairs(args.data)
    if len(pairs) < 1500:
        parser.error(f"{args.data} has {len(pairs)} pairs; the three slices need 1,500")
    layers = [int(x) for x in args.layers.split(",")]
    scorer = load_decoder_base(args.base_model, None, args.max_length, args.prompt_tokens, 32, layers=max(layers))
    started = time.perf_counter()

    def progress(done, total):
        print(f"\r  encoding {done}/{total} texts ({time.perf_counter() - started:.0f} s)", end="", file=sys.stderr)

    features = layer_features(scorer, pairs, layers, progress)
    print(file=sys.stderr)
    n = len(pairs)
    results = {layer: {name: slice_accuracy(*features[layer], pairs, *split(n), args.seed)
                       for name, split in SLICES.items()} for layer in layers}
    print(f"\n{args.base_model}, {n} pairs, the prompt's last {args.prompt_tokens or 'all'} tokens, "
          f"max_length {args.max_length}, folds seed {args.seed}; encoding {time.perf_counter() - started:.0f} s "
          f"on {args.threads} threads\n")
    print("| layer | slice A | slice B | slice C | mean |\n|---|---|---|---|---|")
    for layer, accuracy in results.items():
        cells = " | ".join(f"{accuracy[s]:.1%}" for s in SLICES)
        print(f"| {layer} | {cells} | {sum(accuracy.values()) / len(accuracy):.1%} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "accuracy": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
