"""The report of a real Label Studio 1.23.2 project that uses label_config_ties.xml: `rlhf-backend report
--project N` reads the project through the API, and the tie / both-bad choices Label Studio stores are
counted right."""

from __future__ import annotations

import argparse
import re

import pytest
from label_studio_sdk import LabelStudio

from backend.cli_report import register
from backend.report_pairwise import PAIRWISE_SECTIONS
from conftest import ROOT
from harness import LS_TOKEN
from synthetic_export import annotation_result

pytestmark = pytest.mark.e2e

# (side, choice) per task, as an annotator would submit them in the editor.
LABELS = [("left", None), ("left", None), ("right", None), (None, "tie"), ("right", "both bad"), ("left", None)]


def test_report_of_a_real_project_with_ties(label_studio, make_settings, tmp_path):
    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    project = ls.projects.create(title="report", label_config=(ROOT / "label_config_ties.xml").read_text())
    ls.projects.import_tasks(id=project.id, request=[
        {"prompt": f"Question {i}?", "answer1": f"left answer {i}", "answer2": f"right answer {i}"}
        for i in range(len(LABELS))])
    tasks = sorted(ls.tasks.list(project=project.id), key=lambda t: t.id)
    for task, (side, choice) in zip(tasks, LABELS):
        ls.annotations.create(id=task.id, result=annotation_result(side, choice), lead_time=3.5)

    settings = make_settings(LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "report.html"
    args = parser.parse_args(["report", "--project", str(project.id), "-o", str(out), "--no-learning-curve"])
    assert args.handler(args, settings) == 0

    html = out.read_text()
    for sid, _ in PAIRWISE_SECTIONS:
        assert f'<section id="{sid}">' in html
    cards = dict((label, value) for value, label in
                 re.findall(r'<div class="value">([^<]*)</div><div class="label">([^<]*)</div>', html))
    assert cards["annotations"] == "6" and cards["ties"] == "1" and cards["both bad"] == "1"
    # Left share counts sides only (the tie has none): 3 left of 5.
    assert re.search(r"<td>all</td><td>3 / 5</td><td>60.0%</td>", html)
    assert f"Project {project.id}" in html
