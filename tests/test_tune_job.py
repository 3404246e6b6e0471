"""The tune job's queueing and its command line, on the real Redis (no worker process): TUNE_EVERY's count,
`rlhf-backend tune --project N` (coalesced like every job), and `rlhf-backend versions --generator` with its
rollback."""

from __future__ import annotations

import json

import pytest

from backend import cli
from backend.jobs.framework import init
from backend.jobs.tune import maybe_queue_tune, tune
from model.store import GENERATOR, VersionStore
from model.tuning_round import EVALUATION_FILE


def pending_tune(redis_conn):
    raw = redis_conn.get("rlhf-test:pending:tune:4")
    return raw.decode() if raw else None


def test_tune_every_queues_a_round_per_n_new_annotations(make_settings, redis_conn):
    ctx = init(make_settings(TUNE_EVERY=3), redis_conn)
    assert not maybe_queue_tune(ctx, 4, 2)
    assert maybe_queue_tune(ctx, 4, 3) and pending_tune(redis_conn)
    assert not maybe_queue_tune(ctx, 4, 5)  # 2 more since the round was queued
    first = pending_tune(redis_conn)
    assert maybe_queue_tune(ctx, 4, 6)  # coalesced into the round still waiting
    assert pending_tune(redis_conn) == first and len(ctx.queue.queues["tune"].get_job_ids()) == 1
    assert not maybe_queue_tune(init(make_settings(), redis_conn), 4, 100)  # TUNE_EVERY=0: off


def test_without_its_count_in_redis_the_newest_version_says_where_the_last_round_was(make_settings, redis_conn,
                                                                                   tmp_path):
    settings = make_settings(TUNE_EVERY=5, MODEL_DIR=tmp_path / "models")
    store = VersionStore(settings.model_dir, GENERATOR)
    with store.new_version(4) as pending:
        (pending.path / "tuning.json").write_text(json.dumps({"annotations": 20}))
    ctx = init(settings, redis_conn)
    assert not maybe_queue_tune(ctx, 4, 24) and maybe_queue_tune(ctx, 4, 25)


def run(argv, monkeypatch, capsys, tmp_path, **env):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("QUEUE_PREFIX", "rlhf-test")
    from conftest import REDIS_URL

    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_tune_project_queues_the_round_on_the_worker(monkeypatch, capsys, tmp_path, redis_conn):
    code, io = run(["tune", "--project", "4"], monkeypatch, capsys, tmp_path)
    assert code == 0 and io.out.strip() == pending_tune(redis_conn) and io.out.startswith("tune-4-")
    assert "queued a tuning round" in io.err
    code, again = run(["tune", "--project", "4"], monkeypatch, capsys, tmp_path)
    assert again.out == io.out and "already queued" in again.err
    assert redis_conn.exists(f"rq:job:{io.out.strip()}") and tune.kind == "tune"
    code, io = run(["tune", "--project", "4", "--data", "pairs.jsonl", "--epochs", "2"], monkeypatch, capsys, tmp_path)
    assert code == 2 and "leave out --data, --epochs" in io.err
    code, io = run(["tune", "--data", "pairs.jsonl"], monkeypatch, capsys, tmp_path)
    assert code == 2 and "--project N" in io.err


def test_versions_lists_generator_versions_and_rolls_back(monkeypatch, capsys, tmp_path):
    store = VersionStore(tmp_path / "models", GENERATOR)
    for promote in (True, False):
        with store.new_version(4) as pending:
            (pending.path / "tuning.json").write_text(json.dumps({"pairs_trained": 30, "steps": 4}))
            (pending.path / EVALUATION_FILE).write_text(json.dumps({
                "lc_win_rate": 0.61, "lc_win_rate_ci": [0.52, 0.7], "length_change": 0.05,
                "decision": {"promote": promote, "by": "the evaluation", "reasons": []}}))
    store.activate(4, "v1")
    code, io = run(["versions", "--project", "4"], monkeypatch, capsys, tmp_path)
    assert code == 0 and "no versions under" in io.out  # no reward model yet; the generator's still listed
    lines = io.out.splitlines()
    row = next(line for line in lines if line.startswith("* v1"))
    assert "61.0%" in row and "52.0%-70.0%" in row and "+5%" in row and "promoted by the evaluation" in row
    assert "not promoted" in next(line for line in lines if line.startswith("  v2"))
    code, io = run(["versions", "--project", "4", "--generator", "--activate", "v2"], monkeypatch, capsys, tmp_path)
    assert code == 0 and store.current(4) == "v2" and any(line.startswith("* v2") for line in io.out.splitlines())
    code, io = run(["versions", "--project", "4", "--generator", "--activate", "none"], monkeypatch, capsys, tmp_path)
    assert code == 0 and store.current(4) is None and "none current" in io.out


@pytest.mark.parametrize("version", ["v9", "latest"])
def test_activating_a_generator_version_that_is_not_there_changes_nothing(version, monkeypatch, capsys, tmp_path):
    store = VersionStore(tmp_path / "models", GENERATOR)
    with store.new_version(4):
        pass
    store.activate(4, "v1")
    code, io = run(["versions", "--project", "4", "--generator", "--activate", version], monkeypatch, capsys, tmp_path)
    assert code == 2 and len(io.err.strip().splitlines()) == 1 and store.current(4) == "v1"
