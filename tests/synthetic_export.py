"""A synthetic Label Studio 1.23 JSON export with several annotators, overlap, ties and both-bad, in the
shape of tests/fixtures/ls-1.23.2-export-JSON.json, plus model versions as training writes them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

START = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)


def annotation_result(side: str | None, *choices: str | None) -> list[dict]:
    """A Pairwise pick and/or tie / both-bad choices (None ignored), as Label Studio's editor writes them."""
    result = []
    if side:
        result.append({"from_name": "comparison", "to_name": "comparison", "type": "pairwise",
                       "value": {"selected": side}})
    picked = [c for c in choices if c]
    if picked:
        result.append({"from_name": "judgement", "to_name": "prompt", "type": "choices",
                       "value": {"choices": picked}})
    return result


def synthetic_export(n_tasks: int = 80, seed: int = 0) -> list[dict]:
    """Annotators 1 and 2 follow the (hidden) better answer 90% of the time; annotator 3 always picks left;
    every other task is labelled twice or three times. About 5% ties and 5% both-bad."""
    rng = np.random.default_rng(seed)
    tasks, ann_id = [], 0
    for t in range(1, n_tasks + 1):
        better = str(rng.choice(["left", "right"]))
        annotators = [int(rng.choice([1, 2]))] if t % 2 else [1, 2, 3][: 2 + t % 4 // 2]
        annotations = []
        for who in annotators:
            ann_id += 1
            roll = rng.random()
            choice = "tie" if roll < 0.05 else "both bad" if roll < 0.10 else None
            if who == 3:
                side = "left"
            elif choice == "tie":
                side = None
            else:
                side = better if rng.random() < 0.9 else {"left": "right", "right": "left"}[better]
            created = START + timedelta(minutes=float(t * 3 + rng.random() * 2))
            annotations.append({
                "id": ann_id, "completed_by": who, "result": annotation_result(side, choice), "was_cancelled": False,
                "ground_truth": False, "created_at": created.isoformat().replace("+00:00", "Z"),
                "updated_at": created.isoformat().replace("+00:00", "Z"),
                "lead_time": float(rng.lognormal(2.5 if who != 3 else 1.0, 0.5)), "task": t, "project": 7})
        if t % 17 == 0:  # a skipped annotation
            ann_id += 1
            annotations.append({"id": ann_id, "completed_by": 2, "result": [], "was_cancelled": True,
                                "created_at": START.isoformat().replace("+00:00", "Z"), "lead_time": 1.0,
                                "task": t, "project": 7})
        tasks.append({"id": t, "annotations": annotations, "project": 7, "data": {
            "prompt": f"Question number {t}: how do I do thing {t % 7}?",
            "answer1": f"Answer {t} left: " + "word " * int(rng.integers(3, 30)),
            "answer2": f"Answer {t} right: " + "text " * int(rng.integers(3, 30))}})
    return tasks


def write_versions(model_dir: Path, project: int = 7, accuracies=(0.58, 0.66, 0.71)) -> None:
    """Versions v1.. with metrics.json and reliability.png as train_reward_model writes them."""
    from model.evaluation import reliability_diagram
    from model.store import VersionStore

    store = VersionStore(model_dir)
    rng = np.random.default_rng(1)
    for i, acc in enumerate(accuracies):
        with store.new_version(project) as pending:
            probs = rng.uniform(0.2, 0.95, 200)
            labels = (rng.random(200) < probs).astype(float)
            reliability_diagram(probs, labels, pending.path / "reliability.png")
            n = 40 * (i + 1)
            (pending.path / "metrics.json").write_text(json.dumps({
                "n_pairs": n, "n_train": n - n // 7, "n_val": n // 7, "val_accuracy": acc,
                "val_accuracy_ci": [acc - 0.1, acc + 0.09], "ece": 0.05 + 0.01 * i, "val_loss": 0.69 - 0.03 * i,
                "mode": "fast", "train_seconds": 3.2}))
        store.activate(project, pending.name)
