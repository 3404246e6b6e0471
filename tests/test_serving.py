"""The PREANNOTATE policy and version bookkeeping of the per-process model cache (no model needed for the
cases where nothing may be shown)."""

import json

import pytest

from backend.serving import UNTRAINED, ZERO_SHOT, ModelCache
from model.store import VersionStore


def store_with_version(settings, project: int, accuracy) -> VersionStore:
    store = VersionStore(settings.model_dir)
    with store.new_version(project) as pending:
        (pending.path / "metrics.json").write_text(json.dumps({"val_accuracy": accuracy}))
    store.activate(project, pending.name)
    return store


@pytest.mark.parametrize("policy, expected", [("never", UNTRAINED), ("trained", UNTRAINED), ("always", ZERO_SHOT)])
def test_version_before_training(make_settings, policy, expected):
    settings = make_settings(PREANNOTATE=policy)
    assert ModelCache(settings, VersionStore(settings.model_dir)).version(3) == expected


def test_never_and_untrained_show_nothing(make_settings):
    for policy in ("never", "trained"):
        settings = make_settings(PREANNOTATE=policy)
        assert ModelCache(settings, VersionStore(settings.model_dir)).scorer(3) is None


@pytest.mark.parametrize("accuracy", [None, 0.55])
def test_trained_policy_hides_a_weak_model(make_settings, accuracy):
    settings = make_settings(PREANNOTATE="trained", PREANNOTATE_MIN_ACCURACY=0.6)
    cache = ModelCache(settings, store_with_version(settings, 3, accuracy))
    assert cache.version(3) == "v1"  # Label Studio still learns the version ...
    assert cache.scorer(3) is None   # ... but annotators see no guess from it


def test_never_hides_even_a_good_model(make_settings):
    settings = make_settings(PREANNOTATE="never")
    assert ModelCache(settings, store_with_version(settings, 3, 0.95)).scorer(3) is None


def test_an_unloadable_version_is_not_served(make_settings, caplog):
    settings = make_settings(PREANNOTATE="trained", PREANNOTATE_MIN_ACCURACY=0.6)
    cache = ModelCache(settings, store_with_version(settings, 3, 0.9))  # metrics but no weights
    assert cache.scorer(3) is None
    assert "could not load project 3 version v1" in caplog.text
