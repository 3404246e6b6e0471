"""The report page's HTML: number formatting, tables, notes, summary cards, the style sheet and the page
around the sections. Everything a value puts into the page goes through `escape`."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape

MAX_TAGS = 30  # task ids listed by id before "and N more"


def fmt(value, digits=3) -> str:
    """A number with `digits` decimals, anything else as escaped text; "–" for None and nan."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def with_interval(triple, digits=3) -> str:
    """(value, low, high) as "value [low, high]"; the value alone when the interval is undefined."""
    value, lo, hi = triple
    if not math.isfinite(value):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt(value, digits)
    return f'{value:.{digits}f} <span class="ci">[{lo:.{digits}f}, {hi:.{digits}f}]</span>'


def plural(n: int, noun: str) -> str:
    """"1 ranking", "2 rankings"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def share(count: int, total: int) -> str:
    """"3 / 12 (25.0%)"; "0 / 0" without a percentage."""
    return f"{count} / {total}" + (f" ({count / total:.1%})" if total else "")


def table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Cells are HTML already (escape values with `fmt`); `classes` gives each row's class."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(f'<tr class="{(classes or [""] * len(rows))[i]}">' + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def card(value, label: str, tone: str = "") -> str:
    return f'<div class="card {tone}"><div class="value">{value}</div><div class="label">{label}</div></div>'


def cards(items: list[str]) -> str:
    return f'<div class="cards">{"".join(items)}</div>'


def task_tags(noun: str, what: str, task_ids: list) -> str:
    """"<b>N nouns what</b> (task ids): 3, 8, ... and M more"."""
    shown = ", ".join(f'<span class="tag">{fmt(t)}</span>' for t in task_ids[:MAX_TAGS])
    more = f" and {len(task_ids) - MAX_TAGS} more" if len(task_ids) > MAX_TAGS else ""
    return f"<p><b>{plural(len(task_ids), noun)} {what}</b> (task ids): {shown}{more}</p>"


CSS = """
body { margin: 0; background: #f4f6f9; color: #1e272e; font: 14px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
header { background: linear-gradient(120deg, #1e3799, #2e86de); color: #fff; padding: 28px 40px 22px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; opacity: .85; }
nav { padding: 10px 40px; background: #fff; border-bottom: 1px solid #dfe4ea; position: sticky; top: 0; z-index: 1;
      display: flex; flex-wrap: wrap; gap: 4px 16px; }
nav a { color: #1e3799; text-decoration: none; font-size: 13px; white-space: nowrap; }
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
.missing { background: #fdf2e9; border-radius: 6px; padding: 8px 12px; font-size: 13px; }
.flag { background: #e74c3c; color: #fff; border-radius: 10px; padding: 1px 8px; font-size: 11px; }
.tag { background: #f1f2f6; border-radius: 4px; padding: 0 6px; font-family: monospace; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.card { background: #f8f9fb; border-radius: 8px; padding: 12px 14px; border-left: 4px solid #2e86de; }
.card.bad { border-left-color: #e74c3c; }
.card .value { font-size: 24px; font-weight: 700; }
.card .label { color: #57606f; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; }
figure { margin: 0; } figcaption { color: #57606f; font-size: 12px; text-align: center; }
"""


def missing(text: str) -> str:
    """What the data at hand cannot show, and where to get it."""
    return f'<p class="missing">{text}</p>'


FLAG = '<span class="flag">biased</span>'


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole page: a header, a link bar and one <section id=...> per (id, heading, body HTML)."""
    nav = "".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(name)}</h2>{html}</section>' for sid, name, html in sections)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><h1>{escape(title)}</h1><p>{subtitle} · generated {made} by rlhf-backend</p></header>'
            f'<nav>{nav}</nav><main>{body}</main></body></html>')
