"""The report's sections that Pairwise and Ranker projects share: labelling progress, the learning curve,
calibration and metrics per model version, and annotator lead times. Each returns the section's HTML."""

from __future__ import annotations

from html import escape

from backend.report_figures import img, plot_learning_curve, plot_lead_times, plot_progress
from backend.report_html import fmt, note, plural, table, with_interval
from model import stats

MAX_RELIABILITY = 4  # newest versions whose reliability diagram is shown
MIN_CURVE_PAIRS = 8


def progress(items) -> str:
    """`items`: one per submitted annotation, with `created_at` (model.stats.Judgement or alike)."""
    tl = stats.timeline(items)
    if not tl["times"]:
        return note("No annotation has a creation time yet.")
    first, last = tl["times"][0], tl["times"][-1]
    hours = max((last - first).total_seconds() / 3600, 1e-9)
    n = tl["cumulative"][-1]
    return plot_progress(tl) + note(f"{n} annotations from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC, "
                                    f"{n / hours:.1f} per hour on average.")


def learning_curve(pairs: list, features, versions: list[dict], what: str = "labelled pairs") -> str:
    """`features`: (chosen, rejected) fast-mode features of `pairs`, or None (only the versions' points)."""
    curve = None
    if features is not None and len(pairs) >= MIN_CURVE_PAIRS:
        if len(features[0]) != len(pairs):
            raise ValueError(f"{len(features[0])} feature rows for {len(pairs)} pairs")
        curve = stats.learning_curve(*features, groups=[p.meta.get("task_id") for p in pairs])
    has_versions = any(v["metrics"].get("val_accuracy") is not None for v in versions)
    why_not = (f"{plural(len(pairs), 'preference pair')}: not enough for a learning curve yet"
               if len(pairs) < MIN_CURVE_PAIRS or features is not None
               else "No refitted curve: this page was made without the encoder's features (--no-learning-curve)")
    if not (curve and curve["sizes"]) and not has_versions:
        return note(why_not + ".")
    parts = []
    if curve and curve["sizes"]:
        parts.append("Blue: a linear Bradley-Terry head refitted on the frozen encoder's features of the first n "
                     "labelled pairs and scored on held-out tasks (mean and 95% interval over 5 random splits); a "
                     "curve still rising means more labels will still pay.")
    else:
        parts.append(why_not + ".")
    if has_versions:
        parts.append("Green: each trained version's accuracy on its own held-out split.")
    return plot_learning_curve(curve, versions, what) + note(" ".join(parts))


def calibration(versions: list[dict]) -> str:
    shown = [v for v in versions if v.get("reliability")][-MAX_RELIABILITY:]
    if not shown:
        return note("No model version with a reliability diagram yet.")
    cells = "".join(f'<figure>{img(v["reliability"], "reliability " + v["name"])}<figcaption>{escape(v["name"])}'
                    f'{" (current)" if v["current"] else ""} · ECE {fmt(v["metrics"].get("ece"))}</figcaption></figure>'
                    for v in reversed(shown))
    return (f'<div class="grid">{cells}</div>' + note("Observed frequency against predicted probability on each "
            "version's held-out pairs: points on the diagonal mean its confidence (the prediction score annotators "
            "sort by) can be taken at face value."))


def versions_table(versions: list[dict]) -> str:
    if not versions:
        return note("No model version trained yet.")
    rows, classes = [], []
    for v in reversed(versions):
        m = v["metrics"]
        ci = m.get("val_accuracy_ci")
        acc = (with_interval((m["val_accuracy"], *ci)) if m.get("val_accuracy") is not None and ci
               else fmt(m.get("val_accuracy")))
        rows.append([f'{escape(v["name"])}{" ★" if v["current"] else ""}', fmt(m.get("n_pairs")),
                     f'{fmt(m.get("n_train"))} / {fmt(m.get("n_val"))}', acc, fmt(m.get("ece")),
                     fmt(m.get("val_loss")), fmt(m.get("mode")), fmt(m.get("train_seconds"), 1)])
        classes.append("current" if v["current"] else "")
    return table(["version", "pairs", "train / held-out", "held-out accuracy [95% CI]", "ECE", "held-out loss",
                  "mode", "train s"], rows, classes) + note("★ the version Label Studio is served.")


def lead_times(items) -> str:
    """`items`: one per submitted annotation, with `annotator` and `lead_time` (seconds or None)."""
    rows = stats.lead_times(items)
    if not rows:
        return note("Label Studio recorded no lead times.")
    seconds: dict[str, list[float]] = {}
    for j in items:
        if j.lead_time is not None:
            seconds.setdefault(str(j.annotator), []).append(j.lead_time)
    return plot_lead_times(seconds) + table(["annotator", "annotations", "median s", "p90 s"],
                                            [[fmt(r["annotator"]), str(r["n"]), fmt(r["median"], 1), fmt(r["p90"], 1)]
                                             for r in rows])


def current_accuracy_card(versions: list[dict]) -> tuple[str, str]:
    """(value, label) of the summary card for the served version's held-out accuracy."""
    current = next((v for v in versions if v["current"]), None)
    acc = current["metrics"].get("val_accuracy") if current else None
    return (f"{acc:.1%}" if acc is not None else "–",
            f"held-out accuracy ({escape(current['name'])})" if current else "no model yet")
