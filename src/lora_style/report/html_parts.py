"""HTML building blocks of the report's pages (report_pages.py): a page, tables, notes, values."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

STYLE = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #fff; margin: 0; padding: 1.5rem 2rem; max-width: 64rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 1.75rem 0 .5rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
p.lead { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; margin: .25rem 0 1rem; }
th, td { text-align: left; vertical-align: top; padding: .3rem .8rem .3rem 0; border-bottom: 1px solid #eaeef2; }
th { font-weight: 600; color: #424a53; white-space: nowrap; }
table.grid th, table.grid td { padding-right: 1.2rem; }
table.grid thead th { border-bottom: 2px solid #d0d7de; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table table { margin: 0; }
code, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; border: 1px solid #eaeef2; border-radius: 6px; padding: .6rem .8rem;
      white-space: pre-wrap; overflow-wrap: anywhere; margin: .25rem 0 1rem; }
.note { border-left: 4px solid; border-radius: 4px; padding: .45rem .8rem; margin: .5rem 0 1rem; }
.ok { border-color: #1a7f37; background: #dafbe1; }
.warn { border-color: #9a6700; background: #fff8c5; }
.bad { border-color: #cf222e; background: #ffebe9; }
.info { border-color: #0969da; background: #ddf4ff; }
span.yes { color: #1a7f37; font-weight: 600; }
span.no { color: #cf222e; font-weight: 600; }
.samples pre, .samples pre code { font: inherit; }  /* prose reads better in the body's font */
.samples details pre, .samples details pre code {
    font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
details { margin: .5rem 0 1rem; }
summary { cursor: pointer; color: #0969da; }
"""


def page(title: str, lead: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n<p class=\"lead\">{lead}</p>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def note(kind: str, html: str) -> str:
    """A coloured line: ok, warn, bad or info."""
    return f'<div class="note {kind}">{html}</div>'


def code(text) -> str:
    return f"<code>{escape(str(text))}</code>"


def value_html(value) -> str:
    """A JSON value for a table cell: objects as nested tables, multi-line text as a block."""
    if isinstance(value, dict):
        return facts_table(value) if value else "(none)"
    if isinstance(value, list):
        if not value:
            return "(none)"
        if all(isinstance(v, dict) for v in value):
            return "".join(facts_table(v) for v in value)
        return ", ".join(escape(fmt(v)) for v in value)
    if isinstance(value, str) and "\n" in value:
        return f"<pre>{escape(value)}</pre>"
    return escape(fmt(value))


def fmt(value) -> str:
    if value is None:
        return "(unknown)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def facts_table(facts: dict) -> str:
    """Key-value rows, in the record's order."""
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{value_html(v)}</td></tr>"
                   for k, v in facts.items())
    return f"<table>{rows}</table>"


def grid(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table with a header row; cells are HTML already; `numeric` columns align right."""
    def cls(i):
        return ' class="num"' if i in numeric else ""
    head = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def duration(seconds) -> str:
    if seconds is None:
        return "(unknown)"
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def when(epoch) -> str:
    if epoch is None:
        return "(still running)"
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def lines_list(lines: list, limit: int = 20) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


# ------------------------------------------------------------------------------------------ pages
