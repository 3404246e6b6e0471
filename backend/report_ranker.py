"""The report of a Ranker project (k answers put in order): how far the model's order is from the human's,
how much annotators agree, whether the displayed slot sways the first place, and which rankings were
submitted exactly as shown.

"The model's order" is the pre-annotation the annotator started from, as Label Studio saves it with the
annotation (`parent_prediction`, and the prediction itself in `prediction`, or in the task's predictions
when an API task carries them). The version that made it was trained before that ranking existed, so the
agreement is measured on rankings the model had not seen. The current version is deliberately not scored
on these rankings: it was trained on them, and agreeing with its own training data says little of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations

from backend import report_sections as shared
from backend.predictions import made_by
from backend.report_figures import plot_intervals
from backend.report_html import (FLAG, card, cards, fmt, missing, note, plural, share, table, task_tags,
                                 with_interval)
from backend.report_sources import JSON
from model import stats
from model.pairs import RankerFields
from model.ranking_stats import order_agreement, position_bias_by_slot
from model.rankings import Ranking, answer_texts, pairs_from_rankings, rankings_from_tasks

RANKER_SECTIONS = [("summary", "Summary"), ("progress", "Ranked count and rate"),
                   ("model-agreement", "The model's order against the annotator's"),
                   ("agreement", "Agreement between annotators"),
                   ("position-bias", "First place by displayed slot (position bias)"),
                   ("unchanged", "Rankings submitted as shown"), ("learning-curve", "Learning curve"),
                   ("calibration", "Calibration"), ("versions", "Model versions"),
                   ("lead-times", "Annotator lead times")]


@dataclass(frozen=True)
class RankedAnnotation:
    """What the progress and lead-time sections read of one ranking."""

    task_id: object
    annotator: object
    created_at: datetime | None
    lead_time: float | None


def ranker_report(tasks: list[dict], fields: RankerFields, versions: list[dict], features, *, n_boot: int,
                  export_format: str = JSON) -> tuple[str, list]:
    """(the header's line, [(section id, heading, HTML)]) for a Ranker project's tasks. `features`: those of
    the rankings' pairs (`report_sources.project_pairs`), for the learning curve."""
    rankings = rankings_from_tasks(tasks, fields)
    first_view_known = export_format == JSON
    if not first_view_known:  # no parent_prediction in the rows: what the annotator saw first is unknown
        for r in rankings:
            r.meta.update(displayed_order=None, displayed_from=None, unchanged_order=None)
    records = _annotation_records(tasks, rankings)
    submitted = sum(1 for t in tasks for a in t.get("annotations") or []
                    if isinstance(a, dict) and not a.get("was_cancelled"))
    model = model_agreement(tasks, rankings, n_boot)
    humans = annotator_agreement(rankings, n_boot)
    slots = position_bias_by_slot(rankings)
    as_shuffled = unchanged_orders(rankings)
    not_recorded = first_view_not_recorded(export_format)
    bodies = {
        "summary": _summary(tasks, rankings, _answer_counts(tasks, fields, rankings), versions, model, humans, slots,
                            as_shuffled, skips_known=first_view_known),
        "progress": shared.progress(records),
        "model-agreement": _model_agreement(model, not_recorded),
        "agreement": _annotator_agreement(humans),
        "position-bias": _position_bias(rankings, slots, not_recorded),
        "unchanged": _unchanged(as_shuffled, submitted - len(rankings), fields, not_recorded),
        "learning-curve": shared.learning_curve(pairs_from_rankings(rankings), features, versions,
                                                "pairs from rankings") + note(
            "A ranking of k answers gives C(k,2) pairs, each counted once here (training weighs them 1/C(k,2)); "
            "a ranking's pairs stay on one side of each split."),
        "calibration": shared.calibration(versions),
        "versions": shared.versions_table(versions),
        "lead-times": shared.lead_times(records),
    }
    subtitle = f"{plural(len(rankings), 'ranking')} on {plural(len({r.meta['task_id'] for r in rankings}), 'task')}"
    return subtitle, [(sid, name, bodies[sid]) for sid, name in RANKER_SECTIONS]


def first_view_not_recorded(export_format: str) -> str | None:
    if export_format == JSON:
        return None
    return (f"A {export_format} export does not record whether an annotator started from the task's shuffled "
            "order or from the model's pre-annotation (Label Studio's <code>parent_prediction</code>), nor what "
            "that pre-annotation said, so this cannot be measured from it. Use the JSON export, or "
            "<code>rlhf-backend report --project N</code>, or the backend's own page (<code>GET /report</code>).")


# ---------------------------------------------------------------- statistics

def _seconds(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _annotation_records(tasks: list[dict], rankings: list[Ranking]) -> list[RankedAnnotation]:
    created = {(t.get("id"), a.get("id")): a.get("created_at")
               for t in tasks for a in t.get("annotations") or [] if isinstance(a, dict)}
    return [RankedAnnotation(r.meta["task_id"], r.meta["annotator"],
                             stats.parse_time(created.get((r.meta["task_id"], r.meta["annotation_id"]))),
                             _seconds(r.meta["lead_time"])) for r in rankings]


def _prediction_versions(tasks: list[dict]) -> dict:
    """{(task id, annotation id): model_version of the prediction the annotation started from}."""
    out = {}
    for task in tasks:
        for ann in task.get("annotations") or []:
            parent = ann.get("parent_prediction")
            if parent is None:
                continue
            for prediction in [ann.get("prediction"), *(task.get("predictions") or [])]:
                if isinstance(prediction, dict) and prediction.get("id") == parent:
                    out[(task.get("id"), ann.get("id"))] = made_by(prediction.get("model_version"))
                    break
    return out


def model_agreement(tasks: list[dict], rankings: list[Ranking], n_boot: int) -> dict:
    """Kendall's tau between the pre-annotation each ranking started from and the submitted order, overall
    and per model version. {"started": rankings started from a prediction, "known": those whose prediction
    the data carries, "accepted": of those, submitted unchanged, "all": order_agreement,
    "by_version": [(version, n, order_agreement, accepted)]}."""
    started = [r for r in rankings if r.meta.get("displayed_from") == "prediction"]
    known = [r for r in started if r.meta.get("displayed_order")]
    made_by = _prediction_versions(tasks)

    def agreement(group):
        return order_agreement(((r.meta["task_id"], r.meta["displayed_order"], r.groups) for r in group), n_boot)

    by_version: dict = {}
    for r in known:
        by_version.setdefault(made_by.get((r.meta["task_id"], r.meta["annotation_id"])), []).append(r)
    def accepted(group):
        return sum(bool(r.meta["unchanged_order"]) for r in group)

    return {"started": len(started), "known": len(known), "accepted": accepted(known), "all": agreement(known),
            "by_version": [(v, len(g), agreement(g), accepted(g))
                           for v, g in sorted(by_version.items(), key=lambda item: _version_key(item[0]))]}


def _version_key(name) -> tuple:
    digits = str(name)[1:]
    return (0, int(digits), "") if str(name).startswith("v") and digits.isdigit() else (1, 0, str(name))


def annotator_agreement(rankings: list[Ranking], n_boot: int) -> dict:
    """Kendall's tau between two annotators' orders of one task, averaged over the task's annotator pairs,
    then over tasks (order_agreement), and the tasks whose annotators put different answers first."""
    by_task: dict = {}
    for r in rankings:  # an annotator's later ranking of a task wins
        by_task.setdefault(r.meta["task_id"], {})[r.meta["annotator"]] = r
    shared_tasks = {t: per for t, per in by_task.items() if len(per) >= 2}
    items = [(t, a.groups, b.groups) for t, per in shared_tasks.items() for a, b in combinations(per.values(), 2)]
    out = order_agreement(items, n_boot)
    out["n_shared"] = len(shared_tasks)
    out["split_first"] = [t for t, per in shared_tasks.items()
                          if len({frozenset(r.groups[0]) for r in per.values()}) > 1]
    return out


def unchanged_orders(rankings: list[Ranking]) -> dict:
    """Rankings that started from the task's shuffled order and were submitted in it. An annotator whose own
    order of k answers happened to be the shuffle does that with chance 1/k!, so `expected` (the sum of
    1/k! over the rankings) is what honest work gives. Per annotator, a Wilson interval above the
    annotator's chance rate flags them."""
    checked = [r for r in rankings
               if r.meta.get("displayed_from") == "data" and r.meta.get("unchanged_order") is not None]

    def row(annotator, group):
        n, count = len(group), sum(r.meta["unchanged_order"] for r in group)
        chance = sum(1 / math.factorial(len(r.meta["displayed_order"])) for r in group) / n
        low, high = stats.wilson_interval(count, n)
        return {"annotator": annotator, "n": n, "count": count, "chance": chance, "low": low, "high": high,
                "flagged": low > chance}

    per: dict = {}
    for r in checked:
        per.setdefault(r.meta["annotator"], []).append(r)
    return {"n": len(checked), "count": sum(r.meta["unchanged_order"] for r in checked),
            "expected": sum(1 / math.factorial(len(r.meta["displayed_order"])) for r in checked),
            "annotators": [row(a, per[a]) for a in sorted(per, key=str)],
            "task_ids": [r.meta["task_id"] for r in checked if r.meta["unchanged_order"]]}


# ---------------------------------------------------------------- sections

def _answer_counts(tasks: list[dict], fields: RankerFields, rankings: list[Ranking]) -> list[int]:
    """The distinct numbers of answers (with text) of the ranked tasks, ascending."""
    ranked = {r.meta["task_id"] for r in rankings}
    return sorted({sum(1 for text in answer_texts((t.get("data") or {}).get(fields.answers)).values() if text.strip())
                   for t in tasks if t.get("id") in ranked})


def _summary(tasks, rankings, sizes, versions, model, humans, slots, as_shuffled, skips_known: bool) -> str:
    biased_slots = sum(s["flagged"] for row in slots for s in row["slots"])
    flagged = sum(r["flagged"] for r in as_shuffled["annotators"])
    return cards([
        card(len(rankings), "rankings"),
        card(len({r.meta["task_id"] for r in rankings}), f"of {len(tasks)} tasks ranked"),
        card(len({r.meta["annotator"] for r in rankings}), "annotators"),
        card(stats.skipped_count(tasks), "skipped") if skips_known else card("–", "skipped (not in this export)"),
        card("–" if not sizes else str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}", "answers per task"),
        card(fmt(model["all"]["tau"][0], 2), "Kendall τ, model's order vs annotator's"),
        card(fmt(humans["tau"][0], 2), "Kendall τ between annotators"),
        card(biased_slots if slots else "–", "slots with a position bias", "bad" if biased_slots else ""),
        card(as_shuffled["count"] if as_shuffled["n"] else "–", "submitted as shuffled", "bad" if flagged else ""),
        card(*shared.current_accuracy_card(versions))])


def _interval_rows(named: list[tuple[str, tuple]]) -> list[dict]:
    """plot_intervals rows from (name, (value, low, high)), an undefined interval drawn as the value alone."""
    rows = []
    for name, (value, low, high) in named:
        if math.isfinite(value):
            rows.append({"name": name, "value": value, "low": low if math.isfinite(low) else value,
                         "high": high if math.isfinite(high) else value})
    return rows


def _model_agreement(model: dict, not_recorded: str | None) -> str:
    if not_recorded:
        return missing(not_recorded)
    out = []
    unknown = model["started"] - model["known"]
    if unknown:
        out.append(missing(f"{plural(unknown, 'ranking')} started from a pre-annotation whose order these tasks do "
                           "not carry: Label Studio's JSON export lists a task's predictions by id only, and an "
                           "annotation keeps (in <code>prediction</code>) only the prediction of the project's model "
                           "version at the time. They are left out."))
    if not model["known"]:
        out.append(note("No ranking started from a model's order that these tasks record, so the model's order "
                        "cannot be compared with the annotators'." + ("" if unknown else
                        " With PREANNOTATE=trained the backend shows its order once a version reaches "
                        "PREANNOTATE_MIN_ACCURACY held-out accuracy; until then the learning curve below is the "
                        "measure of the model.")))
        return "".join(out)
    rows = [(fmt(v), str(n), str(a["n_tasks"]), with_interval(a["tau"]), share(acc, n))
            for v, n, a, acc in model["by_version"]]
    rows.append(("all", str(model["known"]), str(model["all"]["n_tasks"]), with_interval(model["all"]["tau"]),
                 share(model["accepted"], model["known"])))
    plot = plot_intervals(_interval_rows([(str(v), a["tau"]) for v, _, a, _ in model["by_version"]]
                                         + [("all", model["all"]["tau"])]),
                          "Kendall τ, the model's order vs the annotator's", "τ (95% interval over tasks)", 0.0,
                          (-1, 1))
    return "".join(out) + plot + table(["model version", "rankings", "tasks", "Kendall τ [95% CI]",
                                        "submitted as the model ordered"], [list(r) for r in rows]) + note(
        "The model's order is the pre-annotation each annotator started from, made by the version named, which was "
        "trained before that ranking existed: this is agreement on rankings the model had not seen. The current "
        "version is not scored on these rankings: it was trained on them, and agreement with its own training "
        "data would flatter it. τ is 1 for the same order, 0 for no relation, −1 for the reverse; averaged per "
        "task, then over tasks, with a bootstrap interval over tasks. Caveat: an annotator who starts from the "
        "model's order may keep more of it than they would have chosen (anchoring), which pulls τ up; the last "
        "column counts the rankings submitted exactly as the model ordered them.")


def _annotator_agreement(humans: dict) -> str:
    if not humans["n_shared"]:
        return note("No task has been ranked by two or more annotators, so agreement cannot be measured. Set an "
                    "overlap in Label Studio (Settings → Annotation → Overlap) on a share of the tasks.")
    out = table(["tasks ranked twice or more", "annotator pairs compared", "Kendall τ between annotators [95% CI]"],
                [[str(humans["n_shared"]), str(humans["n_rankings"]), with_interval(humans["tau"])]])
    out += note("τ between two annotators' orders of the same answers, averaged over the task's pairs of "
                "annotators, then over tasks; 95% interval by bootstrap over tasks. Near 1: annotators rank alike; "
                "near 0: the order is mostly taste or noise, and the guidelines or the answers need a look.")
    split = humans["split_first"]
    return out + (task_tags("task", "whose annotators put different answers first", split) if split
                  else note("Every task ranked twice has the same answer first."))


def _position_bias(rankings: list[Ranking], slots: list[dict], not_recorded: str | None) -> str:
    if not_recorded:
        return missing(not_recorded)
    from_model = sum(r.meta.get("displayed_from") == "prediction" for r in rankings)
    if not slots:
        return note("No ranking started from the task's shuffled order with a single answer on top yet"
                    + (f" ({from_model} started from the model's order)." if from_model else "."))
    out = []
    for row in slots:
        k = row["k"]
        points = [{"name": f"slot {s['slot']}" + (" (top)" if s["slot"] == 1 else ""), "value": s["share"],
                   "low": s["low"], "high": s["high"], "flagged": s["flagged"]} for s in row["slots"]]
        title = f"First places by displayed slot, {k} answers ({plural(row['n'], 'ranking')})"
        out.append(plot_intervals(points, title, "share of first places (Wilson 95% interval)", 1 / k))
        out.append(table(["answers", "slot", "first / rankings", "share", "95% interval", ""],
                         [[str(k), str(s["slot"]), f'{s["first"]} / {row["n"]}', f'{s["share"]:.1%}',
                           f'{s["low"]:.1%} – {s["high"]:.1%}', FLAG if s["flagged"] else ""] for s in row["slots"]],
                         ["flagged" if s["flagged"] else "" for s in row["slots"]]))
    return "".join(out) + note(
        "Answers are shown in random order, so with k answers each slot should hold the first place about 1/k of "
        "the time (the dashed line). Red: the interval excludes 1/k, a sign that annotators (or the UI) favour a "
        "slot. Only rankings that started from the shuffled order count: one that started from the model's order "
        f"has the model's favourite on top, which is no bias ({from_model} such rankings left out); so do rankings "
        "whose best group holds several answers.")


def _unchanged(as_shuffled: dict, unusable: int, fields: RankerFields, not_recorded: str | None) -> str:
    out = []
    if unusable:
        out.append(note(f"{plural(unusable, 'submitted annotation')} gave no usable order (fewer than two answers "
                        "in order or in buckets): left out of this page and of training."))
    if not_recorded:
        return missing(not_recorded) + "".join(out)
    if fields.buckets:
        return note("With buckets, an annotation submitted without sorting anything leaves every answer unsorted "
                    "and gives no order: such annotations count among those without a usable order.") + "".join(out)
    if not as_shuffled["n"]:
        return note("No ranking started from the task's shuffled order yet.") + "".join(out)
    out.insert(0, f'<p><b>{share(as_shuffled["count"], as_shuffled["n"])}</b> of the rankings that started from the '
                  f'shuffled order were submitted exactly as shown; about {as_shuffled["expected"]:.1f} would be by '
                  "chance (an annotator whose own order of k answers is the shuffle: 1 in k!).</p>")
    out.append(table(["annotator", "submitted as shuffled", "95% interval", "chance", ""],
                     [[fmt(r["annotator"]), share(r["count"], r["n"]), f'{r["low"]:.1%} – {r["high"]:.1%}',
                       f'{r["chance"]:.1%}', '<span class="flag">check</span>' if r["flagged"] else ""]
                      for r in as_shuffled["annotators"]],
                     ["flagged" if r["flagged"] else "" for r in as_shuffled["annotators"]]))
    if as_shuffled["task_ids"]:
        out.append(task_tags("ranking", "submitted as shuffled", as_shuffled["task_ids"]))
    return "".join(out) + note("Such a ranking may be no judgement at all (training flags it "
                               "<code>unchanged_order</code>). Red: the annotator's share is above chance beyond its "
                               "95% interval.")
