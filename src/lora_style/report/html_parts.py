"""HTML building blocks of the report's pages (pages.py): a page, tables, notes, values.

The markup is Jinja2's (templates/: the page, its style sheet, and the blocks as macros), with
autoescaping: text passed in is escaped by the library, and what a caller has already made HTML
(a nested table, a block of code) travels as Markup. The functions return Markup, so they nest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

_JINJA = Environment(
    loader=PackageLoader("lora_style.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    keep_trailing_newline=True,
)
_PARTS = _JINJA.get_template("parts.html.j2").module


def page(title: str, lead: str, body: list[str]) -> str:
    """A whole page: `lead` and the `body` parts are HTML already."""
    return _JINJA.get_template("page.html.j2").render(
        title=title, lead=Markup(lead), body=[Markup(part) for part in body]
    )


def note(kind: str, html: str) -> Markup:
    """A coloured line: ok, warn, bad or info; `html` is HTML already."""
    return Markup(_PARTS.note(kind, Markup(html)))


def code(text) -> Markup:
    return Markup(_PARTS.code(str(text)))


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


def facts_table(facts: dict) -> Markup:
    """Key-value rows, in the record's order."""
    return Markup(_PARTS.facts_table([(str(k), Markup(value_html(v))) for k, v in facts.items()]))


def grid(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> Markup:
    """A table with a header row; cells are HTML already; `numeric` columns align right."""
    return Markup(_PARTS.grid(header, [[Markup(c) for c in row] for row in rows], set(numeric)))


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
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def lines_list(lines: list, limit: int = 20) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


# ------------------------------------------------------------------------------------------ pages
