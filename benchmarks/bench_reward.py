"""Reward-model quality and training time on real hh-rlhf pairs: fast mode, full mode and TRL's RewardTrainer.

One run, one process, one split: the first --train lines train, the last --test lines test; the prompt
is the shared prefix up to the last "\\n\\nAssistant:". All three use the same base model and max length.
Fast mode runs twice: first with an empty feature cache (encoding every text), then a retrain that finds
every feature cached. Accuracy is on the test pairs (ties count half) with a 95% bootstrap interval,
scored by the SAVED model folder. The machine is shared, so compare figures from one run.

    python benchmarks/bench_reward.py --only fast,trl,full --json-out /tmp/bench-reward.json

TRL needs `pip install trl==1.16.0 datasets` (not a project dependency).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DATA = Path("/work/shared/data/hh-harmless-base-test-first1800.jsonl")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def test_accuracy(margins) -> dict:
    from model.evaluation import margin_metrics

    m = margin_metrics(margins)
    return {"accuracy": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "ece": m["ece"]}


def score_saved(folder: Path, test) -> dict:
    from model.reward import RewardModel

    model = RewardModel.load(folder)
    r = model.rewards([p.prompt for p in test] * 2, [p.chosen for p in test] + [p.rejected for p in test])
    return test_accuracy([c - x for c, x in zip(r[:len(test)], r[len(test):])])


def run_ours(mode: str, train, test, args, work: Path, cache: Path | None, pooling: str = "mean") -> dict:
    from model.reward import TrainConfig
    from model.training import train_reward_model

    config = TrainConfig(base_model=args.base_model, mode=mode, max_length=args.max_length, threads=args.threads,
                         pooling=pooling,
                         feature_cache_dir=cache, epochs=args.full_epochs if mode == "full" else None,
                         learning_rate=args.full_lr if mode == "full" else None,
                         train_layers=args.train_layers if mode == "full" else None)
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{mode}-"))
    last = [0.0]

    def progress(fraction, message):
        if fraction - last[0] >= 0.1 or fraction == 1.0:
            last[0] = fraction
            log(f"{mode}: {fraction:.0%} {message}")

    metrics = train_reward_model(train, config, out, progress=progress)
    return {"folder": out, "metrics": metrics, "seconds": metrics["train_seconds"]}


def run_trl(train, test, args, work: Path) -> dict:
    """TRL 1.16 RewardTrainer with its defaults, except: same base model and max length, one epoch, no
    checkpoints. It needs an eos_token for a BERT tokenizer, and it drops pairs longer than max_length."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from model.reward import quiet_transformers, resolve_base_model

    base = resolve_base_model(args.base_model)
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": " " + p.chosen, "rejected": " " + p.rejected}
                              for p in train])
    config = RewardConfig(output_dir=str(work / "trl"), max_length=args.max_length, eos_token=tok.sep_token,
                          num_train_epochs=1, report_to="none", save_strategy="no", logging_steps=20,
                          use_cpu=True, dataloader_num_workers=0, seed=0)
    trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    kept = len(trainer.train_dataset)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # Score the test pairs as TRL formats them (prompt + answer + eos as one text); longer texts are cut
    # from the left so the answer is kept and no test pair is dropped.
    model = trainer.model.float().eval()
    tok.truncation_side = "left"
    texts = [p.prompt + " " + a + tok.sep_token for p in test for a in (p.chosen, p.rejected)]
    rewards = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            enc = tok(texts[start:start + 32], truncation=True, max_length=args.max_length, padding=True,
                      return_tensors="pt")
            rewards += model(**enc).logits[:, 0].tolist()
    margins = [rewards[i] - rewards[i + 1] for i in range(0, len(rewards), 2)]
    return {"seconds": seconds, "kept": kept, **test_accuracy(margins)}


def section_fast(train, test, args, work, results, pooling="mean"):
    key = "fast" if pooling == "mean" else f"fast-{pooling}"
    cache = work / "feature-cache"
    log(f"{key}: fast mode, {pooling} pooling, empty feature cache")
    first = run_ours("fast", train, test, args, work, cache, pooling)
    log(f"{key}: retrain with every feature cached")
    again = run_ours("fast", train, test, args, work, cache, pooling)
    results[key] = {"seconds": first["seconds"], "feature_seconds": first["metrics"]["feature_seconds"],
                    "retrain_seconds": again["seconds"], "n_train": first["metrics"]["n_train"],
                    "val_accuracy": first["metrics"]["val_accuracy"], "pooling": first["metrics"]["pooling"],
                    "best_epoch": first["metrics"]["best_epoch"], **score_saved(first["folder"], test)}
    log(f"{key}: {results[key]}")


def section_trl(train, test, args, work, results):
    log("TRL RewardTrainer")
    results["trl"] = run_trl(train, test, args, work)
    log(f"trl: {results['trl']}")


def section_full(train, test, args, work, results):
    log("full mode")
    full = run_ours("full", train, test, args, work, None)
    results["full"] = {"seconds": full["seconds"], "epochs": full["metrics"]["epochs"],
                       "learning_rate": full["metrics"]["learning_rate"],
                       "pooling": full["metrics"]["pooling"],
                       "n_train": full["metrics"]["n_train"], "best_epoch": full["metrics"]["best_epoch"],
                       "val_accuracy": full["metrics"]["val_accuracy"], **score_saved(full["folder"], test)}
    log(f"full: {results['full']}")


SECTIONS = {"fast": section_fast, "fast-cls": lambda *a: section_fast(*a, pooling="cls"), "trl": section_trl,
            "full": section_full}


def fmt_row(name, acc, seconds, note) -> str:
    if acc is None:
        return f"| {name} | - | {seconds} | {note} |"
    return (f"| {name} | {acc['accuracy']:.1%} [{acc['ci_low']:.1%}, {acc['ci_high']:.1%}] | {seconds} | {note} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists() else None,
                        help=f"hh-rlhf JSONL (default: {DEFAULT_DATA} when it exists)")
    parser.add_argument("--train", type=int, default=1300, help="first N lines train (default 1300)")
    parser.add_argument("--test", type=int, default=500, help="last N lines test (default 500)")
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-epochs", type=int, default=None, help="full mode epochs (default: TrainConfig's)")
    parser.add_argument("--full-lr", type=float, default=None, help="full mode learning rate (default: TrainConfig's)")
    parser.add_argument("--train-layers", type=int, default=None, help="full mode: fine-tune only the top N layers")
    parser.add_argument("--only", default="fast,trl,full",
                        help="comma-separated, in order, from: fast, fast-cls (fast mode reading the first token "
                             "instead of mean pooling), trl, full")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.data is None:
        parser.error("--data is required (no default data file here)")
    import torch

    torch.set_num_threads(args.threads)
    from model.pairs import read_pairs

    pairs = read_pairs(args.data)
    if len(pairs) < args.train + args.test:
        parser.error(f"{args.data} has {len(pairs)} pairs, fewer than --train + --test")
    train, test = pairs[:args.train], pairs[-args.test:]
    which = [name.strip() for name in args.only.split(",")]
    unknown = set(which) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    results: dict = {"data": str(args.data), "train": len(train), "test": len(test), "max_length": args.max_length,
                     "base_model": args.base_model, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    shorter = [(len(p.rejected) > len(p.chosen)) - (len(p.rejected) < len(p.chosen)) for p in test]
    results["shorter_wins"] = test_accuracy(shorter)

    def save():
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2, default=str))

    try:
        for name in which:  # in the order given, so the most wanted figures come first
            SECTIONS[name](train, test, args, work, results)
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{len(train)} train / {len(test)} test pairs from {args.data.name}, base {args.base_model}, "
          f"max_length {args.max_length}, {args.threads} threads, {results['date']}\n")
    print("| method | test accuracy [95% CI] | train time (s) | notes |\n|---|---|---|---|")
    print(fmt_row("shorter answer wins", results["shorter_wins"], "0", "baseline, no model"))
    for key in ("fast", "fast-cls"):
        if key in results:
            f = results[key]
            print(fmt_row(f"fast mode (frozen encoder, cached features, {f['pooling']} pooling)", f,
                          f"{f['seconds']:.0f} first ({f['feature_seconds']:.0f} encoding); "
                          f"{f['retrain_seconds']:.1f} cached retrain",
                          f"ECE {f['ece']:.3f}; best epoch {f['best_epoch']}; no pair dropped"))
    if "trl" in results:
        t = results["trl"]
        print(fmt_row("TRL 1.16 RewardTrainer (1 epoch, defaults)", t, f"{t['seconds']:.0f}",
                      f"ECE {t['ece']:.3f}; trained on {t['kept']}/{len(train)} pairs (max_length drops the rest)"))
    if "full" in results:
        f = results["full"]
        print(fmt_row(f"full mode ({f['epochs']} epochs, lr {f['learning_rate']:g}, bf16 autocast, {f['pooling']} pooling)", f,
                      f"{f['seconds']:.0f}", f"ECE {f['ece']:.3f}; best epoch {f['best_epoch']}; no pair dropped"))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
