"""One self-contained HTML page on how a project's preference collection is going: progress, agreement,
position bias, learning curve, calibration and metrics per model version, lead times, and the
uncertainty-ordering simulation. Plots are matplotlib PNGs embedded as data URIs, so the page is a single
file that can be mailed, archived or served as is.

`build_report` is pure (tasks and metrics in, HTML out); `write_report` is the job-side entry that also
reads versions from MODEL_DIR and writes MODEL_DIR/<project>/report.html atomically.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import numpy as np

from model import stats
from model.pairs import DEFAULT_FIELDS, TaskFields, csv_value, pairs_from_tasks
from model.store import VersionStore

REPORT_FILE = "report.html"
SIMULATION_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "uncertainty.json"
MAX_RELIABILITY = 4        # newest versions whose reliability diagram is shown
MAX_DISAGREEMENTS = 30     # tasks listed by id
WEAK_ACCURACY = 0.6        # below this full-pool accuracy a simulated label saving is not meaningful
BLUE, GREY, RED, GREEN = "#2e86de", "#8395a7", "#e74c3c", "#27ae60"

SECTIONS = [("summary", "Summary"), ("progress", "Labelled count and rate"), ("agreement", "Agreement"),
            ("position-bias", "Left-pick share (position bias)"), ("learning-curve", "Learning curve"),
            ("calibration", "Calibration"), ("versions", "Model versions"), ("lead-times", "Annotator lead times"),
            ("simulation", "Does uncertainty ordering save labels?")]


# ---------------------------------------------------------------- inputs

def tasks_from_rows(rows: list[dict], fields: TaskFields = DEFAULT_FIELDS,
                    choices_name: str = "judgement") -> list[dict]:
    """JSON_MIN / CSV export rows (one per annotation, the control values under the controls' names) ->
    JSON-export-shaped tasks, so every export format gives the same report."""
    tasks: dict = {}
    for row in rows:
        task = tasks.setdefault(row.get("id"), {"id": row.get("id"), "annotations": [], "data": {
            k: row.get(k) for k in (fields.prompt, fields.left, fields.right)}})
        result = []
        selection = csv_value(row.get(fields.pairwise))
        for item in selection if isinstance(selection, list) else [selection]:
            if isinstance(item, dict) and item.get("selected") in ("left", "right"):
                result.append({"from_name": fields.pairwise, "type": "pairwise", "value": {"selected": item["selected"]}})
        choices = csv_value(row.get(choices_name))
        if isinstance(choices, dict):
            choices = choices.get("choices")
        if choices:
            result.append({"from_name": choices_name, "type": "choices",
                           "value": {"choices": choices if isinstance(choices, list) else [choices]}})
        task["annotations"].append({"id": row.get("annotation_id"), "completed_by": row.get("annotator"),
                                    "result": result, "created_at": row.get("created_at"),
                                    "lead_time": row.get("lead_time") or None})
    return list(tasks.values())


def read_export(path, fields: TaskFields = DEFAULT_FIELDS) -> list[dict]:
    """Tasks from a Label Studio export file: JSON (as is), JSON_MIN or CSV (converted)."""
    import csv

    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv" or text.lstrip()[:1] not in ("[", "{"):
        return tasks_from_rows(list(csv.DictReader(io.StringIO(text, newline=""))), fields)
    rows = json.loads(text)
    rows = rows if isinstance(rows, list) else [rows]  # one task
    if rows and isinstance(rows[0], dict) and "annotations" not in rows[0]:
        return tasks_from_rows(rows, fields)
    return rows


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


def load_simulation(path=None) -> dict | None:
    """The results JSON of benchmarks/simulate_uncertainty.py (default: the committed one), or None."""
    path = Path(path) if path else SIMULATION_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def pair_features(pairs, base_model: str, max_length: int, pooling: str, cache_dir=None):
    """Fast-mode features (frozen encoder, first token) of each pair's chosen and rejected answer, through
    training's FeatureCache: with training's cache folder, pairs it has seen cost nothing."""
    from model.reward.model import resolve_base_model
    from model.reward.features import FeatureCache
    from model.reward.model import load_reward_base

    base = resolve_base_model(base_model)
    model, tokenizer, pooling = load_reward_base(base, pooling)
    feats, _ = FeatureCache(base, max_length, pooling, cache_dir).compute(
        model, tokenizer, [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
        max_length, 32, lambda fraction, message: None)
    feats = feats.numpy()
    return feats[:len(pairs)], feats[len(pairs):]


# ---------------------------------------------------------------- plots

def _figure(width=7.0, height=3.4):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titleweight": "bold", "axes.titlesize": 10})
    return plt, *plt.subplots(figsize=(width, height))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return _img(buf.getvalue())


def _img(png: bytes, alt: str = "plot") -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def plot_progress(tl: dict) -> str:
    plt, fig, ax = _figure(8.0, 3.0)
    fig.delaxes(ax)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.step(tl["times"], tl["cumulative"], where="post", color=BLUE)
    left.fill_between(tl["times"], tl["cumulative"], step="post", color=BLUE, alpha=0.12)
    left.set(title="Labelled so far", ylabel="annotations")
    width = {"minute": 1 / 1440, "hour": 1 / 24, "day": 1.0}[tl["bucket"]]
    right.bar(tl["buckets"], tl["per_bucket"], width=width * 0.85, align="edge", color=GREEN)
    right.set(title=f"Annotations per {tl['bucket']}", ylabel="annotations")
    from datetime import timedelta

    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    pad = timedelta(minutes=5) if (tl["times"][-1] - tl["times"][0]) < timedelta(minutes=10) else None
    for ax in (left, right):
        if pad:  # a few seconds of work: give the date axis a range it can label
            ax.set_xlim(tl["times"][0] - pad, tl["times"][-1] + pad)
        ax.grid(axis="y", alpha=0.3)
        locator = AutoDateLocator(minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    return _png(fig)


def plot_intervals(rows: list[dict], title: str, xlabel: str, reference: float | None, xlim=(0, 1)) -> str:
    """Dot and 95% interval per row ({"name", "value", "low", "high", "flagged"}), flagged rows in red."""
    plt, fig, ax = _figure(7.0, 0.9 + 0.32 * len(rows))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        color = RED if r.get("flagged") else (GREY if r["name"] == "all" else BLUE)
        ax.plot([r["low"], r["high"]], [yi, yi], color=color, lw=2.5, alpha=0.6, solid_capstyle="round")
        ax.plot(r["value"], yi, "o", color=color, ms=6)
    if reference is not None:
        ax.axvline(reference, color="#222", ls="--", lw=0.8)
    ax.set_yticks(y, [str(r["name"]) for r in rows])
    ax.set(xlim=xlim, ylim=(-0.7, len(rows) - 0.3), xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_learning_curve(curve: dict | None, versions: list[dict]) -> str:
    plt, fig, ax = _figure(7.0, 3.6)
    if curve and curve["sizes"]:
        ax.plot(curve["sizes"], curve["mean"], "o-", color=BLUE, label="held-out accuracy (refits on the labels)")
        ax.fill_between(curve["sizes"], curve["low"], curve["high"], color=BLUE, alpha=0.18, label="95% interval")
    points = [(v["metrics"]["n_pairs"], v["metrics"]["val_accuracy"], v["metrics"].get("val_accuracy_ci"), v["name"])
              for v in versions if v["metrics"].get("val_accuracy") is not None and v["metrics"].get("n_pairs")]
    for i, (n, acc, ci, name) in enumerate(points):
        err = [[acc - ci[0]], [ci[1] - acc]] if ci else None
        ax.errorbar([n], [acc], yerr=err, fmt="s", color=GREEN, capsize=3,
                    label="trained versions (their own held-out split)" if i == 0 else None)
        ax.annotate(name, (n, acc), textcoords="offset points", xytext=(5, 4), fontsize=7, color=GREEN)
    ax.axhline(0.5, color=RED, ls="--", lw=0.8, label="chance")
    ax.set(xlabel="labelled pairs", ylabel="held-out accuracy", ylim=(0.3, 1.0), title="Accuracy vs labels")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def plot_lead_times(items: list[stats.Judgement]) -> str:
    per: dict = {}
    for j in items:
        if j.lead_time is not None:
            per.setdefault(str(j.annotator), []).append(max(j.lead_time, 0.1))  # log axis: no zeros
    names = sorted(per)
    plt, fig, ax = _figure(7.0, 0.9 + 0.35 * len(names))
    ax.boxplot([per[n] for n in names], orientation="horizontal", showfliers=True, widths=0.5,
               medianprops={"color": BLUE, "lw": 2}, flierprops={"ms": 3, "alpha": 0.5})
    ax.set_yticks(range(1, len(names) + 1), names)
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="seconds per annotation (log scale)", title="Lead time per annotator")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_simulation(sim: dict) -> str:
    plt, fig, ax = _figure(7.0, 3.6)
    sizes = sim["sizes"]
    for name, color in (("random", GREY), ("uncertainty", BLUE)):
        c = sim["curves"][name]
        ax.plot(sizes, c["mean"], "-", color=color, label=f"{name} order")
        ax.fill_between(sizes, c["low"], c["high"], color=color, alpha=0.2)
    ax.axhline(sim["random_final_accuracy"], color=GREY, ls=":", lw=1, label="random order, whole pool")
    ax.set(xlabel="labelled pairs", ylabel="held-out accuracy",
           title=f"hh-rlhf simulation, {sim['seeds']} seeds, 95% intervals")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------- HTML pieces

def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _ci(triple, digits=3) -> str:
    value, lo, hi = triple
    if not math.isfinite(value):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return _fmt(value, digits)
    return f'{value:.{digits}f} <span class="ci">[{lo:.{digits}f}, {hi:.{digits}f}]</span>'


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(f'<tr class="{(classes or [""] * len(rows))[i]}">' + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _card(value, label: str, tone: str = "") -> str:
    return f'<div class="card {tone}"><div class="value">{value}</div><div class="label">{label}</div></div>'


def _summary(counts: dict, bias: dict, agree: dict, versions: list[dict]) -> str:
    current = next((v for v in versions if v["current"]), None)
    acc = current["metrics"].get("val_accuracy") if current else None
    flagged = sum(r["flagged"] for r in bias["annotators"])
    cards = [_card(counts["annotations"], "annotations"), _card(counts["labelled_tasks"], f"of {counts['tasks']} tasks labelled"),
             _card(counts["annotators"], "annotators"), _card(counts["skipped"], "skipped"),
             _card(counts["ties"], "ties"), _card(counts["both_bad"], "both bad"),
             _card(_fmt(agree["alpha"][0], 2), "Krippendorff's α"),
             _card(flagged, "annotators with a side bias", "bad" if flagged else ""),
             _card(f"{acc:.1%}" if acc is not None else "–", f"held-out accuracy ({current['name']})" if current else "no model yet")]
    return f'<div class="cards">{"".join(cards)}</div>'


def _progress(tl: dict) -> str:
    if not tl["times"]:
        return _note("No annotation has a creation time yet.")
    first, last = tl["times"][0], tl["times"][-1]
    hours = max((last - first).total_seconds() / 3600, 1e-9)
    return (plot_progress(tl) + _note(f"{tl['cumulative'][-1]} annotations from {first:%Y-%m-%d %H:%M} to "
                                      f"{last:%Y-%m-%d %H:%M} UTC, {tl['cumulative'][-1] / hours:.1f} per hour on average."))


def _agreement(agree: dict) -> str:
    if not agree["n_multi"]:
        return _note("No task has been labelled by two or more annotators, so agreement cannot be measured. "
                     "Set an overlap in Label Studio (Settings → Annotation → Overlap) on a share of the tasks.")
    out = [_table(["tasks labelled twice or more", "raw agreement", "Krippendorff's α (nominal)"],
                  [[str(agree["n_multi"]), _ci(agree["percent"]), _ci(agree["alpha"])]]),
           _note("Labels compared: left, right, tie (and both bad when no side was picked). 95% intervals by "
                 "bootstrap over tasks. α above 0.8 is reliable; below 0.67, the guidelines or the pairs need a look.")]
    if agree["pairs"]:
        rows = [{"name": f"{a} · {b}", "value": p["kappa"][0], "low": p["kappa"][1], "high": p["kappa"][2]}
                for p in agree["pairs"] for a, b in [p["annotators"]] if math.isfinite(p["kappa"][0])]
        for r in rows:
            r["low"] = r["low"] if math.isfinite(r["low"]) else r["value"]
            r["high"] = r["high"] if math.isfinite(r["high"]) else r["value"]
        if rows:
            out.append(plot_intervals(rows, "Cohen's κ per annotator pair", "κ (95% interval)", 0.0, (-1, 1)))
        out.append(_table(["annotators", "shared tasks", "raw agreement", "Cohen's κ"],
                          [[f"{_fmt(a)} · {_fmt(b)}", str(p["n"]), _fmt(p["percent"]), _ci(p["kappa"])]
                           for p in agree["pairs"] for a, b in [p["annotators"]]]))
    dis = agree["disagreements"]
    if dis:
        shown = ", ".join(f'<span class="tag">{_fmt(d["task_id"])}</span>' for d in dis[:MAX_DISAGREEMENTS])
        more = f" and {len(dis) - MAX_DISAGREEMENTS} more" if len(dis) > MAX_DISAGREEMENTS else ""
        out.append(f'<p><b>{len(dis)} tasks with disagreement</b> (task ids): {shown}{more}</p>')
    else:
        out.append(_note("No task with disagreement."))
    return "".join(out)


def _position_bias(bias: dict) -> str:
    rows = bias["annotators"] + [bias["overall"]]
    rows = [r for r in rows if r["n"]]
    if not rows:
        return _note("No left/right picks yet.")
    plot = plot_intervals([{"name": r["annotator"], "value": r["share"], "low": r["low"], "high": r["high"],
                            "flagged": r["flagged"]} for r in rows],
                          "Share of left picks", "share of left picks (Wilson 95% interval)", 0.5)
    table = _table(["annotator", "left / picks", "left share", "95% interval", ""],
                   [[_fmt(r["annotator"]), f'{r["left"]} / {r["n"]}', f'{r["share"]:.1%}',
                     f'{r["low"]:.1%} – {r["high"]:.1%}', '<span class="flag">biased</span>' if r["flagged"] else ""]
                    for r in rows], ["flagged" if r["flagged"] else "" for r in rows])
    return plot + table + _note("Answers are shown in random order, so an unbiased annotator picks left about half the "
                                "time. Red: the interval excludes 50%, a sign of an annotator (or UI) side bias. "
                                "Ties are not counted.")


def _learning_curve(curve: dict | None, versions: list[dict], n_pairs: int) -> str:
    has_versions = any(v["metrics"].get("val_accuracy") is not None for v in versions)
    if not (curve and curve["sizes"]) and not has_versions:
        return _note(f"{n_pairs} preference pairs: not enough for a learning curve yet.")
    parts = []
    if curve and curve["sizes"]:
        parts.append("Blue: a linear Bradley-Terry head refitted on the frozen encoder's features of the first n "
                     "labelled pairs and scored on held-out tasks (mean and 95% interval over 5 random splits); a "
                     "curve still rising means more labels will still pay.")
    else:
        parts.append("No refitted curve (run the report with the encoder, or label at least 8 pairs).")
    if has_versions:
        parts.append("Green: each trained version's accuracy on its own held-out split.")
    text = " ".join(parts)
    return plot_learning_curve(curve, versions) + _note(text)


def _calibration(versions: list[dict]) -> str:
    shown = [v for v in versions if v.get("reliability")][-MAX_RELIABILITY:]
    if not shown:
        return _note("No model version with a reliability diagram yet.")
    cells = "".join(f'<figure>{_img(v["reliability"], "reliability " + v["name"])}<figcaption>{escape(v["name"])}'
                    f'{" (current)" if v["current"] else ""} · ECE {_fmt(v["metrics"].get("ece"))}</figcaption></figure>'
                    for v in reversed(shown))
    return (f'<div class="grid">{cells}</div>' + _note("Observed frequency against predicted probability on each "
            "version's held-out pairs: points on the diagonal mean its confidence (the prediction score annotators "
            "sort by) can be taken at face value."))


def _versions(versions: list[dict]) -> str:
    if not versions:
        return _note("No model version trained yet.")
    rows, classes = [], []
    for v in reversed(versions):
        m = v["metrics"]
        ci = m.get("val_accuracy_ci")
        acc = _ci((m["val_accuracy"], *ci)) if m.get("val_accuracy") is not None and ci else _fmt(m.get("val_accuracy"))
        rows.append([f'{escape(v["name"])}{" ★" if v["current"] else ""}', _fmt(m.get("n_pairs")),
                     f'{_fmt(m.get("n_train"))} / {_fmt(m.get("n_val"))}', acc, _fmt(m.get("ece")),
                     _fmt(m.get("val_loss")), _fmt(m.get("mode")), _fmt(m.get("train_seconds"), 1)])
        classes.append("current" if v["current"] else "")
    return _table(["version", "pairs", "train / held-out", "held-out accuracy [95% CI]", "ECE", "held-out loss",
                   "mode", "train s"], rows, classes) + _note("★ the version Label Studio is served.")


def _lead_times(items: list[stats.Judgement]) -> str:
    rows = stats.lead_times(items)
    if not rows:
        return _note("Label Studio recorded no lead times.")
    return plot_lead_times(items) + _table(["annotator", "annotations", "median s", "p90 s"],
                                          [[_fmt(r["annotator"]), str(r["n"]), _fmt(r["median"], 1), _fmt(r["p90"], 1)]
                                           for r in rows])


def _simulation(sim: dict | None) -> str:
    if not sim:
        return _note("No simulation results; run <code>python benchmarks/simulate_uncertainty.py</code>.")
    rows = []
    for t in sim["targets"]:
        saving = "not reached" if t["saving"] is None else f'{t["saving"]:+.0%}'
        rows.append([f'{t["target"]:.3f} ({t["of_final"]:.0%} of random, whole pool)', _fmt(t["random_labels"]),
                     _fmt(t["uncertainty_labels"]), saving])
    full = next((t for t in sim["targets"] if t["of_final"] == 1.0), None)
    goal = sim.get("goal_saving", 0.25)
    met = full is not None and full["saving"] is not None and full["saving"] >= goal
    weak = sim["random_final_accuracy"] < WEAK_ACCURACY
    state = "inconclusive" if weak else "met" if met else "not met"
    verdict = (f'<p class="verdict {"good" if state == "met" else "bad"}">Goal: the same held-out accuracy with at '
               f'least {goal:.0%} fewer labels: <b>{state}</b>.')
    if weak:
        verdict += (f' The model reaches only {sim["random_final_accuracy"]:.1%} held-out accuracy on the whole pool, '
                    "so the curves are nearly flat near chance and labels-to-target figures mostly measure noise"
                    + (f' (on paper: {full["saving"]:.0%} fewer labels)' if full and full["saving"] is not None else "")
                    + ".")
    if "mean_difference" in sim:
        verdict += (f' Paired by seed, uncertainty order minus random order: {sim["mean_difference"]:+.3f} accuracy on '
                    f'average; its 95% interval is above zero at {sim["sizes_better"]} and below zero at '
                    f'{sim["sizes_worse"]} of {sim["sizes_compared"]} intermediate sizes.')
    verdict += "</p>"
    return (verdict + plot_simulation(sim) + _table(["target accuracy", "random order", "uncertainty order", "labels saved"], rows)
            + _note(f'Simulated on hh-rlhf harmless-base ({sim["pool"]} pairs to label, {sim["test"]} held out); the '
                    f'recorded human choice plays the annotator; retrain every {sim["step"]} labels; {sim["seeds"]} seeds; '
                    f'run {escape(str(sim.get("date", "")))}. Labels needed: the fewest from which the mean curve stays at or '
                    'above the target. Details and command: BENCHMARKS.md.'))


CSS = """
body { margin: 0; background: #f4f6f9; color: #1e272e; font: 14px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
header { background: linear-gradient(120deg, #1e3799, #2e86de); color: #fff; padding: 28px 40px 22px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; opacity: .85; }
nav { padding: 10px 40px; background: #fff; border-bottom: 1px solid #dfe4ea; position: sticky; top: 0; z-index: 1; }
nav a { color: #1e3799; text-decoration: none; margin-right: 16px; font-size: 13px; white-space: nowrap; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 20px 60px; }
section { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08); padding: 18px 24px; margin-bottom: 20px; }
h2 { margin: 0 0 12px; font-size: 18px; color: #1e3799; }
img { max-width: 100%; display: block; margin: 8px 0; }
table { border-collapse: collapse; width: 100%; margin: 10px 0; font-size: 13px; }
th { text-align: left; background: #f1f2f6; font-weight: 600; }
th, td { padding: 6px 10px; border-bottom: 1px solid #eef0f3; }
tr.flagged td { background: #fdecea; }
tr.current td { background: #eafaf1; font-weight: 600; }
.ci { color: #8395a7; font-size: 12px; }
.note { color: #57606f; font-size: 13px; }
.flag { background: #e74c3c; color: #fff; border-radius: 10px; padding: 1px 8px; font-size: 11px; }
.tag { background: #f1f2f6; border-radius: 4px; padding: 0 6px; font-family: monospace; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.card { background: #f8f9fb; border-radius: 8px; padding: 12px 14px; border-left: 4px solid #2e86de; }
.card.bad { border-left-color: #e74c3c; }
.card .value { font-size: 24px; font-weight: 700; }
.card .label { color: #57606f; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; }
figure { margin: 0; } figcaption { color: #57606f; font-size: 12px; text-align: center; }
.verdict { padding: 10px 14px; border-radius: 6px; } .verdict.good { background: #eafaf1; } .verdict.bad { background: #fdf2e9; }
"""


# ---------------------------------------------------------------- entry points

def build_report(tasks: list[dict], fields: TaskFields = DEFAULT_FIELDS, versions: list[dict] | None = None,
                 out_path=None, *, title: str = "Preference collection report", simulation: dict | None = None,
                 features=None, choices_name: str | None = None, n_boot: int = 1000) -> str:
    """The report page for LS JSON-export `tasks`. `versions`: see `load_versions`; `simulation`: the
    simulation's results JSON; `features`: (chosen, rejected) fast-mode features of `pairs_from_tasks(tasks, fields)`, for
    the learning curve (None: only the versions' own points). Writes `out_path` too when given."""
    items = stats.judgements(tasks, fields, choices_name or fields.judgement)
    versions = versions or []
    counts = stats.judgement_counts(tasks, items)
    agree = stats.agreement(items, n_boot=n_boot)
    bias = stats.position_bias(items)
    pairs = pairs_from_tasks(tasks, fields)  # ties are no Bradley-Terry pairs: dropped there
    curve = None
    if features is not None and len(pairs) >= 8:
        curve = stats.learning_curve(*features, groups=[p.meta.get("task_id") for p in pairs])
    bodies = {
        "summary": _summary(counts, bias, agree, versions),
        "progress": _progress(stats.timeline(items)),
        "agreement": _agreement(agree),
        "position-bias": _position_bias(bias),
        "learning-curve": _learning_curve(curve, versions, len(pairs)),
        "calibration": _calibration(versions),
        "versions": _versions(versions),
        "lead-times": _lead_times(items),
        "simulation": _simulation(simulation),
    }
    nav = "".join(f'<a href="#{sid}">{name}</a>' for sid, name in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{name}</h2>{bodies[sid]}</section>' for sid, name in SECTIONS)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><h1>{escape(title)}</h1><p>{counts["annotations"]} annotations on {counts["labelled_tasks"]} tasks · '
            f'generated {made} by rlhf-backend</p></header><nav>{nav}</nav><main>{sections}</main></body></html>')
    if out_path is not None:
        write_atomic(Path(out_path), page)
    return page


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


def write_report(settings, project: int, tasks: list[dict], fields: TaskFields, learning_curve: bool = True,
                 simulation_path=None) -> Path:
    """The job-side entry: MODEL_DIR/<project>/report.html from an export the caller already fetched, with
    the project's versions and (features cached by training) the learning curve."""
    features = None
    if learning_curve:
        pairs = pairs_from_tasks(tasks, fields)
        if len(pairs) >= 8:
            features = pair_features(pairs, settings.reward_base_model, settings.reward_max_length,
                                     settings.reward_pooling, settings.model_dir / "feature-cache")
    path = report_path(settings.model_dir, project)
    build_report(tasks, fields, load_versions(settings.model_dir, project), path,
                 title=f"Project {project}: preference collection", simulation=load_simulation(simulation_path),
                 features=features)
    return path
