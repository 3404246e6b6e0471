"""What the report reads: a project's annotated tasks (Label Studio's JSON export form, as the annotation
mirror and `LabelStudioClient.export` give them, or an export file in JSON, JSON_MIN or CSV), its model
versions in MODEL_DIR, and the encoder features of its preference pairs for the learning curve."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from backend.config import train_config
from model.pairs import (DEFAULT_FIELDS, DEFAULT_RANKER_FIELDS, PreferencePair, RankerFields, TaskFields, csv_value,
                         pairs_from_tasks)
from model.rankings import pairs_from_rankings, rankings_from_tasks
from model.store import VersionStore

# Label Studio's formats: JSON holds whole tasks; JSON_MIN and CSV one row per annotation, with the task's
# data keys and each control's value under the control's name, and no more of the annotation than these.
JSON, JSON_MIN, CSV = "JSON", "JSON_MIN", "CSV"
ROW_KEYS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time")
TIES_CHOICES = "judgement"  # label_config_ties.xml's tie / both-bad Choices: read by that name without a config


@dataclass(frozen=True)
class Export:
    tasks: list[dict]           # JSON-export-shaped tasks, whatever the file's format
    format: str                 # JSON, JSON_MIN or CSV
    fields: TaskFields | RankerFields


def read_export(path, fields: TaskFields | RankerFields | None = None) -> Export:
    """A Label Studio export file as tasks. Without `fields` (no label config at hand), a Ranker result in
    the file makes it a Ranker project with label_config_ranker.xml's names, else a Pairwise one with
    label_config.xml's."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv" or text.lstrip()[:1] not in ("[", "{"):
        rows, form = list(csv.DictReader(io.StringIO(text, newline=""))), CSV
    else:
        rows = json.loads(text)
        rows = rows if isinstance(rows, list) else [rows]  # one task
        form = JSON if not rows or not isinstance(rows[0], dict) or "annotations" in rows[0] else JSON_MIN
    if form == JSON:
        fields = fields or (DEFAULT_RANKER_FIELDS if any(_has_ranker_result(t) for t in rows) else DEFAULT_FIELDS)
        return Export(rows, form, fields)
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError("not a list of export rows")
    fields = fields or (DEFAULT_RANKER_FIELDS if any(_ranker_values(r.get(DEFAULT_RANKER_FIELDS.ranker))
                                                     for r in rows) else DEFAULT_FIELDS)
    return Export(tasks_from_rows(rows, fields), form, fields)


def _has_ranker_result(task) -> bool:
    return isinstance(task, dict) and any(isinstance(item, dict) and item.get("type") == "ranker"
                                          for ann in task.get("annotations") or [] if isinstance(ann, dict)
                                          for item in ann.get("result") or [])


def _ranker_values(value) -> list[dict]:
    """A row's Ranker value, [{"ranker": {...}}] (CSV: as a JSON string), as result values."""
    value = csv_value(value)
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict) and "ranker" in v]


def _row_result(row: dict, fields: TaskFields | RankerFields) -> list[dict]:
    if isinstance(fields, RankerFields):
        return [{"from_name": fields.ranker, "to_name": fields.list_name, "type": "ranker", "value": value}
                for value in _ranker_values(row.get(fields.ranker))]
    result = []
    selection = csv_value(row.get(fields.pairwise))
    for item in selection if isinstance(selection, list) else [selection]:
        if isinstance(item, dict) and item.get("selected") in ("left", "right"):
            result.append({"from_name": fields.pairwise, "type": "pairwise", "value": {"selected": item["selected"]}})
    name = fields.judgement or TIES_CHOICES
    choices = csv_value(row.get(name))
    if isinstance(choices, dict):
        choices = choices.get("choices")
    if choices:
        result.append({"from_name": name, "type": "choices",
                       "value": {"choices": choices if isinstance(choices, list) else [choices]}})
    return result


def tasks_from_rows(rows: list[dict], fields: TaskFields | RankerFields = DEFAULT_FIELDS) -> list[dict]:
    """JSON_MIN / CSV rows -> JSON-export-shaped tasks. A row without a result (a skip, or a task nobody
    labelled) adds no annotation: these formats do not say which it was."""
    if isinstance(fields, RankerFields):
        controls = {fields.ranker}
    else:
        controls = {fields.pairwise, fields.judgement or TIES_CHOICES}
    tasks: dict = {}
    for row in rows:
        data = {k: v for k, v in row.items() if k not in ROW_KEYS and k not in controls}
        task = tasks.setdefault(row.get("id"), {"id": row.get("id"), "annotations": [], "data": data})
        result = _row_result(row, fields)
        if result:
            task["annotations"].append({"id": row.get("annotation_id"), "completed_by": row.get("annotator"),
                                        "result": result, "created_at": row.get("created_at"),
                                        "lead_time": row.get("lead_time") or None})
    return list(tasks.values())


def load_versions(model_dir, project) -> list[dict]:
    """[{"name", "current", "metrics", "reliability": PNG bytes or None}] for a project, oldest first."""
    store = VersionStore(model_dir)
    current = store.current(project)
    out = []
    for name in store.versions(project):
        png = store.path(project, name) / "reliability.png"
        out.append({"name": name, "current": name == current, "metrics": store.metrics(project, name),
                    "reliability": png.read_bytes() if png.is_file() else None})
    return out


def project_pairs(tasks: list[dict], fields: TaskFields | RankerFields) -> list[PreferencePair]:
    """The preference pairs training makes of the tasks: one per Pairwise judgement (ties dropped), C(k,2)
    per ranking of k answers."""
    if isinstance(fields, RankerFields):
        return pairs_from_rankings(rankings_from_tasks(tasks, fields))
    return pairs_from_tasks(tasks, fields)


def pair_features(pairs, config, cache_dir=None):
    """Fast-mode features (the frozen base's, as `config` reads it) of each pair's chosen and rejected answer,
    through training's FeatureCache: with training's cache folder, pairs it has seen cost nothing."""
    from model.reward.config import is_decoder_base
    from model.reward.features import FeatureCache
    from model.reward.model import load_reward_base, resolve_base_model

    prompts, answers = [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]
    if is_decoder_base(config.base_model):
        from model.reward.decoder import load_decoder_base, open_feature_cache

        scorer = load_decoder_base(config.base_model, cache_dir, config.max_length, config.prompt_tokens,
                                   config.eval_batch_size)
        scorer.cache = open_feature_cache(config.base_model, config.max_length, config.prompt_tokens, cache_dir)
        feats, _ = scorer.features(prompts, answers)
    else:
        base = resolve_base_model(config.base_model)
        model, tokenizer, pooling = load_reward_base(base, config.pooling)
        feats, _ = FeatureCache(base, config.max_length, pooling, cache_dir).compute(
            model, tokenizer, prompts, answers, config.max_length, 32, lambda fraction, message: None)
    feats = feats.numpy()
    return feats[:len(pairs)], feats[len(pairs):]


def learning_curve_features(settings, pairs, model_dir: Path):
    """`pair_features` with the settings' reward base model and training's feature cache in `model_dir`;
    None below 8 pairs, too few for a curve."""
    if len(pairs) < 8:
        return None
    fast = train_config(settings, mode="fast")  # the features fast-mode training cached
    return pair_features(pairs, fast, Path(model_dir) / "feature-cache")
