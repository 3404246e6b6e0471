"""Generator versions live beside a project's reward-model versions, with their own pointer; the reward
layout MODEL_DIR/<project>/v<N> is unchanged, so existing deployments keep working."""

import pytest

from model.store import GENERATOR, VersionStore


def write(store, project, text):
    with store.new_version(project) as pending:
        (pending.path / "config.json").write_text(text)
    return pending.name


def test_generator_versions_sit_beside_reward_versions_with_their_own_pointer(tmp_path):
    rewards, generators = VersionStore(tmp_path), VersionStore(tmp_path, GENERATOR)
    reward = write(rewards, 4, "reward")
    rewards.activate(4, reward)
    first, second = write(generators, 4, "g1"), write(generators, 4, "g2")
    generators.activate(4, second)
    assert (first, second) == ("v1", "v2")
    assert (tmp_path / "4" / "v1" / "config.json").read_text() == "reward"  # the old layout, untouched
    assert (tmp_path / "4" / "generator" / "v2" / "config.json").read_text() == "g2"
    assert rewards.versions(4) == ["v1"] and rewards.current(4) == "v1"  # "generator" is no reward version
    assert generators.versions(4) == ["v1", "v2"] and generators.current(4) == "v2"
    generators.activate(4, "v1")  # roll back the generator only
    assert generators.current(4) == "v1" and rewards.current(4) == "v1"
    generators.deactivate(4)  # back to the configured generator
    assert generators.current(4) is None and rewards.current(4) == "v1"
    generators.deactivate(4)  # twice is harmless


def test_pruning_one_kind_leaves_the_other(tmp_path):
    rewards, generators = VersionStore(tmp_path), VersionStore(tmp_path, GENERATOR)
    for _ in range(3):
        write(rewards, 1, "r")
        write(generators, 1, "g")
    generators.activate(1, "v1")
    assert generators.prune(1, keep=1) == ["v2"]
    assert rewards.versions(1) == ["v1", "v2", "v3"] and generators.versions(1) == ["v1", "v3"]
    assert rewards.prune(1, keep=1) == ["v1", "v2"] and generators.versions(1) == ["v1", "v3"]


def test_a_failed_tuning_run_leaves_no_generator_version(tmp_path):
    generators = VersionStore(tmp_path, GENERATOR)
    with pytest.raises(RuntimeError):
        with generators.new_version(2) as pending:
            (pending.path / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert generators.versions(2) == [] and generators.current(2) is None


def test_records_are_read_by_name(tmp_path):
    generators = VersionStore(tmp_path, GENERATOR)
    with generators.new_version(3) as pending:
        (pending.path / "tuning.json").write_text('{"base": "smollm2"}')
    assert generators.metrics(3, "v1", "tuning.json") == {"base": "smollm2"}
    assert generators.metrics(3, "v1", "evaluation.json") == {}
    with pytest.raises(ValueError, match="unknown kind"):
        VersionStore(tmp_path, "policy")
