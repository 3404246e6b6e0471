import pytest

from backend.config import OPTIONS, ConfigError, load_settings


def test_defaults_load_without_any_environment():
    settings = load_settings({})
    assert settings.port == 9090
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.preannotate == "trained"
    assert not settings.auth_enabled


@pytest.mark.parametrize("env, message", [
    ({"PORT": "abc"}, "PORT must be an integer"),
    ({"WORKERS": "0"}, "WORKERS must be at least 1"),
    ({"BASIC_AUTH_USER": "u"}, "must be set together"),
    ({"LABEL_STUDIO_URL": "label-studio:8080"}, "LABEL_STUDIO_URL must be a URL"),
    ({"GENERATOR": "openai"}, "needs OPENAI_BASE_URL"),
    ({"PREANNOTATE": "sometimes"}, "PREANNOTATE must be one of"),
    ({"TOP_P": "1.5"}, "TOP_P must be between"),
    ({"LABEL_STUDIO_ALLOW_PRIVATE_HOSTS": "maybe"}, "must be true or false"),
    ({"TRAIN_MEMBERS": "0"}, "TRAIN_MEMBERS must be at least 1"),
    ({"CANDIDATES": "1"}, "CANDIDATES must be at least 2"),
    ({"CANDIDATES": "27"}, "CANDIDATES must be at most 26"),
    ({"CANDIDATES": "four"}, "CANDIDATES must be an integer"),
    ({"CANDIDATES": "4", "GENERATOR_B_MODEL": "other"}, "needs CANDIDATES=2"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_training_settings_reach_the_train_config():
    from backend.config import train_config

    config = train_config(load_settings({"TRAIN_MODE": "full", "TRAIN_MEMBERS": "3", "REWARD_POOLING": "cls"}))
    assert (config.mode, config.members, config.pooling) == ("full", 3, "cls")


def test_another_mode_asked_for_brings_its_own_defaults():
    """`train --mode full` on a fast-mode deployment, or the tuning judge (fast) on a full-mode one, trains with
    that mode's epochs, learning rate, batch and length, not the other's."""
    from backend.config import train_config

    fast = train_config(load_settings({}))
    full = train_config(load_settings({}), mode="full", seed=None)
    judge = train_config(load_settings({"TRAIN_MODE": "full"}), mode="fast")
    assert (fast.mode, fast.epochs, fast.batch_size, fast.max_length, fast.folds) == ("fast", 60, 64, 512, 3)
    assert (full.epochs, full.learning_rate, full.batch_size, full.max_length, full.seed) == (2, 1e-4, 8, 256, 0)
    assert (judge.epochs, judge.learning_rate, judge.max_length) == (60, 3e-4, 512)
    assert train_config(load_settings({"REWARD_MAX_LENGTH": "128"}), mode="full").max_length == 128


def test_the_tuning_adapters_layers_reach_the_tuning_config():
    from backend.config import tuning_config

    assert tuning_config(load_settings({})).lora_layers is None  # tune() picks by device
    assert tuning_config(load_settings({"TUNE_LORA_LAYERS": "30"})).lora_layers == 30
    with pytest.raises(ConfigError, match="TUNE_LORA_LAYERS"):
        load_settings({"TUNE_LORA_LAYERS": "0"})


def test_candidates_reach_the_generation_config():
    from backend.config import generation_config

    assert generation_config(load_settings({})).candidates == 2
    assert generation_config(load_settings({"CANDIDATES": "4"})).candidates == 4


def test_secrets_stay_out_of_repr():
    settings = load_settings({"BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "hunter2-pass",
                              "LABEL_STUDIO_API_KEY": "ls-key-123456", "OPENAI_API_KEY": "sk-abcdef",
                              "REDIS_URL": "redis://:redispw99@localhost:6379/0"})
    text = repr(settings)
    for secret in ("hunter2-pass", "ls-key-123456", "sk-abcdef", "redispw99"):
        assert secret not in text
        assert secret in settings.secrets()


def test_every_option_is_read():
    """A variable in OPTIONS that load_settings ignores would be a lie in the README's table."""
    fields = set(load_settings({}).__dataclass_fields__)
    assert {o.name.lower() for o in OPTIONS} == fields


def test_readme_documents_every_option():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [o.name for o in OPTIONS if f"`{o.name}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
