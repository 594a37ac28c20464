"""Render tables as Markdown, LaTeX (booktabs) and HTML, all from the same string cells.

Tables are built once as DataFrames of display strings (numbers already formatted, the best
entry marked with :data:`BOLD`), then rendered per format, so the Markdown in the README, the
LaTeX in a paper and the HTML in the report can never disagree. LaTeX goes through pandas'
``Styler.to_latex`` (booktabs rules, escaping); the bold marker becomes ``\\textbf``.
"""

from __future__ import annotations

import html
import math

import pandas as pd

WIDE_COLUMNS = 10
"""LaTeX tables with more columns are scaled to ``\\textwidth`` (needs ``graphicx``)."""

BOLD = "\x02"
"""Prefix of a cell to be set in bold (a control character no real value contains)."""


def number(value: float | None, digits: int = 3, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals (``+`` for positives with ``sign``); "–" when it is
    missing or not finite (the sd of a single case, a p-value below the minimum pairs)."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def bold(text: str) -> str:
    return f"{BOLD}{text}"


def _plain(cell: object) -> tuple[str, bool]:
    text = str(cell)
    return (text[1:], True) if text.startswith(BOLD) else (text, False)


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub Markdown table of the string cells (``|`` escaped, bold as ``**x**``)."""

    def cell(value: object) -> str:
        text, is_bold = _plain(value)
        text = text.replace("|", "\\|")
        return f"**{text}**" if is_bold and text else text

    header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    lines = [header, "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.to_numpy()]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs ``table`` environment (``\\usepackage{booktabs}``; ``graphicx`` for tables
    wider than :data:`WIDE_COLUMNS` columns) of the string cells."""
    from pandas.io.formats.style import Styler

    def escape(value: object) -> str:
        text, is_bold = _plain(value)
        text = _escape_latex(text)
        return f"\\textbf{{{text}}}" if is_bold and text else text

    cells = table.map(escape)
    cells.columns = [_escape_latex(str(c)) for c in table.columns]
    styler = Styler(cells, escape=None).hide(axis="index")
    latex = styler.to_latex(hrules=True, caption=_escape_latex(caption), label=label,
                            position="htbp", position_float="centering",
                            column_format="l" * len(table.columns))
    if len(table.columns) > WIDE_COLUMNS:  # e.g. the subset table: fit it to the text width
        latex = latex.replace("\\begin{tabular}", "\\resizebox{\\textwidth}{!}{%\n\\begin{tabular}")
        latex = latex.replace("\\end{tabular}", "\\end{tabular}}")
    return latex


def _escape_latex(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                    "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
                    "●": r"$\bullet$", "○": r"$\circ$", "–": "--", "—": "---", "−": "-",
                    "·": r"$\cdot$", "τ": r"$\tau$"}
    return "".join(replacements.get(ch, ch) for ch in text)


def to_html(table: pd.DataFrame, css_class: str = "table") -> str:
    """An HTML ``<table>`` of the string cells (escaped; bold as ``<strong>``)."""

    def cell(value: object, tag: str) -> str:
        text, is_bold = _plain(value)
        text = html.escape(text)
        return f"<{tag}>{'<strong>' + text + '</strong>' if is_bold else text}</{tag}>"

    head = "".join(cell(c, "th") for c in table.columns)
    body = "\n".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>"
                     for row in table.to_numpy())
    return (f'<table class="{css_class}"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table>")


def plain_csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The string cells without bold markers (for CSV next to the numeric tables)."""
    return table.map(lambda v: _plain(v)[0])
