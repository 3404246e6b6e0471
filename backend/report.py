"""One self-contained HTML page on how a project's preference collection is going, from the project's own
data only: its annotated tasks and its model versions. Plots are PNGs embedded as data URIs, so the page is
a single file that can be mailed, archived or served as is.

A Pairwise project's page: progress, agreement, left-pick share, learning curve, calibration and metrics
per model version, lead times (report_pairwise.py). A Ranker project's page: progress, the model's order
against the annotator's, agreement between annotators, first place by displayed slot, rankings submitted
as shown, then the same learning curve, calibration, versions and lead times (report_ranker.py).

`build_report` is pure (tasks and metrics in, HTML out); `write_report` is the job-side entry that also
reads versions from MODEL_DIR and writes MODEL_DIR/<project>/report.html atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from backend.report_html import page
from backend.report_pairwise import pairwise_report
from backend.report_ranker import ranker_report
from backend.report_sources import JSON, learning_curve_features, load_versions, project_pairs
from model.pairs import DEFAULT_FIELDS, RankerFields, TaskFields

REPORT_FILE = "report.html"


def build_report(tasks: list[dict], fields: TaskFields | RankerFields = DEFAULT_FIELDS,
                 versions: list[dict] | None = None, out_path=None, *, title: str = "Preference collection report",
                 features=None, choices_name: str | None = None, n_boot: int = 1000,
                 export_format: str = JSON) -> str:
    """The report page for Label Studio JSON-export-shaped `tasks` (the annotation mirror's, an export's, or
    `report_sources.read_export`'s), a Pairwise or a Ranker page by the type of `fields`. `versions`: see
    `load_versions`; `features`: (chosen, rejected) fast-mode features of `project_pairs(tasks, fields)`, for
    the learning curve (None: only the versions' own points); `export_format`: JSON_MIN and CSV lack what an
    annotator saw first, and skips, which the page then says. Writes `out_path` too when given."""
    versions = versions or []
    if isinstance(fields, RankerFields):
        subtitle, sections = ranker_report(tasks, fields, versions, features, n_boot=n_boot,
                                           export_format=export_format)
    else:
        subtitle, sections = pairwise_report(tasks, fields, versions, features, choices_name=choices_name,
                                             n_boot=n_boot, export_format=export_format)
    html = page(title, subtitle, sections)
    if out_path is not None:
        write_atomic(Path(out_path), html)
    return html


def write_atomic(path: Path, text: str) -> None:
    """Readers (the /report route) see the old page or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the page is meant to be read
    os.replace(tmp, path)


def report_path(model_dir, project) -> Path:
    return Path(model_dir) / str(project) / REPORT_FILE


def write_report(settings, project: int, tasks: list[dict], fields: TaskFields | RankerFields,
                 learning_curve: bool = True) -> Path:
    """The job-side entry: MODEL_DIR/<project>/report.html from tasks the caller already has (the annotation
    mirror's), with the project's versions and (features cached by training) the learning curve."""
    features = learning_curve_features(settings, project_pairs(tasks, fields), settings.model_dir) \
        if learning_curve else None
    path = report_path(settings.model_dir, project)
    build_report(tasks, fields, load_versions(settings.model_dir, project), path,
                 title=f"Project {project}: preference collection", features=features)
    return path
