"""The report page of a Pairwise project: renders from the captured Label Studio exports and from a
synthetic multi-annotator export, every section present, plots embedded, figures right on known data, the
project's data only (no benchmark), and a real headless Chromium renders it and a Ranker project's page
(install with `apt-get install -y chromium`; skipped only when it is absent)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from backend.report import build_report, write_report
from backend.report_pairwise import PAIRWISE_SECTIONS
from backend.report_ranker import RANKER_SECTIONS
from backend.report_sources import load_versions, read_export
from conftest import FIXTURES
from model.pairs import DEFAULT_FIELDS, DEFAULT_RANKER_FIELDS, pairs_from_tasks
from synthetic_export import synthetic_export, write_versions
from synthetic_ranker_export import ranker_tasks

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
    html = build_report(tasks, DEFAULT_FIELDS, load_versions(folder / "models", 7), folder / "report.html",
                        features=features, n_boot=200)
    return {"tasks": tasks, "html": html, "path": folder / "report.html"}


@pytest.mark.parametrize("name, form", [("ls-1.23.2-export-JSON.json", "JSON"),
                                        ("ls-1.23.2-export-JSON_MIN.json", "JSON_MIN"),
                                        ("ls-1.23.2-export-CSV.csv", "CSV")])
def test_renders_from_captured_exports(name, form):
    export = read_export(FIXTURES / name)
    assert export.format == form and export.fields == DEFAULT_FIELDS
    html = build_report(export.tasks, export.fields, n_boot=50, export_format=export.format)
    assert re.findall(r'<section id="([^"]+)">', html) == [sid for sid, _ in PAIRWISE_SECTIONS]
    assert "2 annotations on 2 tasks" in html
    # JSON_MIN and CSV rows carry no was_cancelled: the page says so instead of counting 0 skips.
    skipped = "<div class=\"value\">0</div><div class=\"label\">skipped</div>"
    assert (skipped in html) == (form == "JSON")
    assert ("skipped (not in this export)" in html) == (form != "JSON")
    bias = section(html, "position-bias")
    assert "1 / 2" in bias and "50.0%" in bias  # one left, one right
    assert "No task has been labelled by two" in section(html, "agreement")
    assert IMG.search(section(html, "progress"))  # a plot even with two annotations


def test_synthetic_report_has_every_section_with_plots(synthetic):
    html = synthetic["html"]
    assert synthetic["path"].read_text() == html
    with_plots = ["progress", "agreement", "position-bias", "learning-curve", "calibration", "lead-times"]
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


def test_the_page_holds_the_projects_data_only(synthetic):
    """No benchmark on a user's page (#27): the hh-rlhf simulation stays in benchmarks/ and BENCHMARKS.md."""
    html = synthetic["html"]
    assert 'id="simulation"' not in html and "hh-rlhf" not in html and "uncertainty ordering" not in html.lower()
    empty = build_report([], DEFAULT_FIELDS, n_boot=10)
    assert re.findall(r'<section id="([^"]+)">', empty) == [sid for sid, _ in PAIRWISE_SECTIONS]


@pytest.fixture(scope="module")
def ranker_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("ranker") / "report.html"
    build_report(ranker_tasks(), DEFAULT_RANKER_FIELDS, out_path=path, n_boot=100)
    return path


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Chromium: apt-get install -y chromium")
@pytest.mark.parametrize("kind", ["pairwise", "ranker"])
def test_headless_chromium_renders_the_page(kind, synthetic, ranker_page, tmp_path):
    page, sections = (synthetic["path"], PAIRWISE_SECTIONS) if kind == "pairwise" else (ranker_page, RANKER_SECTIONS)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "out.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
                    page.as_uri()], check=True, timeout=60, capture_output=True)
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert not _png_is_blank(shot)
    # Every section's anchor renders: the DOM as Chromium sees it has all section ids.
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile2'}",
                          "--dump-dom", page.as_uri()], check=True, timeout=60, capture_output=True,
                         text=True).stdout
    for sid, _ in sections:
        assert f'id="{sid}"' in dom
