"""A tiny, safe Markdown to HTML converter for the model and dataset cards (shared.cards writes them).

What the cards use: headings (#..######), paragraphs, '-' / '*' and numbered lists, **bold**, *italic* or _italic_,
`code`, and [links](http...). Everything is HTML-escaped first, so a card can never inject markup or script; HTML
comments are dropped; a link keeps only http(s) targets and in-page anchors (anything else becomes plain text).
"""

from __future__ import annotations

import html
import re

COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
CODE = re.compile(r"`([^`]+)`")
BOLD = re.compile(r"\*\*(.+?)\*\*")
ITALIC = re.compile(r"(?<![\w*])[*_](?![\s*_])(.+?)(?<![\s*_])[*_](?![\w*])")
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
SAFE_TARGET = re.compile(r"^(https?://|#)[^\"'<>\s]*$")


def _inline(text: str) -> str:
    """One line's inline markup, on escaped text; `code` spans are kept verbatim."""
    parts = CODE.split(html.escape(text, quote=True))
    out = []
    for index, part in enumerate(parts):
        if index % 2:  # inside backticks
            out.append(f"<code>{part}</code>")
            continue
        part = LINK.sub(_link, part)
        part = BOLD.sub(r"<strong>\1</strong>", part)
        out.append(ITALIC.sub(r"<em>\1</em>", part))
    return "".join(out)


def _link(match: re.Match[str]) -> str:
    label, target = match.group(1), html.unescape(match.group(2))
    if not SAFE_TARGET.match(target):
        return label
    return f'<a href="{html.escape(target, quote=True)}" rel="noopener noreferrer">{label}</a>'


def render(markdown: str) -> str:
    """Safe HTML of `markdown` (see the module docstring for what is understood)."""
    lines = COMMENT.sub("", markdown).splitlines()
    out: list[str] = []
    paragraph: list[str] = []
    list_tag: str | None = None

    def close_paragraph() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    def close_list() -> None:
        nonlocal list_tag
        if list_tag:
            out.append(f"</{list_tag}>")
            list_tag = None

    for line in lines:
        heading, bullet, numbered = HEADING.match(line), BULLET.match(line), NUMBERED.match(line)
        if not line.strip():
            close_paragraph()
            close_list()
        elif heading:
            close_paragraph()
            close_list()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif bullet or numbered:
            close_paragraph()
            tag = "ul" if bullet else "ol"
            if list_tag != tag:
                close_list()
                out.append(f"<{tag}>")
                list_tag = tag
            out.append(f"<li>{_inline((bullet or numbered).group(1))}</li>")
        elif list_tag and line.startswith((" ", "\t")):  # a list item's continuation line
            out[-1] = out[-1].removesuffix("</li>") + " " + _inline(line.strip()) + "</li>"
        else:
            close_list()
            paragraph.append(line.strip())
    close_paragraph()
    close_list()
    return "\n".join(out)
