"""The report as blocks (headings, text, tables, figures, data files), rendered as Markdown, as one self-contained
HTML page, and the tables as aligned terminal text."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

from study.analysis.compare import compare_grid
from study.analysis.tables import Table, table_grid


# -- text output -------------------------------------------------------------------
def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    def render(line: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |"

    return "\n".join([render(headers), "|" + "---|" * len(headers), *(render(line) for line in cells)])


def text_table(headers: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in [headers, *cells]) for i in range(len(headers))]

    def render(line: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()

    return "\n".join([render(headers), render(["-" * w for w in widths]), *(render(line) for line in cells)])


def format_terminal(tables: list[Table], compare: tuple[list[Table], str, str] | None = None) -> str:
    """The tables as aligned text; `compare` = (the other study's tables, this name, other name)."""
    blocks = []
    for index, table in enumerate(tables):
        if compare:
            other, name_a, name_b = compare
            grid = compare_grid(table, other[index], name_a, name_b)
        else:
            grid = table_grid(table)
        blocks.append("\n".join([f"{table.title} [{table.name}]", text_table(*grid), *table.notes]))
    return "\n\n".join(blocks)


# -- the report's blocks, rendered as Markdown and as HTML ---------------------------------------------
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str  # Markdown inline: **bold**, *italics*, `code`, [link](target)


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Grid:
    headers: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]  # plain text


@dataclass(frozen=True)
class Picture:
    title: str
    png: Path | None = None  # None: not drawn; `note` says why
    note: str = ""


@dataclass(frozen=True)
class DataFile:
    path: Path


def grid(headers, cells) -> Grid:
    return Grid(tuple(map(str, headers)), tuple(tuple(map(str, line)) for line in cells))


def render_markdown(blocks: list, out: Path) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            lines.append(block.text)
        elif isinstance(block, Items):
            lines.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Grid):
            lines.append(markdown_table(list(block.headers), [list(line) for line in block.cells]))
        elif isinstance(block, Picture):
            alt = block.title.replace("[", "(").replace("]", ")")  # a bracket would end Markdown's alt text
            lines.append(f"![{alt}]({block.png.relative_to(out).as_posix()})" if block.png
                         else f"*{block.title}: {block.note}*")
        elif isinstance(block, DataFile):
            name = block.path.relative_to(out).as_posix()
            lines.append(f"Data: [{name}]({name})")
        lines.append("")
    return "\n".join(lines)


_STYLE = "\n".join([
    "body{font-family:system-ui,sans-serif;max-width:78rem;margin:2rem auto;padding:0 1rem;line-height:1.45}",
    "table{border-collapse:collapse;margin:0.5rem 0 1rem;font-size:0.9rem}",
    "th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}th{background:#f3f3f3}",
    "figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{font-size:0.9rem;color:#555}",
    "code{background:#f3f3f3;padding:0 0.2rem}.note{color:#8a5300}",
])


def render_html(blocks: list, title: str) -> str:
    """One self-contained page: figures as PNG data URIs, CSV files as download links, every text escaped."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{inline_html(block.text)}</p>")
        elif isinstance(block, Items):
            body.append("<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Grid):
            head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.headers)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>"
                           for line in block.cells)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Picture):
            if block.png:
                data = base64.b64encode(block.png.read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(block.title)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(block.title)}</figcaption></figure>")
            else:
                body.append(f'<p class="note"><em>{html.escape(block.title)}: {html.escape(block.note)}</em></p>')
        elif isinstance(block, DataFile):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            name = html.escape(block.path.name)
            body.append(f'<p>Data: <a download="{name}" href="data:text/csv;base64,{data}">{name}</a></p>')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*(.+?)\*|\[([^\]]+)\]\(([^)\s]+)\)")


def inline_html(text: str) -> str:
    """The Markdown inline forms the report writes, as HTML; everything else escaped."""
    out, position = [], 0
    for found in _INLINE.finditer(text):
        out.append(html.escape(text[position:found.start()]))
        code, bold, italic, label, target = found.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline_html(bold)}</strong>")
        elif italic is not None:
            out.append(f"<em>{inline_html(italic)}</em>")
        else:
            out.append(f'<a href="{html.escape(target)}">{inline_html(label)}</a>')
        position = found.end()
    out.append(html.escape(text[position:]))
    return "".join(out)
