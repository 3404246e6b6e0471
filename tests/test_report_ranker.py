"""The report page of a Ranker project: from hand-made tasks whose figures can be checked by hand (Kendall
tau of the model's order, agreement between annotators, first place by slot, rankings submitted as shown),
from the annotation mirror, and from Label Studio 1.23.2's own Ranker export (tests/fixtures), in JSON and
in the JSON_MIN and CSV forms that lack what an annotator saw first."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from backend.predictions import kept_version
from backend.report import build_report, write_report
from backend.report_ranker import RANKER_SECTIONS
from backend.report_sources import read_export
from backend.sync import AnnotationMirror
from conftest import FIXTURES
from model.pairs import DEFAULT_RANKER_FIELDS
from model.rankings import pairs_from_rankings, rankings_from_tasks
from synthetic_ranker_export import ranker_tasks

IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


def cards(html: str) -> dict:
    summary = section(html, "summary")
    return {label: value for value, label in
            re.findall(r'<div class="value">([^<]*)</div><div class="label">([^<]*)</div>', summary)}


def rows(html: str, sid: str) -> list[list[str]]:
    """Table rows of a section, cells as text."""
    body = section(html, sid)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", tr)]
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body) if "<td>" in tr]


@pytest.fixture(scope="module")
def synthetic():
    return build_report(ranker_tasks(), DEFAULT_RANKER_FIELDS, n_boot=200)


def test_a_ranker_project_gets_its_own_sections(synthetic):
    found = re.findall(r'<section id="([^"]+)">', synthetic)
    assert found == [sid for sid, _ in RANKER_SECTIONS]
    assert "left-pick" not in synthetic.lower() and "Krippendorff" not in synthetic  # Pairwise-only figures
    assert "21 rankings on 19 tasks" in synthetic


def test_summary_counts(synthetic):
    c = cards(synthetic)
    assert c["rankings"] == "21" and c["of 21 tasks ranked"] == "19" and c["annotators"] == "3"
    assert c["skipped"] == "1" and c["answers per task"] == "3"
    assert c["Kendall τ, model's order vs annotator's"] == "0.11"
    assert c["Kendall τ between annotators"] == "-0.33"
    assert c["slots with a position bias"] == "2" and c["submitted as shuffled"] == "10"


def test_kendall_tau_of_the_shown_model_order_per_version(synthetic):
    table = {r[0]: r for r in rows(synthetic, "model-agreement")}
    assert table["v1"][1:3] == ["2", "2"] and table["v1"][3].startswith("-0.333")
    assert table["v2"][1:3] == ["1", "1"] and table["v2"][3].startswith("1.000")
    assert table["all"][1:3] == ["3", "3"] and table["all"][3].startswith("0.111")
    assert table["all"][4] == "1 / 3 (33.3%)"  # task 3 kept the model's order
    body = section(synthetic, "model-agreement")
    assert IMG.search(body) and "not scored on these rankings" in body and "anchoring" in body


def test_agreement_between_annotators(synthetic):
    [row] = rows(synthetic, "agreement")
    assert row[:2] == ["2", "2"] and row[2].startswith("-0.333")
    body = section(synthetic, "agreement")
    assert re.search(r"1 task whose annotators put different answers first</b> \(task ids\): "
                     r'<span class="tag">15</span></p>', body)


def test_first_place_by_slot(synthetic):
    table = rows(synthetic, "position-bias")
    assert [r[:3] for r in table] == [["3", "1", "11 / 18"], ["3", "2", "5 / 18"], ["3", "3", "2 / 18"]]
    # Wilson intervals: slot 1 [0.39, 0.80] above 1/3, slot 3 [0.03, 0.33] just below it.
    assert [r[5] == "biased" for r in table] == [True, False, True]
    body = section(synthetic, "position-bias")
    assert "(3 such rankings left out)" in body and IMG.search(body)


def test_rankings_submitted_as_shown(synthetic):
    body = section(synthetic, "unchanged")
    assert "<b>10 / 18 (55.6%)</b>" in body and "about 3.0 would be by chance" in body  # 18 x 1/3!
    table = {r[0]: r for r in rows(synthetic, "unchanged")}
    assert table["3"][1] == "10 / 10 (100.0%)" and table["3"][4] == "check"
    assert table["1"][1] == "0 / 6 (0.0%)" and table["1"][4] == ""
    assert table["2"][1] == "0 / 2 (0.0%)"
    assert "10 rankings submitted as shuffled" in body
    assert "1 submitted annotation gave no usable order" in body  # task 21


def test_learning_curve_on_the_rankings_pairs():
    tasks = ranker_tasks()
    pairs = pairs_from_rankings(rankings_from_tasks(tasks))
    assert len(pairs) == 21 * 3
    noise = np.random.default_rng(0).normal(size=(len(pairs), 8))
    html = build_report(tasks, DEFAULT_RANKER_FIELDS, features=(noise + 0.5, noise * 0.5), n_boot=50)
    body = section(html, "learning-curve")
    assert IMG.search(body) and "Blue: a linear Bradley-Terry head" in body and "C(k,2) pairs" in body


def _api_form(tasks):
    """As GET /api/tasks gives them: predictions in full on the task, no `prediction` on the annotation."""
    out = json.loads(json.dumps(tasks))
    for task in out:
        task["predictions"] = [a.pop("prediction") for a in task["annotations"] if a.get("prediction")]
        for a in task["annotations"]:
            a.pop("prediction", None)
    return out


def test_the_shown_order_is_read_from_the_task_predictions_too(synthetic):
    html = build_report(_api_form(ranker_tasks()), DEFAULT_RANKER_FIELDS, n_boot=200)
    assert rows(html, "model-agreement") == rows(synthetic, "model-agreement")


def test_a_prediction_kept_on_its_labelled_task_counts_for_the_version_that_made_it(synthetic):
    """The refresh renames the old guesses of labelled tasks out of their version (kept_version) rather than
    delete them: the report still files them under the version that made them."""
    tasks = ranker_tasks()
    for task in tasks:
        for ann in task["annotations"]:
            if ann["prediction"]:
                ann["prediction"]["model_version"] = kept_version(ann["prediction"]["model_version"])
    html = build_report(tasks, DEFAULT_RANKER_FIELDS, n_boot=200)
    assert rows(html, "model-agreement") == rows(synthetic, "model-agreement")


def test_a_pre_annotation_the_tasks_do_not_carry_is_said_missing():
    tasks = ranker_tasks()
    for task in tasks:
        for a in task["annotations"]:
            a["prediction"] = {}  # the project's model version had moved on: Label Studio saved none
    body = section(build_report(tasks, DEFAULT_RANKER_FIELDS, n_boot=50), "model-agreement")
    assert "3 rankings started from a pre-annotation whose order these tasks do not carry" in body
    assert "cannot be compared" in body and "<table>" not in body


class ExportOnlyLabelStudio:
    """A Label Studio whose export holds the tasks; AnnotationMirror.sync's first (full) sync reads it. Its
    task listing (the catch-up cursor) is empty: the cursor plays no part in what the mirror holds."""

    def __init__(self, tasks):
        self._tasks = tasks

    def newest_update(self, project):
        return "2026-01-01T00:00:00Z"

    def tasks_changed_since(self, project, cursor):
        return [], cursor

    def export(self, project, ids=None):
        return json.loads(json.dumps(self._tasks))


def test_report_from_the_annotation_mirror(redis_conn, synthetic):
    mirror = AnnotationMirror(redis_conn, "rlhf-test", 9)
    mirror.sync(ExportOnlyLabelStudio(ranker_tasks()), reconcile_seconds=3600)
    tasks = mirror.tasks()
    assert tasks and not any("predictions" in t for t in tasks)
    html = build_report(tasks, DEFAULT_RANKER_FIELDS, n_boot=200)
    for sid in ("model-agreement", "agreement", "position-bias", "unchanged"):
        assert rows(html, sid) == rows(synthetic, sid)
    assert "21 rankings on 19 tasks" in html


def test_write_report_for_a_ranker_project(make_settings):
    settings = make_settings()
    path = write_report(settings, 9, ranker_tasks(), DEFAULT_RANKER_FIELDS, learning_curve=False)
    html = path.read_text()
    assert path == settings.model_dir / "9" / "report.html" and 'id="model-agreement"' in html
    assert "made without the encoder's features" in section(html, "learning-curve")


# ---------------------------------------------------------------- Label Studio's own Ranker export

@pytest.fixture(scope="module")
def real_export():
    export = read_export(FIXTURES / "ls-1.23.2-ranker-export-JSON.json")
    return export, build_report(export.tasks, export.fields, n_boot=50, export_format=export.format)


def test_real_export_is_read_as_a_ranker_project(real_export):
    export, html = real_export
    assert export.format == "JSON" and export.fields == DEFAULT_RANKER_FIELDS
    c = cards(html)
    assert c["rankings"] == "9" and c["of 10 tasks ranked"] == "9" and c["skipped"] == "1"
    assert c["answers per task"] == "3–4"


def test_real_export_lists_predictions_by_id_only(real_export):
    _, html = real_export
    body = section(html, "model-agreement")
    assert "2 rankings started from a pre-annotation whose order these tasks do not carry" in body


def test_real_export_position_bias_and_unchanged(real_export):
    _, html = real_export
    table = rows(html, "position-bias")
    # Seven rankings started from the data's order: one of three answers (whole-number ids), six of four.
    assert [r[:3] for r in table] == [["3", "1", "1 / 1"], ["3", "2", "0 / 1"], ["3", "3", "0 / 1"],
                                      ["4", "1", "1 / 6"], ["4", "2", "2 / 6"], ["4", "3", "1 / 6"],
                                      ["4", "4", "2 / 6"]]
    body = section(html, "unchanged")
    assert "<b>1 / 7 (14.3%)</b>" in body  # "What is 2+2?" submitted as shown
    assert re.search(r'1 ranking submitted as shuffled</b> \(task ids\): <span class="tag">10</span>', body)


def test_real_api_tasks_give_the_model_agreement():
    """The same project read through the API: predictions in full. "Name a fruit." was shown 4,3,2,1 and
    ranked 1,4,3,2 (tau 0); "How do I boil an egg?" kept the model's order (tau 1)."""
    tasks = json.loads((FIXTURES / "ls-1.23.2-ranker-tasks-API.json").read_text())
    html = build_report(tasks, DEFAULT_RANKER_FIELDS, n_boot=50)
    table = {r[0]: r for r in rows(html, "model-agreement")}
    assert table["v1"][1:3] == ["2", "2"] and table["v1"][3].startswith("0.500")
    assert table["all"][4] == "1 / 2 (50.0%)"


def _rows_of(tasks: list[dict]) -> list[dict]:
    """Label Studio's JSON_MIN form of a Ranker export: one row per annotation, data keys at the top, the
    result under the Ranker's name (tests/fixtures/ls-1.23.2-ranker.md)."""
    out = []
    for task in tasks:
        for ann in task["annotations"]:
            if ann["was_cancelled"]:
                continue
            out.append({**task["data"], "id": task["id"], "rank": [r["value"] for r in ann["result"]],
                        "annotator": ann["completed_by"], "annotation_id": ann["id"],
                        "created_at": ann["created_at"], "updated_at": ann["updated_at"],
                        "lead_time": ann["lead_time"]})
    return out


@pytest.mark.parametrize("form", ["JSON_MIN", "CSV"])
def test_row_exports_say_what_they_cannot_show(form, tmp_path):
    rows_ = _rows_of(json.loads((FIXTURES / "ls-1.23.2-ranker-export-JSON.json").read_text()))
    if form == "JSON_MIN":
        path = tmp_path / "export.json"
        path.write_text(json.dumps(rows_))
    else:
        path = tmp_path / "export.csv"
        keys = sorted({k for r in rows_ for k in r})
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
                              for k, v in r.items()} for r in rows_)
    export = read_export(path)
    assert export.format == form and export.fields == DEFAULT_RANKER_FIELDS
    html = build_report(export.tasks, export.fields, n_boot=50, export_format=export.format)
    assert cards(html)["rankings"] == "9" and cards(html)["skipped (not in this export)"] == "–"
    for sid in ("model-agreement", "position-bias", "unchanged"):
        body = section(html, sid)
        assert f"A {form} export does not record whether an annotator started" in body
        assert "<table>" not in body and not IMG.search(body)
    assert IMG.search(section(html, "progress")) and IMG.search(section(html, "lead-times"))
