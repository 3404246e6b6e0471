"""The tuning loop, simulated (AlpacaFarm's method): a "gold" reward model plays the annotator.

hh-rlhf pairs are split by prompt into four disjoint parts: the gold judge's training pairs, the third
(evaluation) judge's training pairs, the policy's prompts and the held-out evaluation prompts. Each round:
the current policy answers a fresh slice of the policy prompts twice -> the gold judge picks the better
answer -> `model.tuning.tune` trains the next policy from the current one on those pairs (iterative DPO: the
reference is the current policy) -> the new policy answers the evaluation prompts, and the evaluation judge
(which saw neither the gold labels nor these prompts) gives its win rate against the base, raw and
length-controlled with 95% intervals over prompts, and the promotion verdict. The gold judge's own win rate
(what DPO optimised) and how often the evaluation judge agrees with the gold labels are printed beside it. A
control round tunes the base on round 1's pairs with the labels flipped.

    nice -n 10 python benchmarks/bench_loop.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl

Every version is a generator version in OUT/bench/generator/v<N> (tuning.json, evaluation.json), the
results go to OUT/loop.json, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.comparison import ANSWERS_PER_PROMPT, answer, compare_answers, train_judge  # noqa: E402
from model.generation.types import GenerationConfig  # noqa: E402
from model.pairs import PreferencePair, read_pairs  # noqa: E402
from model.reward.config import TrainConfig  # noqa: E402
from model.store import GENERATOR, VersionStore  # noqa: E402
from model.tuning import TuneConfig, tune  # noqa: E402

PROJECT = "bench"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bar(desc: str):
    """A tqdm bar on stderr and the progress(fraction, message) callback that drives it."""
    from tqdm import tqdm

    b = tqdm(total=100, desc=desc, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def progress(fraction: float, message: str) -> None:
        b.n = round(100 * fraction)
        b.set_postfix_str(message[:60], refresh=True)

    return b, progress


def split(pairs: list[PreferencePair], sizes: dict[str, int], seed: int) -> dict[str, list[PreferencePair]]:
    """Disjoint parts by prompt, in the order of `sizes` (counts of prompts); "policy" takes the rest."""
    by_prompt: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt, []).append(p)
    prompts = sorted(by_prompt)
    random.Random(seed).shuffle(prompts)
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = [p for q in prompts[start:start + size] for p in by_prompt[q]]
        start += size
    parts["policy"] = [p for q in prompts[start:] for p in by_prompt[q]]
    if any(not part for part in parts.values()):
        raise SystemExit(f"{len(prompts)} prompts are too few for the parts {sizes} plus policy prompts")
    return parts


def gold_pairs(gold, prompts: list[str], answers: list, flip: bool = False) -> list[PreferencePair]:
    """The gold judge's verdict on each prompt's two answers; ties (and failed prompts) dropped."""
    rows = [(q, a[0], a[1]) for q, a in zip(prompts, answers) if a]
    rewards = gold.rewards([q for q, _, _ in rows] * 2, [a for _, a, _ in rows] + [b for _, _, b in rows])
    pairs = []
    for (q, a, b), ra, rb in zip(rows, rewards[:len(rows)], rewards[len(rows):]):
        if ra != rb:
            chosen, rejected = (a, b) if (ra > rb) != flip else (b, a)
            pairs.append(PreferencePair(q, chosen, rejected))
    return pairs


def agreement(judge, pairs: list[PreferencePair]) -> float:
    """Share of gold-labelled pairs on which `judge` prefers the same answer."""
    r = judge.rewards([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    return sum(c > x for c, x in zip(r[:len(pairs)], r[len(pairs):])) / len(pairs)


def summary(report: dict) -> dict:
    keys = ("win_rate", "win_rate_ci", "lc_win_rate", "lc_win_rate_ci", "length_change", "length_change_ci",
            "mean_length_new", "n_prompts", "n_comparisons")
    return {k: report[k] for k in keys}


def run_round(name: str, policy: str, pairs: list[PreferencePair], args, store, judges, eval_prompts, base_answers,
              generation) -> tuple[str, dict]:
    """Tune `policy` on `pairs` into a new version, answer the evaluation prompts with it, judge it."""
    started = time.monotonic()
    config = TuneConfig(learning_rate=args.learning_rate, beta=args.beta, epochs=args.epochs,
                        lora_layers=args.lora_layers, max_prompt_tokens=args.max_prompt_tokens,
                        max_length=args.max_length, seed=args.seed,
                        threads=args.threads, cache_dir=args.out / "generator-cache")
    b, progress = bar(f"{name}: tuning")
    with b, store.new_version(PROJECT) as pending:
        record = tune(pairs, policy, pending.path, config, progress, provenance={"round": name, "tuned_from": policy})
        tune_seconds = time.monotonic() - started
        b2, progress = bar(f"{name}: answering")
        with b2:
            answers = answer(str(pending.path), eval_prompts, generation, progress)
        eval_seconds = time.monotonic() - started - tune_seconds
        report = compare_answers(eval_prompts, base_answers, answers, judges["eval"], judges["eval_info"],
                                 seed=args.seed)
        by_gold = compare_answers(eval_prompts, base_answers, answers, judges["gold"], judges["gold_info"],
                                  seed=args.seed)
        (pending.path / "evaluation.json").write_text(json.dumps(report, indent=2))
    if report["promotion"]["promote"]:
        store.activate(PROJECT, pending.name)
    path = str(store.path(PROJECT, pending.name))
    return path, {"round": name, "version": pending.name, "pairs": len(pairs), "steps": record["steps"],
                  "train_loss": record["train_loss"], "dpo_reward_accuracy": record["reward_accuracy"],
                  "peak_rss_gib": record["peak_rss_gib"], "eval_judge": summary(report), "gold_judge": summary(by_gold),
                  "promoted": report["promotion"]["promote"], "reasons": report["promotion"]["reasons"],
                  "tune_seconds": round(tune_seconds), "eval_seconds": round(eval_seconds)}


def pct(x) -> str:
    return f"{100 * x:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| round | pairs | raw win rate [95% CI] | LC win rate [95% CI] | length change | gold judge LC | "
             "promoted | candidates s | tune s | eval s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, g = r["eval_judge"], r["gold_judge"]
        lines.append(
            f"| {r['round']} | {r['pairs']} | {pct(e['win_rate'])} [{pct(e['win_rate_ci'][0])}, {pct(e['win_rate_ci'][1])}]"
            f" | {pct(e['lc_win_rate'])} [{pct(e['lc_win_rate_ci'][0])}, {pct(e['lc_win_rate_ci'][1])}]"
            f" | {e['length_change']:+.1%} | {pct(g['lc_win_rate'])} | {'yes' if r['promoted'] else 'no'}"
            f" | {r.get('generate_seconds', '-')} | {r['tune_seconds']} | {r['eval_seconds']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for offset, (key, label) in enumerate((("win_rate", "raw"), ("lc_win_rate", "length-controlled"))):
        xs = [i + (offset - 0.5) * 0.15 for i in range(len(rows))]
        ys = [100 * r["eval_judge"][key] for r in rows]
        errors = [[y - 100 * r["eval_judge"][key + "_ci"][0] for y, r in zip(ys, rows)],
                  [100 * r["eval_judge"][key + "_ci"][1] - y for y, r in zip(ys, rows)]]
        ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=4, label=label)
    ax.axhline(50, color="grey", linestyle="--")
    ax.set_xticks(range(len(rows)), [r["round"] for r in rows])
    ax.set(ylabel="win rate against the base (%)", title="Simulated loop, evaluation judge, 95% CI")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="hh-rlhf JSONL (or any pairs file)")
    p.add_argument("--out", type=Path, default=Path("loop-run"), help="work folder: versions, judges, loop.json")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--policy-prompts", type=int, default=100, help="prompts the policy answers per round")
    p.add_argument("--eval-prompts", type=int, default=300)
    p.add_argument("--judge-pairs", type=int, default=600, help="prompts (with their pairs) per judge")
    p.add_argument("--judge-mode", choices=("fast", "full"), default="fast")
    p.add_argument("--judge-base", default="minilm")
    p.add_argument("--generator", default="smollm2", help="the base policy")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-tokens", type=int, default=192)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--learning-rate", type=float, default=1e-4,
                   help="used as given, whatever --lora-layers (default 1e-4; with the adapter on a third of the "
                        "layers, 3e-4 gained as much as every layer at 1e-4: BENCHMARKS.md)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--lora-layers", type=int, default=None,
                   help="adapter on the top N decoder layers only (default: tune's, a third on a CPU, all on a GPU)")
    p.add_argument("--no-flipped", action="store_true", help="skip the flipped-label control round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    parts = split(read_pairs(args.data), {"gold": args.judge_pairs, "eval_judge": args.judge_pairs,
                                          "eval": args.eval_prompts}, args.seed)
    log(f"parts: {', '.join(f'{k} {len(v)} pairs' for k, v in parts.items())}")
    judges = {}
    for name, key in (("gold", "gold"), ("eval", "eval_judge")):
        t = time.monotonic()
        b, progress = bar(f"{name} judge")
        with b:
            judges[name], judges[name + "_info"] = train_judge(
                parts[key], TrainConfig(base_model=args.judge_base, mode=args.judge_mode, seed=args.seed,
                                        threads=args.threads, feature_cache_dir=args.out / "feature-cache"),
                _fresh(args.out / f"judge-{name}"), progress)
        judges[name + "_info"]["seconds"] = round(time.monotonic() - t)
    # Each judge on the other's human pairs: accuracy on prompts it never saw.
    from model.comparison import judge_accuracy

    cross = {"gold_on_eval_judge_pairs": judge_accuracy(judges["gold"], parts["eval_judge"]),
             "eval_judge_on_gold_pairs": judge_accuracy(judges["eval"], parts["gold"])}
    log(f"judges: {json.dumps(cross)}")
    generation = GenerationConfig(model=args.generator, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                  threads=args.threads, cache_dir=args.out / "generator-cache",
                                  candidates=ANSWERS_PER_PROMPT)
    eval_prompts = sorted({p.prompt for p in parts["eval"]})
    policy_prompts = sorted({p.prompt for p in parts["policy"]})
    random.Random(args.seed).shuffle(policy_prompts)
    t = time.monotonic()
    b, progress = bar("base: answering")
    with b:
        base_answers = answer(args.generator, eval_prompts, generation, progress)
    base_seconds = round(time.monotonic() - t)
    store = VersionStore(args.out, GENERATOR)
    rows, policy, first_pairs = [], args.generator, None
    for r in range(1, args.rounds + 1):
        t = time.monotonic()
        prompts = [policy_prompts[(i + (r - 1) * args.policy_prompts) % len(policy_prompts)]
                   for i in range(args.policy_prompts)]
        b, progress = bar(f"round {r}: candidates")
        with b:
            candidates = answer(policy, prompts, generation, progress)
        pairs = gold_pairs(judges["gold"], prompts, candidates)
        first_pairs = first_pairs or (prompts, candidates)
        generate_seconds = round(time.monotonic() - t)
        policy, row = run_round(f"round {r}", policy, pairs, args, store, judges, eval_prompts, base_answers, generation)
        row.update(generate_seconds=generate_seconds, eval_judge_agrees_with_gold=agreement(judges["eval"], pairs))
        rows.append(row)
        log(json.dumps(row))
    if not args.no_flipped:
        flipped = gold_pairs(judges["gold"], *first_pairs, flip=True)
        _, row = run_round("flipped labels", args.generator, flipped, args, store, judges, eval_prompts,
                           base_answers, generation)
        rows.append(row)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "parts": {k: len(v) for k, v in parts.items()},
              "judges": {k: v for k, v in judges.items() if k.endswith("_info")}, "cross_accuracy": cross,
              "base_answer_seconds": base_seconds, "rounds": rows, "seconds": round(time.monotonic() - started)}
    (args.out / "loop.json").write_text(json.dumps(result, indent=2))
    plot(rows, args.out / "loop.png")
    print(table(rows))
    print(f"\njudges: gold {_acc(judges['gold_info'])}, evaluation {_acc(judges['eval_info'])} (own held-out); "
          f"evaluation judge on the gold judge's pairs {pct(cross['eval_judge_on_gold_pairs']['accuracy'])}%; "
          f"total {result['seconds']} s")


def _acc(info: dict) -> str:
    a, ci = info.get("accuracy"), info.get("accuracy_ci")
    return f"{pct(a)}% [{pct(ci[0])}, {pct(ci[1])}]" if a is not None else "n/a"


def _fresh(folder: Path) -> Path:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


if __name__ == "__main__":
    main()
