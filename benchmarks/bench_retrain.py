"""Seconds from an annotation in Label Studio to a new reward-model version served, and the memory it takes.

Real processes throughout: Label Studio 1.23.2 (in its own venv, as in the end-to-end tests), Redis,
`rlhf-backend serve` (gunicorn) and one `rlhf-backend worker`, the packaged models, TRAIN_MODE=fast.
hh-rlhf pairs become tasks (answer1/answer2, chosen side random) with a Pairwise annotation each.

1. Import --pairs - 1 labelled tasks, --unlabelled tasks with answers and 2 prompt-only tasks (the worker
   generates their answers, so it holds both default models). The import's own events start a first,
   cold training (every text encoded; its figures are in that version's metrics.json). Once no job is
   queued or running, press "Start training".
2. Annotate one more task through Label Studio's API, --repeats times (LS sends ANNOTATION_CREATED to the
   backend's webhook): about --pairs labelled pairs of which all but one have cached features.
Each row reports how many texts its training encoded, so a cold or warm run reads as what it was.

A version counts as served when a /predict answers with it (PREANNOTATE=always, so the server shows any
version). After the runs: /predict latency for one task (sequential requests) and the resident memory of the
server (gunicorn master and workers) and of the worker.

    python benchmarks/bench_retrain.py --data ../shared/data/hh-harmless-base-test-first1800.jsonl --pairs 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from harness import LS_TOKEN, backend_env, poll, start_backend, start_label_studio, tree_rss_mib  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pairwise(selected: str) -> list[dict]:
    return [{"from_name": "comparison", "to_name": "comparison", "type": "pairwise", "value": {"selected": selected}}]


def as_task(pair, rng: random.Random) -> tuple[dict, str]:
    """A task with the pair's answers in random order, and the side a person who agrees with hh-rlhf picks."""
    left_chosen = rng.random() < 0.5
    left, right = (pair.chosen, pair.rejected) if left_chosen else (pair.rejected, pair.chosen)
    return {"prompt": pair.prompt, "answer1": left, "answer2": right}, "left" if left_chosen else "right"


def idle(url: str) -> bool:
    """No job queued or running (an import may have set some going)."""
    listing = requests.get(f"{url}/jobs", timeout=30).json()
    return not any(groups["queued"] or groups["started"] for groups in listing.values())


def served_version(url: str, body: dict) -> str | None:
    result = requests.post(f"{url}/predict", json=body, timeout=120).json()
    return result["model_version"] if result["results"] else None


def describe(seconds: float, metrics: dict) -> str:
    return (f"{seconds:.1f} (training job {metrics['train_seconds']:.1f}, of which encoding "
            f"{metrics['features_encoded']} new texts {metrics['feature_seconds']:.1f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="hh-rlhf JSONL (chosen/rejected)")
    parser.add_argument("--pairs", type=int, default=1000, help="labelled pairs at the warm retrains")
    parser.add_argument("--unlabelled", type=int, default=20, help="tasks with answers but no annotation")
    parser.add_argument("--repeats", type=int, default=3, help="warm retrains, one new annotation each")
    parser.add_argument("--predicts", type=int, default=200, help="sequential one-task /predict calls")
    parser.add_argument("--threads", default="2", help="TORCH_THREADS of the worker")
    parser.add_argument("--reward-base-model", default="minilm", help="REWARD_BASE_MODEL (default minilm)")
    args = parser.parse_args()

    from label_studio_sdk import LabelStudio

    from model.pairs import read_pairs

    pairs = read_pairs(args.data)
    need = args.pairs + args.repeats + args.unlabelled
    if len(pairs) < need:
        parser.error(f"{args.data} has {len(pairs)} pairs; --pairs + --repeats + --unlabelled need {need}")
    rng = random.Random(0)
    tasks = [as_task(p, rng) for p in pairs[:need]]
    labelled, extra, unlabelled = tasks[:args.pairs - 1], tasks[args.pairs - 1:args.pairs - 1 + args.repeats], \
        tasks[args.pairs - 1 + args.repeats:]

    work = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    log(f"starting Label Studio (data in {work})")
    (work / "ls").mkdir()
    ls_process, ls_url = start_label_studio(work / "ls")
    model_dir = work / "models"
    env = backend_env(REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14"),
                      QUEUE_PREFIX=f"bench-{os.getpid()}", MODEL_DIR=str(model_dir), LABEL_STUDIO_URL=ls_url,
                      LABEL_STUDIO_API_KEY=LS_TOKEN, LABEL_STUDIO_ALLOW_PRIVATE_HOSTS="true",
                      PREANNOTATE="always", TRAIN_MODE="fast", TORCH_THREADS=args.threads, LOG_LEVEL="INFO",
                      REWARD_BASE_MODEL=args.reward_base_model)
    server, worker, url = start_backend(env, work)
    rows: list[tuple[str, str]] = []
    try:
        ls = LabelStudio(base_url=ls_url, api_key=LS_TOKEN)
        config = (ROOT / "label_config.xml").read_text()
        project = ls.projects.create(title="retrain latency", label_config=config)
        ml = ls.ml.create(project=project.id, url=url, title="rlhf-backend")
        body = {"project": f"{project.id}.0", "label_config": config,
                "tasks": [{"id": 1, "data": unlabelled[0][0]}]}

        log(f"importing {len(labelled)} labelled, {len(extra) + len(unlabelled)} unlabelled and 2 prompt-only tasks")
        ls.projects.import_tasks(id=project.id, request=[
            {"data": data, "annotations": [{"result": pairwise(side)}]} for data, side in labelled])
        ls.projects.import_tasks(id=project.id, request=[data for data, _ in extra + unlabelled] + [
            {"prompt": "What is the capital of France?", "answer1": "", "answer2": ""},
            {"prompt": "Write a haiku about the sea.", "answer1": "", "answer2": ""}])

        def generated():
            found = [t for t in ls.tasks.list(project=project.id, fields="all") if t.data["prompt"].startswith(
                ("What is the capital of France?", "Write a haiku about the sea."))]
            return all(t.data.get("answer1") for t in found) and len(found) == 2
        started = time.perf_counter()
        poll(generated, 600, interval=1, message="answers for the prompt-only tasks")
        log(f"generated the prompt-only tasks' answers in {time.perf_counter() - started:.1f} s (incl. model load)")

        def wait_for_new(previous: str | None, started: float) -> tuple[str, float]:
            version = poll(lambda: (v := served_version(url, body)) not in (previous, None) and v, 900,
                           interval=0.25, message="a new version served")
            return version, time.perf_counter() - started

        def train_metrics(version: str) -> dict:
            return json.loads((model_dir / str(project.id) / version / "metrics.json").read_text())

        poll(lambda: idle(url), 600, interval=1, message="no job queued or running")
        zero_shot = served_version(url, body)
        started = time.perf_counter()
        ls.ml.train(id=ml.id)
        version, seconds = wait_for_new(zero_shot, started)
        m = train_metrics(version)
        log(f"Start training: {version} after {seconds:.1f} s ({m['n_pairs']} pairs, training {m['train_seconds']} s)")
        rows.append((f"Start training, {m['n_pairs']} pairs", describe(seconds, m)))

        ids = {t.data["answer1"]: t.id for t in ls.tasks.list(project=project.id, fields="all")}
        warm = []
        for data, side in extra:
            poll(lambda: idle(url), 600, interval=1, message="no job queued or running")
            started = time.perf_counter()
            ls.annotations.create(id=ids[data["answer1"]], result=pairwise(side))
            version, seconds = wait_for_new(version, started)
            m = train_metrics(version)
            warm.append((seconds, m))
            log(f"annotation: {version} after {seconds:.1f} s ({m['n_pairs']} pairs, training {m['train_seconds']} s)")
        for seconds, m in warm:
            rows.append((f"one annotation (webhook), {m['n_pairs']} pairs", describe(seconds, m)))

        session = requests.Session()
        latencies = []
        for _ in range(args.predicts):
            t = time.perf_counter()
            session.post(f"{url}/predict", json=body, timeout=60).raise_for_status()
            latencies.append(1000 * (time.perf_counter() - t))
        latencies.sort()
        rows.append(("/predict, one task, sequential, p50 / p90 / max ms",
                     f"{statistics.median(latencies):.1f} / {latencies[int(0.9 * len(latencies))]:.1f} / "
                     f"{latencies[-1]:.1f} ({len(latencies)} requests)"))
        rows.append(("server RSS (gunicorn master + workers), reward model loaded",
                     f"{tree_rss_mib(server.popen.pid):.0f} MiB"))
        rows.append(("worker RSS, generator and reward model loaded", f"{tree_rss_mib(worker.popen.pid):.0f} MiB"))
    finally:
        for process in (worker, server, ls_process):
            if process is not None:
                process.stop()
    print(f"\n{args.pairs} pairs from {args.data.name}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| measurement | seconds (or as stated) |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
