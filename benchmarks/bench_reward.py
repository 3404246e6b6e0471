"""Reward-model quality and training time on real hh-rlhf pairs: fast mode, full mode and TRL's RewardTrainer.

One run, one process, one split: the first --train lines train, the last --test lines test; the prompt
is the shared prefix up to the last "\\n\\nAssistant:" (--test-first: the first lines test and the last train,
a second held-out slice; --test-start N: the lines from N test, a third). All three use the same base model;
TRL and full mode the same max length, fast mode its own default (--max-length sets all three). Fast mode
runs twice on the first seed: first with an empty feature cache (encoding every text; --feature-cache keeps
one between runs), then a retrain that finds every feature cached; then once per further seed. Accuracy is on the test
pairs (ties count half) with a 95% bootstrap interval, scored by the SAVED model folder. The machine is
shared, so compare figures from one run.

With --seeds 1,2,3, TRL and full mode each train once per seed (initialisation, data order and, for
ours, the held-out split) and the table adds full mode's gap over TRL on the same test pairs: the mean
over seeds, and a paired bootstrap interval over the test pairs of the per-pair correctness averaged
over seeds (much tighter than comparing the two accuracies' own intervals). --resume FILE takes the
sections (for TRL and full mode: the seeds) an earlier run saved with --json-out and runs only the rest.

    python benchmarks/bench_reward.py --only fast,trl,full --json-out /tmp/bench-reward.json
    python benchmarks/bench_reward.py --only trl,full --seeds 1,2,3 --json-out /tmp/seeds.json

TRL and datasets come with the test extra (`bash scripts/install.sh test`).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    correct = [1.0 if x > 0 else 0.0 if x < 0 else 0.5 for x in margins]
    return {"accuracy": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "ece": m["ece"],
            "correct": correct, "margins": [float(f"{x:.6g}") for x in margins]}  # 6 digits, never the sign


def paired_gap(ours: list[list[float]], theirs: list[list[float]]) -> dict:
    """Accuracy gap (ours - theirs) on the same test pairs: each pair's correctness is averaged over
    seeds, then the pairs are resampled together (a paired percentile bootstrap)."""
    import numpy as np

    from model.evaluation import accuracy_ci

    gap, lo, hi = accuracy_ci(np.mean(ours, axis=0) - np.mean(theirs, axis=0))
    return {"gap": gap, "ci_low": lo, "ci_high": hi}


def saved_margins(folder: Path, test) -> list[float]:
    """Chosen-minus-rejected reward margins of the test pairs under a saved folder, as the backend scores."""
    from model.reward.model import RewardModel

    model = RewardModel.load(folder)
    r = model.rewards([p.prompt for p in test] * 2, [p.chosen for p in test] + [p.rejected for p in test])
    return [c - x for c, x in zip(r[:len(test)], r[len(test):])]


def score_saved(folder: Path, test) -> dict:
    """Test accuracy of a saved version folder, scored as the backend serves it."""
    return test_accuracy(saved_margins(folder, test))


def run_ours(mode: str, train, test, args, work: Path, cache: Path | None, pooling: str = "mean",
             seed: int = 0) -> dict:
    from model.reward.config import TrainConfig
    from model.reward.train import train_reward_model

    base = args.fast_base_model if mode == "fast" and args.fast_base_model else args.base_model
    config = TrainConfig(base_model=base, mode=mode, max_length=args.max_length, threads=args.threads,
                         pooling=pooling, seed=seed,
                         feature_cache_dir=cache, epochs=args.full_epochs if mode == "full" else None,
                         learning_rate=args.full_lr if mode == "full" else None,
                         batch_size=args.full_batch_size if mode == "full" else None,
                         prompt_tokens=args.full_prompt_tokens if mode == "full" else None,
                         train_layers=args.train_layers if mode == "full" else None,
                         members=args.full_members if mode == "full" else 1, calibrate=args.calibrate,
                         folds=args.fast_folds if mode == "fast" else 1,
                         patience=args.fast_patience)  # fast mode's early stop; full mode has none
    if mode == "full" and args.average_epochs:
        config = dataclasses.replace(config, average_epochs=args.average_epochs)
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{mode}-"))
    last = [0.0]

    def progress(fraction, message):
        if fraction - last[0] >= 0.1 or fraction == 1.0:
            last[0] = fraction
            log(f"{mode}: {fraction:.0%} {message}")

    metrics = train_reward_model(train, config, out, progress=progress)
    return {"folder": out, "metrics": metrics, "seconds": metrics["train_seconds"]}


def run_trl(train, test, args, work: Path, seed: int = 0) -> dict:
    """TRL 1.16 RewardTrainer with its defaults, except: same base model and max length, one epoch, no
    checkpoints, and bf16 (its default) only where the CPU has it, as our full mode: emulated bf16 runs
    ~20x slower. It needs an eos_token for a BERT tokenizer, and it drops pairs longer than max_length."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from model.hardware import cpu_has_fast_bf16
    from model.reward.config import MODE_DEFAULTS
    from model.reward.model import quiet_transformers, resolve_base_model

    max_length = args.max_length or MODE_DEFAULTS["full"]["max_length"]  # compared with full mode
    base = resolve_base_model(args.base_model)
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": " " + p.chosen, "rejected": " " + p.rejected}
                              for p in train])
    config = RewardConfig(output_dir=str(work / "trl"), max_length=max_length, eos_token=tok.sep_token,
                          num_train_epochs=1, report_to="none", save_strategy="no", logging_steps=20,
                          use_cpu=True, dataloader_num_workers=0, seed=seed, bf16=cpu_has_fast_bf16())
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
            enc = tok(texts[start:start + 32], truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            rewards += model(**enc).logits[:, 0].tolist()
    margins = [rewards[i] - rewards[i + 1] for i in range(0, len(rewards), 2)]
    return {"seconds": seconds, "kept": kept, "bf16": config.bf16, **test_accuracy(margins)}


def section_fast(train, test, args, work, results, pooling="mean"):
    """Timing on the first seed (empty feature cache, then a retrain with every feature cached); every
    seed of --seeds is trained (from the cache) and scored."""
    key = "fast" if pooling == "mean" else f"fast-{pooling}"
    cache = args.feature_cache or work / "feature-cache"
    log(f"{key}: fast mode, {pooling} pooling, feature cache {cache}")
    first = run_ours("fast", train, test, args, work, cache, pooling, seed=args.seeds[0])
    log(f"{key}: retrain with every feature cached")
    again = run_ours("fast", train, test, args, work, cache, pooling, seed=args.seeds[0])
    runs = [first] + [run_ours("fast", train, test, args, work, cache, pooling, seed=seed) for seed in args.seeds[1:]]
    per_seed_results = [{"seed": seed, "val_accuracy": r["metrics"]["val_accuracy"],
                         **{k: r["metrics"][k] for k in ("best_epoch", "l2", "temperature") if k in r["metrics"]},
                         **score_saved(r["folder"], test)} for seed, r in zip(args.seeds, runs)]
    results[key] = {"seconds": first["seconds"], "feature_seconds": first["metrics"]["feature_seconds"],
                    "retrain_seconds": again["seconds"], "n_train": first["metrics"]["n_train"],
                    "pooling": first["metrics"]["pooling"], "folds": first["metrics"].get("folds", 1),
                    "base_model": first["metrics"]["base_model"],
                    "patience": args.fast_patience,
                    "seeds": per_seed_results}
    log(f"{key}: {[brief(r) for r in per_seed_results]}")


def brief(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("correct", "margins")}


def save(results: dict, args) -> None:
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=str))


def per_seed(key: str, results: dict, args, run_one) -> None:
    """results[key] = one result per seed of --seeds; seeds an earlier run (--resume) measured are kept."""
    earlier = {r["seed"]: r for r in results.get(key, [])}
    results[key] = []
    for seed in args.seeds:
        if seed in earlier:
            log(f"{key}, seed {seed}: kept from {args.resume}")
            results[key].append(earlier[seed])
            continue
        log(f"{key}, seed {seed}")
        results[key].append({"seed": seed, **run_one(seed)})
        log(f"{key}: {brief(results[key][-1])}")
        save(results, args)  # each seed's result is kept even if a later one is stopped


def section_trl(train, test, args, work, results):
    per_seed("trl", results, args, lambda seed: run_trl(train, test, args, work, seed))


def section_full(train, test, args, work, results):
    def run_one(seed):
        full = run_ours("full", train, test, args, work, None, seed=seed)
        m = full["metrics"]
        scored = score_saved(full["folder"], test)
        shutil.rmtree(full["folder"], ignore_errors=True)
        return {"seconds": full["seconds"], "epochs": m["epochs"], "learning_rate": m["learning_rate"],
                "batch_size": m["batch_size"], "prompt_tokens": m["prompt_tokens"],
                "pooling": m["pooling"], "n_train": m["n_train"], "best_epoch": m["best_epoch"],
                "members": m["members"], "bf16": m["bf16"],
                "average_epochs": m["average_epochs"], "val_accuracy": m["val_accuracy"],
                "val_loss": m["val_loss"], "temperature": m.get("temperature"), **scored}

    per_seed("full", results, args, run_one)


SECTIONS = {"fast": section_fast, "fast-cls": lambda *a: section_fast(*a, pooling="cls"), "trl": section_trl,
            "full": section_full}


def fmt_row(name, acc, seconds, note) -> str:
    if acc is None:
        return f"| {name} | - | {seconds} | {note} |"
    return (f"| {name} | {acc['accuracy']:.1%} [{acc['ci_low']:.1%}, {acc['ci_high']:.1%}] | {seconds} | {note} |")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, split and model options every reward benchmark shares."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists() else None,
                        help=f"hh-rlhf JSONL (default: {DEFAULT_DATA} when it exists)")
    parser.add_argument("--train", type=int, default=1300, help="first N lines train (default 1300)")
    parser.add_argument("--test", type=int, default=500, help="last N lines test (default 500)")
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens of prompt+answer (default: each mode's, 512 in fast mode, 256 in full mode "
                             "and for TRL)")
    parser.add_argument("--threads", type=int, default=2)
    slices = parser.add_mutually_exclusive_group()
    slices.add_argument("--test-first", action="store_true",
                        help="a second held-out slice: the FIRST --test lines test and the last --train lines "
                             "train (default: the first --train lines train, the last --test lines test)")
    slices.add_argument("--test-start", type=int, metavar="N",
                        help="another held-out slice: the --test lines from line N (0-based) test, and the first "
                             "--train of the lines before and after them train")


def read_split(parser: argparse.ArgumentParser, args) -> tuple[list, list]:
    """(train, test): the first --train and the last --test pairs of --data (--test-first: the last --train
    and the first --test; --test-start N: the --test from pair N, and the first --train of the others)."""
    from model.pairs import read_pairs

    if args.data is None:
        parser.error("--data is required (no default data file here)")
    pairs = read_pairs(args.data)
    if len(pairs) < args.train + args.test:
        parser.error(f"{args.data} has {len(pairs)} pairs, fewer than --train + --test")
    if getattr(args, "test_first", False):
        return pairs[-args.train:], pairs[:args.test]
    start = getattr(args, "test_start", None)
    if start is not None:
        if not 0 <= start <= len(pairs) - args.test:
            parser.error(f"--test-start {start}: the test slice must lie within the {len(pairs)} pairs")
        return (pairs[:start] + pairs[start + args.test:])[:args.train], pairs[start:start + args.test]
    return pairs[:args.train], pairs[-args.test:]


def main() -> int:
    from model.reward.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_split_arguments(parser)
    parser.add_argument("--full-epochs", type=int, default=None, help="full mode epochs (default: TrainConfig's)")
    parser.add_argument("--full-lr", type=float, default=None, help="full mode learning rate (default: TrainConfig's)")
    parser.add_argument("--full-batch-size", type=int, default=None,
                        help="full mode: pairs per step (default: TrainConfig's)")
    parser.add_argument("--full-prompt-tokens", type=int, default=None,
                        help="full mode: read only each prompt's last N tokens, in training and when the saved "
                             "model scores (0: the whole prompt; default: TrainConfig's)")
    parser.add_argument("--full-members", type=int, default=1,
                        help="full mode: fine-tunes from one start whose weights are averaged (default 1)")
    parser.add_argument("--fast-folds", type=int, default=TrainConfig.folds,
                        help=f"fast mode: heads cross-fitted on folds of the prompts and averaged (default "
                             f"{TrainConfig.folds}: one head with 15%% of the prompts held out)")
    parser.add_argument("--fast-patience", type=int, default=TrainConfig.patience,
                        help=f"fast mode: epochs without a better held-out loss before a head stops (default "
                             f"{TrainConfig.patience})")
    parser.add_argument("--train-layers", type=int, default=None, help="full mode: fine-tune only the top N layers")
    parser.add_argument("--average-epochs", type=float, default=None,
                        help="full mode: horizon of the weights' moving average in epochs (default: TrainConfig's)")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                        help="comma-separated seeds: TRL and full mode train once per seed, and the table adds "
                             "the mean gap between them (default 0)")
    parser.add_argument("--resume", type=Path,
                        help="results JSON of an earlier run (--json-out): keep its sections (TRL and full "
                             "mode: its seeds) and run the rest")
    parser.add_argument("--only", default="fast,trl,full",
                        help="comma-separated, in order, from: fast, fast-cls (fast mode reading the first token "
                             "instead of mean pooling), trl, full")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=TrainConfig.calibrate,
                        help="ours: divide the rewards by a temperature fitted on the held-out pairs "
                             f"(TrainConfig.calibrate, default {'on' if TrainConfig.calibrate else 'off'})")
    parser.add_argument("--prompt-tokens", type=int, default=None,
                        help="keep only each prompt's last N tokens of the base model's tokenizer, in training and "
                             "test alike (an input variant to measure; default: the whole prompt, cut to fit "
                             "--max-length)")
    parser.add_argument("--fast-base-model",
                        help="fast mode's base model, where it differs from --base-model (e.g. smollm2: the packaged "
                             "generator read frozen at its middle layer)")
    parser.add_argument("--feature-cache", type=Path,
                        help="fast mode: a persistent feature cache folder (default: an empty one, so the first "
                             "training encodes every text)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    train, test = read_split(parser, args)
    if args.prompt_tokens:
        from model.reward.model import cut_pair_prompts, load_tokenizer, resolve_base_model

        tok = load_tokenizer(resolve_base_model(args.base_model))  # each prompt's last --prompt-tokens tokens
        train, test = cut_pair_prompts(tok, train, args.prompt_tokens), cut_pair_prompts(tok, test, args.prompt_tokens)
    which = [name.strip() for name in args.only.split(",")]
    unknown = set(which) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    results: dict = {"data": str(args.data), "train": len(train), "test": len(test), "max_length": args.max_length,
                     "prompt_tokens": args.prompt_tokens,
                     "test_slice": ("first" if args.test_first else "last" if args.test_start is None
                                    else f"from line {args.test_start}"),
                     "base_model": args.base_model, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.resume:
        results.update({k: v for k, v in json.loads(args.resume.read_text()).items() if k in SECTIONS})
    shorter = [(len(p.rejected) > len(p.chosen)) - (len(p.rejected) < len(p.chosen)) for p in test]
    results["shorter_wins"] = test_accuracy(shorter)

    try:
        for name in which:  # in the order given, so the most wanted figures come first
            if name in results and name not in ("trl", "full"):  # those two resume per seed
                log(f"{name}: kept from {args.resume}")
                continue
            SECTIONS[name](train, test, args, work, results)
            save(results, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{len(train)} train / {len(test)} test pairs ({results['test_slice']} lines test) from {args.data.name}, base {args.base_model}, "
          f"max_length {args.max_length or 'of each mode (fast 512, full and TRL 256)'}, {args.threads} threads, "
          f"{results['date']}\n")
    print("| method | test accuracy [95% CI] | train time (s) | notes |\n|---|---|---|---|")
    print(fmt_row("shorter answer wins", results["shorter_wins"], "0", "baseline, no model"))
    for key in ("fast", "fast-cls"):
        if key in results:
            f = results[key]
            for r in f["seeds"]:
                times = (f"{f['seconds']:.0f} first ({f['feature_seconds']:.0f} encoding); "
                         f"{f['retrain_seconds']:.1f} cached retrain") if r is f["seeds"][0] else "(cached)"
                heads = f"{f['folds']} cross-fitted heads" if f.get("folds", 1) > 1 else "one head"
                fitted = f"L2 {r['l2']:g}" if "l2" in r else f"best epoch {r['best_epoch']}"
                reader = "middle layer's answer mean" if f["pooling"] == "decoder" else f"{f['pooling']} pooling"
                print(fmt_row(f"fast mode ({f.get('base_model', args.base_model)} frozen, cached features, {reader}, "
                              f"{heads}), seed {r['seed']}", r, times, f"ECE {r['ece']:.3f}; {fitted}; no pair dropped"))
    for t in results.get("trl", []):
        precision = "bf16" if t.get("bf16", True) else "fp32"
        print(fmt_row(f"TRL 1.16 RewardTrainer (1 epoch, defaults, {precision}), seed {t['seed']}", t, f"{t['seconds']:.0f}",
                      f"ECE {t['ece']:.3f}; trained on {t['kept']}/{len(train)} pairs (max_length drops the rest)"))
    for f in results.get("full", []):
        members = f" x {f['members']} averaged" if f.get("members", 1) > 1 else ""
        prompt = f", prompt's last {f['prompt_tokens']} tokens" if f.get("prompt_tokens") else ""
        batch = f", {f['batch_size']} pairs a step" if f.get("batch_size") else ""  # not in older results
        print(fmt_row(f"full mode ({f['epochs']} epochs{members}, lr {f['learning_rate']:g}{batch}, "
                      f"{'bf16 autocast' if f.get('bf16') else 'fp32'}, "
                      f"{f['pooling']} pooling{prompt}), seed {f['seed']}", f, f"{f['seconds']:.0f}",
                      f"ECE {f['ece']:.3f}; best epoch {f['best_epoch']}; no pair dropped"))
    for key in ("fast", "fast-cls", "trl", "full"):
        runs = results.get(key, {"seeds": []})["seeds"] if key.startswith("fast") else results.get(key, [])
        if len(runs) > 1:
            print(f"\n{key}: mean test accuracy {sum(r['accuracy'] for r in runs) / len(runs):.1%} over seeds "
                  f"{', '.join(str(r['seed']) for r in runs)}; ECE {min(r['ece'] for r in runs):.3f}-"
                  f"{max(r['ece'] for r in runs):.3f}")
    both = sorted({r["seed"] for r in results.get("trl", [])} & {r["seed"] for r in results.get("full", [])})
    if both:  # compared on the seeds both methods ran
        paired = {k: [r for r in results[k] if r["seed"] in both] for k in ("trl", "full")}
        gap = paired_gap([f["correct"] for f in paired["full"]], [t["correct"] for t in paired["trl"]])
        results["full_minus_trl"] = {"seeds": both, **gap}
        mean = {k: sum(r["accuracy"] for r in rs) / len(rs) for k, rs in paired.items()}
        print(f"\nmean over seed(s) {', '.join(map(str, both))}: TRL {mean['trl']:.1%}, full mode {mean['full']:.1%}; "
              f"full - TRL = {gap['gap']:+.1%} [{gap['ci_low']:+.1%}, {gap['ci_high']:+.1%}] "
              f"(paired bootstrap over the {len(test)} test pairs)")
    save(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
