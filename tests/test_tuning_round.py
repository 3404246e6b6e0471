"""A project's tuning round (model/tuning_round.py) and what serves its result (backend/generators.py), on a
tiny Llama and a tiny BERT judge built on the fly: the held-out prompts stay held out as the project grows,
a round writes a complete version with its evaluation and activates it only as TUNE_PROMOTE says, the next
round starts from the served version, a round that fails midway leaves no version and the pointer where it
was, and the generation job's generator follows the project's pointer."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from tiny_models import tiny_causal_lm, tiny_encoder

from backend.generators import ProjectGenerators, describe
from model.comparison import train_judge
from model.generation.types import GenerationConfig
from model.pairs import PreferencePair
from model.reward.config import TrainConfig
from model.store import GENERATOR, VersionStore
from model.tuning import TuneConfig, TuningError, prompt_hash
from model.tuning_round import EVALUATION_FILE, RoundConfig, decide, run_round, stable_split

WORDS = "the quick brown fox sea wind sky poem".split()


def questions(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=5)) + f" {i}?" for i in range(n)]


def pairs_for(prompts):
    return [PreferencePair(p, "Paris is the capital.", "dog dog dog") for p in prompts]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"lm": str(tiny_causal_lm(folder / "lm")), "judge": str(tiny_encoder(folder / "judge"))}


def round_config(models, **overrides):
    defaults = dict(
        tune=TuneConfig(learning_rate=5e-2, beta=1.0, batch_size=4, micro_batch_size=4, threads=1),
        generation=GenerationConfig(model=models["lm"], max_new_tokens=6, seed=0, threads=1),
        judge=TrainConfig(base_model=models["judge"], mode="fast", threads=1, seed=0),
        holdout=0.5, eval_prompts=8, promote="if-better")
    return RoundConfig(**{**defaults, **overrides})


def test_the_held_out_prompts_stay_held_out_as_the_project_grows():
    first = pairs_for(questions(40))
    grown = first + pairs_for(questions(60, seed=1)) + [PreferencePair(first[0].prompt, "other", "answer")]
    tune1, held1 = stable_split(first, 0.3)
    tune2, held2 = stable_split(grown, 0.3)
    assert {p.prompt for p in held1} <= {p.prompt for p in held2}
    assert not {p.prompt for p in tune1} & {p.prompt for p in held2}  # round 2 judges on nothing round 1 saw
    assert not {p.prompt for p in tune2} & {p.prompt for p in held2}
    assert len(tune2) + len(held2) == len(grown)
    share = len({p.prompt for p in held2}) / len({p.prompt for p in grown})
    assert 0.15 < share < 0.45
    assert stable_split(first, 0.0) == (first, [])
    with pytest.raises(ValueError):
        stable_split(first, 1.0)


def test_promotion_modes():
    won = {"promotion": {"promote": True, "reasons": []}}
    lost = {"promotion": {"promote": False, "reasons": ["the interval reaches down to 40%"]}}
    assert decide(won, "if-better")["promote"] and not decide(lost, "if-better")["promote"]
    assert decide(lost, "if-better")["reasons"] == ["the interval reaches down to 40%"]
    assert decide({"error": "no held-out pair"}, "if-better") == {
        "promote": False, "by": "the evaluation", "reasons": ["no held-out pair"]}
    assert decide(lost, "always") == {"promote": True, "by": "TUNE_PROMOTE=always", "reasons": []}
    assert not decide(won, "never")["promote"]
    with pytest.raises(ValueError):
        decide(won, "sometimes")


def test_a_round_writes_an_evaluated_version_and_serves_it_only_as_promotion_says(models, tmp_path):
    store = VersionStore(tmp_path / "models", GENERATOR)
    pairs = pairs_for(questions(24))
    one_head = dataclasses.replace(round_config(models).judge, folds=1)
    outcome = run_round(pairs, 7, store, models["lm"], round_config(models, judge=one_head), tmp_path / "work",
                        provenance={"annotations": 24})
    assert outcome["status"] == "done" and outcome["version"] == "v1"
    # One head holds out 2 of the 12 pairs it is given: its accuracy's interval reaches below 50%, so the rule
    # cannot promote.
    assert not outcome["promoted"] and store.current(7) is None
    tuning = store.metrics(7, "v1", "tuning.json")
    evaluation = store.metrics(7, "v1", EVALUATION_FILE)
    tuned, held = stable_split(pairs, 0.5)
    assert tuning["prompt_hashes"] == sorted({prompt_hash(p.prompt) for p in tuned})
    assert tuning["annotations"] == 24 and tuning["base_version"] is None and tuning["held_out_pairs"] == len(held)
    assert evaluation["n_prompts"] == min(8, len(held)) and evaluation["base_model"] == models["lm"]
    assert evaluation["decision"]["by"] == "the evaluation" and not evaluation["decision"]["promote"]
    assert "lc_win_rate" in evaluation and "new" not in evaluation  # no temporary path left in it

    always = round_config(models, promote="always")
    outcome = run_round(pairs, 7, store, models["lm"], always, tmp_path / "work2")
    assert outcome["promoted"] and store.current(7) == "v2" and outcome["started_from"] == models["lm"]
    outcome = run_round(pairs, 7, store, models["lm"], always, tmp_path / "work3")
    assert outcome["started_from"] == "v2" and store.current(7) == "v3"  # round 3 tuned the served v2
    assert store.metrics(7, "v3", "tuning.json")["base"] == str(store.path(7, "v2"))
    assert store.metrics(7, "v3", EVALUATION_FILE)["base_version"] == "v2"


def test_a_judge_tested_on_two_pairs_cannot_vouch_for_a_round(models, tmp_path):
    """It may get both right: its interval must still reach below 50% (a bootstrap's would be [100%, 100%]).
    Cross-fitted (the default), the judge is tested on every pair instead."""
    one_head = dataclasses.replace(round_config(models).judge, folds=1)
    (tmp_path / "one").mkdir(), (tmp_path / "folds").mkdir()
    _, info = train_judge(pairs_for(questions(11)), one_head, tmp_path / "one")
    assert info["accuracy_pairs"] == 2 and info["accuracy_ci"][0] < 0.5
    _, info = train_judge(pairs_for(questions(11)), round_config(models).judge, tmp_path / "folds")
    assert info["accuracy_pairs"] == 11


def test_a_round_without_pairs_to_tune_on_is_skipped(models, tmp_path):
    store = VersionStore(tmp_path / "models", GENERATOR)
    same = [PreferencePair("q?", "same", "same")]
    assert run_round(same, 1, store, models["lm"], round_config(models), tmp_path)["status"] == "skipped"
    assert store.versions(1) == []


def test_a_round_that_fails_midway_leaves_no_version_and_the_served_one_current(models, tmp_path):
    store = VersionStore(tmp_path / "models", GENERATOR)
    with store.new_version(3) as pending:  # a served version, copied from the base
        tiny_causal_lm(pending.path)
    store.activate(3, "v1")
    broken_judge = dataclasses.replace(round_config(models).judge, base_model=str(tmp_path / "no-such-encoder"))
    with pytest.raises(Exception):  # the tuning ran; training the judge fails
        run_round(pairs_for(questions(12)), 3, store, models["lm"], round_config(models, judge=broken_judge),
                  tmp_path / "work")
    assert store.versions(3) == ["v1"] and store.current(3) == "v1"
    assert not list(store.project_dir(3).glob(".tmp-*"))
    with pytest.raises(TuningError, match="not a causal language model"):
        bad = VersionStore(tmp_path / "bad", GENERATOR)
        with bad.new_version(3) as pending:
            tiny_encoder(pending.path)
        bad.activate(3, "v1")
        run_round(pairs_for(questions(12)), 3, bad, models["lm"], round_config(models), tmp_path / "work")
    assert bad.versions(3) == ["v1"] and bad.current(3) == "v1"


class Counting:
    def __init__(self):
        self.loads = 0

    def __call__(self):
        self.loads += 1
        return self

    def describe(self):
        return {"backend": "local", "model": "configured"}


def test_each_project_is_answered_by_its_current_generator_version(models, tmp_path, make_settings):
    settings = make_settings(GENERATOR_MODEL=models["lm"], MAX_NEW_TOKENS=4, MODEL_DIR=tmp_path / "models")
    configured = Counting()
    shared = configured()
    generators = ProjectGenerators(settings, lambda: shared)
    assert generators.for_project(1) == (shared, None) and generators.for_project(2) == (shared, None)
    assert configured.loads == 1  # projects without a version share the worker's one generator
    assert describe(shared, None) == {"backend": "local", "model": "configured", "version": None}

    store = VersionStore(settings.model_dir, GENERATOR)
    for _ in range(2):
        with store.new_version(1) as pending:
            tiny_causal_lm(pending.path)
    store.activate(1, "v1")
    first, version = generators.for_project(1)
    assert version == "v1" and first is not shared and generators.for_project(1)[0] is first  # loaded once
    assert describe(first, "v1")["model"] == str(store.path(1, "v1")) and describe(first, "v1")["version"] == "v1"
    assert first.generate(["sea wind?"])[0].answers  # a real generator of that folder
    assert generators.for_project(2) == (shared, None)
    store.activate(1, "v2")  # promotion or rollback: the next job loads the new pointer's version
    second, version = generators.for_project(1)
    assert version == "v2" and second is not first
    assert list(generators._loaded) == [(1, "v2")]  # the replaced version is let go
    store.deactivate(1)
    assert generators.for_project(1) == (shared, None)
    openai = ProjectGenerators(dataclasses.replace(settings, generator="openai"), lambda: shared)
    store.activate(1, "v2")
    assert openai.for_project(1) == (shared, None)  # a served model answers; local folders are not loaded


def test_settings_and_the_worker_budget(make_settings):
    from backend.config import ConfigError, tuning_config

    settings = make_settings()
    assert (settings.tune_every, settings.tune_holdout, settings.tune_eval_prompts, settings.tune_time_budget,
            settings.tune_promote) == (0, 0.2, 64, 1200, "if-better")
    assert tuning_config(settings).time_budget == 1200
    assert tuning_config(make_settings(JOB_TIMEOUT=600)).time_budget == 360  # room to evaluate and save
    for name, value in (("TUNE_PROMOTE", "maybe"), ("TUNE_HOLDOUT", "1"), ("TUNE_EVERY", "-1"),
                        ("TUNE_TIME_BUDGET", "0")):
        with pytest.raises(ConfigError, match=name):
            make_settings(**{name: value})


def test_versions_route_lists_generator_versions(tmp_path, make_settings, redis_conn):
    from backend.app import create_app

    settings = make_settings(MODEL_DIR=tmp_path / "models")
    store = VersionStore(settings.model_dir, GENERATOR)
    for _ in range(2):
        with store.new_version(5) as pending:
            (pending.path / "config.json").write_text(json.dumps({}))
    store.activate(5, "v2")
    body = create_app(settings, redis_conn).test_client().get("/versions?project=5").get_json()
    assert body["projects"]["5"] == {"current": None, "versions": [],
                                     "generator": {"current": "v2", "versions": ["v1", "v2"]}}
