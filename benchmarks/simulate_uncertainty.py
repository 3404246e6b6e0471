"""Does uncertainty ordering save labels? A simulation on hh-rlhf with the recorded human choice as annotator.

The pool is the first 1,300 records, the held-out test set the last 500. Each strategy starts from 50 random
labels and then, every 50 labels, retrains the reward model and picks the next 50 pairs:
* random: in a seeded random order;
* uncertainty: the backend's order (prediction score = max(P, 1-P) ascending), i.e. P(left) closest to 0.5.
Held-out accuracy is measured after every retrain; the curves are averaged over seeds with 95% intervals
(t-interval across seeds).

The model is the product's fast mode: the frozen MiniLM's first-token features are computed ONCE through
`model.reward.features.FeatureCache` (the path training uses) and kept in a .npy cache; each retrain trains only
BERT's head (pooler dense+tanh, then a fresh linear classifier) with TrainConfig's fast defaults and keeps the
best epoch by loss on a 15% validation split of the labelled pairs, as `train_reward_model` does.

    python benchmarks/simulate_uncertainty.py --seeds 5
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small matrices: threads only contend on a shared machine
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path("/work/shared/data/hh-harmless-base-test-first1800.jsonl")
POOL, TEST = 1300, 500


# ---------------------------------------------------------------- features (computed once)

def load_pairs(path: Path):
    from model.pairs import split_hh

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) < POOL + TEST:
        raise SystemExit(f"{path} has {len(rows)} records; the simulation needs {POOL + TEST}")
    return [split_hh(r["chosen"], r["rejected"]) for r in rows]


def features(pairs, cache: Path, base_model: str, max_length: int, pooling: str) -> dict:
    """{"chosen", "rejected": (n, hidden) first-token features; "pooler_w", "pooler_b"}, cached in one .npz."""
    texts = [(p.prompt, p.chosen, p.rejected) for p in pairs]
    digest = hashlib.sha256(json.dumps([base_model, max_length, pooling, texts]).encode()).hexdigest()[:16]
    path = cache / f"hh-features-{digest}.npz"
    if path.is_file():
        return dict(np.load(path))
    from model.reward.model import resolve_base_model
    from model.reward.features import FeatureCache
    from model.reward.model import load_reward_base

    base = resolve_base_model(base_model)
    model, tokenizer, pooling = load_reward_base(base, pooling)
    n = len(pairs)
    started = time.perf_counter()

    def progress(fraction, message):
        print(f"\r  features: {message} ({time.perf_counter() - started:.0f} s)", end="", file=sys.stderr)

    feats, _ = FeatureCache(base, max_length, pooling, None).compute(
        model, tokenizer, [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
        max_length, 32, progress)
    print(file=sys.stderr)
    dense = model.base_model.pooler.dense
    out = {"chosen": feats[:n].numpy(), "rejected": feats[n:].numpy(),
           "pooler_w": dense.weight.detach().numpy(), "pooler_b": dense.bias.detach().numpy()}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


# ---------------------------------------------------------------- the heads

class LinearHead:
    """Fast mode's classifier layer on the frozen pooler: MiniLM's pooler (dense+tanh) is applied once, and
    each retrain fits only the final linear layer, i.e. logistic Bradley-Terry on pooled-feature differences,
    by full-batch gradient descent with the best step picked by loss on a 15% validation split of the
    labelled pairs (as training picks the best epoch). Milliseconds per retrain."""

    STEPS, EVERY, LR = 300, 10, 0.5

    def __init__(self, feats: dict, seed: int):
        from model.reward.config import TrainConfig

        self.config = TrainConfig()
        pool = lambda x: np.tanh(x @ feats["pooler_w"].T + feats["pooler_b"])  # noqa: E731
        diffs = pool(feats["chosen"]) - pool(feats["rejected"])
        self.diffs = diffs / diffs.std(axis=0).clip(1e-6)  # one step size suits every feature

    def train(self, labelled: np.ndarray, rng: np.random.Generator):
        cfg = self.config
        order = rng.permutation(np.sort(labelled))  # same set, same split
        n_val = max(1, round(len(order) * cfg.val_fraction)) if len(order) >= cfg.min_val_pairs else 0
        x_val, x = self.diffs[order[:n_val]], self.diffs[order[n_val:]]
        check = x_val if n_val else x
        w = np.zeros(x.shape[1])
        best = (np.inf, w)
        for step in range(1, self.STEPS + 1):
            p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
            w = w - self.LR * ((x.T @ (p - 1)) / len(x) + cfg.weight_decay * w)
            if step % self.EVERY == 0:
                loss = float(np.mean(np.logaddexp(0, -(check @ w))))
                if loss < best[0]:
                    best = (loss, w)
        w = best[1]
        return lambda idx: self.diffs[idx] @ w


class Head:
    """Fast mode's whole head, as `train_reward_model` trains it: pooler (dense+tanh, from MiniLM) -> dropout ->
    fresh linear, mini-batch AdamW with TrainConfig's defaults, best epoch by validation loss. Seconds per
    retrain on an idle core: use it (--head fast-mode) when the machine is free."""

    def __init__(self, feats: dict, seed: int):
        import torch

        from model.reward.config import TrainConfig

        self.torch = torch
        self.config = TrainConfig()
        self.feats = feats
        self.chosen = torch.from_numpy(feats["chosen"])
        self.rejected = torch.from_numpy(feats["rejected"])
        self.seed = seed

    def _modules(self):
        torch = self.torch
        hidden = self.chosen.shape[1]
        dense = torch.nn.Linear(hidden, hidden)
        with torch.no_grad():
            dense.weight.copy_(torch.from_numpy(self.feats["pooler_w"]))
            dense.bias.copy_(torch.from_numpy(self.feats["pooler_b"]))
        classifier = torch.nn.Linear(hidden, 1)
        classifier.weight.data.normal_(0.0, 0.02)  # BERT's initializer_range
        classifier.bias.data.zero_()
        return torch.nn.Sequential(dense, torch.nn.Tanh(), torch.nn.Dropout(0.1), classifier)

    def train(self, labelled: np.ndarray, rng: np.random.Generator):
        """Fit on `labelled` pair indices (15% held out for the best-epoch pick); return a margin function."""
        torch, cfg = self.torch, self.config
        torch.manual_seed(int(rng.integers(1 << 31)))
        net = self._modules()
        order = rng.permutation(np.sort(labelled))  # same set, same split
        n_val = max(1, round(len(order) * cfg.val_fraction)) if len(order) >= cfg.min_val_pairs else 0
        val, train = torch.as_tensor(order[:n_val]), torch.as_tensor(order[n_val:])
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate,
                                      weight_decay=cfg.weight_decay, foreach=True)
        batch = cfg.batch_size

        def margin(idx):
            net.eval()
            with torch.no_grad():
                return (net(self.chosen[idx]) - net(self.rejected[idx]))[:, 0]

        both = torch.cat([self.chosen, self.rejected])  # one forward per step for both answers
        n = len(self.chosen)
        best = (float("inf"), None)
        for _ in range(cfg.epochs):
            net.train()
            perm = train[torch.randperm(len(train))]
            for start in range(0, len(perm), batch):
                idx = perm[start:start + batch]
                r = net(both[torch.cat([idx, idx + n])])[:, 0]
                loss = -torch.nn.functional.logsigmoid(r[:len(idx)] - r[len(idx):]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            score = -torch.nn.functional.logsigmoid(margin(val if n_val else train)).mean().item()
            if score < best[0]:
                best = (score, {k: v.clone() for k, v in net.state_dict().items()})
        net.load_state_dict(best[1])
        return lambda idx: margin(torch.as_tensor(idx)).numpy()


# ---------------------------------------------------------------- the simulation

def run_curve(head: Head, strategy: str, seed: int, pool: np.ndarray, test: np.ndarray, step: int) -> list[float]:
    """Held-out accuracy after each retrain at step, 2*step, ... labels."""
    order = np.random.default_rng(seed).permutation(pool)  # same start and random order for both strategies
    labelled, unlabelled = order[:step], order[step:]
    accs = []
    while True:
        # Seeded by (seed, size), so both orders train alike and agree exactly on the whole pool.
        margin = head.train(labelled, np.random.default_rng([seed, len(labelled)]))
        accs.append(float(np.mean(margin(test) > 0)))
        if len(unlabelled) == 0:
            return accs
        if strategy == "random":
            take, unlabelled = unlabelled[:step], unlabelled[step:]
        else:
            # |P(left) - 0.5| ranks like |margin|: the side shown does not change the uncertainty.
            pick = np.argsort(np.abs(margin(unlabelled)), kind="stable")[:step]
            take, unlabelled = unlabelled[pick], np.delete(unlabelled, pick)
        labelled = np.concatenate([labelled, take])


def interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean across seeds (axis 0) and its 95% t-interval."""
    from math import sqrt

    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    n = values.shape[0]
    mean = values.mean(axis=0)
    if n < 2:
        return mean, mean, mean
    half = t95.get(n - 1, 1.96) * values.std(axis=0, ddof=1) / sqrt(n)
    return mean, mean - half, mean + half


def labels_to_reach(sizes: list[int], curve: np.ndarray, target: float) -> int | None:
    """The fewest labels from which the mean curve stays at or above `target` (a noisy early peak that
    falls back does not count)."""
    below = np.nonzero(curve < target - 1e-12)[0]
    first = 0 if below.size == 0 else below[-1] + 1
    return int(sizes[first]) if first < len(sizes) else None


def summarize(sizes: list[int], curves: dict[str, np.ndarray]) -> dict:
    stats = {s: dict(zip(("mean", "low", "high"), (a.tolist() for a in interval(c)))) for s, c in curves.items()}
    final = stats["random"]["mean"][-1]
    targets = []
    for fraction in (0.95, 0.98, 1.0):
        target = final * fraction
        r = labels_to_reach(sizes, np.array(stats["random"]["mean"]), target)
        u = labels_to_reach(sizes, np.array(stats["uncertainty"]["mean"]), target)
        saving = None if r is None or u is None else 1 - u / r
        targets.append({"target": target, "of_final": fraction, "random_labels": r, "uncertainty_labels": u,
                        "saving": saving})
    # Paired per seed (both strategies share the seed's first labels): uncertainty minus random accuracy.
    diff = dict(zip(("mean", "low", "high"), (a.tolist() for a in interval(curves["uncertainty"] - curves["random"]))))
    inner = slice(1, len(sizes) - 1)  # the first and the last size use the same labels in both orders
    better = int(np.sum(np.array(diff["low"])[inner] > 0))
    worse = int(np.sum(np.array(diff["high"])[inner] < 0))
    return {"curves": stats, "targets": targets, "random_final_accuracy": final, "difference": diff,
            "sizes_better": better, "sizes_worse": worse, "sizes_compared": len(sizes) - 2,
            "mean_difference": float(np.mean(np.array(diff["mean"])[inner]))}


def plot(sizes, summary, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, color in (("random", "#7f8c8d"), ("uncertainty", "#2e86de")):
        c = summary["curves"][name]
        ax.plot(sizes, c["mean"], "-", color=color, label=f"{name} order")
        ax.fill_between(sizes, c["low"], c["high"], color=color, alpha=0.2)
    ax.axhline(summary["random_final_accuracy"], color="#7f8c8d", ls=":", lw=1,
               label="random order, full pool")
    ax.axhline(0.5, color="#c0392b", ls="--", lw=0.8, label="chance")
    ax.set(xlabel="labelled pairs", ylabel="held-out accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def table(summary: dict) -> str:
    lines = ["| target held-out accuracy | random order | uncertainty order | labels saved |",
             "|---|---|---|---|"]
    for t in summary["targets"]:
        saving = "not reached" if t["saving"] is None else f"{t['saving'] * 100:+.0f}%"
        fmt = lambda v: "not reached" if v is None else str(v)  # noqa: E731
        lines.append(f"| {t['target']:.3f} ({t['of_final'] * 100:.0f}% of random's full-pool) | "
                     f"{fmt(t['random_labels'])} | {fmt(t['uncertainty_labels'])} | {saving} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="hh-rlhf JSONL (first 1,800 records are used)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "simulate_uncertainty",
                        help="folder for the features .npz (computed once)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--step", type=int, default=50, help="labels between retrains")
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                        help="encoder features as fast mode reads them (the committed results used cls)")
    parser.add_argument("--head", choices=("linear", "fast-mode"), default="linear",
                        help="linear: only the classifier layer on the frozen pooler (ms per retrain; default); "
                             "fast-mode: pooler and classifier, exactly as training (slow: ~1,000 steps a retrain)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--features-only", action="store_true", help="compute and cache the features, then stop")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "uncertainty.json")
    parser.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "results" / "uncertainty.png")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    pairs = load_pairs(args.data)[:POOL + TEST]
    feats = features(pairs, args.cache, args.base_model, args.max_length, args.pooling)
    feature_seconds = time.perf_counter() - started
    print(f"features ready in {feature_seconds:.0f} s ({feats['chosen'].shape})", file=sys.stderr)
    if args.features_only:
        return 0
    if args.head == "fast-mode":
        import torch

        torch.set_num_threads(args.threads)

    pool, test = np.arange(POOL), np.arange(POOL, POOL + TEST)
    sizes = list(range(args.step, POOL + 1, args.step))
    if sizes[-1] != POOL:
        sizes.append(POOL)
    curves: dict[str, list] = {"random": [], "uncertainty": []}
    for seed in range(args.seeds):
        head = (LinearHead if args.head == "linear" else Head)(feats, seed)
        for strategy in curves:
            t = time.perf_counter()
            curves[strategy].append(run_curve(head, strategy, seed, pool, test, args.step))
            print(f"seed {seed} {strategy:<11} final {curves[strategy][-1][-1]:.3f} "
                  f"({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    summary = summarize(sizes, {k: np.array(v) for k, v in curves.items()})
    result = {
        "question": "Does uncertainty ordering save labels?", "goal_saving": 0.25,
        "date": datetime.date.today().isoformat(), "data": str(args.data), "pool": POOL, "test": TEST,
        "step": args.step, "seeds": args.seeds, "head": args.head, "base_model": args.base_model,
        "max_length": args.max_length, "pooling": args.pooling,
        "sizes": sizes, "runs": curves, **summary,
        "seconds": round(time.perf_counter() - started, 1), "feature_seconds": round(feature_seconds, 1),
        "command": "python benchmarks/simulate_uncertainty.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    plot(sizes, summary, args.png, f"Uncertainty vs random order ({args.seeds} seeds, 95% CI)")
    print(table(summary))
    print(f"uncertainty minus random, paired by seed: {summary['mean_difference']:+.3f} on average over "
          f"{summary['sizes_compared']} intermediate sizes; 95% interval above 0 at {summary['sizes_better']}, "
          f"below 0 at {summary['sizes_worse']}")
    print(f"wrote {args.json} and {args.png} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
