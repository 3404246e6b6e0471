"""Malformed input on every route: generated with hypothesis from the requests Label Studio 1.23.2 really
sent (tests/fixtures), then broken: wrong types, missing fields, empty and huge lists, invalid JSON,
non-UTF-8 bytes, unknown actions, label configs without a Pairwise. The contract: a 2xx for what is still a
valid request, otherwise a 4xx with a JSON `error` message; never a 5xx; the server keeps serving.

The bulk runs on Flask's test client (fast, with a real Redis and the real zero-shot scorer of a tiny
encoder, so /predict's scoring path runs too); a smaller generated run goes to the real gunicorn server."""

from __future__ import annotations

import copy
import json
import os

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, REDIS_URL
from harness import backend_env, start_backend

CAPTURED = json.loads((FIXTURES / "ls-1.23.2-ml-requests.json").read_text())
VALID = {
    "/setup": CAPTURED["setup"]["json"],
    "/predict": CAPTURED["predict_single_task_from_GET_task"]["json"],
    "/webhook": CAPTURED["webhook_ANNOTATION_CREATED"]["json"],
    "/train": {"project": 4},
}
POST_ROUTES = sorted(VALID)
GET_ROUTES = ["/", "/health", "/versions", "/metrics", "/jobs"]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))  # test client; the real server gets a third

NO_PAIRWISE_CONFIGS = [
    "",
    "   ",
    "<View/>",
    "not xml at all",
    "<View><Text name=\"t\" value=\"$t\"/></View>",
    "<View><Text name=\"a\" value=\"$a\"/><Text name=\"b\" value=\"$b\"/><Choices name=\"c\" toName=\"a\">"
    "<Choice value=\"x\"/></Choices></View>",
    "<View><Pairwise name=\"cmp\" toName=\"answer1\"/><Text name=\"answer1\" value=\"$answer1\"/></View>",
    "<View><Pairwise name=\"cmp\" toName=\"x,y\"/></View>",
    "<View><Pairwise name=\"cmp\" toName=\"a,b\"/><Text name=\"a\" value=\"$a\"/>"
    "<Text name=\"b\" value=\"$b\"/></View>",  # no prompt Text
    "<View><Pairwise name=\"cmp\" toName=\"a,b\"/><Text name=\"a\" value=\"lit\"/>"
    "<Text name=\"b\" value=\"$b\"/><Text name=\"p\" value=\"$p\"/></View>",  # literal answer Text
    "<View><Pairwise name=\"c1\" toName=\"a,b\"/><Pairwise name=\"c2\" toName=\"a,b\"/>"
    "<Text name=\"a\" value=\"$a\"/><Text name=\"b\" value=\"$b\"/><Text name=\"p\" value=\"$p\"/></View>",
    "<View><Pairwise name=\"cmp\" toName=\"a,b\"/><Image name=\"a\" value=\"$a\"/>"
    "<Text name=\"b\" value=\"$b\"/><Text name=\"p\" value=\"$p\"/></View>",  # a non-Text target
    "<View><Pairwise",
    "<?xml version=\"1.0\"?><!DOCTYPE v [<!ENTITY e \"x\">]><View>&e;</View>",
]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=20)
wrong_project = st.one_of(st.sampled_from([None, True, False, 0, -4, 4.5, "", "abc", "0.17", "-4", "4x", [], {},
                                           "٣", " ", {"id": "x"}, {"id": None}, [4]]),
                          json_value)
huge_list = st.sampled_from([
    [],
    [None] * 3000,
    [{}] * 3000,
    [{"data": []}] * 2000,
    [{"data": {"prompt": "p", "answer1": 1, "answer2": None}}] * 2000,
    [{"id": i, "data": {"prompt": ["not", "a", "string"], "answer1": "", "answer2": ""}} for i in range(2000)],
])


@st.composite
def mutated(draw, route: str):
    """A captured valid body for `route` with one to three fields broken."""
    body = copy.deepcopy(VALID[route])
    for _ in range(draw(st.integers(1, 3))):
        keys = sorted(body) or ["project"]
        key = draw(st.sampled_from(keys + ["action", "tasks", "schema", "label_config", "project"]))
        how = draw(st.sampled_from(["drop", "type", "project", "list", "config", "action", "task"]))
        if how == "drop":
            body.pop(key, None)
        elif how == "type":
            body[key] = draw(json_value)
        elif how == "project":
            body["project"] = draw(wrong_project)
        elif how == "list":
            body[draw(st.sampled_from(["tasks", "project", "annotation", "schema"]))] = draw(huge_list)
        elif how == "config":
            body[draw(st.sampled_from(["schema", "label_config"]))] = draw(st.sampled_from(NO_PAIRWISE_CONFIGS))
        elif how == "action":
            body["action"] = draw(st.one_of(st.text(max_size=40), st.sampled_from(
                ["annotation_created", "TASK_CREATED", "START_TRAINING ", "", "\u0000", "X" * 100_000]), json_value))
        elif how == "task" and isinstance(body.get("tasks"), list) and body["tasks"]:
            task = body["tasks"][0]
            if isinstance(task, dict) and isinstance(task.get("data"), dict):
                task["data"][draw(st.sampled_from(["prompt", "answer1", "answer2"]))] = draw(json_value)
            else:
                body["tasks"][0] = draw(json_value)
    return body


def encoded(body) -> bytes:
    return json.dumps(body).encode()


# A request: (method, path, raw body bytes or None, must_be_4xx).
request_cases = st.one_of(
    # Broken bodies: always a 400.
    st.tuples(st.just("POST"), st.sampled_from(POST_ROUTES), st.one_of(
        st.binary(max_size=64).filter(lambda b: _not_utf8(b)),
        st.sampled_from([b"", b"{", b"{not json", b"[1, 2]", b"null", b"42", b"\"text\"", b"\xff\xfe{}",
                         b"{\"tasks\": [}", b"\x00\x00\x00", "{\"action\": \"\ud800\"}".encode("utf-8", "surrogatepass")]),
        st.text(max_size=60).map(lambda t: t.encode()).filter(lambda b: not _json_object(b)),
        json_value.filter(lambda v: not isinstance(v, dict)).map(encoded),
    ), st.just(True)),
    # Captured bodies, broken field by field: 2xx if still valid, else 4xx.
    st.sampled_from(POST_ROUTES).flatmap(lambda r: st.tuples(st.just("POST"), st.just(r), mutated(r).map(encoded),
                                                             st.just(False))),
    # Arbitrary JSON objects.
    st.tuples(st.just("POST"), st.sampled_from(POST_ROUTES),
              st.dictionaries(st.sampled_from(["project", "tasks", "schema", "label_config", "action", "x"]),
                              json_value, max_size=4).map(encoded), st.just(False)),
    # GET routes with odd query strings.
    st.tuples(st.just("GET"), st.one_of(
        st.builds(lambda p, k, v: f"{p}?{k}={v}", st.sampled_from(GET_ROUTES), st.sampled_from(["project", "x"]),
                  st.sampled_from(["", "-1", "0", "99999999999999999999", "4.1", "%ff", "4%00", "[]", "x"])),
        st.builds(lambda p, v: f"{p}?limit={v}", st.sampled_from(GET_ROUTES),  # non-integers: see CRASHERS
                  st.sampled_from(["-1", "0", "1", "200", "99999999999999999999"]))),
              st.none(), st.just(False)),
    # Wrong methods.
    st.tuples(st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]), st.sampled_from(POST_ROUTES), st.none(), st.just(True)),
    st.tuples(st.sampled_from(["POST", "PUT", "DELETE"]), st.sampled_from(["/versions", "/metrics", "/jobs"]),
              st.just(b"{}"), st.just(True)),
)


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def check_answer(status: int, content_type: str, payload: bytes, must_be_4xx: bool, what: str) -> None:
    assert status < 500, f"{what} -> {status}: {payload[:500]!r}"
    if must_be_4xx or status >= 400:
        assert 400 <= status < 500, f"{what} -> {status}: {payload[:300]!r}"
        assert content_type.startswith("application/json"), f"{what} -> {status} {content_type}"
        message = json.loads(payload).get("error")
        assert isinstance(message, str) and message.strip(), f"{what} -> {status} without a message: {payload[:300]!r}"


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    from tiny_models import tiny_encoder

    return tiny_encoder(tmp_path_factory.mktemp("fuzz") / "tiny-rm")


@pytest.fixture(scope="module")
def fuzz_client(tiny_reward, tmp_path_factory):
    """One app for every generated case (hypothesis reruns the body; function fixtures would not reset)."""
    import redis

    from backend.app import create_app
    from backend.config import load_settings

    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    settings = load_settings({"MODEL_DIR": str(tmp_path_factory.mktemp("fuzz-models")), "REDIS_URL": REDIS_URL,
                              "QUEUE_PREFIX": "rlhf-fuzz", "PREANNOTATE": "always",
                              "REWARD_BASE_MODEL": str(tiny_reward), "MAX_REQUEST_BYTES": str(4 * 2**20)})
    yield create_app(settings, connection).test_client()
    connection.flushdb()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=request_cases)
@example(case=("POST", "/setup", encoded(dict(VALID["/setup"], schema=NO_PAIRWISE_CONFIGS[4])), True))
@example(case=("POST", "/predict", encoded(dict(VALID["/predict"], label_config=NO_PAIRWISE_CONFIGS[4])), True))
@example(case=("POST", "/webhook", encoded(dict(VALID["/webhook"], action="NO_SUCH_EVENT")), False))
@example(case=("POST", "/predict", encoded(dict(VALID["/predict"], tasks=[])), True))
def test_generated_bad_requests_get_a_4xx_with_a_message(fuzz_client, case):
    method, path, body, must_be_4xx = case
    response = fuzz_client.open(path, method=method, data=body, content_type="application/json")
    check_answer(response.status_code, response.content_type or "", response.get_data(), must_be_4xx,
                 f"{method} {path} {body[:200] if body else body!r}")
    if path == "/predict" and response.status_code == 200:  # still valid: one item per task, in order
        assert len(response.get_json()["results"]) == len(json.loads(body)["tasks"])


# Found by the generated cases above, kept as named regressions (each was a 500 with a traceback):
# int() of a non-integer `limit` (and an unbounded negative one that Redis refuses), and str.isdigit() accepting digits that int() refuses ("²").
CRASHERS = [
    ("GET", "/jobs?limit=abc", None),
    ("GET", "/jobs?limit=", None),
    ("GET", "/jobs?limit=-99999999999999999999", None),  # reaches Redis: a 503 "Redis unavailable"
    ("GET", "/jobs?limit=1e3", None),
    ("GET", "/versions?project=%C2%B2", None),
    ("POST", "/webhook", encoded({"action": "TASKS_CREATED", "project": "\u00b2"})),
    ("POST", "/webhook", encoded(dict(VALID["/webhook"], project={"id": "4\u00b2"}))),
    ("POST", "/predict", encoded(dict(VALID["/predict"], project="4\u00b2.1795778391"))),
    ("POST", "/setup", encoded(dict(VALID["/setup"], project="\u00b3"))),
    ("POST", "/train", encoded({"project": "\u00b2"})),
]


@pytest.mark.parametrize("method, path, body", CRASHERS, ids=[f"{m} {p}" for m, p, _ in CRASHERS])
def test_odd_numbers_get_a_400_not_a_5xx(fuzz_client, method, path, body):
    response = fuzz_client.open(path, method=method, data=body, content_type="application/json")
    check_answer(response.status_code, response.content_type or "", response.get_data(), True, f"{method} {path}")


def test_the_app_still_serves_after_the_fuzzing(fuzz_client):
    assert fuzz_client.get("/health").status_code == 200
    response = fuzz_client.post("/predict", json=VALID["/predict"])
    assert response.status_code == 200 and response.get_json()["results"][0]["model_version"] == "zero-shot"


def test_oversized_bodies_get_413_on_every_post_route(fuzz_client):
    for route in POST_ROUTES:
        response = fuzz_client.post(route, data=b"{" + b" " * (5 * 2**20) + b"}", content_type="application/json")
        assert response.status_code == 413, route
        assert "error" in response.get_json()


# ------------------------------------------------------------------ the real gunicorn server

@pytest.fixture(scope="module")
def real_server(tiny_reward, tmp_path_factory):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("fuzz-server")
    env = backend_env(REDIS_URL=REDIS_URL, QUEUE_PREFIX="rlhf-fuzz", MODEL_DIR=work / "models",
                      PREANNOTATE="always", REWARD_BASE_MODEL=tiny_reward, MAX_REQUEST_BYTES=2**20,
                      WORKERS=1, THREADS=4)
    server, _, url = start_backend(env, work, worker=False)
    yield url, server
    server.stop()
    redis.Redis.from_url(REDIS_URL).flushdb()


@settings(max_examples=max(20, EXAMPLES // 3), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=request_cases)
@pytest.mark.integration
def test_generated_bad_requests_against_the_real_server(real_server, case):
    url, server = real_server
    method, path, body, must_be_4xx = case
    if body is not None and len(body) > 2**20:
        return  # the 413 test covers these
    response = requests.request(method, url + path, data=body, timeout=30,
                                headers={"Content-Type": "application/json"})
    check_answer(response.status_code, response.headers.get("Content-Type", ""), response.content, must_be_4xx,
                 f"{method} {path} {body[:200] if body else body!r}")
    assert server.popen.poll() is None


@pytest.mark.integration
def test_real_server_rejects_oversized_bodies_and_keeps_serving(real_server):
    url, server = real_server
    big = b"[" + b"0," * (2**20) + b"0]"  # ~2 MiB, limit 1 MiB
    response = requests.post(url + "/predict", data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and "error" in response.json()

    def chunks():  # no Content-Length: the limit must hold for a streamed body too
        for _ in range(40):
            yield b" " * 65536

    response = requests.post(url + "/webhook", data=chunks(), headers={"Content-Type": "application/json"},
                             timeout=30)
    assert response.status_code in (400, 413), response.text[:300]
    assert "error" in response.json()
    health = requests.get(url + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["model_class"] == "RLHFPreferenceModel"
    predicted = requests.post(url + "/predict", json=VALID["/predict"], timeout=30).json()
    assert predicted["results"][0]["model_version"] == "zero-shot"
    assert "Traceback" not in server.output()
