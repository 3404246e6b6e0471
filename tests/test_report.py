"""The report page: renders from the captured Label Studio exports and from a synthetic multi-annotator
export, every section present, plots embedded, figures right on known data, and a real headless Chromium
renders it (install with `apt-get install -y chromium`; skipped only when it is absent)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from backend.report import SECTIONS, build_report, load_versions, read_export, write_report
from conftest import FIXTURES
from model.pairs import DEFAULT_FIELDS, pairs_from_tasks
from synthetic_export import synthetic_export, write_versions

IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    tasks = synthetic_export()
    write_versions(folder / "models")
    pairs = pairs_from_tasks(tasks, DEFAULT_FIELDS)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(pairs), 8))
    features = (noise + 0.5, noise * 0.5)  # separable: the learning curve must rise above chance
    sim = {"sizes": [50, 100], "seeds": 2, "pool": 100, "test": 50, "step": 50, "date": "2026-11-27",
           "goal_saving": 0.25, "random_final_accuracy": 0.6,
           "curves": {k: {"mean": [0.55, 0.6], "low": [0.5, 0.55], "high": [0.6, 0.65]} for k in ("random", "uncertainty")},
           "targets": [{"target": 0.6, "of_final": 1.0, "random_labels": 100, "uncertainty_labels": 100, "saving": 0.0}]}
    html = build_report(tasks, DEFAULT_FIELDS, load_versions(folder / "models", 7), folder / "report.html",
                        simulation=sim, features=features, n_boot=200)
    return {"tasks": tasks, "html": html, "path": folder / "report.html"}


@pytest.mark.parametrize("name", ["ls-1.23.2-export-JSON.json", "ls-1.23.2-export-JSON_MIN.json",
                                  "ls-1.23.2-export-CSV.csv"])
def test_renders_from_captured_exports(name):
    tasks = read_export(FIXTURES / name)
    html = build_report(tasks, DEFAULT_FIELDS, n_boot=50)
    for sid, _ in SECTIONS:
        section(html, sid)
    assert "2 annotations on 2 tasks" in html
    bias = section(html, "position-bias")
    assert "1 / 2" in bias and "50.0%" in bias  # one left, one right
    assert "No task has been labelled by two" in section(html, "agreement")
    assert IMG.search(section(html, "progress"))  # a plot even with two annotations


def test_synthetic_report_has_every_section_with_plots(synthetic):
    html = synthetic["html"]
    assert synthetic["path"].read_text() == html
    with_plots = ["progress", "agreement", "position-bias", "learning-curve", "calibration", "lead-times", "simulation"]
    for sid in with_plots:
        images = IMG.findall(section(html, sid))
        assert images, f"no image in {sid}"
        for data in images:
            import base64

            assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(IMG.findall(section(html, "calibration"))) == 3  # one reliability diagram per version
    assert "src=\"http" not in html and "<script" not in html  # self-contained, nothing fetched


def test_synthetic_figures_are_right(synthetic):
    html = synthetic["html"]
    bias = section(html, "position-bias")
    # Annotator 3 always picks left: flagged with 100%; the overall row is counted too.
    rows = re.findall(r'<tr class="(flagged|)"><td>([^<]*)</td><td>(\d+) / (\d+)</td><td>([\d.]+)%</td>', bias)
    by_name = {r[1]: r for r in rows}
    assert by_name["3"][0] == "flagged" and by_name["3"][2] == by_name["3"][3] and by_name["3"][4] == "100.0"
    assert by_name["1"][0] == "" and by_name["2"][0] == ""
    agreement = section(html, "agreement")
    assert "tasks with disagreement" in agreement and "1 · 2" in agreement
    versions = section(html, "versions")
    assert versions.index("v3 ★") < versions.index("v2") < versions.index("v1")  # newest first, current starred
    assert "0.710" in versions and "[0.610, 0.800]" in versions
    summary = section(html, "summary")
    counts = {label: value for value, label in re.findall(r'<div class="value">([^<]*)</div><div class="label">([^<]*)</div>', summary)}
    tasks = synthetic["tasks"]
    submitted = [a for t in tasks for a in t["annotations"] if not a["was_cancelled"]]
    assert counts["annotations"] == str(len(submitted)) and counts["skipped"] == str(len(tasks) // 17)
    ties = sum(any(r.get("type") == "choices" and r["value"]["choices"] == ["tie"] for r in a["result"]) for a in submitted)
    assert counts["ties"] == str(ties) and ties > 0
    assert counts["annotators with a side bias"] == "1"
    assert "held-out accuracy (v3)" in counts and counts["held-out accuracy (v3)"] == "71.0%"


def test_ties_are_not_bradley_terry_pairs():
    tasks = synthetic_export()
    tie_ids = {a["id"] for t in tasks for a in t["annotations"]
               if any(r.get("value", {}).get("choices") == ["tie"] for r in a["result"])}
    pairs = pairs_from_tasks(tasks, DEFAULT_FIELDS)
    assert pairs and not tie_ids & {p.meta["annotation_id"] for p in pairs}


def test_write_report_is_served_from_model_dir(make_settings, tmp_path):
    settings = make_settings()
    write_versions(settings.model_dir)
    path = write_report(settings, 7, synthetic_export(20), DEFAULT_FIELDS, learning_curve=False)
    assert path == settings.model_dir / "7" / "report.html"
    assert 'id="versions"' in path.read_text() and (path.stat().st_mode & 0o044)
    from model.store import VersionStore

    assert VersionStore(settings.model_dir).versions(7) == ["v1", "v2", "v3"]  # the page is no version


def _png_is_blank(path) -> bool:
    """True if the screenshot is (nearly) one flat colour."""
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    return float(pixels.std()) < 0.02


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Chromium: apt-get install -y chromium")
def test_headless_chromium_renders_the_page(synthetic, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "out.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
                    synthetic["path"].as_uri()], check=True, timeout=60, capture_output=True)
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert not _png_is_blank(shot)
    # Every section's anchor renders: the DOM as Chromium sees it has all section ids.
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile2'}",
                          "--dump-dom", synthetic["path"].as_uri()], check=True, timeout=60, capture_output=True,
                         text=True).stdout
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in dom


def test_simulation_verdict_is_honest():
    base = {"sizes": [50, 100, 150], "seeds": 2, "pool": 150, "test": 50, "step": 50, "goal_saving": 0.25,
            "curves": {k: {"mean": [0.6, 0.7, 0.8], "low": [0.5] * 3, "high": [0.9] * 3} for k in ("random", "uncertainty")},
            "mean_difference": 0.05, "sizes_better": 1, "sizes_worse": 0, "sizes_compared": 1}

    def verdict(final, saving):
        sim = {**base, "random_final_accuracy": final, "targets": [
            {"target": final, "of_final": 1.0, "random_labels": 150, "uncertainty_labels": 100, "saving": saving}]}
        return re.search(r'<p class="verdict[^"]*">(.*?)</p>', section(build_report([], simulation=sim), "simulation")).group(1)

    assert "<b>met</b>" in verdict(0.8, 0.33)
    assert "<b>not met</b>" in verdict(0.8, 0.1)
    weak = verdict(0.53, 0.9)
    assert "<b>inconclusive</b>" in weak and "on paper: 90% fewer labels" in weak and "+0.050" in weak
