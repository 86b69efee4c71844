"""Markdown from model repositories (model cards, plans) rendered as SAFE HTML for the gate page.

A model card is written by the developer whose model is under review, so it is untrusted input. Two layers:

1. markdown-it-py in CommonMark mode with raw HTML switched off: ``<script>``, ``<img onerror=...>``,
   ``<iframe>`` and any other HTML in the text come out as escaped text; link and image URLs are checked by
   ``_safe_url`` (only http, https, mailto, in-page anchors and relative paths; no ``javascript:``,
   ``data:``, ``vbscript:``, ``file:``), and images are shown as links, never loaded.
2. nh3 (the Ammonia sanitiser) over the result with an allow-list of tags and attributes, so even a parser
   bug cannot let an event attribute, a style or a script through. Links get ``rel="nofollow noopener
   noreferrer"``.

The page's Content-Security-Policy (no inline script) is a third, independent layer.
"""

from __future__ import annotations

from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markupsafe import Markup

ALLOWED_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "strong", "em", "code", "pre",
                "blockquote", "hr", "br", "a", "table", "thead", "tbody", "tr", "th", "td", "del"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "th": {"align"}, "td": {"align"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}
MAX_CHARS = 200_000  # a model card is a few pages; anything longer is cut (and says so)


def _safe_url(url: str) -> bool:
    value = url.strip().lower()
    if ":" not in value.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]:
        return True  # relative path, query or anchor
    return value.split(":", 1)[0] in URL_SCHEMES


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.enable("strikethrough")
    md.validateLink = _safe_url  # type: ignore[method-assign]

    def image_as_link(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        alt = renderer.renderInlineAsText(token.children or [], options, env) or src
        return f'<a href="{escapeHtml(src)}">[image: {escapeHtml(alt)}]</a>'

    md.add_render_rule("image", image_as_link)
    return md


_MD = _parser()


def render_markdown(text: str) -> Markup:
    """Safe HTML for ``text`` (Markdown); never raises on odd input."""
    cut = len(text) > MAX_CHARS
    html = _MD.render(text[:MAX_CHARS])
    clean = nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=URL_SCHEMES,
                      link_rel="nofollow noopener noreferrer", strip_comments=True)
    if cut:
        clean += f"<p><em>(shortened: the first {MAX_CHARS:,} characters are shown; download the file for "\
                 "the rest)</em></p>"
    return Markup(clean)  # noqa: S704 - sanitised just above
