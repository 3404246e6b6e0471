"""`rlhf-backend report --from EXPORT` end to end through the subcommand's own parser and handler."""

from __future__ import annotations

import argparse
import json

import pytest

from backend.cli_report import register
from backend.config import ConfigError
from backend.report_pairwise import PAIRWISE_SECTIONS
from backend.report_ranker import RANKER_SECTIONS
from conftest import FIXTURES
from synthetic_export import synthetic_export, write_versions
from tiny_models import tiny_encoder


def run(argv, settings) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-backend")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args, settings)


def test_report_from_captured_export(make_settings, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert run(["report", "--from", str(FIXTURES / "ls-1.23.2-export-JSON.json"), "-o", str(out),
                "--no-learning-curve"], make_settings()) == 0
    html = out.read_text()
    assert all(f'id="{sid}"' in html for sid, _ in PAIRWISE_SECTIONS)
    assert "Project 4" in html  # the project id comes from the export's tasks
    assert "wrote" in capsys.readouterr().err


def test_report_of_a_ranker_export_without_its_label_config(make_settings, tmp_path, capsys):
    """The export's ranker results make it a Ranker page, with label_config_ranker.xml's names."""
    out = tmp_path / "ranker.html"
    assert run(["report", "--from", str(FIXTURES / "ls-1.23.2-ranker-export-JSON.json"), "-o", str(out),
                "--no-learning-curve"], make_settings()) == 0
    html = out.read_text()
    assert [f'id="{sid}"' in html for sid, _ in RANKER_SECTIONS] == [True] * len(RANKER_SECTIONS)
    assert "Project 3" in html and "9 rankings on 9 tasks" in html and 'id="position-bias"' in html
    assert "Ranker project" in capsys.readouterr().err


def test_report_of_a_bucket_ranker_with_its_label_config(make_settings, tmp_path):
    """The LLM Ranker template (buckets, data key "items") needs its config: the default names find nothing."""
    export = FIXTURES / "ls-1.23.2-ranker-buckets-export-JSON.json"
    out = tmp_path / "buckets.html"
    assert run(["report", "--from", str(export), "-o", str(out), "--no-learning-curve",
                "--label-config", str(FIXTURES / "ls-1.23.2-llm-ranker.xml")], make_settings()) == 0
    html = out.read_text()
    assert "1 ranking on 1 task" in html
    assert "With buckets, an annotation submitted without sorting anything" in html
    assert "1 submitted annotation gave no usable order" in html  # everything left unsorted


def test_report_with_versions_and_learning_curve(make_settings, tmp_path):
    """The export's project finds its versions in MODEL_DIR; the learning curve runs the (tiny) encoder."""
    settings = make_settings(REWARD_BASE_MODEL=tiny_encoder(tmp_path / "tiny"), REWARD_MAX_LENGTH=64)
    write_versions(settings.model_dir, project=7)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(synthetic_export(24)))
    out = tmp_path / "r.html"
    assert run(["report", "--from", str(export), "-o", str(out)], settings) == 0
    html = out.read_text()
    assert "v3 ★" in html and "Blue: a linear Bradley-Terry head" in html
    assert any((settings.model_dir / "feature-cache").rglob("shard-*.pt"))  # training's cache, shared


def test_report_needs_a_source_and_a_readable_file(make_settings, tmp_path):
    with pytest.raises(SystemExit):
        run(["report"], make_settings())
    with pytest.raises(SystemExit):  # the benchmark simulation is no part of a project's report any more
        run(["report", "--from", str(FIXTURES / "ls-1.23.2-export-JSON.json"), "--simulation", "x.json"],
            make_settings())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        run(["report", "--from", str(bad), "-o", str(tmp_path / "x.html")], make_settings())


def test_report_project_without_label_studio_says_what_to_set(make_settings, tmp_path):
    with pytest.raises(ConfigError, match="LABEL_STUDIO_URL"):
        run(["report", "--project", "3", "-o", str(tmp_path / "x.html")], make_settings())
