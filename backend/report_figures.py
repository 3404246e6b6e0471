"""The report's plots: matplotlib figures returned as <img> tags with the PNG inline (a data URI), so the
page stays one self-contained file."""

from __future__ import annotations

import base64
import io
from datetime import timedelta
from html import escape

import numpy as np

BLUE, GREY, RED, GREEN = "#2e86de", "#8395a7", "#e74c3c", "#27ae60"


def _figure(width=7.0, height=3.4):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titleweight": "bold", "axes.titlesize": 10})
    return plt.subplots(figsize=(width, height))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return img(buf.getvalue())


def img(png: bytes, alt: str = "plot") -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def plot_progress(tl: dict) -> str:
    """Cumulative annotations and annotations per bucket, from `model.stats.timeline`."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig, ax = _figure(8.0, 3.0)
    fig.delaxes(ax)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.step(tl["times"], tl["cumulative"], where="post", color=BLUE)
    left.fill_between(tl["times"], tl["cumulative"], step="post", color=BLUE, alpha=0.12)
    left.set(title="Labelled so far", ylabel="annotations")
    width = {"minute": 1 / 1440, "hour": 1 / 24, "day": 1.0}[tl["bucket"]]
    right.bar(tl["buckets"], tl["per_bucket"], width=width * 0.85, align="edge", color=GREEN)
    right.set(title=f"Annotations per {tl['bucket']}", ylabel="annotations")
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
    """Dot and 95% interval per row ({"name", "value", "low", "high", "flagged"}), top to bottom in the
    rows' order; flagged rows in red, a row named "all" in grey; `reference` as a dashed line."""
    fig, ax = _figure(7.0, 0.9 + 0.32 * len(rows))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        color = RED if r.get("flagged") else (GREY if r["name"] == "all" else BLUE)
        ax.plot([r["low"], r["high"]], [yi, yi], color=color, lw=2.5, alpha=0.6, solid_capstyle="round")
        ax.plot(r["value"], yi, "o", color=color, ms=6)
    if reference is not None:
        ax.axvline(reference, color="#222", ls="--", lw=0.8)
    ax.set_yticks(y, [str(r["name"]) for r in rows])
    pad = (xlim[1] - xlim[0]) * 0.02  # a dot on the edge (a share of 0 or 1, tau 1) stays whole
    ax.set(xlim=(xlim[0] - pad, xlim[1] + pad), ylim=(-0.7, len(rows) - 0.3), xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_learning_curve(curve: dict | None, versions: list[dict], xlabel: str = "labelled pairs") -> str:
    """The refitted curve (`model.stats.learning_curve`) and each trained version's own held-out point."""
    fig, ax = _figure(7.0, 3.6)
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
    ax.set(xlabel=xlabel, ylabel="held-out accuracy", ylim=(0.3, 1.0), title="Accuracy vs labels")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def plot_lead_times(seconds_by_annotator: dict[str, list[float]]) -> str:
    """A horizontal box plot of seconds per annotation for each annotator, on a log axis."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    names = sorted(seconds_by_annotator)
    seconds = {n: [max(s, 0.1) for s in seconds_by_annotator[n]] for n in names}  # log axis: no zeros
    fig, ax = _figure(7.0, 0.9 + 0.35 * len(names))
    ax.boxplot([seconds[n] for n in names], orientation="horizontal", showfliers=True, widths=0.5,
               medianprops={"color": BLUE, "lw": 2}, flierprops={"ms": 3, "alpha": 0.5})
    ax.set_yticks(range(1, len(names) + 1), names)
    values = [s for v in seconds.values() for s in v]
    scale = "log scale"
    if max(values) >= 10 * min(values):  # a log axis only where the times span a decade or more
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        scale = "linear scale"
    ax.set(xlabel=f"seconds per annotation ({scale})", title="Lead time per annotator")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
