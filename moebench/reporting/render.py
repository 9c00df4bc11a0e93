"""Rendering: numbers as text, tables as Markdown and HTML, figures as SVG,
and the self-contained HTML page. Byte-identical output for identical input:
no timestamps, and matplotlib's SVG ids and metadata fixed."""

from __future__ import annotations

import base64
import html
import io
import math

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

# svg.hashsalt fixes the ids matplotlib derives for clip paths and glyphs
# (random otherwise); glyphs drawn as paths look the same without the fonts.
SVG_RC = {"svg.hashsalt": "moebench", "svg.fonttype": "path"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f2f2f2; }
td:nth-child(2), th:nth-child(2) { text-align: left; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.85rem; }
"""


def si(value: float, digits: int = 4) -> str:
    """``278528.0`` -> ``278.5k``; empty for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def mean_and_interval(mean: float, ci95: float) -> str:
    """``723.96, 13.95`` -> ``724 ± 14``: the interval to two significant
    digits and the mean to the same decimal place; 4 significant digits and
    ``n/a`` when the interval is unknown (one seed)."""
    if math.isnan(ci95) or ci95 == 0:
        return f"{mean:.4g} ± {'n/a' if math.isnan(ci95) else 0}"
    decimals = max(0, 1 - math.floor(math.log10(ci95)))
    return f"{mean:.{decimals}f} ± {ci95:.{decimals}f}"


def exact(value: float) -> str:
    """A number known exactly (no interval), to 4 significant digits, zeros
    kept: ``2.9998`` -> ``3.000``."""
    return f"{value:#.4g}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame of strings."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(list(frame.columns)), row(["---"] * len(frame.columns))]
    lines += [row(list(values)) for values in frame.itertuples(index=False)]
    return "\n".join(lines)


def figure_svg(fig: Figure) -> bytes:
    """The figure as SVG bytes, the same every time for the same figure."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(SVG_RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0)


def html_figure(caption: str, svg: bytes) -> str:
    """The figure embedded as a data URI: self-contained, and its ids cannot
    clash with another figure's on the same page."""
    data = base64.b64encode(svg).decode("ascii")
    text = html.escape(caption)
    return (f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{text}">'
            f"<figcaption>{text}</figcaption></figure>")


def html_page(title: str, blocks: list[str]) -> str:
    """A static page with no external assets; ``blocks`` are HTML snippets."""
    body = "\n".join(blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")
