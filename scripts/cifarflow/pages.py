"""The one HTML page shell of the report's tables and the model card (a self-contained document with
inline CSS, as the Snakemake report embeds it, offline) and the formatters they share, so that a
figure reads the same on every page. Standard library only."""

from __future__ import annotations

import html
import math
from typing import Any

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 12px; color: #222; }
h1 { font-size: 16px; margin: 0 0 6px; }
p.note { color: #555; margin: 0 0 10px; max-width: 60em; }
table { border-collapse: collapse; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; }
td.text, th.text { text-align: left; }
tr.total td, tr.best td { font-weight: 600; }
td.fail { color: #b00020; font-weight: 600; }
td.pass { color: #137333; }
tr.weak td { color: #b00020; }
td.champion { font-weight: 600; }
td.wrap { white-space: normal; text-align: left; min-width: 16em; max-width: 32em; }
code { font-size: 12px; background: #f3f5f7; padding: 0 3px; word-break: break-all; }
.document { line-height: 1.45; margin: 0 auto; max-width: 60em; padding: 0 12px; }
.document h1 { font-size: 20px; margin: 0.67em 0; }
.document h2 { font-size: 17px; margin-top: 1.4em; border-bottom: 1px solid #ddd; }
.document h3 { font-size: 15px; margin-bottom: 4px; }
.document table { margin: 6px 0 10px; }
.document th, .document td { padding: 3px 10px; text-align: left; vertical-align: top; white-space: normal; }
"""


def html_page(title: str, body: str, note: str = "", *, document: bool = False) -> str:
    """A complete HTML document with inline CSS. A table page (the default) gets `title` as its
    heading and `note` under it; a `document` (the model card) is a centred column of prose whose
    `body` brings its own headings."""
    if document:
        body = f'<main class="document">\n{body}\n</main>'
    else:
        note_html = f'<p class="note">{html.escape(note)}</p>\n' if note else ""
        body = f"<h1>{html.escape(title)}</h1>\n{note_html}{body}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def missing(value: Any) -> bool:
    """Not measured: None or NaN (a figure the run did not produce), shown as "n/a"."""
    if value is None:
        return True
    try:
        return math.isnan(value)
    except TypeError:  # text, or anything else that is not a number
        return False


def text(value: Any) -> str:
    return "n/a" if missing(value) else str(value)


def pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if missing(value) else f"{value * 100:.{digits}f}%"


def num(value: float | None, digits: int = 0) -> str:
    return "n/a" if missing(value) else f"{value:,.{digits}f}"
