"""The report of a Pairwise project (two answers, left or right): who picked what, how much annotators
agree, and whether anyone favours a side."""

from __future__ import annotations

import math

from backend import report_sections as shared
from backend.report_figures import plot_intervals
from backend.report_html import FLAG, card, cards, fmt, note, plural, table, task_tags, with_interval
from backend.report_sources import JSON
from model import stats
from model.arena import arena_results, reading
from model.pairs import TaskFields, pairs_from_tasks

PAIRWISE_SECTIONS = [("summary", "Summary"), ("progress", "Labelled count and rate"), ("agreement", "Agreement"),
                     ("position-bias", "Left-pick share (position bias)"), ("learning-curve", "Learning curve"),
                     ("calibration", "Calibration"), ("versions", "Model versions"),
                     ("lead-times", "Annotator lead times")]
# Only on the page of a project with arena tasks (`rlhf-backend arena`), right after the summary.
ARENA_SECTION = ("arena", "Generator versions judged by annotators")


def pairwise_report(tasks: list[dict], fields: TaskFields, versions: list[dict], features, *,
                    choices_name: str | None, n_boot: int, export_format: str = JSON) -> tuple[str, list]:
    """(the header's line, [(section id, heading, HTML)]) for a Pairwise project's tasks."""
    items = stats.judgements(tasks, fields, choices_name or fields.judgement)
    counts = stats.judgement_counts(tasks, items)
    agree = stats.agreement(items, n_boot=n_boot)
    bias = stats.position_bias(items)
    bodies = {
        "summary": _summary(counts, bias, agree, versions, skips_known=export_format == JSON),
        "progress": shared.progress(items),
        "agreement": _agreement(agree),
        "position-bias": _position_bias(bias),
        "learning-curve": shared.learning_curve(pairs_from_tasks(tasks, fields), features, versions),
        "calibration": shared.calibration(versions),
        "versions": shared.versions_table(versions),
        "lead-times": shared.lead_times(items),
    }
    subtitle = f'{plural(counts["annotations"], "annotation")} on {plural(counts["labelled_tasks"], "task")}'
    sections = [(sid, name, bodies[sid]) for sid, name in PAIRWISE_SECTIONS]
    arena = arena_results(tasks, fields, choices_name or fields.judgement)
    if arena:
        sections.insert(1, (*ARENA_SECTION, _arena(arena, skips_known=export_format == JSON)))
    return subtitle, sections


def _summary(counts: dict, bias: dict, agree: dict, versions: list[dict], skips_known: bool) -> str:
    flagged = sum(r["flagged"] for r in bias["annotators"])
    return cards([card(counts["annotations"], "annotations"),
                  card(counts["labelled_tasks"], f"of {counts['tasks']} tasks labelled"),
                  card(counts["annotators"], "annotators"),
                  card(counts["skipped"], "skipped") if skips_known else card("–", "skipped (not in this export)"),
                  card(counts["ties"], "ties"), card(counts["both_bad"], "both bad"),
                  card(fmt(agree["alpha"][0], 2), "Krippendorff's α"),
                  card(flagged, "annotators with a side bias", "bad" if flagged else ""),
                  card(*shared.current_accuracy_card(versions))])


def _agreement(agree: dict) -> str:
    if not agree["n_multi"]:
        return note("No task has been labelled by two or more annotators, so agreement cannot be measured. "
                    "Set an overlap in Label Studio (Settings → Annotation → Overlap) on a share of the tasks.")
    out = [table(["tasks labelled twice or more", "raw agreement", "Krippendorff's α (nominal)"],
                 [[str(agree["n_multi"]), with_interval(agree["percent"]), with_interval(agree["alpha"])]]),
           note("Labels compared: left, right, tie (and both bad when no side was picked). 95% intervals by "
                "bootstrap over tasks. α above 0.8 is reliable; below 0.67, the guidelines or the pairs need a look.")]
    if agree["pairs"]:
        rows = [{"name": f"{a} · {b}", "value": p["kappa"][0], "low": p["kappa"][1], "high": p["kappa"][2]}
                for p in agree["pairs"] for a, b in [p["annotators"]] if math.isfinite(p["kappa"][0])]
        for r in rows:
            r["low"] = r["low"] if math.isfinite(r["low"]) else r["value"]
            r["high"] = r["high"] if math.isfinite(r["high"]) else r["value"]
        if rows:
            out.append(plot_intervals(rows, "Cohen's κ per annotator pair", "κ (95% interval)", 0.0, (-1, 1)))
        out.append(table(["annotators", "shared tasks", "raw agreement", "Cohen's κ"],
                         [[f"{fmt(a)} · {fmt(b)}", str(p["n"]), fmt(p["percent"]), with_interval(p["kappa"])]
                          for p in agree["pairs"] for a, b in [p["annotators"]]]))
    dis = agree["disagreements"]
    out.append(task_tags("task", "with disagreement", [d["task_id"] for d in dis]) if dis
               else note("No task with disagreement."))
    return "".join(out)


def _position_bias(bias: dict) -> str:
    rows = [r for r in bias["annotators"] + [bias["overall"]] if r["n"]]
    if not rows:
        return note("No left/right picks yet.")
    plot = plot_intervals([{"name": r["annotator"], "value": r["share"], "low": r["low"], "high": r["high"],
                            "flagged": r["flagged"]} for r in rows],
                          "Share of left picks", "share of left picks (Wilson 95% interval)", 0.5)
    rows_html = table(["annotator", "left / picks", "left share", "95% interval", ""],
                      [[fmt(r["annotator"]), f'{r["left"]} / {r["n"]}', f'{r["share"]:.1%}',
                        f'{r["low"]:.1%} – {r["high"]:.1%}', FLAG if r["flagged"] else ""] for r in rows],
                      ["flagged" if r["flagged"] else "" for r in rows])
    return plot + rows_html + note("Answers are shown in random order, so an unbiased annotator picks left about "
                                   "half the time. Red: the interval excludes 50%, a sign of an annotator (or UI) "
                                   "side bias. Ties are not counted.")


def _arena(rows: list[dict], skips_known: bool) -> str:
    judged = [r for r in rows if r["n"]]
    out = [plot_intervals([{"name": f'{r["b"]} vs {r["a"]}', "value": r["win_rate"], "low": r["win_rate_ci"][0],
                            "high": r["win_rate_ci"][1]} for r in judged],
                          "Human win rate of the later version", "share of verdicts for B (Wilson 95% interval)", 0.5)
           ] if judged else []
    out.append(table(["A", "B", "verdicts", "B picked", "A picked", "ties", "win rate of B [95% CI]", "skipped",
                      "tasks labelled"],
                     [[fmt(r["a"]), fmt(r["b"]), str(r["n"]), str(r["wins"]), str(r["losses"]), str(r["ties"]),
                       f'{r["win_rate"]:.1%} <span class="ci">[{r["win_rate_ci"][0]:.1%}, {r["win_rate_ci"][1]:.1%}]'
                       '</span>' if r["n"] else "–", str(r["skipped"]) if skips_known else "–",
                       f'{r["labelled_tasks"]} / {r["tasks"]}'] for r in rows]))
    out.append("".join(f"<p><b>{fmt(reading(r))}</b></p>" for r in rows))
    out.append(note("Tasks imported by <code>rlhf-backend arena</code> show one answer of each version, on random "
                    "sides. A verdict is one submitted annotation: a pick counts for the version that wrote the "
                    "picked answer, a tie (or both bad without a side) half for each; skipped tasks are no verdicts. "
                    "B is the later version of the two (base, then v1, v2, ...). Several annotators of one task each "
                    "give a verdict, which makes the Wilson interval somewhat too narrow. These labels are also "
                    "ordinary preference pairs for the reward model and for tuning."))
    return "".join(out)
