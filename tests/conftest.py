"""Shared fixtures. Integration tests use the real Redis at TEST_REDIS_URL (default: database 15 on
localhost), flushed around each test; .ci/run starts redis-server if nothing answers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import redis

TESTS = Path(__file__).parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

sys.path.insert(0, str(TESTS))  # tiny_models, helpers


@pytest.fixture(scope="session")
def captured():
    """Real requests Label Studio 1.23.2 sent to an ML backend."""
    return json.loads((FIXTURES / "ls-1.23.2-ml-requests.json").read_text())


@pytest.fixture(scope="session")
def label_config():
    return (ROOT / "label_config.xml").read_text()


@pytest.fixture
def redis_conn():
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server (.ci/run does)")
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture
def make_settings(tmp_path):
    from backend.config import load_settings

    def make(**overrides):
        env = {"MODEL_DIR": str(tmp_path / "models"), "REDIS_URL": REDIS_URL, "QUEUE_PREFIX": "rlhf-test"}
        env.update({k: str(v) for k, v in overrides.items()})
        return load_settings(env)

    return make


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One real Label Studio 1.23.2 for the end-to-end tests (starting one takes 20-60 s)."""
    from harness import start_label_studio

    process, url = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    yield url
    process.stop()
