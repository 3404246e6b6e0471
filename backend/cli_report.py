"""`rlhf-backend report`: the collection-quality report of a project (from Label Studio) or of an export file,
as one self-contained HTML page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backend.config import ConfigError, Settings
from model.pairs import RankerFields


def _read_export(path: Path, fields):
    from backend.report_sources import read_export

    try:
        export = read_export(path, fields)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(export.tasks, list) or not all(isinstance(t, dict) for t in export.tasks):
        raise ConfigError(f"{path} is not a Label Studio export (JSON, JSON_MIN or CSV)")
    return export


def _fields(label_config: str):
    from backend.labels import LabelConfigError, parse_label_config

    try:
        return parse_label_config(label_config)
    except LabelConfigError as exc:
        raise ConfigError(str(exc)) from None


def report_command(args, settings: Settings) -> int:
    from backend.report import build_report
    from backend.report_sources import JSON, learning_curve_features, load_versions, project_pairs

    export_format = JSON
    if args.project is not None:
        from backend.labelstudio import LabelStudioClient, LabelStudioUnavailable, resolve_connection

        try:
            client = LabelStudioClient(resolve_connection(settings, {}))
        except LabelStudioUnavailable as exc:
            raise ConfigError(str(exc)) from None
        tasks = client.export(args.project)
        fields = _fields(client.label_config(args.project))
        project = args.project
    else:
        # Without the label config, the export's results tell a Ranker project from a Pairwise one.
        fields = _fields(Path(args.label_config).read_text(encoding="utf-8")) if args.label_config else None
        export = _read_export(Path(args.from_file), fields)
        tasks, fields, export_format = export.tasks, export.fields, export.format
        # LS exports carry the project id on every task: it finds the project's versions in MODEL_DIR.
        project = next((t.get("project") for t in tasks if t.get("project") is not None), None)
    model_dir = Path(args.model_dir) if args.model_dir else settings.model_dir
    versions = load_versions(model_dir, project) if project is not None else []
    features = None if args.no_learning_curve else \
        learning_curve_features(settings, project_pairs(tasks, fields), model_dir)
    out = Path(args.output)
    title = f"Project {project}: preference collection" if project is not None else "Preference collection report"
    build_report(tasks, fields, versions, out, title=title, features=features, export_format=export_format)
    kind = "Ranker" if isinstance(fields, RankerFields) else "Pairwise"
    print(f"wrote {out} ({kind} project, {len(tasks)} tasks, {len(versions)} model versions)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write a collection-quality report (one HTML page)",
        description="One self-contained HTML page from the project's own data (its annotations and model "
                    "versions). Pairwise: labelled count and rate, agreement, left-pick share (position bias). "
                    "Ranker: the model's order against the annotator's (Kendall tau), agreement between "
                    "annotators, first place by displayed slot (position bias), rankings submitted as shown. "
                    "Both: learning curve, calibration and metrics per model version, annotator lead times. A Pairwise "
                    "project with tasks from `rlhf-backend arena` also gets the human win rate between the generator "
                    "versions they pair, with a Wilson 95% interval.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", type=int, help="Label Studio project id (read through LABEL_STUDIO_URL/_API_KEY)")
    source.add_argument("--from", dest="from_file", metavar="EXPORT.json",
                        help="a Label Studio export file (JSON, JSON_MIN or CSV; JSON_MIN and CSV do not say what "
                             "a Ranker annotator saw first, so the Ranker sections that need it stay empty)")
    p.add_argument("-o", "--output", default="report.html", help="where to write the page (default: report.html)")
    p.add_argument("--model-dir", help="where the model versions are (default: MODEL_DIR)")
    p.add_argument("--label-config", help="with --from: the project's label config XML, for renamed fields "
                                          "(without it: label_config.xml's names, or label_config_ranker.xml's "
                                          "when the export holds rankings)")
    p.add_argument("--no-learning-curve", action="store_true",
                   help="skip the learning curve (it runs the reward base model's encoder over the labelled pairs; "
                        "pairs training has seen come from its feature cache)")
    p.set_defaults(handler=report_command)
