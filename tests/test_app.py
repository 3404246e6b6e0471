"""Every route, driven with the requests Label Studio 1.23.2 really sent (tests/fixtures)."""

import base64
import json
import math

import pytest

from backend.app import create_app
from backend.labels import parse_label_config
from backend.predictions import score_tasks
from conftest import ROOT
from model.pairs import DEFAULT_FIELDS


@pytest.fixture
def app(make_settings, redis_conn):
    return create_app(make_settings(), redis_conn)


@pytest.fixture
def client(app):
    return app.test_client()


def test_health_is_json_and_reports_missing_worker(client):
    body = client.get("/health").get_json()
    assert body["model_class"] == "RLHFPreferenceModel"
    assert body["redis"] is True and body["workers"] == 0
    assert body["status"] == "DEGRADED"
    assert any("no worker" in p for p in body["problems"])
    assert client.get("/").status_code == 200


def test_setup_answers_model_version_and_records_project(client, captured, redis_conn):
    response = client.post("/setup", json=captured["setup"]["json"])
    assert response.status_code == 200
    assert response.get_json() == {"model_version": "untrained"}
    stored = redis_conn.hgetall("rlhf-test:project:4")
    assert stored[b"hostname"] == b"http://127.0.0.1:8080"
    assert redis_conn.sismember("rlhf-test:projects", 4)


def test_setup_rejects_a_config_without_pairwise(client, captured):
    body = dict(captured["setup"]["json"], schema='<View><Text name="t" value="$t"/></View>')
    response = client.post("/setup", json=body)
    assert response.status_code == 400
    assert "no <Pairwise> control" in response.get_json()["error"]


def test_predict_returns_one_empty_item_per_task_before_training(client, captured):
    body = captured["predict_batch_from_dm_action"]["json"]
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.get_json()["results"] == [[] for _ in body["tasks"]]


class FavoursLonger:
    """A stand-in reward model: the reward is the answer's length in tens of characters."""

    def rewards(self, prompts, answers):
        return [len(a) / 10 for a in answers]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_predict_builds_pairwise_results_in_task_order():
    tasks = [{"id": 1, "data": {"prompt": "p", "answer1": "long answer", "answer2": "short"}},
             {"id": 2, "data": {"prompt": "p", "answer1": "", "answer2": ""}},  # not generated yet
             {"id": 3, "data": {"prompt": "p", "answer1": "a", "answer2": "much longer"}}]
    items = score_tasks(FavoursLonger(), "v3", tasks, DEFAULT_FIELDS)
    assert items[1] is None
    # to_name is the first answer's Text: Label Studio's bulk import drops a result aimed at the control.
    assert items[0] == {"result": [{"from_name": "comparison", "to_name": "answer1", "type": "pairwise",
                                    "value": {"selected": "left"}}], "score": round(sigmoid(0.6), 6),
                        "model_version": "v3"}
    assert items[2]["result"][0]["value"]["selected"] == "right"
    assert items[2]["score"] == round(sigmoid(1.0), 6)


def test_predict_builds_a_ranker_order_with_its_confidence():
    """The order of the rewards, and the mean over the C(k,2) pairs of P(pair in that order)."""
    fields = parse_label_config((ROOT / "label_config_ranker.xml").read_text())
    answers = [{"id": "answer1", "title": "A", "body": "xx"}, {"id": "answer2", "title": "B", "body": "xxxxxxxx"},
               {"id": "answer3", "title": "C", "body": "xxxxx"}, {"id": "answer4", "title": "D", "body": ""}]
    tasks = [{"id": 7, "data": {"prompt": "p", "answers": answers}},
             {"id": 8, "data": {"prompt": "p", "answers": answers[3:]}}]  # nothing to rank yet
    item, nothing = score_tasks(FavoursLonger(), "v2", tasks, fields)
    assert nothing is None
    assert item["result"] == [{"from_name": "rank", "to_name": "answers", "type": "ranker",
                               "value": {"ranker": {"rank": ["answer2", "answer3", "answer1"]}}}]
    expected = (sigmoid(0.3) + sigmoid(0.6) + sigmoid(0.3)) / 3  # 0.8 > 0.5 > 0.2 in tens of characters
    assert item["score"] == round(expected, 6) and item["model_version"] == "v2"


def test_predict_gives_the_reward_model_each_prompts_text_conversations_included():
    seen = []

    class Recorder(FavoursLonger):
        def rewards(self, prompts, answers):
            seen.extend(prompts)
            return super().rewards(prompts, answers)

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bread?"}]
    tasks = [{"id": i, "data": {"prompt": prompt, "answer1": "a", "answer2": "b"}}
             for i, prompt in enumerate([chat, "plain", [{"role": "user", "content": "Just this"}]])]
    score_tasks(Recorder(), "v1", tasks, DEFAULT_FIELDS)
    assert seen == [p for p in ["\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bread?\n\nAssistant:", "plain",
                                "Just this"] for _ in range(2)]


@pytest.mark.parametrize("name", ["webhook_TASKS_CREATED", "webhook_ANNOTATION_CREATED",
                                  "webhook_ANNOTATION_UPDATED", "webhook_ANNOTATIONS_DELETED",
                                  "webhook_START_TRAINING", "webhook_PROJECT_UPDATED"])
def test_every_event_is_queued(client, captured, name, redis_conn):
    response = client.post("/webhook", json=captured[name]["json"])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued"
    kind = "generate" if name in ("webhook_TASKS_CREATED", "webhook_PROJECT_UPDATED") else "train"
    assert redis_conn.llen(f"rq:queue:rlhf-test-{kind}") == 1
    assert body["job"].startswith(f"{kind}-4-")


def test_annotation_events_reach_the_train_job_through_the_inbox(client, captured, redis_conn):
    """The train job reads annotations from their webhooks instead of asking Label Studio again."""
    for name in ("webhook_ANNOTATION_CREATED", "webhook_ANNOTATION_UPDATED", "webhook_ANNOTATIONS_DELETED"):
        client.post("/webhook", json=captured[name]["json"])
    events = [json.loads(e) for e in redis_conn.lrange("rlhf-test:inbox:4", 0, -1)]
    created = captured["webhook_ANNOTATION_CREATED"]["json"]
    assert [e["action"] for e in events] == ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
    assert events[0]["annotation"] == created["annotation"]
    assert events[0]["task"] == {k: created["task"][k] for k in ("id", "data", "updated_at")}
    assert events[2]["ids"] == [a["id"] for a in captured["webhook_ANNOTATIONS_DELETED"]["json"]["annotations"]]


def test_start_training_reaches_a_pending_train_job_as_a_flag(client, captured, redis_conn):
    """A forced retrain coalesced into a pending ordinary one still forces it."""
    first = client.post("/webhook", json=captured["webhook_ANNOTATION_CREATED"]["json"]).get_json()
    second = client.post("/webhook", json=captured["webhook_START_TRAINING"]["json"]).get_json()
    assert second["status"] == "coalesced" and second["job"] == first["job"]
    assert redis_conn.hgetall("rlhf-test:flags:train:4") == {b"force": b"1"}


def test_project_updated_rescans_only_when_the_label_config_changed(client, captured, redis_conn):
    event = captured["webhook_PROJECT_UPDATED"]["json"]
    assert client.post("/webhook", json=event).get_json()["status"] == "queued"
    redis_conn.delete("rlhf-test:pending:generate:4", "rq:queue:rlhf-test-generate")
    # The backend's own model-version update sends this event too, with the same config: nothing to do.
    assert client.post("/webhook", json=event).get_json()["status"] == "ignored"
    changed = dict(event, project=dict(event["project"], label_config=event["project"]["label_config"] + " "))
    assert client.post("/webhook", json=changed).get_json()["status"] == "queued"
    assert redis_conn.hgetall("rlhf-test:flags:generate:4") == {b"rescan": b"1"}


def test_a_burst_of_events_coalesces_into_one_pending_job(client, captured, redis_conn):
    event = captured["webhook_ANNOTATION_CREATED"]["json"]
    answers = [client.post("/webhook", json=event).get_json() for _ in range(20)]
    assert answers[0]["status"] == "queued"
    assert all(a["status"] == "coalesced" and a["job"] == answers[0]["job"] for a in answers[1:])
    assert redis_conn.llen("rq:queue:rlhf-test-train") == 1


def test_tasks_deleted_and_unknown_actions_are_ignored(client, captured, redis_conn):
    assert client.post("/webhook", json=captured["webhook_TASKS_DELETED"]["json"]).get_json()["status"] == "ignored"
    assert client.post("/webhook", json={"action": "SOMETHING_NEW"}).get_json()["status"] == "ignored"
    assert redis_conn.keys("rq:queue:*") == []


@pytest.mark.parametrize("route, body, message", [
    ("/predict", b"{not json", "not valid JSON"),
    ("/predict", b"\xff\xfe", "not UTF-8"),
    ("/predict", b"[1, 2]", "must be a JSON object"),
    ("/predict", json.dumps({"tasks": []}).encode(), "non-empty list"),
    ("/predict", json.dumps({"tasks": [{"id": 1}], "project": "4.1"}).encode(), "'data' object"),
    ("/predict", json.dumps({"tasks": [{"data": {}}], "project": "x", "label_config": "<View/>"}).encode(),
     "'project' must be a project id"),
    ("/predict", json.dumps({"tasks": [{"data": {}}], "project": "4.1", "label_config": "<View/>"}).encode(),
     "no <Pairwise>"),
    ("/setup", json.dumps({"project": "4.1"}).encode(), "'schema'"),
    ("/webhook", json.dumps({"project": {"id": 4}}).encode(), "'action' must be a string"),
    ("/webhook", json.dumps({"action": "TASKS_CREATED", "project": {}}).encode(), "'project' must be"),
])
def test_bad_bodies_get_400_with_a_message(client, route, body, message):
    response = client.post(route, data=body, content_type="application/json")
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_oversized_body_gets_413(make_settings, redis_conn):
    client = create_app(make_settings(MAX_REQUEST_BYTES=2048), redis_conn).test_client()
    response = client.post("/predict", data=b"x" * 4096, content_type="application/json")
    assert response.status_code == 413 and "error" in response.get_json()


def test_unknown_route_and_method_are_json_errors(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/predict").status_code == 405
    assert "error" in client.get("/predict").get_json()


def test_basic_auth_guards_every_route(make_settings, redis_conn, captured):
    client = create_app(make_settings(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret-pass"), redis_conn).test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret-pass").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    for method, route in [("get", "/health"), ("post", "/setup"), ("post", "/predict"), ("post", "/webhook"),
                          ("get", "/versions"), ("get", "/metrics"), ("get", "/jobs"), ("post", "/train")]:
        assert getattr(client, method)(route).status_code == 401
        assert getattr(client, method)(route, headers=bad).status_code == 401
    assert client.get("/health", headers=good).status_code == 200
    assert client.post("/setup", json=captured["setup"]["json"], headers=good).status_code == 200


def test_versions_metrics_and_jobs(client, captured, tmp_path):
    client.post("/webhook", json=captured["webhook_START_TRAINING"]["json"])
    client.get("/health")
    assert client.get("/versions").get_json() == {"versions": [], "projects": {}}
    metrics = client.get("/metrics").get_json()
    assert metrics["routes"]["POST /webhook"]["requests"] == 1
    assert metrics["routes"]["GET /health"]["latency_seconds"]["p50"] is not None
    assert metrics["jobs"]["train"]["queued"] == 1
    jobs = client.get("/jobs").get_json()
    assert [j["project"] for j in jobs["train"]["queued"]] == [4]


def test_redis_down_webhook_503_but_predict_and_setup_answer(make_settings, captured):

    from backend.queue import connect_redis

    dead = connect_redis("redis://127.0.0.1:1/0")  # nothing listens on port 1
    client = create_app(make_settings(), dead).test_client()
    response = client.post("/webhook", json=captured["webhook_TASKS_CREATED"]["json"])
    assert response.status_code == 503 and "Redis" in response.get_json()["error"]
    assert client.post("/setup", json=captured["setup"]["json"]).status_code == 200
    assert client.post("/predict", json=captured["predict_single_task_from_GET_task"]["json"]).status_code == 200
    health = client.get("/health").get_json()
    assert health["status"] == "DEGRADED" and health["redis"] is False


def test_report_is_built_by_a_job_and_then_served(client, make_settings, redis_conn):
    first = client.get("/report?project=4")
    assert first.status_code == 202 and b"Building the report" in first.data
    assert redis_conn.llen("rq:queue:rlhf-test-report") == 1
    assert client.get("/report?project=4").status_code == 202  # still building: no second job
    assert redis_conn.llen("rq:queue:rlhf-test-report") == 1
    page = make_settings().model_dir / "4" / "report.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html><body>report</body></html>")
    served = client.get("/report?project=4")
    assert served.status_code == 200 and served.mimetype == "text/html" and b"report" in served.data
    assert client.get("/report").status_code == 400
