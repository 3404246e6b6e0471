"""`rlhf-backend report`: the collection-quality report of a project (from Label Studio) or of an export file,
as one self-contained HTML page."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.config import ConfigError, Settings
from model.pairs import DEFAULT_FIELDS, pairs_from_tasks


def _read_export(path: Path, fields) -> list[dict]:
    from backend.report import read_export

    try:
        tasks = read_export(path, fields)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ConfigError(f"{path} is not a Label Studio export (JSON, JSON_MIN or CSV)")
    return tasks


def _fields(label_config: str | None):
    if not label_config:
        return DEFAULT_FIELDS
    from backend.labels import LabelConfigError, parse_label_config

    try:
        return parse_label_config(label_config)
    except LabelConfigError as exc:
        raise ConfigError(str(exc)) from None


def report_command(args, settings: Settings) -> int:
    from backend.report import build_report, load_simulation, load_versions, pair_features

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
        label_config = Path(args.label_config).read_text(encoding="utf-8") if args.label_config else None
        fields = _fields(label_config)
        tasks = _read_export(Path(args.from_file), fields)
        # LS exports carry the project id on every task: it finds the project's versions in MODEL_DIR.
        project = next((t.get("project") for t in tasks if t.get("project") is not None), None)
    model_dir = Path(args.model_dir) if args.model_dir else settings.model_dir
    versions = load_versions(model_dir, project) if project is not None else []
    features = None
    if not args.no_learning_curve:
        pairs = pairs_from_tasks(tasks, fields)
        if len(pairs) >= 8:
            features = pair_features(pairs, settings.reward_base_model, settings.reward_max_length,
                                     settings.reward_pooling, model_dir / "feature-cache")
    out = Path(args.output)
    title = f"Project {project}: preference collection" if project is not None else "Preference collection report"
    build_report(tasks, fields, versions, out, title=title, simulation=load_simulation(args.simulation),
                 features=features)
    print(f"wrote {out} ({len(tasks)} tasks, {len(versions)} model versions)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write a collection-quality report (one HTML page)",
        description="One self-contained HTML page: labelled count and rate, agreement, left-pick share "
                    "(position bias), learning curve, calibration and metrics per model version, annotator lead "
                    "times, and the uncertainty-ordering simulation.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", type=int, help="Label Studio project id (read through LABEL_STUDIO_URL/_API_KEY)")
    source.add_argument("--from", dest="from_file", metavar="EXPORT.json", help="a Label Studio export file (JSON, JSON_MIN or CSV)")
    p.add_argument("-o", "--output", default="report.html", help="where to write the page (default: report.html)")
    p.add_argument("--model-dir", help="where the model versions are (default: MODEL_DIR)")
    p.add_argument("--label-config", help="with --from: the project's label config XML, for renamed fields")
    p.add_argument("--simulation", help="results JSON of benchmarks/simulate_uncertainty.py "
                                        "(default: the one in benchmarks/results, if present)")
    p.add_argument("--no-learning-curve", action="store_true",
                   help="skip the learning curve (it runs the reward base model's encoder over the labelled pairs; "
                        "pairs training has seen come from its feature cache)")
    p.set_defaults(handler=report_command)
